//! `pond gc`: remove large-file objects and data files that no version of the log references
//! (leftovers of a crash between an object's write and its commit), and temp files. Holds the
//! single-writer lock, so it never races a mount's commit; refuses to act on a damaged log, or on
//! a `_pond/tmp` that is a link (it empties that directory without following links, see
//! `private_fs`: `pond gc` runs as root on ponds others may write into).

use std::collections::BTreeSet;
use std::path::Path;

use crate::fs::{FsError, WriterLock};
use crate::large_files::LargeFileStore;
use crate::layout::PondFile;
use crate::layout::{WORK_DIR, WORK_SPILL_DIR};
use crate::oplog::OplogError;
use crate::oplog::log::LogView;
use crate::private_fs::{PrivateDir, PrivateFsError};

use super::live;

#[derive(Debug, Default)]
pub struct GcReport {
    /// Objects and packs removed (or that would be), with their sizes.
    pub objects: Vec<(PondFile, u64)>,
    pub data_files: Vec<(String, u64)>,
    pub temp_files: usize,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Oplog(#[from] OplogError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Store(#[from] crate::large_files::error::StoreError),
    #[error("refusing to collect garbage: {0}")]
    Unsafe(String),
    #[error("refusing to collect garbage: {0}")]
    Private(#[from] PrivateFsError),
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

pub fn collect_garbage(root: &Path, dry_run: bool) -> Result<GcReport, GcError> {
    crate::oplog::check_is_pond(root)?;
    let _lock = WriterLock::acquire(root)?;
    // `_pond/tmp` is checked before anything is removed: a link there refuses the whole run.
    let spill =
        PrivateDir::open_existing(root, WORK_DIR)?.map(|work| work.open_dir(WORK_SPILL_DIR)).transpose()?.flatten();
    let log = LogView::read(root).map_err(|e| GcError::Unsafe(e.to_string()))?;
    let versions: BTreeSet<u64> = log.readable().into_iter().map(|(v, _)| v).collect();
    // Every data file the log names stays, readable version or not: gc never second-guesses history.
    let named = live::named_by_log(root, &log).map_err(|e| GcError::Unsafe(e.to_string()))?;
    let live = live::live_set(root, &log, &versions, &named).map_err(|e| GcError::Unsafe(e.to_string()))?;
    let store = LargeFileStore::new(root);
    let mut report = GcReport::default();
    for file in store.list()? {
        if !live.store.contains(&file) {
            let size = file_size(&store.path_of(&file));
            if !dry_run {
                store.remove(&file)?;
            }
            report.bytes += size;
            report.objects.push((file, size));
        }
    }
    let io = |e: std::io::Error| GcError::Oplog(OplogError::Io { path: root.to_path_buf(), source: e });
    for entry in std::fs::read_dir(root).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".parquet")
            && entry.file_type().map_err(io)?.is_file()
            && !live.data_files.contains_key(&name)
        {
            let size = file_size(&entry.path());
            if !dry_run {
                std::fs::remove_file(entry.path()).map_err(io)?;
            }
            report.bytes += size;
            report.data_files.push((name, size));
        }
    }
    if !dry_run {
        report.temp_files += store.clear_tmp()?;
        if let Some(spill) = spill {
            report.temp_files += spill.empty()?;
        }
    }
    Ok(report)
}
