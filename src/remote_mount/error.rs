//! `RemoteMountError`: what can go wrong mounting or reading a replica lazily, each naming the
//! replica's URL or the local cache path involved. [`FetchError`] is one request's failure, after
//! its retries.

use std::path::PathBuf;
use std::time::Duration;

use crate::fs::FsError;
use crate::oplog::OplogError;
use crate::replica::ReplicaError;

/// One request to the remote that failed for good.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The remote does not hold the object.
    #[error("not found")]
    NotFound,
    /// A range that starts past the object's end (the object is shorter than its readers say).
    #[error("the range asked for lies past the object's end")]
    PastEnd,
    /// No answer within the time allowed (`-o timeout`), retries included.
    #[error("no answer within {0:?} (last error: {1})")]
    TimedOut(Duration, String),
    /// The remote refused in a way retrying cannot change (permissions, credentials).
    #[error("{0}")]
    Refused(String),
}

impl FetchError {
    /// As an I/O error (for [`crate::large_files::Blob`] reads), kind chosen so the store tells a
    /// missing file and a short one from a failing remote.
    pub fn into_io(self, what: &str) -> std::io::Error {
        let kind = match &self {
            FetchError::NotFound => std::io::ErrorKind::NotFound,
            FetchError::PastEnd => std::io::ErrorKind::UnexpectedEof,
            FetchError::TimedOut(..) => std::io::ErrorKind::TimedOut,
            FetchError::Refused(_) => std::io::ErrorKind::PermissionDenied,
        };
        std::io::Error::new(kind, format!("{what}: {self}"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteMountError {
    /// The URL could not be opened (see [`ReplicaError::BadUrl`]).
    #[error(transparent)]
    Url(#[from] ReplicaError),

    /// A request to the remote failed after its retries.
    #[error("{url}: {what}: {source}")]
    Fetch { url: String, what: String, source: FetchError },

    /// Nothing at the URL looks like a pond replica.
    #[error("{0} holds no pond replica (no log entries under _delta_log/): check the URL")]
    NotAReplica(String),

    /// `-o version=N` asks for a version the replica cannot serve.
    #[error("{url} cannot serve version {asked}: {holds}")]
    NoSuchVersion { url: String, asked: u64, holds: String },

    /// A file of the replica's table is not what its log says (size), or does not parse.
    #[error("{url}: {name}: {reason}")]
    BadTable { url: String, name: String, reason: String },

    /// The local cache directory could not be used.
    #[error("cache {}: {source}", path.display())]
    Cache { path: PathBuf, source: std::io::Error },

    /// The table (mirrored locally) could not be read.
    #[error(transparent)]
    Oplog(#[from] OplogError),

    /// The filesystem view could not be opened or moved.
    #[error("opening the replica's view: {0}")]
    Fs(#[from] FsError),
}

impl RemoteMountError {
    pub(crate) fn cache(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RemoteMountError::Cache { path: path.into(), source }
    }
}
