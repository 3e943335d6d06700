//! `Remote`: where a replica lives, as an [`ObjectStore`] opened from a URL — a path or
//! `file:///path` (object_store's `LocalFileSystem`) or `s3://bucket/prefix` (`AmazonS3`). It
//! lists with sizes, streams a local file up, and streams an object down to a file, all in bounded
//! memory; it knows nothing of versions.
//!
//! Every upload appears whole or not at all: on S3 a put or a completed multipart upload is atomic;
//! into a directory, a file is copied to a staging name (`<name>#<digits>`, which listings ignore)
//! and renamed. That directory upload is done here with copy_file_range rather than through
//! `LocalFileSystem::put` (same staging-and-rename scheme, but every byte through user space):
//! see [`put_local`]. Downloads from a directory are copied the same way. Then the upload is
//! confirmed: the remote must hold the file at its size ([`Remote::confirm`]); a multipart upload
//! that fails at any step is aborted.
//!
//! Memory: a file above [`PART_SIZE`] goes to S3 as a multipart upload of `PART_SIZE` parts with
//! at most [`PARTS_IN_FLIGHT`] in flight and one more being read: `3 × 8 MiB` per file at most;
//! smaller files are read whole and put in one request. Downloads are written in steps of at most
//! `PART_SIZE`.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{GetResultPayload, ObjectStore, ObjectStoreExt};

use super::error::ReplicaError;
use crate::layout::PondFile;

/// Size of one multipart part (S3 wants at least 5 MiB) and of one read or write step.
pub const PART_SIZE: usize = 8 << 20;
/// Parts of one upload in flight at once.
pub const PARTS_IN_FLIGHT: usize = 2;

/// Called with each step's byte count as a transfer advances.
pub type OnBytes = Arc<dyn Fn(u64) + Send + Sync>;

/// A remote replica location.
#[derive(Clone, Debug)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    url: String,
    /// The directory behind a path or `file://` remote.
    local: Option<PathBuf>,
}

/// What a remote holds: the files of a pond's layout with their sizes, and any other names.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub files: BTreeMap<PondFile, u64>,
    /// Names that are not part of a pond's layout (see [`PondFile::parse`]).
    pub foreign: Vec<String>,
}

impl Listing {
    /// True when `file` is present with exactly `size` bytes: objects are content-addressed and data
    /// files and log entries immutable, and every write is atomic, so that means it arrived whole.
    pub fn has(&self, file: &PondFile, size: u64) -> bool {
        self.files.get(file) == Some(&size)
    }

    /// The versions of the log entries present, sorted.
    pub fn log_versions(&self) -> Vec<u64> {
        self.files.keys().filter_map(|f| if let PondFile::Log(v) = f { Some(*v) } else { None }).collect()
    }
}

fn bad_url(url: &str, reason: impl Into<String>) -> ReplicaError {
    ReplicaError::BadUrl { url: url.to_string(), reason: reason.into() }
}

impl Remote {
    /// Open the remote at `url`: a path, `file:///path` or `s3://bucket/prefix`. `aws` holds
    /// `(AWS_* name, value)` settings for S3 (credentials, `AWS_REGION`, `AWS_ENDPOINT_URL`,
    /// `AWS_ALLOW_HTTP`...); the caller reads them from the environment. A local remote's directory
    /// is created when `create` is set, and must exist otherwise.
    pub fn open(url: &str, aws: &[(String, String)], create: bool) -> Result<Remote, ReplicaError> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad_url(url, "no bucket name (use s3://bucket/prefix)"));
            }
            let mut builder = AmazonS3Builder::new();
            for (key, value) in aws {
                if let Ok(key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                    builder = builder.with_config(key, value);
                }
            }
            let s3 = builder.with_url(format!("s3://{bucket}")).build().map_err(|e| bad_url(url, e.to_string()))?;
            let prefix = prefix.trim_matches('/');
            let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                Arc::new(s3)
            } else {
                let prefix = StorePath::parse(prefix).map_err(|e| bad_url(url, e.to_string()))?;
                Arc::new(PrefixStore::new(s3, prefix))
            };
            return Ok(Remote { store, url: url.to_string(), local: None });
        }
        let dir = if url.starts_with("file://") {
            url::Url::parse(url)
                .ok()
                .and_then(|u| u.to_file_path().ok())
                .ok_or_else(|| bad_url(url, "not a local file URL (use file:///absolute/path)"))?
        } else if url.contains("://") {
            return Err(bad_url(url, "unsupported scheme: use a path, file:///path or s3://bucket/prefix"));
        } else {
            PathBuf::from(url)
        };
        if create {
            std::fs::create_dir_all(&dir).map_err(|e| ReplicaError::io(&dir, e))?;
        } else if !dir.is_dir() {
            return Err(bad_url(url, "no such directory"));
        }
        let store = LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad_url(url, e.to_string()))?;
        let dir = std::fs::canonicalize(&dir).map_err(|e| ReplicaError::io(&dir, e))?;
        Ok(Remote { store: Arc::new(store), url: url.to_string(), local: Some(dir) })
    }

    /// A remote over any object store, named `url` in messages: what [`Remote::open`] builds for
    /// S3, over a store the caller made (tests wrap one to inject faults). Uploads go through the
    /// store (single puts and multipart uploads), never through a local directory's fast path.
    pub fn from_store(url: impl Into<String>, store: Arc<dyn ObjectStore>) -> Remote {
        Remote { store, url: url.into(), local: None }
    }

    /// The object store behind the remote, for reading it other than file by file (a mounted
    /// replica reads byte ranges: see `remote_mount`).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The directory behind a path or `file://` remote.
    pub fn local_dir(&self) -> Option<&Path> {
        self.local.as_deref()
    }

    /// Everything the remote holds, with sizes.
    pub async fn list(&self) -> Result<Listing, ReplicaError> {
        let mut listing = Listing::default();
        let mut stream = self.store.list(None);
        while let Some(meta) = stream.next().await {
            let meta = meta?;
            let name = meta.location.as_ref();
            match PondFile::parse(name) {
                Ok(file) => {
                    listing.files.insert(file, meta.size);
                }
                Err(_) => listing.foreign.push(name.to_string()),
            }
        }
        Ok(listing)
    }

    fn location(file: &PondFile) -> StorePath {
        // Layout names are plain ASCII without `.`/`..` segments: `from` keeps them as they are.
        StorePath::from(file.name())
    }

    /// Upload local file `src` as `file`. The object appears whole or not at all, and is confirmed
    /// (see [`Remote::confirm`]) before this returns.
    pub async fn put_file(&self, file: &PondFile, src: &Path, on_bytes: &OnBytes) -> Result<u64, ReplicaError> {
        if let Some(dir) = &self.local {
            let size = put_local(dir, file, src, on_bytes).await?;
            self.confirm(file, size).await?;
            return Ok(size);
        }
        let io = |e| ReplicaError::io(src, e);
        let f = std::fs::File::open(src).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        let location = Self::location(file);
        let f = Arc::new(f);
        if size <= PART_SIZE as u64 {
            let data = read_part(&f, 0, size as usize).await.map_err(io)?;
            self.store.put(&location, data.into()).await?;
            on_bytes(size);
        } else {
            self.put_multipart(&location, &f, size, src, on_bytes).await?;
        }
        self.confirm(file, size).await?;
        Ok(size)
    }

    /// Upload `f` (`size` bytes, read from `src`) in [`PART_SIZE`] parts, at most
    /// [`PARTS_IN_FLIGHT`] at once. Whatever fails — a part, reading, completing — the upload is
    /// aborted, so a store that keeps the parts of an unfinished upload (S3) is not left holding them.
    async fn put_multipart(
        &self,
        location: &StorePath,
        f: &Arc<std::fs::File>,
        size: u64,
        src: &Path,
        on_bytes: &OnBytes,
    ) -> Result<(), ReplicaError> {
        let io = |e| ReplicaError::io(src, e);
        let mut upload = self.store.put_multipart(location).await?;
        let mut parts = tokio::task::JoinSet::new();
        let sent: Result<(), ReplicaError> = async {
            let mut offset = 0u64;
            while offset < size {
                while parts.len() >= PARTS_IN_FLIGHT {
                    part_done(parts.join_next().await)?;
                }
                let len = (size - offset).min(PART_SIZE as u64) as usize;
                let part = read_part(f, offset, len).await.map_err(io)?;
                parts.spawn(upload.put_part(part.into()));
                offset += len as u64;
                on_bytes(len as u64);
            }
            while let Some(done) = parts.join_next().await {
                part_done(Some(done))?;
            }
            upload.complete().await?;
            Ok(())
        }
        .await;
        if sent.is_err() {
            parts.shutdown().await;
            let _ = upload.abort().await; // best effort: the error that stopped us is the one to report
        }
        sent
    }

    /// Check that `file` is on the remote with `size` bytes, as just sent: a store may acknowledge
    /// an upload it did not keep whole (a proxy or gateway that cuts a body short), and nothing may
    /// refer to `file` before it is whole. A short or long copy is removed (best effort: a later run
    /// tells it by its size anyway) and the upload reported as failed.
    pub async fn confirm(&self, file: &PondFile, size: u64) -> Result<(), ReplicaError> {
        let location = Self::location(file);
        let landed = match self.store.head(&location).await {
            Ok(meta) => Some(meta.size),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        if landed == Some(size) {
            return Ok(());
        }
        if landed.is_some() {
            let _ = self.store.delete(&location).await;
        }
        Err(ReplicaError::NotLanded { path: file.name(), sent: size, landed })
    }

    /// Upload `data` as `file` in one request, confirmed as [`Remote::put_file`] is.
    pub async fn put_bytes(&self, file: &PondFile, data: Bytes) -> Result<(), ReplicaError> {
        let size = data.len() as u64;
        self.store.put(&Self::location(file), data.into()).await?;
        self.confirm(file, size).await
    }

    /// The content of a small object.
    pub async fn get_bytes(&self, file: &PondFile) -> Result<Bytes, ReplicaError> {
        let got = self.store.get(&Self::location(file)).await.map_err(|e| not_found(e, file))?;
        Ok(got.bytes().await?)
    }

    /// Download `file` into a new local file `dest` (which must not exist), in bounded memory.
    /// Returns the byte count.
    pub async fn get_to_file(&self, file: &PondFile, dest: &Path, on_bytes: &OnBytes) -> Result<u64, ReplicaError> {
        let got = self.store.get(&Self::location(file)).await.map_err(|e| not_found(e, file))?;
        let out = std::fs::File::create_new(dest).map_err(|e| ReplicaError::io(dest, e))?;
        let io = |e| ReplicaError::io(dest, e);
        match got.payload {
            GetResultPayload::File(mut src, _) => {
                // A local remote: copy through the kernel, reporting each step.
                let (on_bytes, mut out) = (on_bytes.clone(), out);
                blocking(move || copy_in_steps(&mut src, &mut out, &on_bytes)).await.map_err(io)
            }
            GetResultPayload::Stream(mut stream) => {
                let out = Arc::new(out);
                let (mut buf, mut written) = (BytesMut::new(), 0u64);
                loop {
                    let next = stream.next().await.transpose()?;
                    let done = next.is_none();
                    if let Some(chunk) = next {
                        buf.extend_from_slice(&chunk);
                    }
                    if buf.len() >= PART_SIZE || (done && !buf.is_empty()) {
                        let part = buf.split().freeze();
                        let n = part.len() as u64;
                        write_part(&out, written, part).await.map_err(io)?;
                        written += n;
                        on_bytes(n);
                    }
                    if done {
                        return Ok(written);
                    }
                }
            }
        }
    }

    /// Make what was written so far durable before anything that refers to it is written: a local
    /// remote's files are not fsynced by `LocalFileSystem`, so sync its filesystem; an S3 put is
    /// durable when it returns.
    pub async fn sync(&self) -> Result<(), ReplicaError> {
        match &self.local {
            Some(dir) => sync_filesystem(dir).await,
            None => Ok(()),
        }
    }
}

/// Upload to a directory remote the way `cp` copies (copy_file_range, no trip through user space):
/// into a staging name in object_store's own convention (`<name>#<digits>`, which its listing
/// ignores), then a rename, so the file appears whole or not at all exactly as with
/// `LocalFileSystem::put`, at a third of the cost here (measured on a 300 MiB pond).
async fn put_local(dir: &Path, file: &PondFile, src: &Path, on_bytes: &OnBytes) -> Result<u64, ReplicaError> {
    static STAGED: AtomicU64 = AtomicU64::new(0);
    let dest = file.local_path(dir);
    let mut staging = dest.clone().into_os_string();
    staging.push(format!("#{}{:06}", std::process::id(), STAGED.fetch_add(1, Ordering::Relaxed)));
    let staging = PathBuf::from(staging);
    let (src_path, on_bytes) = (src.to_path_buf(), on_bytes.clone());
    let (s, d) = (staging.clone(), dest.clone());
    let copied = blocking(move || {
        if let Some(parent) = d.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut input = std::fs::File::open(&src_path)?;
        let mut out = std::fs::File::create_new(&s)?;
        let n = copy_in_steps(&mut input, &mut out, &on_bytes)?;
        drop(out);
        std::fs::rename(&s, &d)?;
        Ok(n)
    })
    .await;
    copied.map_err(|e| {
        let _ = std::fs::remove_file(&staging);
        ReplicaError::io(dest, e)
    })
}

/// Copy `src` to `out` in [`PART_SIZE`] steps (copy_file_range between files), reporting each.
fn copy_in_steps(src: &mut std::fs::File, out: &mut std::fs::File, on_bytes: &OnBytes) -> std::io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = std::io::copy(&mut src.take(PART_SIZE as u64), out)?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
        on_bytes(n);
    }
}

/// The outcome of one part of a multipart upload.
fn part_done(joined: Option<Result<object_store::Result<()>, tokio::task::JoinError>>) -> Result<(), ReplicaError> {
    match joined {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(e.into()),
        Some(Err(e)) => Err(ReplicaError::Store(object_store::Error::JoinError { source: e })),
    }
}

fn not_found(e: object_store::Error, file: &PondFile) -> ReplicaError {
    match e {
        object_store::Error::NotFound { .. } => ReplicaError::Missing(file.name()),
        e => ReplicaError::Store(e),
    }
}

async fn read_part(f: &Arc<std::fs::File>, offset: u64, len: usize) -> std::io::Result<Bytes> {
    let f = f.clone();
    blocking(move || {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    })
    .await
}

async fn write_part(f: &Arc<std::fs::File>, offset: u64, data: Bytes) -> std::io::Result<()> {
    let f = f.clone();
    blocking(move || f.write_all_at(&data, offset)).await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// syncfs(2) on the filesystem holding `dir`: one call instead of an fsync per file written.
pub async fn sync_filesystem(dir: &Path) -> Result<(), ReplicaError> {
    let d = dir.to_path_buf();
    blocking(move || {
        let f = std::fs::File::open(&d)?;
        nix::unistd::syncfs(&f).map_err(std::io::Error::from)
    })
    .await
    .map_err(|e| ReplicaError::io(dir, e))
}
