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

    /// A parquet file refused before decoding (see [`crate::parquet_bounds`]).
    pub fn bounds(path: &Path, e: crate::parquet_bounds::ParquetBoundsError) -> Self {
        match e {
            crate::parquet_bounds::ParquetBoundsError::Io(source) => {
                OplogError::Io { path: path.to_path_buf(), source }
            }
            e => OplogError::Corrupt { path: path.to_path_buf(), reason: e.to_string() },
        }
    }

    pub fn arrow(path: &Path, source: arrow::error::ArrowError) -> Self {
        OplogError::Corrupt { path: path.to_path_buf(), reason: source.to_string() }
    }

    pub fn delta(path: impl std::fmt::Display, error: deltalake::DeltaTableError) -> Self {
        let text = error.to_string();
        let message = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("unknown error").to_string();
        OplogError::Delta { path: path.to_string(), message, error: Box::new(error) }
    }

    /// The OS error behind this failure, when there is one (ENOSPC must reach the writer). Delta
    /// errors wrap it several layers deep (transaction, object store, local file), so the whole
    /// chain of causes is searched; the text is the last resort, for a layer that kept only it.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            OplogError::Io { source, .. } => source.raw_os_error(),
            OplogError::Parquet { source, .. } => os_error_in_chain(source),
            OplogError::Delta { error, .. } => os_error_in_chain(error.as_ref()),
            _ => None,
        }
    }
}

/// The first OS error code found walking `error`'s causes (parquet's `External` gives its inner
/// error as its source).
fn os_error_in_chain(error: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(code) = e.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) {
            return Some(code);
        }
        let text = e.to_string();
        if let Some(code) = crate::os_error::code_in_text(&text).filter(|c| crate::os_error::is_out_of_space_code(*c)) {
            return Some(code);
        }
        cause = e.source();
    }
    None
}
