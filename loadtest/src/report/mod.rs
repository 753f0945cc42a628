//! Report writers: terminal text, JSON, Markdown and an SVG chart.

pub mod json;
pub mod markdown;
pub mod svg;
pub mod terminal;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write report {path}: {source}; check that the folder exists and is writable")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot encode report: {0}")]
    Encode(#[from] serde_json::Error),
}

pub(crate) fn write_file(path: &Path, contents: &str) -> Result<(), ReportError> {
    std::fs::write(path, contents).map_err(|source| ReportError::Write { path: path.to_path_buf(), source })
}

pub(crate) fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{ms:.3}ms")
    }
}
