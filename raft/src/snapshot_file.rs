//! On-disk snapshot format: a header, the snapshot metadata, then the `state`
//! family's records one after another. Written to a temporary file and renamed,
//! so a crash never leaves a half snapshot under a real name; read as a stream,
//! so neither side holds a whole snapshot in memory.
//!
//! ```text
//! "TGSNAP01" | u32 meta_len | meta (postcard) | { u32 key_len | key | u32 val_len | val }* | u32 END
//! ```

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use openraft::alias::SnapshotMetaOf;

use crate::log_store::{decode, encode};
use crate::types::TypeConfig;

const MAGIC: &[u8; 8] = b"TGSNAP01";
const END: u32 = u32::MAX;
const MAX_RECORD: u32 = 64 << 20;

pub(crate) type Meta = SnapshotMetaOf<TypeConfig>;

/// The file name for a snapshot: zero-padded index first, so name order is log order.
pub(crate) fn file_name(meta: &Meta) -> String {
    match &meta.last_log_id {
        Some(id) => format!("{:020}-{}.snap", id.index(), id.committed_leader_id()),
        None => format!("{:020}-0.snap", 0),
    }
}

pub(crate) fn write(dir: &Path, meta: &Meta, entries: &[(Vec<u8>, Vec<u8>)]) -> io::Result<PathBuf> {
    // Snapshots are the whole gateway state: the owner's alone.
    tollgate_storage::private::private_dir(dir)?;
    let path = dir.join(file_name(meta));
    let tmp = dir.join(format!("{}.tmp", file_name(meta)));
    // A temp file left by a crash keeps its old mode when reopened; start afresh.
    let _ = std::fs::remove_file(&tmp);
    {
        let file =
            tollgate_storage::private::private_file_options().write(true).create(true).truncate(true).open(&tmp)?;
        let mut out = BufWriter::new(file);
        out.write_all(MAGIC)?;
        write_chunk(&mut out, &encode(meta)?)?;
        for (k, v) in entries {
            write_chunk(&mut out, k)?;
            write_chunk(&mut out, v)?;
        }
        out.write_all(&END.to_le_bytes())?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    fs::rename(&tmp, &path)?;
    Ok(path)
}

fn write_chunk(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).ok().filter(|l| *l < MAX_RECORD).ok_or_else(|| invalid("record too large"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("snapshot file: {msg}"))
}

/// Reads the header and metadata, leaving `reader` at the first record.
pub(crate) fn read_meta(reader: &mut impl Read) -> io::Result<Meta> {
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a tollgate snapshot (bad magic)"));
    }
    let meta = read_chunk(reader)?.ok_or_else(|| invalid("missing metadata"))?;
    decode(&meta)
}

fn read_chunk(reader: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len == END {
        return Ok(None);
    }
    if len >= MAX_RECORD {
        return Err(invalid("record length out of range"));
    }
    let mut buf = vec![0u8; len as usize];
    reader.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// Streams every record of a snapshot to `visit`, after checking the header.
pub(crate) fn read_all(file: File, mut visit: impl FnMut(Vec<u8>, Vec<u8>) -> io::Result<()>) -> io::Result<Meta> {
    let mut reader = BufReader::new(file);
    let meta = read_meta(&mut reader)?;
    while let Some(key) = read_chunk(&mut reader)? {
        let value = read_chunk(&mut reader)?.ok_or_else(|| invalid("key without value"))?;
        visit(key, value)?;
    }
    Ok(meta)
}

/// The newest complete snapshot in `dir`, if any.
pub(crate) fn newest(dir: &Path) -> io::Result<Option<PathBuf>> {
    Ok(list(dir)?.pop())
}

fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "snap") {
                    files.push(path);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    files.sort();
    Ok(files)
}

/// Deletes all but the newest `keep` snapshots (open handles stay readable on Unix).
pub(crate) fn prune(dir: &Path, keep: usize) -> io::Result<()> {
    let files = list(dir)?;
    for old in files.iter().take(files.len().saturating_sub(keep)) {
        fs::remove_file(old)?;
    }
    Ok(())
}
