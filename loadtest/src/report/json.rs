//! JSON reports: the summary structs serialised as they are, so other tools can read them back.

use std::path::Path;

use serde::Serialize;

use super::{ReportError, write_file};

pub fn to_string<T: Serialize>(value: &T) -> Result<String, ReportError> {
    Ok(serde_json::to_string_pretty(value)?)
}

pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), ReportError> {
    write_file(path, &to_string(value)?)
}
