//! The admin bearer token: from config, or a random one created on first
//! start and kept in the data directory (mode 0600) for `tollgate ctl`.

use std::io::Write;
use std::path::Path;

use rand::RngCore;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the admin token file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write the admin token file {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("the admin token file {path} is empty; delete it to have a new token generated")]
    Empty { path: String },
}

/// Whether the token was just created (so the operator must be told once).
pub enum AdminToken {
    Configured(String),
    Existing(String),
    Generated(String),
}

impl AdminToken {
    pub fn value(&self) -> &str {
        match self {
            AdminToken::Configured(t) | AdminToken::Existing(t) | AdminToken::Generated(t) => t,
        }
    }
}

pub fn load_or_create(configured: Option<&str>, path: &Path) -> Result<AdminToken, TokenError> {
    if let Some(token) = configured {
        return Ok(AdminToken::Configured(token.to_string()));
    }
    let display = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(TokenError::Empty { path: display });
            }
            Ok(AdminToken::Existing(token))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 24];
            rand::rng().fill_bytes(&mut bytes);
            let token = format!("tga_{}", hex::encode(bytes));
            write_private(path, &token).map_err(|source| TokenError::Write { path: display, source })?;
            Ok(AdminToken::Generated(token))
        }
        Err(source) => Err(TokenError::Read { path: display, source }),
    }
}

fn write_private(path: &Path, token: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    writeln!(file, "{token}")?;
    file.sync_all()
}
