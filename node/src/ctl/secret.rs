//! Secrets given on the command line (provider keys and headers, a route's
//! JWT secret) may name where the secret is instead of being it, so that it
//! stays out of shell history and of `ps`, which any local user can read.

use super::CtlError;

/// `env:NAME` reads the environment variable NAME, `file:PATH` the file at
/// PATH (without the whitespace around it, such as its final newline), and
/// anything else is the secret itself (so a literal secret cannot begin
/// with `env:` or `file:`). An empty literal passes as it is: the admin API
/// reads it as "keep the secret stored". A reference that reads as empty is
/// an error, never a silent "keep". `flag` names the option in errors.
pub(super) fn read_secret(spec: &str, flag: &str) -> Result<String, CtlError> {
    let secret = if let Some(name) = spec.strip_prefix("env:") {
        // A fixed message: a value that is not UTF-8 would be printed by VarError's own.
        std::env::var(name).map_err(|e| {
            let why = match e {
                std::env::VarError::NotPresent => "it is not set (export it first)",
                std::env::VarError::NotUnicode(_) => "its value is not UTF-8 text",
            };
            CtlError::Usage(format!("{flag} env:{name}: cannot read the environment variable {name}: {why}"))
        })?
    } else if let Some(path) = spec.strip_prefix("file:") {
        std::fs::read_to_string(path)
            .map_err(|e| CtlError::Usage(format!("{flag} file:{path}: cannot read the file: {e}")))?
            .trim()
            .to_string()
    } else {
        return Ok(spec.to_string());
    };
    if secret.is_empty() {
        return Err(CtlError::Usage(format!("{flag} {spec}: the secret there is empty")));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_literal_is_the_secret_and_references_are_read() {
        assert_eq!(read_secret("s3cret", "--jwt-secret").unwrap(), "s3cret");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-a-file\n").unwrap();
        let spec = format!("file:{}", path.display());
        assert_eq!(read_secret(&spec, "--jwt-secret").unwrap(), "from-a-file", "the final newline is not the secret's");
        // PATH is set wherever tests run; the test must not change the process's environment.
        assert_eq!(read_secret("env:PATH", "--jwt-secret").unwrap(), std::env::var("PATH").unwrap());
    }

    #[test]
    fn an_empty_literal_passes_so_that_the_stored_secret_is_kept() {
        // `--key main= --key new=env:NEW` re-lists a pool without typing its secrets again.
        assert_eq!(read_secret("", "--key").unwrap(), "");
    }

    #[test]
    fn a_missing_variable_an_unreadable_file_and_an_empty_reference_are_usage_errors_naming_the_flag() {
        let unset = read_secret("env:TOLLGATE_TEST_SURELY_UNSET_VARIABLE", "--key").unwrap_err();
        assert!(matches!(&unset, CtlError::Usage(m) if m.contains("--key") && m.contains("not set")), "{unset}");
        let missing = read_secret("file:/nonexistent/tollgate-secret", "--jwt-secret").unwrap_err();
        assert!(matches!(&missing, CtlError::Usage(m) if m.contains("cannot read")), "{missing}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, "\n").unwrap();
        let empty = read_secret(&format!("file:{}", path.display()), "--jwt-secret").unwrap_err();
        assert!(matches!(&empty, CtlError::Usage(m) if m.contains("empty")), "{empty}");
    }
}
