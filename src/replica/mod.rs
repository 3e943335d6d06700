//! Replication: push a pond's committed versions to a [`Remote`] (`pond replicate`), and bring a
//! replica back as a new, verified pond ([`restore`]). This module moves and verifies files of the
//! pond's layout ([`PondFile`]); it never mounts and never sees an inode.
//!
//! **What is copied.** The remote keeps the pond's layout, so it is itself a Delta table: large
//! objects (`_large_files/<b3>.parquet`) and the packs they point into, data files, log entries and
//! checkpoints are copied byte for byte as they are on disk — no decoding, no re-chunking. Only
//! committed versions are shipped: a pass reads the log once (a [`LogView`]) and ships every
//! readable version newer than the remote's latest, so it works while the pond is mounted and
//! written to. The writer's private `_pond/` is never copied.
//!
//! **Pruned ponds.** After `pond prune` the pond's history is runs of versions, each read from a
//! checkpoint (see [`crate::oplog::log`]). A version that follows one the remote holds ships as
//! its log entry and the data files it adds; one that does not (a new remote of a pruned pond, or
//! a pond pruned past what the remote has) starts a run on the remote: its checkpoint, with every
//! data file active at it, goes before its entry. A remote keeps the versions it has when the pond
//! prunes them: history goes from a remote only by pruning the remote. A prune that takes versions
//! a pass was shipping makes the pass plan again.
//!
//! **Order.** A pass sends objects (and, once objects reference them, packs), makes them durable
//! ([`Remote::sync`]), sends data files, syncs, sends log entries in version order (a run's
//! checkpoint before its first entry, any other checkpoint right after its version's entry), syncs,
//! then `_last_checkpoint`, and syncs. A reader of the remote therefore never meets a version whose
//! files are missing, and a data file is on the remote only if every object it references arrived
//! whole before it, even across a power cut of a directory remote (whose copies `LocalFileSystem`
//! and pond do not fsync one by one).
//!
//! **Resuming.** A file counts as present when the remote lists it with the same size: objects are
//! content-addressed, data files and log entries immutable, and every upload is atomic (a put, or
//! a multipart upload that appears when completed), so a killed run leaves whole files or none and
//! a new run sends only what is missing. A data file already present is not even opened: by the
//! order above, its objects are present too (so a pass after one that changed nothing costs a
//! listing and a walk of the log, not a read of every data file). A checkpoint of a version the
//! remote holds that it lacks (a run failed sending it) is sent again.
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
//! layout, or another history: another table id (`metaData.id`, fixed when the pond was created:
//! another pond's replica, told apart even when either side pruned its version 0), a version the
//! pond never had, or a log entry of a version both hold with other bytes (this pond was restored
//! from an older version and went on).
//! One changer per remote at a time: each pass holds the remote's lease ([`lock`]), as `pond prune
//! URL` ([`prune`]) does, and lists the remote afresh once it has it, so a pass never builds on a
//! listing a prune changed.
//!
//! **Stopping.** The caller's stop flag (set on SIGINT/SIGTERM) is checked before each file: files
//! under way finish, nothing new starts, and the report says `interrupted`.

pub mod error;
pub mod local_dir;
pub mod lock;
pub mod no_links;
pub mod prune;
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
use crate::oplog::history;
use crate::oplog::log::{self, Base, LogView};
use crate::oplog::{OplogError, check_is_pond, datafile};
pub use error::ReplicaError;
pub use lock::RemoteLock;
pub use prune::prune_remote;
pub use remote::{Listing, Remote};
pub use restore::{RestoreReport, restore, verify_remote};

/// Files transferred at once (each with at most `remote::PARTS_IN_FLIGHT` parts in flight).
pub const FILES_IN_FLIGHT: usize = 4;
/// Passes planned again in a row because a prune took what they were shipping, before giving up.
const MAX_REPLANS: u32 = 10;
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
    /// Another holds the remote's lock (`holder` says who): waiting for it.
    fn waiting(&self, _holder: &str) {}
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
    let mut replans = 0;
    loop {
        match r.pass(stop).await {
            Ok(true) => replans = 0,
            Ok(false) => break,
            Err(e) if replans < MAX_REPLANS && r.pruned_since_planned()? => {
                // A prune took versions this pass was shipping (and their files): plan again.
                tracing::info!("the pond was pruned while replicating ({e}); planning again");
                replans += 1;
                continue;
            }
            Err(e) => return Err(e),
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
    /// The local log, refreshed at each pass (a prune may have dropped versions since).
    log: LogView,
    /// The readable versions the current pass planned with.
    planned: BTreeSet<u64>,
    /// The remote was checked to be this pond's replica (see [`Replicator::check_remote`]).
    checked: bool,
    /// The remote's lock, held during a pass.
    lock: Option<RemoteLock>,
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
            log: LogView::default(),
            planned: BTreeSet::new(),
            checked: false,
            lock: None,
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

    /// True when a version the current pass planned with is no longer readable: a prune dropped it.
    fn pruned_since_planned(&mut self) -> Result<bool, ReplicaError> {
        self.log.refresh(&self.root)?;
        let now: BTreeSet<u64> = self.log.readable().into_iter().map(|(v, _)| v).collect();
        Ok(!self.planned.is_subset(&now))
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

    /// Refuse a remote that is not this pond's replica (see the module doc). `version` is the
    /// local pond's latest.
    async fn check_remote(&mut self, version: u64) -> Result<(), ReplicaError> {
        let listing = self.listing.as_ref().expect("listed before the check");
        if let Some(name) = listing.foreign.first() {
            return Err(ReplicaError::Foreign { url: self.remote.url().to_string(), name: name.clone() });
        }
        let diverged = |reason: String| ReplicaError::Diverged { url: self.remote.url().to_string(), reason };
        let remote_versions = listing.log_versions();
        if remote_versions.is_empty() {
            return Ok(());
        }
        // The table's identity first: its id, fixed at creation (both may be pruned, so version 0
        // may be gone from either side).
        let (local_id, remote_id) = (self.local_table_id()?, self.remote_table_id().await?);
        if local_id != remote_id {
            return Err(diverged(format!(
                "it is another pond's replica (table {remote_id}, this pond's is {local_id})"
            )));
        }
        // Then every version both hold must be the same size, the remote may hold none this pond
        // never had, and the latest version both hold must be the same bytes (where a pond
        // restored from an older version and changed since would differ). Versions this pond
        // pruned are the remote's to keep.
        let listing = self.listing.as_ref().expect("listed before the check");
        let mut latest_common = None;
        for &rv in &remote_versions {
            if rv > version {
                return Err(diverged(format!("it has version {rv}, this pond is at version {version}")));
            }
            if self.log.entry(rv).is_none() {
                continue;
            }
            let local = PondFile::Log(rv).local_path(&self.root);
            match std::fs::metadata(&local) {
                Ok(m) if Some(&m.len()) == listing.files.get(&PondFile::Log(rv)) => latest_common = Some(rv),
                Ok(_) => return Err(diverged(format!("its version {rv} is not this pond's version {rv}"))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // pruned meanwhile
                Err(e) => return Err(ReplicaError::io(local, e)),
            }
        }
        if let Some(v) = latest_common {
            let path = PondFile::Log(v).local_path(&self.root);
            let local = std::fs::read(&path).map_err(|e| ReplicaError::io(&path, e))?;
            let listed = listing.files.get(&PondFile::Log(v)).copied().unwrap_or(0);
            if self.remote.get_bytes(&PondFile::Log(v), listed).await? != local {
                return Err(diverged(format!("its version {v} is not this pond's version {v}")));
            }
        }
        Ok(())
    }

    /// `_last_checkpoint` as the remote has it now.
    async fn read_remote_hint(&mut self) -> Result<(), ReplicaError> {
        let listing = self.listing.as_ref().expect("listed");
        self.remote_hint = match listing.files.get(&PondFile::LastCheckpoint) {
            Some(&listed) => Some(self.remote.get_bytes(&PondFile::LastCheckpoint, listed).await?),
            None => None,
        };
        Ok(())
    }

    /// The local table's id: from version 0's entry, or the checkpoint the oldest readable version
    /// is read from.
    fn local_table_id(&self) -> Result<String, ReplicaError> {
        let missing = |path: PathBuf| corrupt(path, "the table's metadata (its id) is not there".into());
        match self.log.readable().first() {
            Some((_, Base::Checkpoint(c))) => {
                let path = PondFile::Checkpoint(*c).local_path(&self.root);
                log::table_id_in_checkpoint(&path)?.ok_or_else(|| missing(path))
            }
            _ => {
                let path = PondFile::Log(0).local_path(&self.root);
                let text = std::fs::read_to_string(&path).map_err(|e| ReplicaError::io(&path, e))?;
                log::table_id_in_entry(&text).ok_or_else(|| missing(path))
            }
        }
    }

    /// The remote table's id, read the same way (a checkpoint is fetched into a temporary file).
    async fn remote_table_id(&self) -> Result<String, ReplicaError> {
        let listing = self.listing.as_ref().expect("listed");
        let readable = listing.readable()?;
        let file = match readable.first() {
            Some((_, Base::Checkpoint(c))) => PondFile::Checkpoint(*c),
            _ => PondFile::Log(0),
        };
        let Some(&listed) = listing.files.get(&file) else { return Err(ReplicaError::Missing(file.name())) };
        let tampered = |got: &str| ReplicaError::Tampered {
            path: file.name(),
            expected: "the table's metadata with its id".into(),
            got: got.into(),
        };
        let id = if let PondFile::Checkpoint(_) = file {
            let tmp = tempfile::tempdir().map_err(|e| ReplicaError::io(std::env::temp_dir(), e))?;
            let path = tmp.path().join("checkpoint.parquet");
            self.remote.get_to_file(&file, listed, &path, &(Arc::new(|_| {}) as remote::OnBytes)).await?;
            let read = blocking(move || Ok(log::table_id_in_checkpoint(&path)?)).await;
            read.map_err(|e| tampered(&format!("a checkpoint that does not read: {e}")))?
        } else {
            let bytes = self.remote.get_bytes(&file, listed).await?;
            log::table_id_in_entry(&String::from_utf8_lossy(&bytes))
        };
        id.ok_or_else(|| tampered("none"))
    }

    /// Ship every version committed now. Returns false when the stop flag ended it.
    async fn pass(&mut self, stop: &AtomicBool) -> Result<bool, ReplicaError> {
        let progress = self.progress.clone();
        let lock = RemoteLock::acquire(self.remote, "replicate", stop, &|holder| progress.waiting(holder)).await?;
        self.lock = Some(lock);
        let result = self.pass_locked(stop).await;
        let released = match self.lock.take() {
            Some(lock) => lock.release().await,
            None => Ok(()),
        };
        let shipped = result?;
        released?;
        Ok(shipped)
    }

    /// Fails when this pass's hold on the remote's lock was lost.
    fn check_lock(&self) -> Result<(), ReplicaError> {
        self.lock.as_ref().map_or(Ok(()), RemoteLock::check)
    }

    /// One pass, holding the remote's lock: list it (a prune may have changed it since the last
    /// pass), plan, ship.
    async fn pass_locked(&mut self, stop: &AtomicBool) -> Result<bool, ReplicaError> {
        self.log.refresh(&self.root)?;
        let readable = self.log.readable();
        let Some(&(version, _)) = readable.last() else {
            return Err(corrupt(self.root.join(crate::layout::LOG_DIR), "no readable version".into()));
        };
        self.planned = readable.iter().map(|(v, _)| *v).collect();
        self.listing = Some(self.remote.list().await?);
        self.shipped_data.clear();
        self.forget_torn_log_entries().await?;
        if !self.checked {
            self.check_remote(version).await?;
            self.checked = true;
        }
        self.read_remote_hint().await?;
        let remote = self.listing.as_ref().expect("listed above").view().readable();
        self.shipped = remote.last().map(|(v, _)| *v);
        let first = self.passes == 0;
        self.passes += 1;
        let listing = self.listing.as_ref().expect("listed above");
        let mut skipped = Transfer::default();
        let mut skip = |size: u64| {
            skipped.skipped_files += 1;
            skipped.skipped_bytes += size;
        };

        // The versions to ship: every readable one newer than the remote's latest. One that does
        // not follow a version the remote holds starts a run there: its checkpoint goes first,
        // with every data file active at it.
        let remote_readable: BTreeSet<u64> = listing.view().readable().into_iter().map(|(v, _)| v).collect();
        let plan = ship_plan(&readable, self.shipped, |v| remote_readable.contains(&v));
        let starts: BTreeSet<u64> = plan.iter().filter(|s| s.starts_run).map(|s| s.version).collect();
        let mut data: BTreeMap<String, u64> = BTreeMap::new();
        let active = self
            .log
            .active_files(&starts, &mut |c| log::checkpoint_adds(&PondFile::Checkpoint(c).local_path(&self.root)))?;
        for files in active.values() {
            data.extend(files.iter().map(|(n, s)| (n.clone(), *s)));
        }
        for step in plan.iter().filter(|s| !s.starts_run) {
            if let Some(actions) = self.log.entry(step.version) {
                data.extend(actions.added.iter().cloned());
            }
        }
        data.retain(|name, _| !self.shipped_data.contains(name));
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

        // Log entries in version order: a run's checkpoint before its first entry (a reader must
        // be able to read every entry it lists), any other checkpoint right after its entry.
        let mut log_files: Vec<(PondFile, bool)> = Vec::new();
        for step in &plan {
            let v = step.version;
            if step.starts_run && v > 0 {
                log_files.push((PondFile::Checkpoint(v), true));
            }
            if self.log.entry(v).is_some() {
                log_files.push((PondFile::Log(v), true));
            }
            if !step.starts_run && self.log.has_checkpoint(v) {
                log_files.push((PondFile::Checkpoint(v), false));
            }
        }
        // Checkpoints of versions the remote already holds that it lacks (a run that failed
        // sending one went on from the next version): optional, before the new entries.
        let mut repairs: Vec<(PondFile, bool)> = Vec::new();
        for c in self.log.checkpoints().filter(|c| remote_readable.contains(c) && self.planned.contains(c)) {
            repairs.push((PondFile::Checkpoint(c), false));
        }
        // What the remote already holds of the versions it has: counted, not sent again.
        for &v in remote_readable.iter().filter(|v| self.planned.contains(v)) {
            if let Some(&size) = listing.files.get(&PondFile::Log(v)) {
                skip(size);
            }
        }
        let mut new_log: Vec<(Outgoing, bool)> = Vec::new();
        for (file, required) in repairs.into_iter().chain(log_files) {
            let path = file.local_path(&self.root);
            let size = local_size(&path)?;
            if listing.has(&file, size) {
                skip(size);
            } else {
                new_log.push(((file, path, size), required));
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
        self.check_lock()?;
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

/// `files` without the optional checkpoints among them that do not read (one torn by a power cut,
/// say): the pond itself reads its JSON log instead (see `oplog::store`), and a replica holding a
/// damaged checkpoint would fail verification and never restore. Such a checkpoint is derived from
/// the log entries, so the remote loses nothing; `pond verify` on the pond names it. A required
/// one (where a pruned pond's run starts: nothing else can be read from there) that does not read
/// is an error.
async fn readable_checkpoints_only(files: Vec<(Outgoing, bool)>) -> Result<Vec<Outgoing>, ReplicaError> {
    blocking(move || {
        let mut out = Vec::with_capacity(files.len());
        for ((file, path, size), required) in files {
            if let PondFile::Checkpoint(v) = file
                && let Err(e) = datafile::check_parquet_file(&path)
            {
                if required {
                    return Err(corrupt(
                        path,
                        format!(
                            "the pond's history resumes at version {v} from this checkpoint, which does not read: {e}"
                        ),
                    ));
                }
                tracing::warn!("not replicating {file}, which does not read: {e}");
                continue;
            }
            out.push((file, path, size));
        }
        Ok(out)
    })
    .await
}

/// One version a pass ships.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ShipStep {
    version: u64,
    /// It does not follow a version the remote holds (or one shipped before it in the same pass),
    /// so it starts a run on the remote: from its checkpoint (or from nothing, at version 0).
    starts_run: bool,
}

/// The versions of `readable` (the local pond's, with their bases) newer than `shipped` (the
/// remote's latest readable), in order; `remote_has(v)` says whether the remote can read `v`.
fn ship_plan(readable: &[(u64, Base)], shipped: Option<u64>, remote_has: impl Fn(u64) -> bool) -> Vec<ShipStep> {
    let mut plan: Vec<ShipStep> = Vec::new();
    for &(v, _) in readable.iter().filter(|(v, _)| shipped.is_none_or(|s| *v > s)) {
        let follows = v > 0 && (plan.last().is_some_and(|p| p.version + 1 == v) || remote_has(v - 1));
        plan.push(ShipStep { version: v, starts_run: !follows });
    }
    plan
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
