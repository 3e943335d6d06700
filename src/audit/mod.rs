//! Checking and cleaning a pond on disk: `pond verify` (every hash and every reference, over every
//! version the log keeps) and `pond gc` (remove what nothing references). Works on the files, never
//! through a mount, so both run while the pond is mounted (gc only when no writer holds it).

pub mod gc;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::large_files::LargeFileStore;
use crate::large_files::hash::{Blake3Hash, summarize};
use crate::oplog::schema::{Content, OplogRow};
use crate::oplog::{OplogError, check_is_pond, datafile, history};

/// What `pond verify` found. Damage lines name the file, row, object or chunk.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub damage: Vec<String>,
    pub versions: u64,
    pub data_files: usize,
    pub rows: u64,
    pub inline_files: u64,
    pub objects: usize,
    pub object_bytes: u64,
    /// Objects present but referenced by no version (left by a crash; `pond gc` removes them).
    pub unreferenced: Vec<Blake3Hash>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}

/// Which object each large-file row references, and the size the row claims.
type References = BTreeMap<Blake3Hash, (u64, String)>;

/// Check the pond at `root`. `Err` only when `root` is not a pond at all; damage is in the report.
pub fn verify_pond(root: &Path) -> Result<VerifyReport, OplogError> {
    check_is_pond(root)?;
    let mut report = VerifyReport::default();
    match history::read_history(root) {
        Ok(h) => report.versions = h.len() as u64,
        Err(e) => report.damage.push(format!("log: {e}")),
    }
    let files = match history::referenced_data_files(root) {
        Ok(f) => f,
        Err(e) => {
            report.damage.push(format!("log: {e}"));
            Default::default()
        }
    };
    let mut refs = References::new();
    for rel in &files {
        report.data_files += 1;
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
    for (hash, (size, from)) in &refs {
        match store.open(hash) {
            Err(e) => report.damage.push(format!("object {hash} (referenced by {from}): {e}")),
            Ok(reader) => {
                report.objects += 1;
                report.object_bytes += reader.size();
                if reader.size() != *size {
                    report.damage.push(format!("object {hash}: holds {} bytes but {from} says {size}", reader.size()));
                }
                if let Err(errors) = reader.verify() {
                    report.damage.extend(errors.into_iter().map(|e| format!("object {hash}: {e}")));
                }
            }
        }
    }
    match store.list() {
        Ok(all) => report.unreferenced = all.into_iter().filter(|h| !refs.contains_key(h)).collect(),
        Err(e) => report.damage.push(format!("_large_files: {e}")),
    }
    Ok(report)
}

fn check_row(rel: &str, row: &OplogRow, report: &mut VerifyReport, refs: &mut References) {
    let OplogRow::Node { ino, data: Some(d), .. } = row else { return };
    match &d.content {
        Some(Content::Inline { bytes: Some(b), hash, sha256, .. }) => {
            report.inline_files += 1;
            let s = summarize(b);
            if s.root != *hash || s.sha256 != *sha256 || b.len() as u64 != d.size {
                report.damage.push(format!(
                    "data file {rel}: inode {ino}: inline content does not match its recorded hash or size"
                ));
            }
        }
        Some(Content::Inline { bytes: None, .. }) => {
            report.damage.push(format!("data file {rel}: inode {ino}: inline content missing"));
        }
        Some(Content::Large { hash, .. }) => {
            refs.entry(*hash).or_insert_with(|| (d.size, format!("inode {ino} in {rel}")));
        }
        None => {}
    }
}
