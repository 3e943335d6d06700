//! Replication: push a pond's committed versions to a [`Remote`] (`pond replicate`), and bring a
//! replica back as a new, verified pond ([`restore`]). This module moves and verifies files of the
//! pond's layout ([`PondFile`]); it never mounts and never sees an inode.
//!
//! **What is copied.** The remote keeps the pond's layout, so it is itself a Delta table: large
//! objects (`_large_files/<b3>.parquet`), data files and log entries are copied byte for byte as
//! they are on disk — no decoding, no re-chunking. Only committed versions are shipped: a pass
//! reads the log once to fix its version `V`, and ships what versions `0..=V` reference, so it
//! works while the pond is mounted and written to. The writer's private `_pond/` is never copied.
//!
//! **Order.** A pass sends objects (and, once objects reference them, packs), makes them durable
//! ([`Remote::sync`]), sends data files, syncs, sends log entries in version order (each
//! checkpoint right after its version's entry), syncs, then `_last_checkpoint`, and syncs. A reader
//! of the remote therefore never meets a version whose files are missing, and a data file is on the
//! remote only if every object it references arrived whole before it, even across a power cut of a
//! directory remote (whose copies `LocalFileSystem` and pond do not fsync one by one).
//!
//! **Resuming.** A file counts as present when the remote lists it with the same size: objects are
//! content-addressed, data files and log entries immutable, and every upload is atomic (a put, or
//! a multipart upload that appears when completed), so a killed run leaves whole files or none and
//! a new run sends only what is missing. A data file already present is not even opened: by the
//! order above, its objects are present too (so a pass after one that changed nothing costs a
//! listing and a walk of the log, not a read of every data file).
//!
//! **A failing remote.** Each upload is confirmed by its size on the remote before it counts as
//! sent ([`Remote::confirm`]), so a store that acknowledges a body it cut short fails the run before
//! anything refers to that file, and the short copy is removed (or, if the store cannot be reached
//! to remove it, is told by its size and sent again by the next run — for a log entry, by being a
//! prefix of this pond's). When one upload fails, nothing new starts, the uploads under way finish,
//! and the run fails with the first error: no log entry goes out after a failure, and a multipart
//! upload is always completed or aborted. Nothing is retried within a run; the next run sends what
//! is missing.
//!
//! **Safety.** Before sending anything, a pass refuses a remote holding names outside a pond's
//! layout, or another history: a different version 0 (another pond's replica), or a log entry of
//! the same version but other bytes (this pond was restored from an older version and went on).
//! One replicator per remote at a time; a remote changed by anything else while `--follow` runs is
//! not noticed until the next run.
//!
//! **Stopping.** The caller's stop flag (set on SIGINT/SIGTERM) is checked before each file: files
//! under way finish, nothing new starts, and the report says `interrupted`.

pub mod error;
pub mod local_dir;
pub mod remote;
pub mod restore;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

pub use crate::layout::PondFile;
use crate::oplog::history::{self, FileActions};
use crate::oplog::{OplogError, check_is_pond, datafile};
pub use error::ReplicaError;
pub use remote::{Listing, Remote};
pub use restore::{RestoreReport, restore, verify_remote};

/// Files transferred at once (each with at most `remote::PARTS_IN_FLIGHT` parts in flight).
pub const FILES_IN_FLIGHT: usize = 4;
/// How often `--follow` looks for new versions.
pub const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// What a long transfer reports as it goes (the cli draws it; tests ignore it).
pub trait Progress: Send + Sync {
    /// A phase starts: `what` ("sending", "fetching", "verifying"), with this many files and bytes.
    fn begin(&self, _what: &str, _files: u64, _bytes: u64) {}
    /// `n` more bytes moved.
    fn bytes(&self, _n: u64) {}
    /// One more file done.
    fn file_done(&self) {}
    /// `--follow` is at `version` and waits for the next commit.
    fn idle(&self, _version: u64) {}
}

/// A [`Progress`] that shows nothing.
pub struct Quiet;
impl Progress for Quiet {}

/// Files and bytes moved, and those found already there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    pub sent_files: u64,
    pub sent_bytes: u64,
    pub skipped_files: u64,
    pub skipped_bytes: u64,
}

/// The outcome of [`replicate`].
#[derive(Clone, Debug, Default)]
pub struct ReplicateReport {
    /// The latest version whose log entry is on the remote.
    pub version: Option<u64>,
    pub transfer: Transfer,
    /// The stop flag ended the run (with `follow`, that is how it ends).
    pub interrupted: bool,
}

/// Push the pond at `root` to `remote`: every version committed when the pass starts, and with
/// `follow`, every version committed after, until `stop` is set.
pub async fn replicate(
    root: &Path,
    remote: &Remote,
    progress: Arc<dyn Progress>,
    stop: &AtomicBool,
    follow: bool,
) -> Result<ReplicateReport, ReplicaError> {
    let mut r = Replicator::new(root, remote, progress)?;
    loop {
        if !r.pass(stop).await? {
            break;
        }
        if !follow {
            return Ok(r.report(false));
        }
        r.progress.idle(r.shipped.unwrap_or(0));
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(r.report(true));
            }
            if r.local_latest()? > r.shipped.unwrap_or(0) {
                break;
            }
            // Short naps, so a stop is seen at once; the log is read once per FOLLOW_POLL.
            for _ in 0..10 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(FOLLOW_POLL / 10).await;
            }
        }
    }
    Ok(r.report(true))
}

/// The state one `pond replicate` keeps across passes.
struct Replicator<'a> {
    root: PathBuf,
    remote: &'a Remote,
    progress: Arc<dyn Progress>,
    /// What the remote holds: listed at the first pass, then kept current with what was sent.
    listing: Option<Listing>,
    /// `_last_checkpoint` as the remote has it.
    remote_hint: Option<Bytes>,
    /// The parsed log entries of versions `0..actions.len()`.
    actions: Vec<FileActions>,
    /// Data files known to be on the remote (with their objects).
    shipped_data: BTreeSet<String>,
    /// The latest version whose log entry is on the remote.
    shipped: Option<u64>,
    totals: Transfer,
    passes: u64,
}

/// One file to send: what it is remotely, where it is locally, its size.
type Outgoing = (PondFile, PathBuf, u64);

fn local_size(path: &Path) -> Result<u64, ReplicaError> {
    std::fs::metadata(path).map(|m| m.len()).map_err(|e| ReplicaError::io(path, e))
}

fn corrupt(path: PathBuf, reason: String) -> ReplicaError {
    ReplicaError::Oplog(OplogError::Corrupt { path, reason })
}

impl<'a> Replicator<'a> {
    fn new(root: &Path, remote: &'a Remote, progress: Arc<dyn Progress>) -> Result<Self, ReplicaError> {
        check_is_pond(root)?;
        let root = std::fs::canonicalize(root).map_err(|e| ReplicaError::io(root, e))?;
        if let Some(dir) = remote.local_dir()
            && (dir.starts_with(&root) || root.starts_with(dir))
        {
            return Err(ReplicaError::BadUrl {
                url: remote.url().to_string(),
                reason: format!("the remote and the pond {} contain one another", root.display()),
            });
        }
        Ok(Replicator {
            root,
            remote,
            progress,
            listing: None,
            remote_hint: None,
            actions: Vec::new(),
            shipped_data: BTreeSet::new(),
            shipped: None,
            totals: Transfer::default(),
            passes: 0,
        })
    }

    fn report(&self, interrupted: bool) -> ReplicateReport {
        ReplicateReport { version: self.shipped, transfer: self.totals, interrupted }
    }

    /// The latest committed version of the local pond.
    fn local_latest(&self) -> Result<u64, ReplicaError> {
        let entries = history::log_entries(&self.root)?;
        entries
            .last()
            .map(|(v, _)| *v)
            .ok_or_else(|| corrupt(self.root.join(crate::layout::LOG_DIR), "no log entries".into()))
    }

    /// Parse the local log entries up to `version` that are not parsed yet.
    fn read_actions(&mut self, version: u64) -> Result<(), ReplicaError> {
        for v in self.actions.len() as u64..=version {
            let path = PondFile::Log(v).local_path(&self.root);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(corrupt(path, format!("log entry for version {v} is missing")));
                }
                Err(e) => return Err(ReplicaError::io(path, e)),
            };
            self.actions.push(history::parse_log_entry(&text, &path)?);
        }
        Ok(())
    }

    /// Take a remote log entry that is shorter than this pond's and a prefix of it for what it is:
    /// an upload cut short that the store acknowledged and the check after it could not remove. It
    /// is left out of the listing, so it is sent again rather than taken for another history.
    async fn forget_torn_log_entries(&mut self) -> Result<(), ReplicaError> {
        let listing = self.listing.as_ref().expect("listed before the check");
        let mut torn = Vec::new();
        for v in listing.log_versions() {
            let file = PondFile::Log(v);
            let path = file.local_path(&self.root);
            let Ok(local) = std::fs::metadata(&path) else { continue };
            if listing.files[&file] >= local.len() {
                continue;
            }
            let local = std::fs::read(&path).map_err(|e| ReplicaError::io(&path, e))?;
            if local.starts_with(&self.remote.get_bytes(&file, listing.files[&file]).await?) {
                torn.push(file);
            }
        }
        let listing = self.listing.as_mut().expect("listed before the check");
        for file in torn {
            listing.files.remove(&file);
        }
        Ok(())
    }

    /// Refuse a remote that is not this pond's replica (see the module doc).
    async fn check_remote(&mut self, version: u64) -> Result<(), ReplicaError> {
        let listing = self.listing.as_ref().expect("listed before the check");
        if let Some(name) = listing.foreign.first() {
            return Err(ReplicaError::Foreign { url: self.remote.url().to_string(), name: name.clone() });
        }
        let diverged = |reason: String| ReplicaError::Diverged { url: self.remote.url().to_string(), reason };
        let remote_versions = listing.log_versions();
        // Same sizes are not same bytes: compare the first entry (the table's identity), then sizes,
        // then the latest entry both have (where a pond restored from an older version and changed
        // since would differ).
        let same_bytes = async |v: u64| -> Result<bool, ReplicaError> {
            let path = PondFile::Log(v).local_path(&self.root);
            let local = std::fs::read(&path).map_err(|e| ReplicaError::io(&path, e))?;
            let listed = listing.files.get(&PondFile::Log(v)).copied().unwrap_or(0);
            Ok(self.remote.get_bytes(&PondFile::Log(v), listed).await? == local)
        };
        if remote_versions.first() == Some(&0) && !same_bytes(0).await? {
            return Err(diverged("it is another pond's replica".into()));
        }
        for &rv in &remote_versions {
            let local = PondFile::Log(rv).local_path(&self.root);
            match std::fs::metadata(&local) {
                Ok(m) if Some(&m.len()) == listing.files.get(&PondFile::Log(rv)) => {}
                Ok(_) => return Err(diverged(format!("its version {rv} is not this pond's version {rv}"))),
                Err(_) => return Err(diverged(format!("it has version {rv}, this pond is at version {version}"))),
            }
        }
        if let Some(&v) = remote_versions.iter().rev().find(|v| **v <= version && **v > 0)
            && !same_bytes(v).await?
        {
            return Err(diverged(format!("its version {v} is not this pond's version {v}")));
        }
        if let Some(&listed) = listing.files.get(&PondFile::LastCheckpoint) {
            self.remote_hint = Some(self.remote.get_bytes(&PondFile::LastCheckpoint, listed).await?);
        }
        Ok(())
    }

    /// Ship every version committed now. Returns false when the stop flag ended it.
    async fn pass(&mut self, stop: &AtomicBool) -> Result<bool, ReplicaError> {
        let version = self.local_latest()?;
        self.read_actions(version)?;
        if self.listing.is_none() {
            self.listing = Some(self.remote.list().await?);
            self.forget_torn_log_entries().await?;
            self.check_remote(version).await?;
            // The remote's version: its log entries are sent in order, so they run from 0 unbroken.
            let versions = self.listing.as_ref().expect("listed above").log_versions();
            self.shipped = versions.iter().enumerate().take_while(|(i, v)| *i as u64 == **v).last().map(|(_, v)| *v);
        }
        let first = self.passes == 0;
        self.passes += 1;
        let listing = self.listing.as_ref().expect("listed above");
        let mut skipped = Transfer::default();
        let mut skip = |size: u64| {
            skipped.skipped_files += 1;
            skipped.skipped_bytes += size;
        };

        // Data files the remote lacks, and the objects they reference that it lacks.
        let mut data: BTreeMap<String, u64> = BTreeMap::new();
        for actions in &self.actions[..=version as usize] {
            for (name, logged) in &actions.added {
                if !self.shipped_data.contains(name) {
                    data.insert(name.clone(), *logged);
                }
            }
        }
        let mut new_data: Vec<Outgoing> = Vec::new();
        for (name, logged) in data {
            let file = PondFile::data(&name)?;
            let path = file.local_path(&self.root);
            let size = local_size(&path)?;
            if size != logged {
                return Err(corrupt(path, format!("{size} bytes, but the log records {logged} (run `pond verify`)")));
            }
            if listing.has(&file, size) {
                skip(size);
                self.shipped_data.insert(name);
            } else {
                new_data.push((file, path, size));
            }
        }
        let objects = referenced_objects(&self.root, &new_data).await?;
        let mut new_objects: Vec<Outgoing> = Vec::new();
        for file in objects {
            let path = file.local_path(&self.root);
            let size = local_size(&path).map_err(|_| {
                corrupt(
                    path.clone(),
                    "a data file references this large object (or an object points into this pack), but it is missing \
                     (run `pond verify`)"
                        .into(),
                )
            })?;
            if listing.has(&file, size) {
                skip(size);
            } else {
                new_objects.push((file, path, size));
            }
        }

        // Log entries, each checkpoint after its version's entry.
        let checkpoints: BTreeSet<u64> =
            history::checkpoint_versions(&self.root)?.into_iter().filter(|c| *c <= version).collect();
        let mut new_log: Vec<Outgoing> = Vec::new();
        for v in 0..=version {
            let mut files = vec![PondFile::Log(v)];
            if checkpoints.contains(&v) {
                files.push(PondFile::Checkpoint(v));
            }
            for file in files {
                let path = file.local_path(&self.root);
                let size = local_size(&path)?;
                if listing.has(&file, size) {
                    skip(size);
                } else {
                    new_log.push((file, path, size));
                }
            }
        }
        if first {
            self.totals.skipped_files += skipped.skipped_files;
            self.totals.skipped_bytes += skipped.skipped_bytes;
        }
        let new_log = readable_checkpoints_only(new_log).await?;

        let outgoing = [&new_objects, &new_data, &new_log];
        let files = outgoing.iter().map(|o| o.len() as u64).sum();
        let bytes = outgoing.iter().flat_map(|o| o.iter().map(|(_, _, s)| s)).sum();
        if files > 0 {
            self.progress.begin("sending", files, bytes);
        }
        // Each phase is durable before the next begins (see "Order" in the module doc); a phase
        // that sent nothing needs no sync.
        let sent_objects = !new_objects.is_empty();
        if !self.send(new_objects, FILES_IN_FLIGHT, stop).await? {
            return Ok(false);
        }
        if sent_objects {
            self.remote.sync().await?;
        }
        let sent_data = !new_data.is_empty();
        if !self.send(new_data, FILES_IN_FLIGHT, stop).await? {
            return Ok(false);
        }
        if sent_data {
            self.remote.sync().await?;
        }
        // One at a time, in order: a reader must never see version N+1 before N.
        let sent_log = !new_log.is_empty();
        if !self.send(new_log, 1, stop).await? {
            return Ok(false);
        }
        if sent_log {
            self.remote.sync().await?;
        }
        if self.send_hint(version).await? {
            self.remote.sync().await?;
        }
        self.shipped = Some(version);
        Ok(true)
    }

    /// Send `files`, `parallel` at a time. Returns false if the stop flag left some unsent. After a
    /// failure nothing new starts, but uploads under way finish before the first error is returned:
    /// dropping one midway would leave a multipart upload neither completed nor aborted, and one
    /// that lands is then known to be there.
    async fn send(&mut self, files: Vec<Outgoing>, parallel: usize, stop: &AtomicBool) -> Result<bool, ReplicaError> {
        let progress = self.progress.clone();
        let on_bytes: remote::OnBytes = Arc::new(move |n| progress.bytes(n));
        let remote = self.remote;
        let failed = &AtomicBool::new(false);
        let mut results = futures::stream::iter(files)
            .map(|(file, path, _)| {
                let on_bytes = on_bytes.clone();
                async move {
                    if stop.load(Ordering::SeqCst) || failed.load(Ordering::SeqCst) {
                        return Ok(None);
                    }
                    match remote.put_file(&file, &path, &on_bytes).await {
                        Ok(size) => Ok(Some((file, size))),
                        Err(e) => {
                            failed.store(true, Ordering::SeqCst);
                            Err(e)
                        }
                    }
                }
            })
            .buffered(parallel);
        let mut complete = true;
        let mut first_error = None;
        while let Some(result) = results.next().await {
            let (file, size) = match result {
                Ok(Some(sent)) => sent,
                Ok(None) => {
                    complete = false;
                    continue;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            self.progress.file_done();
            self.totals.sent_files += 1;
            self.totals.sent_bytes += size;
            match &file {
                PondFile::Data(name) => {
                    self.shipped_data.insert(name.clone());
                }
                PondFile::Log(v) if self.shipped.is_none_or(|s| *v > s) => self.shipped = Some(*v),
                _ => {}
            }
            self.listing.as_mut().expect("listed").files.insert(file, size);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(complete),
        }
    }

    /// Send `_last_checkpoint` if it names a checkpoint the remote has and differs from the
    /// remote's. Returns whether it was sent.
    async fn send_hint(&mut self, version: u64) -> Result<bool, ReplicaError> {
        let file = PondFile::LastCheckpoint;
        let path = file.local_path(&self.root);
        let Ok(local) = std::fs::read(&path) else { return Ok(false) };
        let Some(c) = crate::layout::parse_last_checkpoint(&local) else {
            return Ok(false); // unreadable: a hint only; readers list the log instead
        };
        let listing = self.listing.as_ref().expect("listed");
        if c > version
            || !listing.files.contains_key(&PondFile::Checkpoint(c))
            || self.remote_hint.as_deref() == Some(&local[..])
        {
            return Ok(false);
        }
        let local = Bytes::from(local);
        self.remote.put_bytes(&file, local.clone()).await?;
        self.totals.sent_files += 1;
        self.totals.sent_bytes += local.len() as u64;
        self.remote_hint = Some(local);
        Ok(true)
    }
}

/// `files` without the checkpoints among them that do not read (one torn by a power cut, say):
/// the pond itself reads its JSON log instead (see `oplog::store`), and a replica holding a damaged
/// checkpoint would fail verification and never restore. A checkpoint is derived from the log
/// entries, so the remote loses nothing; `pond verify` on the pond names it.
async fn readable_checkpoints_only(files: Vec<Outgoing>) -> Result<Vec<Outgoing>, ReplicaError> {
    blocking(move || {
        Ok(files
            .into_iter()
            .filter(|(file, path, _)| match file {
                PondFile::Checkpoint(_) => match datafile::check_parquet_file(path) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!("not replicating {file}, which does not read: {e}");
                        false
                    }
                },
                _ => true,
            })
            .collect())
    })
    .await
}

/// The large objects that `data` files reference (read without their inline content), and the
/// packs those objects point into.
async fn referenced_objects(root: &Path, data: &[Outgoing]) -> Result<BTreeSet<PondFile>, ReplicaError> {
    let root = root.to_path_buf();
    let names: Vec<Arc<str>> = data.iter().map(|(f, _, _)| Arc::from(f.name().as_str())).collect();
    blocking(move || {
        let mut objects = BTreeSet::new();
        for rel in &names {
            objects.extend(datafile::large_objects(&root, rel)?.into_iter().map(|(hash, _, _)| hash));
        }
        let store = crate::large_files::LargeFileStore::new(&root);
        let mut out = BTreeSet::new();
        for hash in objects {
            let reader = store.open(&hash).map_err(|e| {
                corrupt(
                    store.object_path(&hash),
                    format!("a data file references this object, which does not open: {e}"),
                )
            })?;
            out.extend(reader.data_files());
            out.insert(PondFile::Object(hash));
        }
        Ok(out)
    })
    .await
}

/// Run blocking work (parquet reads, hashing) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReplicaError> + Send + 'static,
) -> Result<T, ReplicaError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(ReplicaError::Store(object_store::Error::JoinError { source: e })),
    }
}
