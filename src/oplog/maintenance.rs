//! Keeping the table healthy as it grows: compaction of small data files.
//!
//! Every commit adds one small data file, and delta-rs's per-commit cost grows with the number of
//! active files (~0.15 ms each here), as does opening the pond. So after commits, files are merged by
//! size tier (an LSM-style policy): when a tier holds [`FILES_PER_TIER`] files, they are rewritten as
//! one, keeping only each key's latest row. Old files stay on disk (history reads them); the merge is a
//! Remove+Add commit with `dataChange = false`. Checkpoints come from delta-rs's post-commit hook
//! (`delta.checkpointInterval`).

use std::sync::Arc;

use deltalake::kernel::{Action, Add, Remove};
use deltalake::protocol::DeltaOperation;

use super::schema::OplogRow;
use super::{CommitSummary, Oplog, OplogError, datafile, now_ns};

/// Merge a tier once it holds this many files.
pub const FILES_PER_TIER: usize = 10;
/// Upper bounds of the size tiers; files above the last are never merged again.
const TIER_LIMITS: [u64; 3] = [256 << 10, 8 << 20, 128 << 20];

fn tier_of(size: u64) -> Option<usize> {
    TIER_LIMITS.iter().position(|&limit| size < limit)
}

impl Oplog {
    /// Run compaction if a tier is full. Returns the version of the compaction commit, if one was made.
    pub async fn maintain(&mut self) -> Result<Option<u64>, OplogError> {
        let files = self.data_files()?;
        let mut tiers: Vec<Vec<(Arc<str>, u64)>> = vec![Vec::new(); TIER_LIMITS.len()];
        for (rel, size) in &files {
            if let Some(t) = tier_of(*size) {
                tiers[t].push((rel.clone(), *size));
            }
        }
        let Some(victims) = tiers.into_iter().find(|t| t.len() >= FILES_PER_TIER) else {
            return Ok(None);
        };
        self.compact(victims, files.len()).await.map(|(v, _)| Some(v))
    }

    /// Rewrite `victims` as one file. When they are every active file, tombstones are dropped too:
    /// nothing older remains for them to hide. Returns the new version and the new file (none when
    /// no row was left).
    pub async fn compact(
        &mut self,
        victims: Vec<(Arc<str>, u64)>,
        active_files: usize,
    ) -> Result<(u64, Option<Arc<str>>), OplogError> {
        let whole_table = victims.len() == active_files;
        let mut kept: Vec<OplogRow> = Vec::new();
        for (rel, _) in &victims {
            for row in datafile::read_rows(self.root(), rel, true)? {
                let key = row.key();
                if self.index.get(&key) != Some(&row.seq()) {
                    continue; // superseded by a later row elsewhere
                }
                if whole_table && row.is_tombstone() {
                    self.index.remove(&key);
                    continue;
                }
                kept.push(row);
            }
        }
        kept.sort_by_key(|r| r.seq());
        let now_ms = now_ns() / 1_000_000;
        let mut actions: Vec<Action> = victims
            .iter()
            .map(|(rel, size)| {
                Action::Remove(Remove {
                    path: rel.to_string(),
                    data_change: false,
                    deletion_timestamp: Some(now_ms),
                    extended_file_metadata: Some(true),
                    size: Some(*size as i64),
                    ..Default::default()
                })
            })
            .collect();
        let mut written = None;
        if !kept.is_empty() {
            let first_seq = kept.first().map(|r| r.seq()).unwrap_or(0);
            let name = format!("part-{first_seq:020}-{}-compacted.parquet", uuid::Uuid::new_v4());
            let size = datafile::write_data_file(self.root(), &name, &kept)?;
            written = Some(Arc::from(name.as_str()));
            actions.push(Action::Add(Add {
                path: name,
                size: size as i64,
                data_change: false,
                modification_time: now_ms,
                ..Default::default()
            }));
        }
        let op = DeltaOperation::Optimize { predicate: None, target_size: TIER_LIMITS[0] as i64 };
        let summary = CommitSummary { operation: "compact", files_changed: 0, bytes: 0 };
        let version = self.commit_actions(actions, op, &summary).await?;
        self.commits_since_maintenance = 0;
        Ok((version, written))
    }
}
