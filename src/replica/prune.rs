//! `pond prune URL`: prune a replica where it lies, by the same rules and the same computation as
//! a pond's prune ([`crate::audit::prune`]), holding the remote's lock ([`super::lock`]) so no
//! replicate pass runs meanwhile.
//!
//! What it reads: the remote's whole log (entries, checkpoints, the hint), the data files the kept
//! versions read and the objects those name (manifests, a few dozen bytes per chunk; an object
//! written before chunk-level storage comes whole), into a temporary directory — never a pack.
//! From those it knows what the kept versions need, as a pond's prune does.
//!
//! What it changes, each step made durable before the next: a checkpoint at the first version of
//! every run of kept versions that lacks one (made from the remote's log, then uploaded);
//! `_last_checkpoint`, naming the newest kept checkpoint; then it removes the log entries and
//! checkpoints of dropped versions, newest first (so at every moment each entry left is readable
//! and a reader listing the remote sees a whole log), then the data files, objects and packs no
//! kept version needs. An interrupted run leaves files nothing needs; the next one removes them.
//!
//! Unlike a pond's prune it does not compact first: a new version on the remote would be one the
//! pond does not have. Rows that newer rows superseded in a kept data file still name their
//! objects, which stay until the pond (whose prune compacts) replicates a compacted version and
//! the remote is pruned again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::audit::live;
use crate::audit::prune::{PruneError, PruneReport, Rules, choose};
use crate::layout::{LOG_DIR, PondFile};
use crate::oplog::log::{self, LogView};
use crate::oplog::{Oplog, datafile};

use super::lock::RemoteLock;
use super::remote::{Listing, Remote};
use super::restore::download;
use super::{Progress, ReplicaError, blocking, local_dir};

/// Prune the replica at `remote` by `rules` (see the module doc). `dry_run`: say what would go,
/// change nothing (the lock is still taken, so the answer holds for the remote as it is).
pub async fn prune_remote(
    remote: &Remote,
    rules: &Rules,
    dry_run: bool,
    progress: Arc<dyn Progress>,
    stop: &AtomicBool,
) -> Result<PruneReport, ReplicaError> {
    if rules.is_empty() {
        return Err(PruneError::NoRule.into());
    }
    let waiting = progress.clone();
    let lock = RemoteLock::acquire(remote, "prune", stop, &|holder| waiting.waiting(holder)).await?;
    let result = prune_locked(remote, &lock, rules, dry_run, &progress, stop).await;
    let released = lock.release().await;
    let report = result?;
    released?;
    Ok(report)
}

async fn prune_locked(
    remote: &Remote,
    lock: &RemoteLock,
    rules: &Rules,
    dry_run: bool,
    progress: &Arc<dyn Progress>,
    stop: &AtomicBool,
) -> Result<PruneReport, ReplicaError> {
    let listing = remote.list().await?;
    if let Some(name) = listing.foreign.first() {
        return Err(ReplicaError::PathEscape(name.clone()));
    }
    if listing.readable()?.is_empty() {
        return Err(ReplicaError::Empty);
    }
    let shadow = tempfile::Builder::new()
        .prefix("pond-prune-")
        .tempdir()
        .map_err(|e| ReplicaError::io(std::env::temp_dir(), e))?;
    let root = shadow.path().to_path_buf();
    let log_dir = root.join(LOG_DIR);
    local_dir::create_private_dirs(&log_dir).map_err(|e| ReplicaError::io(&log_dir, e))?;
    let log_files: Vec<PondFile> = listing
        .files
        .keys()
        .filter(|f| matches!(f, PondFile::Log(_) | PondFile::Checkpoint(_) | PondFile::LastCheckpoint))
        .cloned()
        .collect();
    download(remote, &root, &listing, "fetching the log", log_files, progress, stop).await?;

    let (log, kept) = {
        let (root, rules) = (root.clone(), rules.clone());
        blocking(move || {
            let log = LogView::read(&root)?;
            let kept = choose(&root, &log, &rules, false)?;
            Ok((log, kept))
        })
        .await?
    };
    let readable: Vec<u64> = log.readable().into_iter().map(|(v, _)| v).collect();
    let mut report = PruneReport { dry_run, kept: kept.iter().copied().collect(), ..Default::default() };
    report.dropped = readable.iter().copied().filter(|v| !kept.contains(v)).collect();
    if report.dropped.is_empty() {
        return Ok(report);
    }

    // Each run of kept versions not starting at 0 opens from a checkpoint at its first version.
    let needs_checkpoint: Vec<u64> =
        kept.iter().copied().filter(|&v| v != 0 && !kept.contains(&(v - 1)) && !log.has_checkpoint(v)).collect();
    if !dry_run {
        for &v in &needs_checkpoint {
            Oplog::open(&root, Some(v)).await?.write_checkpoint().await?;
            lock.check()?;
            let file = PondFile::Checkpoint(v);
            remote.put_file(&file, &file.local_path(&root), &(Arc::new(|_| {}) as super::remote::OnBytes)).await?;
            report.checkpoints_written.push(v);
        }
        if !needs_checkpoint.is_empty() {
            remote.sync().await?;
        }
    }
    let log = {
        let root = root.clone();
        blocking(move || Ok(LogView::read(&root)?)).await?
    };

    // What the kept versions need: the data files active at them, fetched, then the objects they
    // name, fetched, then (read from those) the packs.
    let active = log.active_files(&kept, &mut |c| log::checkpoint_adds(&PondFile::Checkpoint(c).local_path(&root)))?;
    let data: Vec<PondFile> = active
        .values()
        .flat_map(|files| files.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|name| PondFile::data(name))
        .collect::<Result<_, _>>()
        .map_err(|e| ReplicaError::PathEscape(e.0))?;
    download(remote, &root, &listing, "fetching data files", data.clone(), progress, stop).await?;
    let objects = {
        let (root, data) = (root.clone(), data.clone());
        blocking(move || {
            let mut out = BTreeSet::new();
            for file in &data {
                let rel: Arc<str> = Arc::from(file.name().as_str());
                out.extend(datafile::large_objects(&root, &rel)?.into_iter().map(|(h, _, _)| PondFile::Object(h)));
            }
            Ok(out)
        })
        .await?
    };
    download(remote, &root, &listing, "fetching objects", objects.into_iter().collect(), progress, stop).await?;
    let live = {
        let (root, log, kept) = (root.clone(), log.clone(), kept.clone());
        blocking(move || {
            live::live_set(&root, &log, &kept, &BTreeMap::new())
                .map_err(|e| ReplicaError::from(PruneError::Unsafe(e.to_string())))
        })
        .await?
    };

    // What goes: the log of dropped versions (newest first), then what nothing kept needs.
    let dropped: BTreeSet<u64> = report.dropped.iter().copied().collect();
    let mut doomed_log: Vec<PondFile> = Vec::new();
    for &v in dropped.iter().rev() {
        doomed_log.push(PondFile::Log(v));
        doomed_log.push(PondFile::Checkpoint(v));
    }
    // Checkpoints of versions neither kept nor readable (left by an interrupted prune).
    for file in listing.files.keys() {
        if let PondFile::Checkpoint(c) = file
            && !kept.contains(c)
            && !dropped.contains(c)
        {
            doomed_log.push(file.clone());
        }
    }
    let doomed_log: Vec<PondFile> = doomed_log.into_iter().filter(|f| listing.files.contains_key(f)).collect();
    let doomed_rest: Vec<PondFile> = listing
        .files
        .keys()
        .filter(|f| match f {
            PondFile::Data(name) => !live.data_files.contains_key(name),
            PondFile::Object(_) | PondFile::Pack(_) => !live.store.contains(f),
            _ => false,
        })
        .cloned()
        .collect();

    if !dry_run {
        update_hint(remote, &listing, &root, &kept, &log, lock).await?;
    }
    for file in doomed_log.into_iter().chain(doomed_rest) {
        if !dry_run {
            lock.check()?;
            remote.remove(&file).await?;
        }
        let size = listing.files.get(&file).copied().unwrap_or(0);
        report.bytes += size;
        report.removed.push((file.name(), size));
    }
    if !dry_run {
        remote.sync().await?;
    }
    Ok(report)
}

/// Point the remote's `_last_checkpoint` at the newest kept checkpoint (or remove it when none
/// is kept) before any checkpoint goes, so a reader following it never meets a missing one.
async fn update_hint(
    remote: &Remote,
    listing: &Listing,
    root: &Path,
    kept: &BTreeSet<u64>,
    log: &LogView,
    lock: &RemoteLock,
) -> Result<(), ReplicaError> {
    let newest = log.checkpoints().filter(|c| kept.contains(c)).max();
    let hint = PondFile::LastCheckpoint;
    let hinted = std::fs::read(hint.local_path(root)).ok().and_then(|b| crate::layout::parse_last_checkpoint(&b));
    lock.check()?;
    match newest {
        Some(c) if hinted != Some(c) || !listing.files.contains_key(&hint) => {
            // delta-rs writes the hint with the checkpoint: write it again at `c` in the shadow.
            Oplog::open(root, Some(c)).await?.write_checkpoint().await?;
            let bytes = std::fs::read(hint.local_path(root)).map_err(|e| ReplicaError::io(hint.local_path(root), e))?;
            remote.put_bytes(&hint, bytes.into()).await?;
            remote.sync().await?;
        }
        Some(_) => {}
        None if listing.files.contains_key(&hint) => remote.remove(&hint).await?,
        None => {}
    }
    Ok(())
}
