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
    /// Never an out-of-space error: `From<OplogError>` turns those into `NoSpace`.
    #[error(transparent)]
    Oplog(OplogError),
    #[error("another process has this pond mounted read-write (lock {0} is held)")]
    Busy(String),
}

/// The OS errors that mean the disk (or the user's quota) is full: the writer sees ENOSPC.
fn is_no_space(code: Option<i32>) -> bool {
    matches!(code, Some(libc::ENOSPC | libc::EDQUOT))
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        if is_no_space(e.raw_os_error()) { FsError::NoSpace } else { FsError::Io(e.to_string()) }
    }
}

impl From<OplogError> for FsError {
    fn from(e: OplogError) -> Self {
        if is_no_space(e.raw_os_error()) { FsError::NoSpace } else { FsError::Oplog(e) }
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
        if is_no_space(e.raw_os_error()) { FsError::NoSpace } else { FsError::Io(e.to_string()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oplog_io(code: i32) -> OplogError {
        OplogError::Io { path: "/pond/part.parquet".into(), source: std::io::Error::from_raw_os_error(code) }
    }

    #[test]
    fn a_full_disk_under_the_oplog_is_no_space_and_other_failures_stay_oplog_errors() {
        assert!(matches!(FsError::from(oplog_io(libc::ENOSPC)), FsError::NoSpace));
        assert!(matches!(FsError::from(oplog_io(libc::EDQUOT)), FsError::NoSpace));
        assert!(matches!(FsError::from(oplog_io(libc::EIO)), FsError::Oplog(_)));
        assert!(matches!(FsError::from_commit(&oplog_io(libc::ENOSPC)), FsError::NoSpace));
        assert!(matches!(FsError::from_commit(&oplog_io(libc::EACCES)), FsError::Io(_)));
        assert!(matches!(FsError::from(std::io::Error::from_raw_os_error(libc::EDQUOT)), FsError::NoSpace));
    }
}
