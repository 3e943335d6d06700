//! `ReplicaError`: everything that can go wrong pushing a pond to a remote or bringing one back.
//! Each message names the remote object or local path involved, so it can be acted on alone.

use std::path::PathBuf;

use crate::oplog::OplogError;

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The URL is neither a path, `file://` nor `s3://bucket/prefix`, or the store refused it.
    #[error("remote {url}: {reason}")]
    BadUrl { url: String, reason: String },

    /// A remote object's content is not what the pond's log or its name says.
    #[error("remote object {path} was altered: expected {expected}, got {got}")]
    Tampered { path: String, expected: String, got: String },

    /// The store acknowledged an upload but does not hold it whole (`landed`: its size there, if any).
    #[error(
        "the remote acknowledged {path} ({sent} bytes) but holds {}; nothing refers to it yet, and the next run sends it again",
        .landed.map_or("nothing".to_string(), |n| format!("{n} bytes"))
    )]
    NotLanded { path: String, sent: u64, landed: Option<u64> },

    /// The remote lists a file larger than any of its kind pond writes (see `PondFile::max_size`).
    #[error(
        "the remote lists {path} at {size} bytes, more than the {max} a pond's file of its kind may hold: not fetched"
    )]
    TooLarge { path: String, size: u64, max: u64 },

    /// A directory remote holds a link (or a FIFO, a device...) where a pond replica holds only
    /// regular files and directories. pond follows no link out of a remote.
    #[error(
        "the remote holds {path}, {what}: a pond replica holds only regular files and directories, and pond follows no link out of one"
    )]
    NotRegular { path: String, what: String },

    /// The remote's log entries do not follow one another, and no checkpoint starts a new run where
    /// they jump.
    #[error(
        "the remote's log jumps from version {before} to version {after} with no checkpoint to read version {after} from (nothing was fetched)"
    )]
    LogGap { before: u64, after: u64 },

    /// The remote's log starts at a version that is neither 0 nor a checkpoint's.
    #[error(
        "the remote's log starts at version {0}, which is neither version 0 nor a checkpoint's (nothing was fetched)"
    )]
    LogStart(u64),

    /// The remote lacks an object that its log needs.
    #[error("the remote lacks {0}, which its log needs")]
    Missing(String),

    /// A name from the remote (a listing or a log entry) that is not part of a pond's layout, or
    /// would land outside the target.
    #[error("refusing remote name {0:?}: a pond replica holds only {summary}", summary = crate::layout::LAYOUT_SUMMARY)]
    PathEscape(String),

    /// The remote holds another pond's history, or one that went another way than this pond's.
    #[error("{url} holds a different history than this pond: {reason}; replicate to another URL")]
    Diverged { url: String, reason: String },

    /// The remote holds something that is not part of a pond replica: not a place to replicate to.
    #[error(
        "{url} holds {name:?}, which is not part of a pond replica: replicate into an empty directory or a new prefix"
    )]
    Foreign { url: String, name: String },

    /// The object store failed (network, permissions, a missing bucket...).
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    /// Reading the local pond's log or data files failed.
    #[error(transparent)]
    Oplog(#[from] OplogError),

    /// `pond prune URL`: no rule, a version to keep that is not there, or what the kept versions
    /// need cannot be known.
    #[error(transparent)]
    Prune(#[from] crate::audit::prune::PruneError),

    /// The remote's lease was taken by another while this run held it (it could not renew it in
    /// time): the run stops before changing anything more.
    #[error(
        "{url}: lost the remote's lock (it expired while this run could not renew it); nothing more was changed, run again"
    )]
    LockLost { url: String },

    #[error("{0} is not empty: restore makes a new pond and never writes over existing files")]
    TargetNotEmpty(PathBuf),

    #[error("version {asked} is not on the remote (it holds {holds})")]
    NoSuchVersion { asked: u64, holds: String },

    #[error("the remote holds no pond (no _delta_log/00000000000000000000.json)")]
    Empty,

    /// What verification of the fetched copy found; nothing was restored.
    #[error("the remote's copy failed verification, nothing was restored:\n  {}", .0.join("\n  "))]
    Damaged(Vec<String>),

    /// SIGINT/SIGTERM arrived; what was under way finished, the rest was not started.
    #[error("interrupted")]
    Interrupted,
}

impl From<crate::layout::NotInLayout> for ReplicaError {
    fn from(e: crate::layout::NotInLayout) -> Self {
        ReplicaError::PathEscape(e.0)
    }
}

impl ReplicaError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ReplicaError::Io { path: path.into(), source }
    }
}
