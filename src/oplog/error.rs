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
    #[error("delta table at {path}: {source}")]
    Delta { path: String, source: Box<deltalake::DeltaTableError> },
    #[error("{path}: parquet: {source}")]
    Parquet { path: PathBuf, source: parquet::errors::ParquetError },
    #[error("{path}: {source}")]
    BadRow { path: PathBuf, source: RowDecodeError },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("version {asked} does not exist (the pond is at version {latest})")]
    NoSuchVersion { asked: u64, latest: u64 },
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

    pub fn delta(path: impl std::fmt::Display, source: deltalake::DeltaTableError) -> Self {
        OplogError::Delta { path: path.to_string(), source: Box::new(source) }
    }

    /// The OS error behind this failure, when there is one (ENOSPC must reach the writer).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            OplogError::Io { source, .. } => source.raw_os_error(),
            OplogError::Parquet { source: parquet::errors::ParquetError::External(e), .. } => {
                e.downcast_ref::<std::io::Error>().and_then(|e| e.raw_os_error())
            }
            OplogError::Delta { source, .. } => match source.as_ref() {
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
