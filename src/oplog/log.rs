//! The Delta log as pond reads it itself (without the Delta library): which versions a pond or a
//! replica holds, where each version's state is rebuilt from, and which data files are active at
//! each. Shared by verify, gc, prune, replicate and restore, so they agree on what a version needs.
//!
//! A pond never pruned holds every version from 0. `pond prune` drops versions: what remains is
//! runs of consecutive versions, each starting at version 0 or at a checkpoint of its first version.
//! A version is *readable* when its state can be rebuilt: from the newest checkpoint at or before it
//! (or from nothing, at version 0) and the log entries after that checkpoint, every one present —
//! exactly how delta-rs and the Delta protocol read a version, so what pond calls readable opens in
//! any Delta reader too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use arrow::array::{Array, Int64Array, StringArray, StructArray};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::OplogError;
use super::history::{FileActions, parse_log_entry};
use crate::layout::{LOG_DIR, PondFile, checkpoint_version, log_entry_version};

/// Where a version's state is rebuilt from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// The empty table before version 0: every entry from 0 on.
    Start,
    /// The checkpoint of this version, then the entries after it.
    Checkpoint(u64),
}

/// The versions and checkpoints a log holds, with each entry's data-file actions.
#[derive(Clone, Debug, Default)]
pub struct LogView {
    entries: BTreeMap<u64, FileActions>,
    checkpoints: BTreeSet<u64>,
}

impl LogView {
    /// The log of the pond (or a local copy of a replica) at `root`. Entries are parsed; a damaged
    /// one is an error naming it.
    pub fn read(root: &Path) -> Result<LogView, OplogError> {
        let mut view = LogView::default();
        view.refresh(root)?;
        Ok(view)
    }

    /// Bring the view up to date with the log at `root`: entries not seen before are parsed, those
    /// gone (pruned) forgotten, checkpoints listed again. An entry that goes between the listing
    /// and its read (a prune at work) counts as gone.
    pub fn refresh(&mut self, root: &Path) -> Result<(), OplogError> {
        let dir = root.join(LOG_DIR);
        let io = |e: std::io::Error| OplogError::Io { path: dir.clone(), source: e };
        let mut present = BTreeSet::new();
        let mut checkpoints = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(v) = log_entry_version(name) {
                if let std::collections::btree_map::Entry::Vacant(slot) = self.entries.entry(v) {
                    let path = entry.path();
                    let text = match std::fs::read_to_string(&path) {
                        Ok(text) => text,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(OplogError::Io { path, source: e }),
                    };
                    slot.insert(parse_log_entry(&text, &path)?);
                }
                present.insert(v);
            } else if let Some(v) = checkpoint_version(name) {
                checkpoints.insert(v);
            }
        }
        self.entries.retain(|v, _| present.contains(v));
        self.checkpoints = checkpoints;
        self.fill_missed(root)?;
        Ok(())
    }

    /// A directory listed while entries are added to it may return a newer entry and miss an older
    /// one (readdir walks in hash order: an entry added behind its position is not returned). So
    /// before an entry counts as unreadable, the versions right before it are looked up by name:
    /// those there now were committed while the listing ran. (A pruned log's gaps end at a
    /// checkpoint, so this looks up nothing there.)
    fn fill_missed(&mut self, root: &Path) -> Result<(), OplogError> {
        const MOST_LOOKUPS: u64 = 10_000;
        let mut lookups = 0;
        while let Some((_, unreadable)) = self.first_unreadable() {
            let mut found = false;
            let mut v = unreadable;
            while v > 0 && !self.entries.contains_key(&(v - 1)) && lookups < MOST_LOOKUPS {
                v -= 1;
                lookups += 1;
                let path = root.join(LOG_DIR).join(crate::layout::log_entry_name(v));
                let text = match std::fs::read_to_string(&path) {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) => return Err(OplogError::Io { path, source: e }),
                };
                self.entries.insert(v, parse_log_entry(&text, &path)?);
                found = true;
            }
            if !found {
                return Ok(()); // really missing: damage, or what an interrupted prune left
            }
        }
        Ok(())
    }

    /// A view over entries and checkpoints read elsewhere (a remote).
    pub fn from_parts(entries: BTreeMap<u64, FileActions>, checkpoints: BTreeSet<u64>) -> LogView {
        LogView { entries, checkpoints }
    }

    /// A view of which entries and checkpoints are present, without their actions (a remote's
    /// listing): enough to say which versions are readable.
    pub fn from_names(entries: impl IntoIterator<Item = u64>, checkpoints: impl IntoIterator<Item = u64>) -> LogView {
        let entries = entries.into_iter().map(|v| (v, FileActions::default())).collect();
        LogView { entries, checkpoints: checkpoints.into_iter().collect() }
    }

    /// The first present entry that is not readable, with the version present before it (None
    /// when it is the oldest): what a log written by pond never holds (it sends a run's checkpoint
    /// before the run's first entry).
    pub fn first_unreadable(&self) -> Option<(Option<u64>, u64)> {
        let readable: BTreeSet<u64> = self.readable().into_iter().map(|(v, _)| v).collect();
        let mut before = None;
        for &v in self.entries.keys() {
            if !readable.contains(&v) {
                return Some((before, v));
            }
            before = Some(v);
        }
        None
    }

    /// The base of version `v` if it is readable.
    pub fn base_of(&self, v: u64) -> Option<Base> {
        self.readable().into_iter().find(|(r, _)| *r == v).map(|(_, b)| b)
    }

    /// Versions whose log entry is present, oldest first.
    pub fn versions(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.keys().copied()
    }

    /// Versions with a checkpoint, oldest first.
    pub fn checkpoints(&self) -> impl Iterator<Item = u64> + '_ {
        self.checkpoints.iter().copied()
    }

    /// The newest version present.
    pub fn latest(&self) -> Option<u64> {
        let entry = self.entries.keys().next_back().copied();
        let checkpoint = self.checkpoints.iter().next_back().copied();
        entry.max(checkpoint)
    }

    /// The data-file actions of version `v`'s entry, if present.
    pub fn entry(&self, v: u64) -> Option<&FileActions> {
        self.entries.get(&v)
    }

    /// True when a checkpoint of version `v` is present.
    pub fn has_checkpoint(&self, v: u64) -> bool {
        self.checkpoints.contains(&v)
    }

    /// Every readable version with the base of its *run* (the oldest base its state can be rebuilt
    /// from: a run of versions whose entries are all present continues through the checkpoints
    /// inside it, which are derived data and get checked against the entries), oldest first.
    pub fn readable(&self) -> Vec<(u64, Base)> {
        let all: BTreeSet<u64> = self.entries.keys().chain(self.checkpoints.iter()).copied().collect();
        let mut out: Vec<(u64, Base)> = Vec::new();
        for v in all {
            let continued = match out.last() {
                Some((prev, base)) if *prev + 1 == v && self.entries.contains_key(&v) => Some(*base),
                _ => None,
            };
            let base = continued.or_else(|| {
                if self.checkpoints.contains(&v) {
                    Some(Base::Checkpoint(v))
                } else if v == 0 && self.entries.contains_key(&0) {
                    Some(Base::Start)
                } else {
                    None
                }
            });
            if let Some(base) = base {
                out.push((v, base));
            }
        }
        out
    }

    /// The oldest readable version: where a pruned pond's history begins.
    pub fn oldest_readable(&self) -> Option<u64> {
        self.readable().first().map(|(v, _)| *v)
    }

    /// The data files (path as the log names it, size it records) active at each version of
    /// `versions`, replaying each one's run from its base; `checkpoint_adds` reads a checkpoint's
    /// active files. Versions that are not readable are left out.
    pub fn active_files(
        &self,
        versions: &BTreeSet<u64>,
        checkpoint_adds: &mut dyn FnMut(u64) -> Result<BTreeMap<String, u64>, OplogError>,
    ) -> Result<BTreeMap<u64, BTreeMap<String, u64>>, OplogError> {
        let mut out = BTreeMap::new();
        let mut state: Option<(Base, u64, BTreeMap<String, u64>)> = None;
        let last_wanted = versions.iter().next_back().copied();
        for (v, base) in self.readable() {
            if last_wanted.is_none_or(|w| v > w) {
                break;
            }
            let continues = matches!(&state, Some((b, at, _)) if *b == base && *at + 1 == v);
            if !continues {
                let files = match base {
                    Base::Checkpoint(c) => checkpoint_adds(c)?,
                    Base::Start => BTreeMap::new(),
                };
                state = Some((base, v, files));
                if base == Base::Start {
                    // Version 0's own entry applies to the empty table.
                    let (_, _, files) = state.as_mut().expect("set above");
                    apply(files, self.entries.get(&v));
                }
            } else {
                let (_, at, files) = state.as_mut().expect("continues");
                *at = v;
                apply(files, self.entries.get(&v));
            }
            if versions.contains(&v) {
                out.insert(v, state.as_ref().expect("set above").2.clone());
            }
        }
        Ok(out)
    }
}

/// The readable versions `readable` (see [`LogView::readable`]) as runs, for a message: "versions 0
/// to 10 and 20 to 30", "version 7", "no readable version".
pub fn describe_readable(readable: &[(u64, Base)]) -> String {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &(v, _) in readable {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == v => *end = v,
            _ => runs.push((v, v)),
        }
    }
    let parts: Vec<String> =
        runs.iter().map(|&(a, b)| if a == b { format!("{a}") } else { format!("{a} to {b}") }).collect();
    match parts.len() {
        0 => "no readable version".into(),
        1 if runs[0].0 == runs[0].1 => format!("version {}", parts[0]),
        n => {
            let head = parts[..n - 1].join(", ");
            if n == 1 { format!("versions {}", parts[0]) } else { format!("versions {head} and {}", parts[n - 1]) }
        }
    }
}

fn apply(files: &mut BTreeMap<String, u64>, actions: Option<&FileActions>) {
    let Some(a) = actions else { return };
    for p in &a.removed {
        files.remove(p);
    }
    for (p, size) in &a.added {
        files.insert(p.clone(), *size);
    }
}

/// The table's id (`metaData.id`, fixed when the table is created) in a JSON log entry's text, if
/// the entry carries the table's metadata (version 0 does, and any that changed it).
pub fn table_id_in_entry(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| Some(v.get("metaData")?.get("id")?.as_str()?.to_string()))
}

/// The table's id (`metaData.id`) a checkpoint file records.
pub fn table_id_in_checkpoint(path: &Path) -> Result<Option<String>, OplogError> {
    let bad = |reason: String| OplogError::Corrupt { path: path.to_path_buf(), reason };
    super::datafile::check_parquet_file(path)?;
    let file = std::fs::File::open(path).map_err(|e| OplogError::Io { path: path.to_path_buf(), source: e })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| OplogError::parquet(path, e))?;
    let schema = builder.parquet_schema();
    let Some(leaf) = (0..schema.num_columns()).find(|&i| schema.column(i).path().parts() == ["metaData", "id"]) else {
        return Err(bad("a checkpoint without metaData.id".into()));
    };
    let mask = ProjectionMask::leaves(schema, [leaf]);
    let reader = builder.with_projection(mask).build().map_err(|e| OplogError::parquet(path, e))?;
    for batch in reader {
        let batch = batch.map_err(|e| OplogError::arrow(path, e))?;
        let meta = batch
            .column(0)
            .as_any()
            .downcast_ref::<StructArray>()
            .ok_or_else(|| bad("metaData is not a struct".into()))?;
        let ids = meta
            .column_by_name("id")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| bad("metaData.id is not a string".into()))?;
        if let Some(r) = (0..meta.len()).find(|&r| !meta.is_null(r) && !ids.is_null(r)) {
            return Ok(Some(ids.value(r).to_string()));
        }
    }
    Ok(None)
}

/// The data files a checkpoint file lists as active (its `add` actions), with their sizes. Names
/// outside the layout are refused.
pub fn checkpoint_adds(path: &Path) -> Result<BTreeMap<String, u64>, OplogError> {
    let bad = |reason: String| OplogError::Corrupt { path: path.to_path_buf(), reason };
    super::datafile::check_parquet_file(path)?;
    let file = std::fs::File::open(path).map_err(|e| OplogError::Io { path: path.to_path_buf(), source: e })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| OplogError::parquet(path, e))?;
    let schema = builder.parquet_schema();
    let leaf = |want: &[&str]| (0..schema.num_columns()).find(|&i| schema.column(i).path().parts() == want);
    let (Some(p), Some(s)) = (leaf(&["add", "path"]), leaf(&["add", "size"])) else {
        return Err(bad("a checkpoint without add.path and add.size".into()));
    };
    let mask = ProjectionMask::leaves(schema, [p, s]);
    let reader = builder.with_projection(mask).build().map_err(|e| OplogError::parquet(path, e))?;
    let mut out = BTreeMap::new();
    for batch in reader {
        let batch = batch.map_err(|e| OplogError::arrow(path, e))?;
        let add =
            batch.column(0).as_any().downcast_ref::<StructArray>().ok_or_else(|| bad("add is not a struct".into()))?;
        let paths = add
            .column_by_name("path")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| bad("add.path is not a string".into()))?;
        let sizes = add
            .column_by_name("size")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .ok_or_else(|| bad("add.size is not an int64".into()))?;
        for r in 0..add.len() {
            if add.is_null(r) || paths.is_null(r) {
                continue;
            }
            let name = super::history::percent_decode(paths.value(r));
            PondFile::data(&name)
                .map_err(|e| bad(format!("the checkpoint names a data file outside the table: {e}")))?;
            let size = u64::try_from(sizes.value(r)).map_err(|_| bad(format!("{name} has a negative size")))?;
            out.insert(name, size);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adds(names: &[&str]) -> FileActions {
        FileActions { added: names.iter().map(|n| (n.to_string(), 1)).collect(), removed: Vec::new() }
    }

    #[test]
    fn a_pruned_log_is_runs_from_checkpoints() {
        // Versions 2, 7..9 kept, with checkpoints at 2 and 7 (what prune leaves for keep {2, 7, 8, 9}).
        let entries = [2, 7, 8, 9].into_iter().map(|v| (v, adds(&[&format!("v{v}.parquet")]))).collect();
        let view = LogView::from_parts(entries, [2, 7].into());
        assert_eq!(
            view.readable(),
            vec![
                (2, Base::Checkpoint(2)),
                (7, Base::Checkpoint(7)),
                (8, Base::Checkpoint(7)),
                (9, Base::Checkpoint(7))
            ]
        );
        let mut ck = |c: u64| Ok([(format!("ck{c}.parquet"), 1)].into_iter().collect());
        let active = view.active_files(&[2, 9].into(), &mut ck).expect("replay");
        assert_eq!(active[&2].keys().collect::<Vec<_>>(), ["ck2.parquet"]);
        assert_eq!(active[&9].keys().collect::<Vec<_>>(), ["ck7.parquet", "v8.parquet", "v9.parquet"]);
    }

    #[test]
    fn readable_versions_are_described_as_runs() {
        let runs = |vs: &[u64]| vs.iter().map(|&v| (v, Base::Start)).collect::<Vec<_>>();
        assert_eq!(describe_readable(&runs(&[])), "no readable version");
        assert_eq!(describe_readable(&runs(&[7])), "version 7");
        assert_eq!(describe_readable(&runs(&[0, 1, 2])), "versions 0 to 2");
        assert_eq!(describe_readable(&runs(&[0, 1, 5, 9, 10])), "versions 0 to 1, 5 and 9 to 10");
    }

    #[test]
    fn an_entry_after_a_gap_without_a_checkpoint_is_the_first_unreadable() {
        let view = LogView::from_names([0, 1, 2, 5, 6], [6]);
        assert_eq!(view.first_unreadable(), Some((Some(2), 5)));
        assert_eq!(LogView::from_names([3, 4], []).first_unreadable(), Some((None, 3)));
        assert_eq!(
            LogView::from_names([3, 4], [2]).first_unreadable(),
            None,
            "a run may start right after its checkpoint"
        );
        assert_eq!(LogView::from_names([0, 1, 5, 6], [5]).base_of(6), Some(Base::Checkpoint(5)));
    }

    #[test]
    fn an_entry_the_listing_missed_is_looked_up_before_a_later_one_counts_as_unreadable() {
        // A listing taken while versions 1 and 2 were committed returned 2 and missed 1.
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join(LOG_DIR)).expect("log dir");
        for v in 0..3 {
            let path = dir.path().join(LOG_DIR).join(crate::layout::log_entry_name(v));
            std::fs::write(path, "{\"commitInfo\":{}}\n").expect("entry");
        }
        let mut view = LogView::from_parts([(0, adds(&[])), (2, adds(&[]))].into(), BTreeSet::new());
        assert_eq!(view.first_unreadable(), Some((Some(0), 2)));
        view.fill_missed(dir.path()).expect("look up");
        assert_eq!(view.versions().collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(view.first_unreadable(), None);
        // One really missing stays missing, and the lookups stop there.
        std::fs::remove_file(dir.path().join(LOG_DIR).join(crate::layout::log_entry_name(1))).expect("rm");
        let mut view = LogView::from_parts([(0, adds(&[])), (2, adds(&[]))].into(), BTreeSet::new());
        view.fill_missed(dir.path()).expect("look up");
        assert_eq!(view.first_unreadable(), Some((Some(0), 2)));
    }

    #[test]
    fn a_gap_makes_the_versions_after_it_unreadable_until_a_checkpoint() {
        let entries = [0, 1, 3, 4, 5].into_iter().map(|v| (v, adds(&[]))).collect();
        let view = LogView::from_parts(entries, [4].into());
        assert_eq!(
            view.readable(),
            vec![(0, Base::Start), (1, Base::Start), (4, Base::Checkpoint(4)), (5, Base::Checkpoint(4))]
        );
        assert_eq!(view.oldest_readable(), Some(0));
        // A checkpoint inside a run is derived data: the run's versions replay from its start.
        let whole = LogView::from_parts((0..6).map(|v| (v, adds(&[]))).collect(), [3].into());
        assert!(whole.readable().iter().all(|(_, b)| *b == Base::Start));
    }
}
