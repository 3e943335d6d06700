//! What a set of versions needs on disk: the data files active at them, the objects their rows
//! name, and the packs those objects point into. The one computation behind `pond gc` (every
//! version kept) and `pond prune` (the versions its rules keep), so both keep exactly the same.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use crate::large_files::LargeFileStore;
use crate::layout::{LOG_DIR, PondFile, checkpoint_name};
use crate::oplog::log::{self, LogView};
use crate::oplog::{OplogError, datafile};

/// The files some versions need.
#[derive(Debug, Default)]
pub struct Live {
    /// Data files (top-level names) and the size the log records for each.
    pub data_files: BTreeMap<String, u64>,
    /// Objects and packs.
    pub store: BTreeSet<PondFile>,
}

/// Why the files some versions need cannot be known: nothing may be removed then.
#[derive(Debug, thiserror::Error)]
#[error("{0}; run `pond verify`")]
pub struct Unknowable(pub String);

/// The files `versions` (readable versions of `log`) need, plus those that the data files in
/// `extra_data` need. Every data file must be on disk and read, and every object must open: a
/// file that does not read could name anything, so the answer would be unknown.
pub fn live_set(
    root: &Path,
    log: &LogView,
    versions: &BTreeSet<u64>,
    extra_data: &BTreeMap<String, u64>,
) -> Result<Live, Unknowable> {
    let mut checkpoint_adds = |c: u64| log::checkpoint_adds(&root.join(LOG_DIR).join(checkpoint_name(c)));
    let active = log.active_files(versions, &mut checkpoint_adds).map_err(|e| Unknowable(e.to_string()))?;
    let mut live = Live::default();
    for files in active.into_values() {
        live.data_files.extend(files);
    }
    live.data_files.extend(extra_data.iter().map(|(k, v)| (k.clone(), *v)));
    let mut objects = BTreeSet::new();
    for name in live.data_files.keys() {
        let rel: Arc<str> = Arc::from(name.as_str());
        if !root.join(name).exists() {
            return Err(Unknowable(format!("data file {name} is missing")));
        }
        let named = datafile::large_objects(root, &rel).map_err(|e| Unknowable(format!("cannot read {name}: {e}")))?;
        objects.extend(named.into_iter().map(|(hash, _, _)| hash));
    }
    let store = LargeFileStore::new(root);
    for hash in objects {
        let reader = store.open(&hash).map_err(|e| Unknowable(format!("object {hash} does not open ({e})")))?;
        live.store.extend(reader.data_files());
        live.store.insert(PondFile::Object(hash));
    }
    Ok(live)
}

/// Every data file any log entry or checkpoint present names, with its size: what a conservative
/// cleaner keeps even of versions it cannot read.
pub fn named_by_log(root: &Path, log: &LogView) -> Result<BTreeMap<String, u64>, OplogError> {
    let mut named = BTreeMap::new();
    for v in log.versions().collect::<Vec<_>>() {
        if let Some(actions) = log.entry(v) {
            for (name, size) in &actions.added {
                PondFile::data(name).map_err(|e| OplogError::Corrupt {
                    path: root.join(LOG_DIR),
                    reason: format!("version {v} names a data file outside the table: {e}"),
                })?;
                named.insert(name.clone(), *size);
            }
        }
    }
    for c in log.checkpoints().collect::<Vec<_>>() {
        named.extend(log::checkpoint_adds(&root.join(LOG_DIR).join(checkpoint_name(c)))?);
    }
    Ok(named)
}
