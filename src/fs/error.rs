//! `FsError`: the filesystem core's errors, shaped like POSIX's so the FUSE adapter can map each to
//! one errno (the table lives in `fuse/errno.rs`).

use crate::large_files::error::StoreError;
use crate::oplog::OplogError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("is a directory")]
    IsDir,
    #[error("not a directory")]
    NotDir,
    #[error("file name too long")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("read-only file system")]
    ReadOnly,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("no such attribute")]
    NoXattr,
    #[error("operation not supported: {0}")]
    NotSupported(&'static str),
    #[error("bad file handle")]
    BadHandle,
    #[error("no space left on device")]
    NoSpace,
    #[error("too many links")]
    TooManyLinks,
    #[error("attribute value or list does not fit in {0} bytes")]
    Range(usize),
    /// Damaged data (a chunk whose hash does not match, an unreadable data file): never wrong bytes.
    #[error("data damaged: {0}")]
    Corrupt(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error(transparent)]
    Oplog(#[from] OplogError),
    #[error("another process has this pond mounted read-write (lock {0} is held)")]
    Busy(String),
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => FsError::NoSpace,
            _ => FsError::Io(e.to_string()),
        }
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> Self {
        if e.is_enospc() {
            return FsError::NoSpace;
        }
        match e {
            e @ (StoreError::CorruptChunk { .. }
            | StoreError::HashTreeMismatch { .. }
            | StoreError::Malformed { .. }) => FsError::Corrupt(e.to_string()),
            StoreError::NotFound(h) => FsError::Corrupt(format!("large-file object {h} is missing")),
            other => FsError::Io(other.to_string()),
        }
    }
}

impl FsError {
    /// Errors from the commit path: ENOSPC stays ENOSPC, everything else is an I/O error.
    pub fn from_commit(e: &OplogError) -> FsError {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => FsError::NoSpace,
            _ => FsError::Io(e.to_string()),
        }
    }
}
