//! One JSON line per proxied request, written off the request path: the
//! handler formats the line and hands it to a writer thread over a bounded
//! channel. When the writer falls behind, lines are dropped and counted rather
//! than slowing traffic down.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Off,
    Stdout,
    File(PathBuf),
}

impl Sink {
    /// "off", "stdout", or a file path (appended to).
    pub fn parse(s: &str) -> Sink {
        match s {
            "" | "off" => Sink::Off,
            "stdout" | "-" => Sink::Stdout,
            path => Sink::File(PathBuf::from(path)),
        }
    }
}

/// Opens (appending) the access log. The process runs with umask 077 so the
/// data directory stays private; a log is for shippers that often run as
/// another user of the same group, so a file created here is 0640, and an
/// existing file keeps the mode its owner gave it.
fn open_log_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::PermissionsExt;
    let existed = path.exists();
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    if !existed {
        file.set_permissions(std::fs::Permissions::from_mode(0o640))?;
    }
    Ok(file)
}

pub struct AccessLog {
    tx: Option<SyncSender<String>>,
    pub dropped: AtomicU64,
}

impl AccessLog {
    pub fn start(sink: &Sink) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn Write + Send> = match sink {
            Sink::Off => return Ok(AccessLog { tx: None, dropped: AtomicU64::new(0) }),
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::File(path) => Box::new(open_log_file(path)?),
        };
        let (tx, rx) = sync_channel::<String>(16_384);
        std::thread::Builder::new().name("access-log".into()).spawn(move || {
            let mut buffer = Vec::with_capacity(64 * 1024);
            while let Ok(line) = rx.recv() {
                buffer.extend_from_slice(line.as_bytes());
                buffer.push(b'\n');
                // Batch whatever else is already queued into one write.
                while let Ok(line) = rx.try_recv() {
                    buffer.extend_from_slice(line.as_bytes());
                    buffer.push(b'\n');
                    if buffer.len() > 60 * 1024 {
                        break;
                    }
                }
                let _ = out.write_all(&buffer).and_then(|()| out.flush());
                buffer.clear();
            }
        })?;
        Ok(AccessLog { tx: Some(tx), dropped: AtomicU64::new(0) })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn write(&self, line: String) {
        if let Some(tx) = &self.tx
            && let Err(TrySendError::Full(_)) = tx.try_send(line)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_new_log_file_is_readable_by_its_group_only_and_an_existing_one_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("access.log");
        open_log_file(&new).unwrap();
        assert_eq!(std::fs::metadata(&new).unwrap().permissions().mode() & 0o777, 0o640);
        let existing = dir.path().join("kept.log");
        std::fs::write(&existing, b"").unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o600)).unwrap();
        open_log_file(&existing).unwrap();
        assert_eq!(std::fs::metadata(&existing).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
