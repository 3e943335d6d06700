//! `StoreError`: everything that can go wrong storing, opening, reading or verifying a large-file
//! object, with enough context (object hex, chunk number, path) to act on the message alone.
//!
//! I/O failures keep their `std::io::Error` (also when parquet or arrow wrapped it) so a caller can
//! map them to an errno ([`StoreError::raw_os_error`]; out of space is `crate::os_error`'s question).

use std::io;
use std::path::PathBuf;

use arrow::error::ArrowError;
use parquet::errors::ParquetError;

use super::hash::Blake3Hash;
use crate::layout::PondFile;

/// An error from the large-file store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file-system operation failed on `path` (the object, its temp file, or a directory).
    #[error("I/O error on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    /// No object of that name is in the store.
    #[error("large object {0} not found")]
    NotFound(Blake3Hash),

    /// A chunk's bytes do not match the chunk's hash (`file` and `offset`: where they were read).
    #[error(
        "large object {object}: chunk {chunk} is corrupt (the bytes at {file} offset {offset} do not match its hash)"
    )]
    CorruptChunk { object: Blake3Hash, chunk: u64, file: PondFile, offset: u64 },

    /// The file that holds a chunk's bytes is not there.
    #[error("large object {object}: chunk {chunk} is in {file}, which is missing")]
    ChunkFileMissing { object: Blake3Hash, chunk: u64, file: PondFile },

    /// A file of the store is not there.
    #[error("{0} is missing")]
    Missing(PondFile),

    /// The stored chunk hashes do not hash to the object's name.
    #[error("large object {object}: chunk hashes do not hash to the object's name")]
    HashTreeMismatch { object: Blake3Hash },

    /// The whole content disagrees with the metadata (found by `verify`).
    #[error("large object {object}: {reason}")]
    ContentMismatch { object: Blake3Hash, reason: String },

    /// A chunk number past the end of the object.
    #[error("large object {object}: chunk {chunk} out of range (object has {chunks} chunks)")]
    ChunkOutOfRange { object: Blake3Hash, chunk: u64, chunks: u64 },

    /// The file is not a well-formed pond large-file object.
    #[error("malformed large object {}: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },

    /// The parquet library refused the file (or failed to write it) for a non-I/O reason.
    #[error("parquet error on {}: {source}", path.display())]
    Parquet { path: PathBuf, source: ParquetError },

    /// A caller handed in something inconsistent.
    #[error("invalid argument: {0}")]
    InvalidInput(String),
}

impl StoreError {
    /// The underlying `io::Error`, if this is an I/O failure.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The errno of the underlying I/O failure, if any (for FUSE replies).
    pub fn raw_os_error(&self) -> Option<i32> {
        self.io_error().and_then(io::Error::raw_os_error)
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io { path: path.into(), source }
    }

    /// As an `io::Error` for code that speaks io: an I/O failure's own (its errno kept), anything
    /// else wrapped.
    pub(crate) fn into_io(self) -> io::Error {
        match self {
            StoreError::Io { source, .. } => source,
            other => io::Error::other(other),
        }
    }

    pub(crate) fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        StoreError::Malformed { path: path.into(), reason: reason.into() }
    }

    /// A parquet error on `path`; an I/O error wrapped inside it becomes [`StoreError::Io`].
    pub(crate) fn parquet(path: impl Into<PathBuf>, err: ParquetError) -> Self {
        let path = path.into();
        match find_io_error(&err) {
            Some(source) => StoreError::Io { path, source },
            None => StoreError::Parquet { path, source: err },
        }
    }

    /// An arrow error (from decoding) on `path`; an I/O error wrapped inside becomes `Io`.
    pub(crate) fn arrow(path: impl Into<PathBuf>, err: ArrowError) -> Self {
        let path = path.into();
        if let Some(source) = find_io_error(&err) {
            return StoreError::Io { path, source };
        }
        let source = match err {
            ArrowError::ExternalError(e) => match e.downcast::<ParquetError>() {
                Ok(p) => *p,
                Err(e) => ParquetError::External(e),
            },
            other => ParquetError::ArrowError(other.to_string()),
        };
        StoreError::Parquet { path, source }
    }
}

/// Walks an error's `source()` chain (and parquet/arrow wrappers) for an `io::Error`, rebuilding
/// an owned one that keeps the errno (or at least the kind and message).
pub(crate) fn find_io_error(err: &(dyn std::error::Error + 'static)) -> Option<io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(match io.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(io.kind(), io.to_string()),
            });
        }
        if let Some(ArrowError::IoError(_, io)) = e.downcast_ref::<ArrowError>() {
            return Some(match io.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(io.kind(), io.to_string()),
            });
        }
        cur = match e.downcast_ref::<ParquetError>() {
            Some(ParquetError::External(inner)) => Some(inner.as_ref()),
            _ => match e.downcast_ref::<ArrowError>() {
                Some(ArrowError::ExternalError(inner)) => Some(inner.as_ref()),
                _ => e.source(),
            },
        };
    }
    None
}
