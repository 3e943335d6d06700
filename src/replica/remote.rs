//! `Remote`: where a replica lives, as an [`ObjectStore`] opened from a URL — a path or
//! `file:///path` (object_store's `LocalFileSystem`, read through [`NoLinkStore`] so that no read
//! follows a link) or `s3://bucket/prefix` (`AmazonS3`). It
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
//!
//! A remote may lie. Every download stops at the size the listing gave (a body that runs on is
//! refused, not buffered), and a log entry, checkpoint or `_last_checkpoint` listed larger than any
//! pond writes is not fetched at all ([`PondFile::max_size`]). A directory remote is listed, read
//! and written through [`local_dir`], which follows no link out of it and creates what it creates
//! private (0700 directories, 0600 files), whatever the umask.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{GetResultPayload, ObjectStore, ObjectStoreExt};

use super::error::ReplicaError;
use super::local_dir;
use super::no_links::NoLinkStore;
use crate::layout::PondFile;
use crate::oplog::log::{Base, LogView};

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

    /// Which log entries and checkpoints are listed, as a log (without the entries' actions).
    pub fn view(&self) -> LogView {
        let checkpoints =
            self.files.keys().filter_map(|f| if let PondFile::Checkpoint(v) = f { Some(*v) } else { None });
        LogView::from_names(self.log_versions(), checkpoints)
    }

    /// The readable versions of the listed log with their bases (see [`LogView::readable`]),
    /// checked: every listed entry must be readable. pond sends a run's checkpoint before the run's
    /// first entry and entries in order, so a replica it wrote never holds one that is not; one is
    /// damage or tampering. Everything that goes through versions works from these: the listing
    /// bounds the work, never a number the remote wrote.
    pub fn readable(&self) -> Result<Vec<(u64, Base)>, ReplicaError> {
        let view = self.view();
        match view.first_unreadable() {
            Some((None, first)) => Err(ReplicaError::LogStart(first)),
            Some((Some(before), after)) => Err(ReplicaError::LogGap { before, after }),
            None => Ok(view.readable()),
        }
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
        if create && !dir.is_dir() {
            // The remote's own directory is private; its parents are the user's.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| ReplicaError::io(parent, e))?;
            }
            local_dir::create_private_dir(&dir).map_err(|e| ReplicaError::io(&dir, e))?;
        } else if !dir.is_dir() {
            return Err(bad_url(url, "no such directory"));
        }
        let store = NoLinkStore::new(dir.clone()).map_err(|e| bad_url(url, e.to_string()))?;
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

    /// Everything the remote holds, with sizes. A directory remote holding a link, or anything but
    /// regular files and directories, is refused.
    pub async fn list(&self) -> Result<Listing, ReplicaError> {
        let mut listing = Listing::default();
        if let Some(dir) = &self.local {
            let d = dir.clone();
            let walked = blocking(move || local_dir::walk(&d)).await.map_err(|e| ReplicaError::io(dir, e))?;
            if let Some((path, what)) = walked.refused.into_iter().next() {
                return Err(ReplicaError::NotRegular { path, what: what.to_string() });
            }
            for (name, size) in walked.files {
                match PondFile::parse(&name) {
                    Ok(file) => {
                        listing.files.insert(file, size);
                    }
                    Err(_) => listing.foreign.push(name),
                }
            }
            return Ok(listing);
        }
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
            let size = put_local(dir, file, Source::File(src.to_path_buf()), on_bytes).await?;
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
        let landed = self.size_of(file).await?;
        if landed == Some(size) {
            return Ok(());
        }
        if landed.is_some() {
            match &self.local {
                Some(dir) => {
                    let _ = local_dir::remove_file(dir, &file.name());
                }
                None => {
                    let _ = self.store.delete(&location).await;
                }
            }
        }
        Err(ReplicaError::NotLanded { path: file.name(), sent: size, landed })
    }

    /// Upload `data` as `file` in one request, confirmed as [`Remote::put_file`] is.
    pub async fn put_bytes(&self, file: &PondFile, data: Bytes) -> Result<(), ReplicaError> {
        let size = data.len() as u64;
        match &self.local {
            Some(dir) => {
                put_local(dir, file, Source::Bytes(data), &(Arc::new(|_| {}) as OnBytes)).await?;
            }
            None => {
                self.store.put(&Self::location(file), data.into()).await?;
            }
        }
        self.confirm(file, size).await
    }

    /// The size of `file` on the remote, None when it is not there.
    pub async fn size_of(&self, file: &PondFile) -> Result<Option<u64>, ReplicaError> {
        match &self.local {
            // The file itself, not what a link there would lead to.
            Some(dir) => match std::fs::symlink_metadata(file.local_path(dir)) {
                Ok(m) if m.is_file() => Ok(Some(m.len())),
                Ok(_) => Err(ReplicaError::NotRegular { path: file.name(), what: "not a regular file".into() }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(ReplicaError::io(file.local_path(dir), e)),
            },
            None => match self.store.head(&Self::location(file)).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Create `file` holding `data` unless it exists, atomically (a reader sees all of it or
    /// nothing, and of two creators exactly one succeeds). Returns false when it existed.
    pub async fn put_if_absent(&self, file: &PondFile, data: Bytes) -> Result<bool, ReplicaError> {
        let Some(dir) = &self.local else {
            let opts = object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
            return match self.store.put_opts(&Self::location(file), data.into(), opts).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        static STAGED: AtomicU64 = AtomicU64::new(0);
        let name = file.name();
        let (parent, base) = name.rsplit_once('/').map_or((String::new(), name.clone()), |(p, b)| (p.into(), b.into()));
        let staging = format!("{base}#{}{:06}", std::process::id(), STAGED.fetch_add(1, Ordering::Relaxed));
        let root = dir.clone();
        blocking(move || {
            let parent = local_dir::open_dir(&root, &parent, true)?;
            let mut out = local_dir::create_file_in(&parent, &staging)?;
            let written = std::io::Write::write_all(&mut out, &data).and_then(|()| out.sync_all());
            let linked = written.and_then(|()| {
                nix::unistd::linkat(&parent, staging.as_str(), &parent, base.as_str(), nix::fcntl::AtFlags::empty())
                    .map_err(std::io::Error::from)
            });
            let _ = nix::unistd::unlinkat(&parent, staging.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
            match linked {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| local_error(dir, file, e))
    }

    /// Remove `file`; one already gone is not an error.
    pub async fn remove(&self, file: &PondFile) -> Result<(), ReplicaError> {
        match &self.local {
            Some(dir) => {
                let (d, name) = (dir.clone(), file.name());
                match blocking(move || local_dir::remove_file(&d, &name)).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(local_error(dir, file, e)),
                }
            }
            None => match self.store.delete(&Self::location(file)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// The content of `file`, which the listing gave as `listed` bytes: refused if that is more
    /// than a file of its kind may hold, or if the remote sends more than it listed.
    pub async fn get_bytes(&self, file: &PondFile, listed: u64) -> Result<Bytes, ReplicaError> {
        check_listed_size(file, listed)?;
        if let Some(dir) = &self.local {
            let (d, name) = (dir.clone(), file.name());
            let bytes = blocking(move || {
                let mut bytes = Vec::new();
                local_dir::open_file(&d, &name)?.take(listed + 1).read_to_end(&mut bytes)?;
                Ok(bytes)
            })
            .await
            .map_err(|e| local_error(dir, file, e))?;
            if bytes.len() as u64 > listed {
                return Err(ran_on(file, listed));
            }
            return Ok(Bytes::from(bytes));
        }
        let got = self.store.get(&Self::location(file)).await.map_err(|e| not_found(e, file))?;
        let mut stream = got.into_stream();
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await.transpose()? {
            if (buf.len() + chunk.len()) as u64 > listed {
                return Err(ran_on(file, listed));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    /// Download `file`, which the listing gave as `listed` bytes, into a new local file `dest`
    /// (which must not exist; missing parents are made), in bounded memory. Returns the byte count.
    /// Refused as [`Remote::get_bytes`] refuses; `dest` and its new parents are private.
    pub async fn get_to_file(
        &self,
        file: &PondFile,
        listed: u64,
        dest: &Path,
        on_bytes: &OnBytes,
    ) -> Result<u64, ReplicaError> {
        check_listed_size(file, listed)?;
        let io = |e| ReplicaError::io(dest, e);
        if let Some(parent) = dest.parent() {
            local_dir::create_private_dirs(parent).map_err(|e| ReplicaError::io(parent, e))?;
        }
        if let Some(dir) = &self.local {
            let (d, name) = (dir.clone(), file.name());
            let src = blocking(move || local_dir::open_file(&d, &name)).await.map_err(|e| local_error(dir, file, e))?;
            let out = local_dir::create_private_file(dest).map_err(io)?;
            return copy_listed(src, out, file, listed, on_bytes).await;
        }
        let got = self.store.get(&Self::location(file)).await.map_err(|e| not_found(e, file))?;
        let out = local_dir::create_private_file(dest).map_err(io)?;
        match got.payload {
            GetResultPayload::File(src, _) => copy_listed(src, out, file, listed, on_bytes).await,
            GetResultPayload::Stream(mut stream) => {
                let out = Arc::new(out);
                let (mut buf, mut written) = (BytesMut::new(), 0u64);
                loop {
                    let next = stream.next().await.transpose()?;
                    let done = next.is_none();
                    if let Some(chunk) = next {
                        if written + (buf.len() + chunk.len()) as u64 > listed {
                            return Err(ran_on(file, listed));
                        }
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
/// into a staging name in object_store's own convention (`<name>#<digits>`, which listings
/// ignore), then a rename, so the file appears whole or not at all exactly as with
/// `LocalFileSystem::put`, at a third of the cost here (measured on a 300 MiB pond). The directory
/// is reached through [`local_dir::open_dir`] (no link followed, missing ones made 0700) and the
/// file created 0600.
async fn put_local(dir: &Path, file: &PondFile, src: Source, on_bytes: &OnBytes) -> Result<u64, ReplicaError> {
    static STAGED: AtomicU64 = AtomicU64::new(0);
    let dest = file.local_path(dir);
    let name = file.name();
    let (parent, base) = name.rsplit_once('/').map_or((String::new(), name.clone()), |(p, b)| (p.into(), b.into()));
    let staging = format!("{base}#{}{:06}", std::process::id(), STAGED.fetch_add(1, Ordering::Relaxed));
    let (root, on_bytes) = (dir.to_path_buf(), on_bytes.clone());
    blocking(move || {
        let parent = local_dir::open_dir(&root, &parent, true)?;
        let copied = (|| {
            let mut out = local_dir::create_file_in(&parent, &staging)?;
            let n = match &src {
                Source::File(path) => copy_in_steps(&mut std::fs::File::open(path)?, &mut out, u64::MAX, &on_bytes)?,
                Source::Bytes(data) => {
                    std::io::Write::write_all(&mut out, data)?;
                    data.len() as u64
                }
            };
            drop(out);
            nix::fcntl::renameat(&parent, staging.as_str(), &parent, base.as_str())?;
            Ok(n)
        })();
        if copied.is_err() {
            let _ = nix::unistd::unlinkat(&parent, staging.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
        copied
    })
    .await
    .map_err(|e| ReplicaError::io(dest, e))
}

/// What [`put_local`] uploads: a local file, or bytes in memory (the small `_last_checkpoint`).
enum Source {
    File(PathBuf),
    Bytes(Bytes),
}

/// Copy at most `limit` bytes of `src` to `out` in [`PART_SIZE`] steps (copy_file_range between
/// files), reporting each.
fn copy_in_steps(
    src: &mut std::fs::File,
    out: &mut std::fs::File,
    limit: u64,
    on_bytes: &OnBytes,
) -> std::io::Result<u64> {
    let mut total = 0u64;
    while total < limit {
        let n = std::io::copy(&mut src.take((PART_SIZE as u64).min(limit - total)), out)?;
        if n == 0 {
            break;
        }
        total += n;
        on_bytes(n);
    }
    Ok(total)
}

/// Copy the downloaded `src` into `out`: refused once it holds more than the `listed` bytes.
async fn copy_listed(
    mut src: std::fs::File,
    mut out: std::fs::File,
    file: &PondFile,
    listed: u64,
    on_bytes: &OnBytes,
) -> Result<u64, ReplicaError> {
    let on_bytes = on_bytes.clone();
    let copied = blocking(move || copy_in_steps(&mut src, &mut out, listed.saturating_add(1), &on_bytes))
        .await
        .map_err(|e| ReplicaError::io(file.name(), e))?;
    if copied > listed {
        return Err(ran_on(file, listed));
    }
    Ok(copied)
}

/// Refuse to fetch `file` if its listed size is more than a file of its kind may hold.
fn check_listed_size(file: &PondFile, listed: u64) -> Result<(), ReplicaError> {
    match file.max_size() {
        Some(max) if listed > max => Err(ReplicaError::TooLarge { path: file.name(), size: listed, max }),
        _ => Ok(()),
    }
}

/// The remote sent more of `file` than the `listed` bytes.
fn ran_on(file: &PondFile, listed: u64) -> ReplicaError {
    ReplicaError::Tampered {
        path: file.name(),
        expected: format!("{listed} bytes, as listed"),
        got: "more (the download was stopped there)".into(),
    }
}

/// An error opening `file` in the directory remote `dir` (see [`local_dir::open_file`]).
fn local_error(dir: &Path, file: &PondFile, e: std::io::Error) -> ReplicaError {
    match e.kind() {
        std::io::ErrorKind::NotFound => ReplicaError::Missing(file.name()),
        std::io::ErrorKind::InvalidData => ReplicaError::NotRegular { path: file.name(), what: e.to_string() },
        _ => ReplicaError::io(file.local_path(dir), e),
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
