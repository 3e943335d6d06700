//! The one table from [`FsError`] to the errno the kernel hands back to the caller.
//!
//! The match is exhaustive on purpose (no `_ =>`): a new `FsError` variant must be given its errno
//! here before the crate compiles again.

use fuser::Errno;

use crate::fs::FsError;

/// The errno for `e`. Damaged data is logged here (at warn) because a user has to act on it; every
/// other error is the caller's business and is only logged at debug by the operation.
pub fn errno(e: &FsError) -> Errno {
    match e {
        FsError::NotFound => Errno::ENOENT,
        FsError::Exists => Errno::EEXIST,
        FsError::NotEmpty => Errno::ENOTEMPTY,
        FsError::IsDir => Errno::EISDIR,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::NameTooLong => Errno::ENAMETOOLONG,
        FsError::Invalid(_) => Errno::EINVAL,
        FsError::ReadOnly => Errno::EROFS,
        FsError::NotPermitted => Errno::EPERM,
        FsError::NoXattr => Errno::NO_XATTR,
        FsError::NotSupported(_) => Errno::EOPNOTSUPP,
        FsError::BadHandle => Errno::EBADF,
        FsError::NoSpace => Errno::ENOSPC,
        FsError::TooManyLinks => Errno::EMLINK,
        FsError::Range(_) => Errno::ERANGE,
        FsError::Corrupt(msg) => {
            tracing::warn!("damaged data in the pond, the operation fails with EIO: {msg}");
            Errno::EIO
        }
        FsError::Io(_) => Errno::EIO,
        // Out-of-space oplog errors arrive as NoSpace (see `From<OplogError> for FsError`).
        FsError::Oplog(_) => Errno::EIO,
        FsError::Busy(_) => Errno::EBUSY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posix_shaped_errors_keep_their_errno() {
        assert_eq!(errno(&FsError::NotFound), Errno::ENOENT);
        assert_eq!(errno(&FsError::NoXattr).code(), libc::ENODATA);
        assert_eq!(errno(&FsError::Range(10)), Errno::ERANGE);
        assert_eq!(errno(&FsError::Corrupt("chunk 3".into())), Errno::EIO);
        assert_eq!(errno(&FsError::NotSupported("x")).code(), libc::EOPNOTSUPP);
    }
}
