//! `FsError`: the filesystem core's errors, shaped like POSIX's so the FUSE adapter can map each to
//! one errno (the table lives in `fuse/errno.rs`).

use crate::large_files::error::StoreError;
use crate::oplog::OplogError;
use crate::os_error::is_out_of_space;
use crate::private_fs::PrivateFsError;

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

/// Whether an oplog error means the disk or quota is full. A Delta error keeps its causes out of
/// the source chain (its text already says what they say), so they are asked directly.
fn oplog_out_of_space(e: &OplogError) -> bool {
    match e {
        OplogError::Delta { error, .. } => is_out_of_space(error.as_ref()) || is_out_of_space(e),
        e => is_out_of_space(e),
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        if is_out_of_space(&e) { FsError::NoSpace } else { FsError::Io(e.to_string()) }
    }
}

impl From<OplogError> for FsError {
    fn from(e: OplogError) -> Self {
        if oplog_out_of_space(&e) { FsError::NoSpace } else { FsError::Oplog(e) }
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> Self {
        if is_out_of_space(&e) {
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

impl From<PrivateFsError> for FsError {
    fn from(e: PrivateFsError) -> Self {
        if is_out_of_space(&e) { FsError::NoSpace } else { FsError::Io(e.to_string()) }
    }
}

impl FsError {
    /// Errors from the commit path: ENOSPC stays ENOSPC, everything else is an I/O error.
    pub fn from_commit(e: &OplogError) -> FsError {
        if oplog_out_of_space(e) { FsError::NoSpace } else { FsError::Io(e.to_string()) }
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

    /// Writing a large object past the pond owner's quota used to come back as EIO: the store's
    /// own check knew ENOSPC only.
    #[test]
    fn a_full_quota_while_writing_a_large_object_is_no_space() {
        let quota = || std::io::Error::from_raw_os_error(libc::EDQUOT);
        let io = StoreError::Io { path: "/pond/_large_files/.tmp/put-1".into(), source: quota() };
        assert!(matches!(FsError::from(io), FsError::NoSpace));
        let parquet = StoreError::Parquet {
            path: "/pond/_large_files/.tmp/put-1".into(),
            source: parquet::errors::ParquetError::External(Box::new(quota())),
        };
        assert!(matches!(FsError::from(parquet), FsError::NoSpace));
        let eio = StoreError::Io { path: "/x".into(), source: std::io::Error::from_raw_os_error(libc::EIO) };
        assert!(matches!(FsError::from(eio), FsError::Io(_)));
    }
}
