//! Reading a replica in place: `pond mount URL`, and `pond ls/cat/log URL`, straight from object
//! storage (or a replica directory), read-only, fetching only what is read.
//!
//! ```text
//!   remote (s3://, file://)            this machine: CACHE/<key of the URL>/
//!   _delta_log/, data files  ──────►   table/      the log and data files one version needs  (mirror)
//!   _large_files/ objects    ──────►   blobs/      chunk ranges and manifests read so far    (cache)
//!                  packs                meta/, tmp/ records of mirrored files, downloads under way
//! ```
//!
//! A [`Replica`] opens the URL ([`Fetcher`]: bounded-time requests with retries), mirrors the table
//! part of a version ([`mirror`]: the log from its base checkpoint and the data files active at the
//! version — small, fetched whole, checked against what the log says), and serves large files
//! through [`RemoteBlobs`], the large-file store's source for the replica: an object's manifest is
//! fetched when its file is first read, each chunk with a ranged GET of its bytes when it is first
//! read, kept in the [`ChunkCache`] and authenticated by the store (against the object's name)
//! every time it is read, from the remote or from the cache. The filesystem core opens the mirror
//! as a pond ([`PondFs::open_view`]) with that source: the FUSE adapter, `pond ls` and `pond cat`
//! need nothing else. The boundary: chunk location and verification stay in `large_files`; this
//! module only moves bytes.
//!
//! New versions: [`refresh::Refresher`] polls the remote and, when a newer complete version is
//! there, mirrors it and moves the view ([`PondFs::advance_to`]); open files keep their version.

mod blobs;
mod cache;
pub mod error;
mod fetch;
mod mirror;
pub mod refresh;
mod span_buf;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use blobs::RemoteBlobs;
pub use cache::ChunkCache;
pub use error::{FetchError, RemoteMountError};
pub use fetch::Fetcher;
use mirror::TableMirror;

use crate::fs::PondFs;
use crate::oplog::history::HistoryEntry;
use crate::replica::Remote;

/// Default bound of a replica's chunk cache (`-o cache_size`).
pub const DEFAULT_CACHE_SIZE: u64 = 10 << 30;
/// Default time a request to the remote may take, retries included (`-o timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach a replica and where to cache it.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// `s3://bucket/prefix`, `file:///path` or a path.
    pub url: String,
    /// `AWS_*` settings for S3 (credentials, region, endpoint), as `Remote::open` takes them.
    pub aws: Vec<(String, String)>,
    /// The cache root (`-o cache=DIR`); the replica's cache is a directory in it named by its URL.
    pub cache_root: PathBuf,
    /// The chunk cache's bound in bytes.
    pub cache_size: u64,
    /// How long one request may take, retries included.
    pub timeout: Duration,
}

/// A replica opened for reading in place.
pub struct Replica {
    dir: PathBuf,
    fetcher: Arc<Fetcher>,
    mirror: TableMirror,
    blobs: RemoteBlobs,
}

impl Drop for Replica {
    /// What was read stays cached for the next reader (see [`RemoteBlobs::settle`]).
    fn drop(&mut self) {
        self.blobs.settle(Duration::from_secs(5));
    }
}

/// The directory of `url`'s cache under `cache_root`: named by the URL's BLAKE3, so one cache root
/// serves any number of replicas.
pub fn cache_dir(cache_root: &Path, url: &str) -> PathBuf {
    let hash = blake3::hash(url.trim_end_matches('/').as_bytes()).to_hex();
    cache_root.join(&hash[..16])
}

/// Creates `dir` (and its parents) readable by its owner only, as a pond is.
pub(crate) fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

impl Replica {
    /// Opens the replica at `cfg.url` and its cache (nothing is fetched yet).
    pub fn open(cfg: &ReplicaConfig) -> Result<Replica, RemoteMountError> {
        let remote = Remote::open(&cfg.url, &cfg.aws, false)?;
        let dir = cache_dir(&cfg.cache_root, &cfg.url);
        make_private_dir(&dir).map_err(|e| RemoteMountError::cache(&dir, e))?;
        // For whoever looks into the cache root: which replica this directory caches.
        let _ = std::fs::write(dir.join("url"), format!("{}\n", cfg.url));
        let fetcher = Arc::new(
            Fetcher::new(remote.store(), remote.url(), cfg.timeout).map_err(|e| RemoteMountError::cache(&dir, e))?,
        );
        let blobs_dir = dir.join("blobs");
        let cache = ChunkCache::open(&blobs_dir, cfg.cache_size).map_err(|e| RemoteMountError::cache(&blobs_dir, e))?;
        let blobs = RemoteBlobs::new(fetcher.clone(), cache);
        let mirror = TableMirror::open(fetcher.clone(), &dir)?;
        Ok(Replica { dir, fetcher, mirror, blobs })
    }

    /// The replica's URL.
    pub fn url(&self) -> &str {
        self.fetcher.url()
    }

    /// This replica's cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Requests sent to the remote so far.
    pub fn requests(&self) -> u64 {
        self.fetcher.requests()
    }

    /// Mirrors version `want` (the newest complete one when `None`) and returns it.
    pub fn sync(&self, want: Option<u64>) -> Result<u64, RemoteMountError> {
        self.sync_inner(want, None)?.ok_or_else(|| RemoteMountError::NotAReplica(self.url().to_string()))
    }

    /// Mirrors the newest complete version if it is newer than `current`; `None` when there is
    /// none yet.
    pub fn sync_newer(&self, current: u64) -> Result<Option<u64>, RemoteMountError> {
        self.sync_inner(None, Some(current))
    }

    fn sync_inner(&self, want: Option<u64>, newer_than: Option<u64>) -> Result<Option<u64>, RemoteMountError> {
        match self.mirror.sync(want, newer_than)? {
            Ok(v) => Ok(v),
            Err(mirror::Rewritten(file)) => {
                self.forget_everything(&file)?;
                self.mirror.sync(want, newer_than)?.map_err(|mirror::Rewritten(file)| RemoteMountError::BadTable {
                    url: self.url().to_string(),
                    name: file.name(),
                    reason: "it keeps changing on the remote (a log entry should never change)".into(),
                })
            }
        }
    }

    /// Another history is at the URL: nothing cached for the old one may be served.
    fn forget_everything(&self, changed: &crate::layout::PondFile) -> Result<(), RemoteMountError> {
        tracing::warn!(
            url = %self.url(),
            file = %changed,
            "the replica's log changed on the remote (another history was put at this URL): dropping its cache"
        );
        self.mirror.clear()?;
        let blobs = self.dir.join("blobs");
        for entry in std::fs::read_dir(&blobs).map_err(|e| RemoteMountError::cache(&blobs, e))?.flatten() {
            if entry.file_name().len() == 2 {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    /// A read-only view of mirrored version `version`, reading large files lazily.
    pub fn open_view(&self, version: u64) -> Result<PondFs, RemoteMountError> {
        Ok(PondFs::open_view(self.mirror.table(), version, Arc::new(self.blobs.clone()))?)
    }

    /// Every version the replica holds, as `pond log` prints them.
    pub fn history(&self) -> Result<Vec<HistoryEntry>, RemoteMountError> {
        match self.mirror.history()? {
            Ok(h) => Ok(h),
            Err(mirror::Rewritten(file)) => {
                self.forget_everything(&file)?;
                self.mirror.history()?.map_err(|mirror::Rewritten(file)| RemoteMountError::BadTable {
                    url: self.url().to_string(),
                    name: file.name(),
                    reason: "it keeps changing on the remote (a log entry should never change)".into(),
                })
            }
        }
    }

    /// Chunk ranges fetched because a read wanted them at once (read-ahead not counted).
    pub fn demand_fetches(&self) -> u64 {
        self.blobs.demand_fetches()
    }
}
