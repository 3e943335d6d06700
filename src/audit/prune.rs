//! `pond prune`: drop the versions that no rule keeps, and everything only they need — their log
//! entries and checkpoints, the data files no kept version reads, the objects and packs no kept
//! version's rows reach — and give the space back.
//!
//! How, in order (each step durable before the next, so a crash anywhere leaves every kept version
//! readable and, at worst, files that the next prune or `pond gc` removes):
//! 1. The latest version is compacted into one data file when it spans several (a version of
//!    "dataChange = false", as compaction always is): rows that newer rows superseded stop naming
//!    objects only dropped versions need.
//! 2. The rules pick the versions kept; the latest is always kept.
//! 3. Every run of consecutive kept versions that does not start at version 0 gets a checkpoint at
//!    its first version (written, fsynced, with `_last_checkpoint` naming the newest), so each kept
//!    version opens from that checkpoint and the entries after it — in pond, in delta-rs, in any
//!    Delta reader — once the entries before it are gone.
//! 4. Log entries and checkpoints of dropped versions go, then data files no kept version reads,
//!    then objects and packs nothing kept reaches ([`super::live`]: the same computation as gc).
//!
//! Pruning needs the pond's single writer: standalone it takes the writer lock; beside a live
//! read-write mount the mount's daemon runs it between two commits (`pond prune` asks it over the
//! control socket), where `in_use` keeps what open files still use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use crate::fs::{FsError, WriterLock};
use crate::large_files::{LargeFileStore, StoreError};
use crate::layout::{LOG_DIR, PondFile, checkpoint_name, log_entry_name};
use crate::oplog::log::LogView;
use crate::oplog::schema::{Content, OplogRow};
use crate::oplog::{Oplog, OplogError, datafile, history};

use super::live::{self, Live};

/// Which versions to keep (any version one rule keeps is kept; the latest always is).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rules {
    /// The newest N versions.
    pub keep_last: Option<u64>,
    /// Versions committed within this long before now.
    pub keep_within: Option<Duration>,
    /// These versions.
    pub keep_versions: Vec<u64>,
}

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.keep_last.is_none() && self.keep_within.is_none() && self.keep_versions.is_empty()
    }
}

/// What prune did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PruneReport {
    pub dry_run: bool,
    /// The version of the compaction committed first, if one was.
    pub compacted: Option<u64>,
    /// A dry run that would compact the latest version first (a new version).
    #[serde(default)]
    pub would_compact: bool,
    pub kept: Vec<u64>,
    pub dropped: Vec<u64>,
    /// Versions a checkpoint was written at, so they open without the entries before them.
    pub checkpoints_written: Vec<u64>,
    /// Each file removed, as the layout names it, with its size.
    pub removed: Vec<(String, u64)>,
    pub bytes: u64,
    /// Files kept only because a mount's open files still use them.
    pub in_use: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("say which versions to keep: --keep-last N, --keep-within DURATION or --keep-version V")]
    NoRule,
    #[error("version {asked} is not in the pond (it holds versions {oldest} to {latest})")]
    NoSuchVersion { asked: u64, oldest: u64, latest: u64 },
    #[error("refusing to prune: {0}")]
    Unsafe(String),
    /// The mount's daemon pruned, or could not: its message.
    #[error("the mount's daemon: {0}")]
    Daemon(String),
    #[error(transparent)]
    Oplog(#[from] OplogError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a live mount holds besides the log, when its daemon runs a prune between two commits.
pub trait MountState {
    /// The rows were rewritten into data file `file` (the compaction a prune makes first, before
    /// it removes the old data files): inline content read lazily must be read from there now.
    fn relocate(&self, root: &Path, file: &str) -> Result<(), OplogError>;
    /// Those of `candidates` (objects and packs about to be removed) that open files still use.
    fn in_use(&self, candidates: &BTreeSet<PondFile>) -> BTreeSet<PondFile>;
}

/// No mount: a standalone prune holds the writer lock, nothing else is open.
pub struct NoMount;

impl MountState for NoMount {
    fn relocate(&self, _: &Path, _: &str) -> Result<(), OplogError> {
        Ok(())
    }

    fn in_use(&self, _: &BTreeSet<PondFile>) -> BTreeSet<PondFile> {
        BTreeSet::new()
    }
}

/// Prunes the pond at `root`: itself, holding the writer lock, or, when a read-write mount holds
/// it, through the mount's daemon (see [`crate::control`]).
pub fn prune_pond(root: &Path, rules: &Rules, dry_run: bool) -> Result<PruneReport, PruneError> {
    crate::oplog::check_is_pond(root)?;
    if rules.is_empty() {
        return Err(PruneError::NoRule);
    }
    let _lock = match WriterLock::acquire(root) {
        Ok(lock) => lock,
        Err(FsError::Busy(_)) => {
            let request = crate::control::Request::Prune { rules: rules.clone(), dry_run };
            return match crate::control::ask(root, &request) {
                Ok(crate::control::Response::Pruned(report)) => Ok(report),
                Ok(crate::control::Response::Failed(message)) => Err(PruneError::Daemon(message)),
                Err(e) => Err(PruneError::Daemon(e.to_string())),
            };
        }
        Err(e) => return Err(e.into()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| OplogError::Io { path: root.to_path_buf(), source: e })?;
    let mut oplog = rt.block_on(Oplog::open(root, None))?;
    prune_with(&mut oplog, &rt, rules, dry_run, &LargeFileStore::new(root), &NoMount)
}

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    crate::oplog::now_ns() / 1_000_000
}

/// Prunes through `oplog`, open for writing at the latest version (the caller holds the pond's
/// single writer); `mount` says what a live mount holds (see [`MountState`]).
pub fn prune_with(
    oplog: &mut Oplog,
    rt: &tokio::runtime::Runtime,
    rules: &Rules,
    dry_run: bool,
    store: &LargeFileStore,
    mount: &dyn MountState,
) -> Result<PruneReport, PruneError> {
    if rules.is_empty() {
        return Err(PruneError::NoRule);
    }
    let root = oplog.root().to_path_buf();
    let mut report = PruneReport { dry_run, ..Default::default() };
    let mut log = read_log(&root)?;
    let mut kept = choose(&root, &log, rules, false)?;
    let readable: Vec<u64> = log.readable().into_iter().map(|(v, _)| v).collect();
    let drops_something = readable.iter().any(|v| !kept.contains(v));
    // Objects the compacted latest version needs, when a dry run only pretends to compact.
    let mut compacted_needs: BTreeSet<PondFile> = BTreeSet::new();
    if drops_something && oplog.active_file_count()? > 1 {
        let rows = oplog.load()?;
        if dry_run {
            // The compaction would be the newest version: the rules count it, and it needs just
            // what the current rows name.
            kept = choose(&root, &log, rules, true)?;
            report.would_compact = true;
            compacted_needs = current_objects(store, &rows.rows)?;
        } else {
            let files = oplog.data_files()?;
            let n = files.len();
            let (version, file) = rt.block_on(oplog.compact(files, n))?;
            report.compacted = Some(version);
            if let Some(file) = file {
                mount.relocate(&root, &file)?;
            }
            log = read_log(&root)?;
            kept = choose(&root, &log, rules, false)?;
        }
    }
    let readable: Vec<u64> = log.readable().into_iter().map(|(v, _)| v).collect();
    report.kept = kept.iter().copied().collect();
    report.dropped = readable.iter().copied().filter(|v| !kept.contains(v)).collect();

    // Each run of kept versions not starting at 0 opens from a checkpoint at its first version.
    let needs_checkpoint: Vec<u64> =
        kept.iter().copied().filter(|&v| v != 0 && !kept.contains(&(v - 1)) && !log.has_checkpoint(v)).collect();
    if !dry_run && !needs_checkpoint.is_empty() {
        for &v in &needs_checkpoint {
            rt.block_on(async { Oplog::open(&root, Some(v)).await?.write_checkpoint().await })?;
            report.checkpoints_written.push(v);
        }
        // Writing an older checkpoint pointed `_last_checkpoint` at it: point it at the newest.
        let newest = log.checkpoints().chain(needs_checkpoint.iter().copied()).filter(|c| kept.contains(c)).max();
        if let Some(c) = newest.filter(|c| Some(*c) != needs_checkpoint.last().copied()) {
            rt.block_on(async { Oplog::open(&root, Some(c)).await?.write_checkpoint().await })?;
        }
        log = read_log(&root)?;
    }

    // What the kept versions need (every one of them opens now, from the checkpoints just written
    // or, in a dry run, from the bases it has before any entry goes).
    let mut live =
        live::live_set(&root, &log, &kept, &BTreeMap::new()).map_err(|e| PruneError::Unsafe(e.to_string()))?;
    live.store.extend(compacted_needs);

    remove_log(&root, &log, &kept, dry_run, &mut report)?;
    if !dry_run {
        repair_hint(&root, rt)?;
    }
    remove_data_files(&root, &live, dry_run, &mut report)?;
    remove_store_files(store, &live, dry_run, mount, &mut report)?;
    Ok(report)
}

fn read_log(root: &Path) -> Result<LogView, PruneError> {
    let log = LogView::read(root)?;
    let readable: BTreeSet<u64> = log.readable().into_iter().map(|(v, _)| v).collect();
    let Some(latest) = log.latest() else { return Err(PruneError::Unsafe("the log is empty".into())) };
    if !readable.contains(&latest) {
        return Err(PruneError::Unsafe(format!("the latest version ({latest}) does not open; run `pond verify`")));
    }
    // Entries older than the oldest readable version are leftovers of an interrupted prune; a gap
    // after it is damage.
    let oldest = readable.first().copied().unwrap_or(latest);
    if let Some(v) = log.versions().find(|v| *v > oldest && !readable.contains(v)) {
        return Err(PruneError::Unsafe(format!(
            "version {v} does not open (a log entry is missing); run `pond verify`"
        )));
    }
    Ok(log)
}

/// The objects (and the packs they point into) that `rows` name.
fn current_objects(store: &LargeFileStore, rows: &[OplogRow]) -> Result<BTreeSet<PondFile>, PruneError> {
    let mut out = BTreeSet::new();
    for row in rows {
        if let OplogRow::Node { data: Some(d), .. } = row
            && let Some(Content::Large { hash, .. }) = &d.content
        {
            let reader =
                store.open(hash).map_err(|e| PruneError::Unsafe(format!("object {hash} does not open ({e})")))?;
            out.extend(reader.data_files());
            out.insert(PondFile::Object(*hash));
        }
    }
    Ok(out)
}

/// The versions the rules keep, among the readable ones (the latest always). `virtual_newest`: a
/// version newer than all (a compaction a dry run pretends to make) that the rules count first; it
/// is not in the result.
pub(crate) fn choose(
    root: &Path,
    log: &LogView,
    rules: &Rules,
    virtual_newest: bool,
) -> Result<BTreeSet<u64>, PruneError> {
    let mut readable: Vec<u64> = log.readable().into_iter().map(|(v, _)| v).collect();
    let virtual_version = virtual_newest.then(|| readable.last().map_or(0, |v| v + 1));
    readable.extend(virtual_version);
    let (oldest, latest) = match (readable.first(), readable.last()) {
        (Some(o), Some(l)) => (*o, *l),
        _ => return Err(PruneError::Unsafe("no version opens".into())),
    };
    let mut kept: BTreeSet<u64> = [latest].into();
    for &v in &rules.keep_versions {
        if !readable.contains(&v) || Some(v) == virtual_version {
            return Err(PruneError::NoSuchVersion { asked: v, oldest, latest });
        }
        kept.insert(v);
    }
    if let Some(n) = rules.keep_last {
        kept.extend(readable.iter().rev().take(n as usize));
    }
    if let Some(within) = rules.keep_within {
        let since = now_ms().saturating_sub(i64::try_from(within.as_millis()).unwrap_or(i64::MAX));
        let times: BTreeMap<u64, i64> =
            history::read_history(root)?.into_iter().map(|h| (h.version, h.timestamp_ms)).collect();
        kept.extend(readable.iter().filter(|v| times.get(v).is_some_and(|t| *t >= since)));
    }
    if let Some(v) = virtual_version {
        kept.remove(&v);
    }
    Ok(kept)
}

/// `_last_checkpoint` must name a checkpoint that is there: the newest one left (or go, if none is).
fn repair_hint(root: &Path, rt: &tokio::runtime::Runtime) -> Result<(), PruneError> {
    let log = LogView::read(root)?;
    let newest = log.checkpoints().max();
    let hinted = crate::layout::read_last_checkpoint(root);
    if hinted.is_some() && hinted == newest {
        return Ok(());
    }
    match newest {
        Some(c) => rt.block_on(async { Oplog::open(root, Some(c)).await?.write_checkpoint().await })?,
        None => {
            let hint = PondFile::LastCheckpoint.local_path(root);
            if let Err(e) = std::fs::remove_file(&hint)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(OplogError::Io { path: hint, source: e }.into());
            }
        }
    }
    Ok(())
}

fn size_of(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn remove(path: &Path, name: String, dry_run: bool, report: &mut PruneReport) -> Result<(), PruneError> {
    let size = size_of(path);
    if !dry_run {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(OplogError::Io { path: path.to_path_buf(), source: e }.into()),
        }
    }
    report.bytes += size;
    report.removed.push((name, size));
    Ok(())
}

/// Entries and checkpoints of versions not kept.
fn remove_log(
    root: &Path,
    log: &LogView,
    kept: &BTreeSet<u64>,
    dry_run: bool,
    report: &mut PruneReport,
) -> Result<(), PruneError> {
    let dir = root.join(LOG_DIR);
    for v in log.versions().filter(|v| !kept.contains(v)).collect::<Vec<_>>() {
        remove(&dir.join(log_entry_name(v)), PondFile::Log(v).name(), dry_run, report)?;
    }
    for c in log.checkpoints().filter(|c| !kept.contains(c)).collect::<Vec<_>>() {
        remove(&dir.join(checkpoint_name(c)), PondFile::Checkpoint(c).name(), dry_run, report)?;
    }
    if !dry_run {
        datafile::sync_dir(&dir)?;
    }
    Ok(())
}

/// Top-level data files no kept version reads.
fn remove_data_files(root: &Path, live: &Live, dry_run: bool, report: &mut PruneReport) -> Result<(), PruneError> {
    let io = |e: std::io::Error| OplogError::Io { path: root.to_path_buf(), source: e };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if PondFile::data(&name).is_ok()
            && entry.file_type().map_err(io)?.is_file()
            && !live.data_files.contains_key(&name)
        {
            names.push(name);
        }
    }
    names.sort();
    for name in names {
        remove(&root.join(&name), name, dry_run, report)?;
    }
    if !dry_run {
        datafile::sync_dir(root)?;
    }
    Ok(())
}

/// Objects and packs nothing kept reaches, except what `in_use` says open files still use. They
/// are forgotten by the store first, so no new version can come to point into them.
fn remove_store_files(
    store: &LargeFileStore,
    live: &Live,
    dry_run: bool,
    mount: &dyn MountState,
    report: &mut PruneReport,
) -> Result<(), PruneError> {
    let candidates: BTreeSet<PondFile> = store.list()?.into_iter().filter(|f| !live.store.contains(f)).collect();
    if candidates.is_empty() {
        return Ok(());
    }
    if !dry_run {
        store.forget_files(&candidates.iter().cloned().collect());
    }
    let busy = mount.in_use(&candidates);
    report.in_use = busy.iter().map(|f| f.name()).collect();
    for file in candidates.difference(&busy) {
        remove(&store.path_of(file), file.name(), dry_run, report)?;
    }
    if !dry_run {
        store.sync_dirs()?;
    }
    Ok(())
}
