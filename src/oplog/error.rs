//! `OplogError`: everything that can go wrong reading or writing the pond's Delta table.

use std::path::{Path, PathBuf};

use super::schema::RowDecodeError;

#[derive(Debug, thiserror::Error)]
pub enum OplogError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} is not a pond (no _delta_log/ inside); create one with `pond init`")]
    NotAPond(PathBuf),
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("{0} is not empty: refusing to create a pond over existing files")]
    NotEmpty(PathBuf),
    /// `message` is the first line of `error`'s text: delta-kernel appends a backtrace to its
    /// errors when `RUST_BACKTRACE` is set, and the error already says what its causes say (so it
    /// is not exposed as a `source`, which would print the same text again).
    #[error("delta table at {path}: {message}")]
    Delta { path: String, message: String, error: Box<deltalake::DeltaTableError> },
    #[error("{path}: parquet: {source}")]
    Parquet { path: PathBuf, source: parquet::errors::ParquetError },
    #[error("{path}: {source}")]
    BadRow { path: PathBuf, source: RowDecodeError },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("version {asked} does not exist (the pond is at version {latest})")]
    NoSuchVersion { asked: u64, latest: u64 },
    #[error("a threshold of {0} bytes is above the largest pond takes ({max} bytes)", max = super::MAX_THRESHOLD)]
    ThresholdTooLarge(u64),
    #[error("encoding rows: {0}")]
    Encode(String),
}

impl OplogError {
    pub fn parquet(path: &Path, source: parquet::errors::ParquetError) -> Self {
        OplogError::Parquet { path: path.to_path_buf(), source }
    }

    pub fn arrow(path: &Path, source: arrow::error::ArrowError) -> Self {
        OplogError::Corrupt { path: path.to_path_buf(), reason: source.to_string() }
    }

    pub fn delta(path: impl std::fmt::Display, error: deltalake::DeltaTableError) -> Self {
        let text = error.to_string();
        let message = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("unknown error").to_string();
        OplogError::Delta { path: path.to_string(), message, error: Box::new(error) }
    }

    /// The OS error behind this failure, when there is one (ENOSPC must reach the writer).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            OplogError::Io { source, .. } => source.raw_os_error(),
            OplogError::Parquet { source: parquet::errors::ParquetError::External(e), .. } => {
                e.downcast_ref::<std::io::Error>().and_then(|e| e.raw_os_error())
            }
            OplogError::Delta { error, .. } => match error.as_ref() {
                deltalake::DeltaTableError::Io { source } => source.raw_os_error(),
                deltalake::DeltaTableError::ObjectStore { source: object_store::Error::Generic { source, .. } } => {
                    source.downcast_ref::<std::io::Error>().and_then(|e| e.raw_os_error())
                }
                _ => None,
            },
            _ => None,
        }
    }
}
