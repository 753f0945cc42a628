use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(
        "cannot open the data directory {path}: {source}. If another tollgate process uses this \
         directory, stop it or choose another --data-dir"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error(
        "cannot create the database directory {path} (mode 0700): {source}. Check that the node's user owns \
         the data directory"
    )]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the checkpoint at {path}: {source}. The target must not exist yet")]
    Checkpoint {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("storage {op} failed: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: rocksdb::Error,
    },
}

impl StorageError {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(rocksdb::Error) -> StorageError {
        move |source| StorageError::Io { op, source }
    }
}
