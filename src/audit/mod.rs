//! Checking and cleaning a pond on disk: `pond verify` (every hash and every reference, over every
//! version the log keeps) and `pond gc` (remove what nothing references). Works on the files, never
//! through a mount, so both run while the pond is mounted (gc only when no writer holds it).

pub mod gc;
pub mod live;
pub mod prune;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::large_files::LargeFileStore;
use crate::large_files::format;
use crate::large_files::hash::{Blake3Hash, Sha256Digest};
use crate::large_files::reader::{BlobReader, VerifiedChunks};
use crate::layout::{LOG_DIR, PondFile, any_checkpoint_version};
use crate::oplog::log::LogView;
use crate::oplog::schema::{Content, OplogRow};
use crate::oplog::{Oplog, OplogError, check_is_pond, datafile, tree_shape};

/// What `pond verify` found. Damage lines name the file, row, object or chunk.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub damage: Vec<String>,
    pub versions: u64,
    pub data_files: usize,
    pub rows: u64,
    pub inline_files: u64,
    pub objects: usize,
    /// The content the objects hold, in bytes.
    pub object_bytes: u64,
    /// Packs the objects point into.
    pub packs: usize,
    /// Objects and packs present but referenced by no version (left by a crash; `pond gc`
    /// removes them).
    pub unreferenced: Vec<PondFile>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}

/// Which object each large-file row references: the size and SHA-256 the first such row records,
/// where it is, and every inode whose rows reference the object (a copy or an unchanged version
/// shares it), so damage to the object names each file it breaks.
type References = BTreeMap<Blake3Hash, Reference>;

struct Reference {
    size: u64,
    sha256: Option<Sha256Digest>,
    from: String,
    /// The inode of that first row.
    first: u64,
    inodes: BTreeSet<u64>,
}

/// Inodes named after the first reference at most, the rest counted.
const OTHER_INODES_NAMED: usize = 8;

impl Reference {
    /// `inode 3 in part-....parquet`, then the other inodes: `, inode 2, inode 7`.
    fn users(&self) -> String {
        let others: Vec<u64> = self.inodes.iter().copied().filter(|i| *i != self.first).collect();
        let mut out = self.from.clone();
        for ino in others.iter().take(OTHER_INODES_NAMED) {
            out.push_str(&format!(", inode {ino}"));
        }
        if others.len() > OTHER_INODES_NAMED {
            out.push_str(&format!(" and {} more inodes", others.len() - OTHER_INODES_NAMED));
        }
        out
    }
}

/// Check the pond at `root`. `Err` only when `root` is not a pond at all; damage is in the report.
pub fn verify_pond(root: &Path) -> Result<VerifyReport, OplogError> {
    check_is_pond(root)?;
    let mut report = VerifyReport::default();
    let log = LogView::read(root).unwrap_or_else(|e| {
        report.damage.push(format!("log: {e}"));
        LogView::default()
    });
    report.versions = log.versions().count() as u64;
    check_log_is_whole(&log, &mut report);
    // Every data file the log names: the kept versions' and, after a prune, the checkpoints'.
    let files = live::named_by_log(root, &log).unwrap_or_else(|e| {
        report.damage.push(format!("log: {e}"));
        Default::default()
    });
    let mut refs = References::new();
    for (rel, logged_size) in &files {
        report.data_files += 1;
        if let Ok(m) = std::fs::metadata(root.join(rel))
            && m.len() != *logged_size
        {
            report.damage.push(format!("data file {rel}: {} bytes, but the log records {logged_size}", m.len()));
        }
        let rel: Arc<str> = Arc::from(rel.as_str());
        let checked = datafile::for_each_batch(root, &rel, true, |rows| {
            for row in rows {
                report.rows += 1;
                check_row(&rel, &row, &mut report, &mut refs);
            }
            Ok(())
        });
        if let Err(e) = checked {
            report.damage.push(format!("data file {rel}: {e}"));
        }
    }
    let store = LargeFileStore::new(root);
    let mut packs: BTreeMap<PondFile, String> = BTreeMap::new();
    let mut all_opened = true;
    for (hash, check) in refs.keys().zip(check_objects(&store, &refs)) {
        match check.size {
            Some(size) => {
                report.objects += 1;
                report.object_bytes += size;
            }
            None => all_opened = false,
        }
        report.damage.extend(check.damage);
        for file in check.data_files {
            packs.entry(file).or_insert_with(|| format!("object {hash}"));
        }
    }
    for (file, user) in &packs {
        if let PondFile::Pack(name) = file {
            report.packs += 1;
            if let Err(e) = check_pack(&store, name) {
                report.damage.push(format!("pack {file} (used by {user}): {e}"));
            }
        }
    }
    match store.list() {
        Ok(all) => {
            report.unreferenced = all
                .into_iter()
                .filter(|f| match f {
                    PondFile::Object(h) => !refs.contains_key(h),
                    // A pack is known to be unused only when every object's places are known.
                    _ => all_opened && !packs.contains_key(f),
                })
                .collect()
        }
        Err(e) => report.damage.push(format!("_large_files: {e}")),
    }
    check_checkpoints(root, &log, &mut report);
    check_tree_shape(root, log.versions().last(), &mut report);
    Ok(report)
}

/// The directories at the latest version must form a tree (see [`tree_shape`]): the filesystem
/// refuses to open a version where they do not. Older versions are checked when opened.
fn check_tree_shape(root: &Path, latest: Option<u64>, report: &mut VerifyReport) {
    // No latest version: the log did not replay, which is reported already.
    let Some(latest) = latest else { return };
    let checked = std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let rows = rt.block_on(Oplog::open(root, Some(latest))).and_then(|mut oplog| oplog.load());
            Ok::<_, std::io::Error>(rows.map(|loaded| tree_shape::check_tree(&loaded.rows)))
        })
        .join()
    });
    match checked {
        Ok(Ok(Ok(Ok(())))) => {}
        Ok(Ok(Ok(Err(e)))) => report.damage.push(format!("tree: at version {latest}, not a tree: {e}")),
        // A table or data file that does not open is reported by the checks above.
        Ok(Ok(Err(_))) => {}
        Ok(Err(e)) => report.damage.push(format!("tree: cannot check the tree: {e}")),
        Err(_) => report.damage.push("tree: checking the tree panicked".into()),
    }
}

/// Every version present must open: from version 0 or from a checkpoint, with no entry missing
/// after it. (Entries older than the oldest version that opens are what an interrupted prune
/// leaves; they are reported too, since nothing can read them.)
fn check_log_is_whole(log: &LogView, report: &mut VerifyReport) {
    let readable: BTreeSet<u64> = log.readable().into_iter().map(|(v, _)| v).collect();
    if log.latest().is_none() {
        report.damage.push("log: no log entries".into());
        return;
    }
    if readable.is_empty() {
        report.damage.push("log: no version opens (the entry of version 0 and every checkpoint are missing)".into());
        return;
    }
    for v in log.versions().filter(|v| !readable.contains(v)) {
        report.damage.push(format!(
            "log: version {v} does not open: an entry before it is missing and no checkpoint starts its run"
        ));
    }
}

/// One object's check: its content size if it opened, what is wrong with it, and the files its
/// chunks are in.
#[derive(Default)]
struct ObjectCheck {
    size: Option<u64>,
    damage: Vec<String>,
    data_files: Vec<PondFile>,
}

/// Check every referenced object (re-hashing is CPU-bound: spread over the cores), in name order.
/// A chunk that several objects share (same bytes at the same place) is read and hashed once.
fn check_objects(store: &LargeFileStore, refs: &References) -> Vec<ObjectCheck> {
    let items: Vec<_> = refs.iter().collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4).min(items.len().max(1));
    let next = AtomicUsize::new(0);
    let seen: Mutex<VerifiedChunks> = Mutex::default();
    let mut checked: Vec<(usize, ObjectCheck)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((hash, claimed)) = items.get(i) else { break };
                        mine.push((i, check_object(store, hash, claimed, &seen)));
                    }
                    mine
                })
            })
            .collect();
        // A panicking check must not pass for a clean one.
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    checked.sort_by_key(|(i, _)| *i);
    checked.into_iter().map(|(_, r)| r).collect()
}

fn check_object(
    store: &LargeFileStore,
    hash: &Blake3Hash,
    claimed: &Reference,
    seen: &Mutex<VerifiedChunks>,
) -> ObjectCheck {
    let (size, sha256, from) = (&claimed.size, &claimed.sha256, &claimed.from);
    let users = claimed.users();
    let reader = match store.open(hash) {
        Err(e) => {
            return ObjectCheck {
                damage: vec![format!("object {hash} (referenced by {users}): {e}")],
                ..Default::default()
            };
        }
        Ok(reader) => reader,
    };
    let mut damage = Vec::new();
    if reader.size() != *size {
        damage.push(format!("object {hash}: holds {} bytes but {from} says {size}", reader.size()));
    }
    if let (Some(recorded), Some(row)) = (reader.sha256(), sha256)
        && recorded != *row
    {
        damage.push(format!("object {hash}: SHA-256 {recorded} but {from} records {row}"));
    }
    if let Err(errors) = reader.verify(Some(seen)) {
        damage.extend(errors.into_iter().map(|e| format!("object {hash} (referenced by {users}): {e}")));
    }
    ObjectCheck { size: Some(reader.size()), damage, data_files: reader.data_files() }
}

/// A pack must be one (its chunks' bytes are checked through the objects that point into it).
fn check_pack(store: &LargeFileStore, name: &Blake3Hash) -> Result<(), String> {
    let file = PondFile::Pack(*name);
    let source = store.source();
    let blob = source.open(&file).map_err(|e| e.to_string())?;
    format::open_pack(&BlobReader(blob), &source.describe(&file)).map_err(|e| e.to_string())?;
    Ok(())
}

/// The table as a Delta reader opens it (through checkpoints and `_last_checkpoint`) must list the
/// same data files as replaying the JSON entries does: checkpoints are derived data, and a damaged or
/// forged one would show another tree without any hash noticing. Checked at every checkpoint's
/// version and at the latest version.
fn check_checkpoints(root: &Path, log: &LogView, report: &mut VerifyReport) {
    check_checkpoint_files(root, report);
    // No entries: reported already.
    let Some(latest) = log.versions().last() else { return };
    let mut at: BTreeSet<u64> = log.checkpoints().collect();
    // A checkpoint past the log's end is damage, unless its version was committed since the log was
    // read (verify while mounted).
    let committed_since = |v: u64| root.join(format!("_delta_log/{v:020}.json")).exists();
    for c in at.iter().filter(|c| **c > latest && !committed_since(**c)) {
        report.damage.push(format!("log: checkpoint for version {c}, but the log ends at version {latest}"));
    }
    at.retain(|c| *c <= latest);
    at.insert(latest);
    // Replayed from each run's start: a checkpoint inside a run must agree with the entries.
    let mut adds = |c: u64| {
        crate::oplog::log::checkpoint_adds(&root.join(crate::layout::LOG_DIR).join(crate::layout::checkpoint_name(c)))
    };
    let expected: BTreeMap<u64, BTreeSet<String>> = match log.active_files(&at, &mut adds) {
        Ok(files) => files.into_iter().map(|(v, f)| (v, f.into_keys().collect())).collect(),
        Err(e) => return report.damage.push(format!("log: {e}")),
    };
    // Opening is async: give it a runtime on a thread of its own, so any caller (inside a runtime or
    // not) can verify.
    let opened = std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let open = |v: u64| -> Result<(u64, BTreeSet<String>), OplogError> {
                let mut oplog = rt.block_on(Oplog::open(root, (v != latest).then_some(v)))?;
                // Verify runs while the pond is mounted: a version committed since the log was read
                // is newer than `latest` and its entry is there now. Check `latest` itself then.
                if v == latest && oplog.version() > latest && committed_since(oplog.version()) {
                    oplog = rt.block_on(Oplog::open(root, Some(v)))?;
                }
                let files = oplog.data_files()?.into_iter().map(|(p, _)| p.to_string()).collect();
                Ok((oplog.version(), files))
            };
            Ok::<_, std::io::Error>(at.iter().map(|&v| (v, open(v))).collect::<Vec<_>>())
        })
        .join()
    });
    let opened = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return report.damage.push(format!("log: cannot open the table to check checkpoints: {e}")),
        Err(_) => return report.damage.push("log: opening the table to check checkpoints panicked".into()),
    };
    for (v, result) in opened {
        // Every checked version is in the replayed log (no gaps, at most the latest).
        let Some(want) = expected.get(&v) else { continue };
        match result {
            Err(e) => report.damage.push(format!("log: the table does not open at version {v}: {e}")),
            Ok((got_version, _)) if got_version != v => report
                .damage
                .push(format!("log: opening version {v} gives version {got_version} (check _last_checkpoint)")),
            Ok((_, files)) if files != *want => {
                let extra: Vec<_> = files.difference(want).take(3).collect();
                let lacking: Vec<_> = want.difference(&files).take(3).collect();
                report.damage.push(format!(
                    "log: at version {v} the checkpoint lists other data files than the log entries do \
                     (only in the checkpoint: {extra:?}; only in the entries: {lacking:?})"
                ));
            }
            Ok(_) => {}
        }
    }
}

/// Every checkpoint file must read: opening the pond hides one that does not (and reads the JSON
/// log instead), so only this check sees it.
fn check_checkpoint_files(root: &Path, report: &mut VerifyReport) {
    let log = root.join(LOG_DIR);
    let Ok(entries) = std::fs::read_dir(&log) else { return }; // reported by the log checks
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| any_checkpoint_version(n).is_some())
        .collect();
    names.sort();
    for name in names {
        if let Err(e) = datafile::check_parquet_file(&log.join(&name)) {
            report.damage.push(format!(
                "log: checkpoint {name} does not read: {e} (a checkpoint only sums up the JSON log, which pond \
                 reads instead: removing the file is safe)"
            ));
        }
    }
}

fn check_row(rel: &str, row: &OplogRow, report: &mut VerifyReport, refs: &mut References) {
    let OplogRow::Node { ino, data: Some(d), .. } = row else { return };
    match &d.content {
        Some(Content::Inline { bytes: Some(b), hash, sha256, .. }) => {
            report.inline_files += 1;
            let sha_ok = sha256.is_none_or(|s| Sha256Digest(Sha256::digest(b).into()) == s);
            if Blake3Hash::from(blake3::hash(b)) != *hash || !sha_ok || b.len() as u64 != d.size {
                report.damage.push(format!(
                    "data file {rel}: inode {ino}: inline content does not match its recorded hash or size"
                ));
            }
        }
        Some(Content::Inline { bytes: None, .. }) => {
            report.damage.push(format!("data file {rel}: inode {ino}: inline content missing"));
        }
        Some(Content::Large { hash, sha256 }) => {
            refs.entry(*hash)
                .or_insert_with(|| Reference {
                    size: d.size,
                    sha256: *sha256,
                    from: format!("inode {ino} in {rel}"),
                    first: *ino,
                    inodes: BTreeSet::new(),
                })
                .inodes
                .insert(*ino);
        }
        None => {}
    }
}
