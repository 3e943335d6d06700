//! The oplog: the pond's Delta table of node and directory-entry versions.
//!
//! Owns creating and opening the table, reading the rows current at a version, committing a batch of
//! rows as one Delta version (`commit_batch`), and keeping the table healthy (checkpoints every
//! [`CHECKPOINT_INTERVAL`] versions, compaction of small data files in [`maintenance`]). It knows
//! nothing of inodes' callers: rows in, rows out.
//!
//! **Commits.** delta-rs opens the table and writes checkpoints; a commit is written here: its
//! actions serialized as delta-rs serializes them ([`CommitData`]) and put through the table's log
//! store (a put-if-absent of the version's entry), then fsynced. pond is the table's only writer
//! (the single-writer lock), so a commit needs none of delta-rs's conflict checking, and the table's
//! state after it is known without reading the log back: the version and the active data files are
//! kept here. delta-rs's own commit path re-read the log and re-listed every active file after each
//! commit, which cost a small commit (an fsync of a small file) about 12 ms of CPU. The delta-rs
//! table is brought up to date only when a checkpoint needs it.

pub mod datafile;
pub mod error;
mod guard;
pub mod history;
pub mod log;
pub mod maintenance;
pub mod schema;
mod store;
pub mod tree_shape;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::FutureExt;

use deltalake::kernel::transaction::CommitData;
use deltalake::kernel::{Action, Add};
use deltalake::logstore::CommitOrBytes;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, TableProperty};
use url::Url;

use crate::config::{LARGE_FILE_THRESHOLD, Threshold};
use crate::layout::{LOG_DIR, PondFile, any_checkpoint_version, log_entry_name, read_last_checkpoint};
pub use error::OplogError;
use schema::{NodeData, OplogRow, RowKey};
use store::PondStore;

/// Tries of [`Oplog::open`] before a Delta error is the answer.
const OPEN_ATTEMPTS: u32 = 3;
/// Table property holding the pond's inline/large threshold in bytes.
pub const THRESHOLD_PROPERTY: &str = "pond.threshold";
/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;
/// The largest threshold a pond takes: inline content lives whole in one oplog row (and in memory
/// while a file is written), so a threshold from a damaged table property or a typo must not make
/// that unbounded.
pub const MAX_THRESHOLD: u64 = 64 << 20;
/// Checkpoint every this many versions, so opening after 10,000 commits replays at most this many JSONs.
const CHECKPOINT_INTERVAL: &str = "50";
/// [`CHECKPOINT_INTERVAL`] for a table whose property does not parse.
const DEFAULT_CHECKPOINT_INTERVAL: u64 = 50;

/// What a commit changed, recorded in the Delta commit info and shown by `pond log`.
#[derive(Clone, Debug, Default)]
pub struct CommitSummary {
    pub operation: &'static str,
    pub files_changed: u64,
    pub bytes: u64,
}

/// The outcome of [`Oplog::commit_batch`]: the new version and where each row landed.
#[derive(Clone, Debug)]
pub struct Committed {
    pub version: u64,
    pub file: Arc<str>,
}

/// The rows current at one version: for every key, its latest row (tombstones included).
#[derive(Debug, Default)]
pub struct LoadedRows {
    pub version: u64,
    pub rows: Vec<OplogRow>,
    pub max_seq: u64,
    pub max_ino: u64,
}

/// A pond's Delta table, open for reading or (with the single-writer lock held by the caller) writing.
pub struct Oplog {
    root: PathBuf,
    url: Url,
    /// delta-rs's view of the table: loaded at open, then behind [`Oplog::version`] until a
    /// checkpoint brings it up to date (see the module doc).
    table: DeltaTable,
    /// The loaded or last committed version, with its active data files (path, size).
    version: u64,
    files: BTreeMap<Arc<str>, u64>,
    threshold: Threshold,
    checkpoint_interval: u64,
    /// Latest committed seq of every key, tombstones included: compaction keeps a row only if it is
    /// its key's latest. Built by [`Oplog::load`], kept current by [`Oplog::commit_batch`].
    index: HashMap<RowKey, u64>,
    commits_since_maintenance: u64,
    /// A checkpoint fell due but could not be written (a full disk, say): try again after the
    /// next commit. A missing checkpoint only makes opening slower.
    checkpoint_due: bool,
}

fn table_url(root: &Path) -> Result<Url, OplogError> {
    let abs = std::fs::canonicalize(root).map_err(|e| OplogError::Io { path: root.to_path_buf(), source: e })?;
    Url::from_directory_path(&abs).map_err(|_| OplogError::Corrupt { path: abs, reason: "not an absolute path".into() })
}

/// A table handle that has not read the log yet (`try_from_url` would, and log an error when there is
/// no table yet), reading and writing through a [`PondStore`] that hides the checkpoint files named
/// in `hidden`.
fn unloaded_table(url: &Url, hidden: &BTreeSet<String>) -> Result<DeltaTable, OplogError> {
    let root = url
        .to_file_path()
        .map_err(|()| OplogError::Corrupt { path: PathBuf::from(url.path()), reason: "not a local path".into() })?;
    let store = Arc::new(PondStore::new(&root, hidden.clone()));
    deltalake::DeltaTableBuilder::from_url(url.clone())
        .map(|b| b.with_storage_backend(store, url.clone()))
        .and_then(|b| b.build())
        .map_err(|e| OplogError::delta(url, e))
}

/// Refuse what is not a pond with a message that says so (and never let delta-rs invent a table).
pub fn check_is_pond(root: &Path) -> Result<(), OplogError> {
    if !root.exists() {
        return Err(OplogError::Missing(root.to_path_buf()));
    }
    if !root.join(LOG_DIR).is_dir() {
        return Err(OplogError::NotAPond(root.to_path_buf()));
    }
    Ok(())
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

impl Oplog {
    /// Create a new pond at `root` (absent or an empty directory): the table, then version 1 holding
    /// the root directory.
    pub async fn create(root: &Path, threshold: Threshold) -> Result<Oplog, OplogError> {
        if threshold.0 > MAX_THRESHOLD {
            return Err(OplogError::ThresholdTooLarge(threshold.0));
        }
        if root.exists() {
            let mut entries =
                std::fs::read_dir(root).map_err(|e| OplogError::Io { path: root.to_path_buf(), source: e })?;
            if entries.next().is_some() {
                return Err(OplogError::NotEmpty(root.to_path_buf()));
            }
        }
        std::fs::create_dir_all(root).map_err(|e| OplogError::Io { path: root.to_path_buf(), source: e })?;
        let url = table_url(root)?;
        let table = unloaded_table(&url, &BTreeSet::new())?
            .create()
            .with_table_name("pond")
            .with_comment("pond: one row per node version and per directory-entry version")
            .with_columns(schema::delta_columns())
            .with_configuration_property(TableProperty::CheckpointInterval, Some(CHECKPOINT_INTERVAL))
            .with_configuration_property(TableProperty::EnableExpiredLogCleanup, Some("false"))
            .with_configuration([(THRESHOLD_PROPERTY, Some(threshold.0.to_string()))])
            .with_raise_if_key_not_exists(false)
            .await
            .map_err(|e| OplogError::delta(&url, e))?;
        // The table's first entry, durable before anything builds on it (object_store's local
        // put does not fsync, and a pond whose version 0 is torn does not open).
        let log_dir = root.join(LOG_DIR);
        let first = log_dir.join(log_entry_name(0));
        std::fs::File::open(&first)
            .and_then(|f| f.sync_all())
            .map_err(|e| OplogError::Io { path: first.clone(), source: e })?;
        datafile::sync_dir(&log_dir)?;
        let mut oplog = Oplog::with_table(root, url, table)?;
        let now = now_ns();
        let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        let root_row = OplogRow::Node { ino: ROOT_INO, seq: 1, data: Some(NodeData::empty_dir(uid, gid, now)) };
        oplog.commit_batch(vec![root_row], CommitSummary { operation: "init", files_changed: 1, bytes: 0 }).await?;
        Ok(oplog)
    }

    /// Open an existing pond at its latest version, or at `version`.
    pub async fn open(root: &Path, version: Option<u64>) -> Result<Oplog, OplogError> {
        // The Delta library lists the whole log to open any version. Beside a writer, a listing
        // taken while commits land can miss an entry made during it (directories list in hash
        // order) and see a gap that is not there (`pond verify` of a mounted pond reported one).
        // A gap or damage on disk is still there when tried again.
        let mut attempt = 1;
        loop {
            match Self::open_once(root, version).await {
                Err(OplogError::Delta { .. }) if attempt < OPEN_ATTEMPTS => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                result => return result,
            }
        }
    }

    async fn open_once(root: &Path, version: Option<u64>) -> Result<Oplog, OplogError> {
        check_is_pond(root)?;
        let hidden = damaged_checkpoints(root, version)?;
        let url = table_url(root)?;
        let mut table = unloaded_table(&url, &hidden)?;
        // delta-rs reads the log here; should it still panic on damage that damaged_checkpoints does
        // not foresee, the panic ends as an error naming the log, not as a crash of the caller.
        let guard = |what: &'static str| OplogError::Corrupt {
            path: root.join(LOG_DIR),
            reason: format!("the Delta library panicked while {what} (a damaged checkpoint or log entry?)"),
        };
        match version {
            None => AssertUnwindSafe(table.load())
                .catch_unwind()
                .await
                .map_err(|_| guard("loading the table"))?
                .map_err(|e| OplogError::delta(&url, e))?,
            Some(v) => {
                let loaded = AssertUnwindSafe(table.load_version(v))
                    .catch_unwind()
                    .await
                    .map_err(|_| guard("loading a version"))?;
                if let Err(e) = loaded {
                    let mut latest = unloaded_table(&url, &hidden)?;
                    latest.load().await.map_err(|e| OplogError::delta(&url, e))?;
                    let latest_v = latest.version().unwrap_or(0);
                    if v > latest_v {
                        return Err(OplogError::NoSuchVersion { asked: v, latest: latest_v });
                    }
                    return Err(OplogError::delta(&url, e));
                }
            }
        }
        let mut oplog = Oplog::with_table(root, url, table)?;
        // A writer replaces a damaged checkpoint (or hint) at its next commit, so later opens need
        // not replay the log.
        oplog.checkpoint_due = !hidden.is_empty() || store::hint_unusable(root, &hidden);
        Ok(oplog)
    }

    fn with_table(root: &Path, url: Url, table: DeltaTable) -> Result<Oplog, OplogError> {
        let mut oplog = Oplog {
            root: root.to_path_buf(),
            url,
            table,
            version: 0,
            files: BTreeMap::new(),
            threshold: Threshold(LARGE_FILE_THRESHOLD),
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            index: HashMap::new(),
            commits_since_maintenance: 0,
            checkpoint_due: false,
        };
        oplog.state_from_table()?;
        Ok(oplog)
    }

    /// Take the version, active files and settings from delta-rs's (just loaded) view.
    fn state_from_table(&mut self) -> Result<(), OplogError> {
        use deltalake::table::config::TablePropertiesExt;
        let snapshot = self.table.snapshot().map_err(|e| OplogError::delta(&self.url, e))?;
        let mut files = BTreeMap::new();
        for f in snapshot.log_data().iter() {
            let path = f.path();
            let rel: &str = path.as_ref();
            PondFile::data(rel).map_err(|e| OplogError::Corrupt {
                path: self.root.join(LOG_DIR),
                reason: format!("the log names a data file outside the table: {e}"),
            })?;
            files.insert(Arc::from(rel), f.size().max(0) as u64);
        }
        let configured = snapshot.metadata().configuration().get(THRESHOLD_PROPERTY).and_then(|v| v.parse().ok());
        self.threshold = Threshold(configured.unwrap_or(LARGE_FILE_THRESHOLD).min(MAX_THRESHOLD));
        self.checkpoint_interval = snapshot.table_config().checkpoint_interval().get();
        self.version = self.table.version().unwrap_or(0);
        self.files = files;
        Ok(())
    }

    /// Bring delta-rs's view up to [`Oplog::version`] (commits written here leave it behind).
    async fn table_up_to_date(&mut self) -> Result<(), OplogError> {
        if self.table.version().is_some_and(|v| v >= self.version) {
            return Ok(());
        }
        self.table.update_incremental(Some(self.version)).await.map_err(|e| OplogError::delta(&self.url, e))
    }

    /// Read commits that landed beyond the version known here (an earlier commit whose outcome was
    /// lost): delta-rs reads the log, and the state is taken from it.
    async fn catch_up(&mut self) -> Result<(), OplogError> {
        self.table.update_incremental(None).await.map_err(|e| OplogError::delta(&self.url, e))?;
        self.state_from_table()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// The threshold recorded when the pond was created (at most [`MAX_THRESHOLD`], whatever the
    /// table property says).
    pub fn threshold(&self) -> Threshold {
        self.threshold
    }

    /// The active data files at the loaded version, relative to the root, with their sizes.
    pub fn data_files(&self) -> Result<Vec<(Arc<str>, u64)>, OplogError> {
        Ok(self.files.iter().map(|(p, s)| (p.clone(), *s)).collect())
    }

    /// Read the rows current at the loaded version (without inline content: rows carry their location).
    /// Also (re)builds the committed index used by compaction.
    pub fn load(&mut self) -> Result<LoadedRows, OplogError> {
        let files = self.data_files()?;
        let mut latest: HashMap<RowKey, OplogRow> = HashMap::new();
        for (rel, _) in &files {
            for row in datafile::read_rows(&self.root, rel, false)? {
                let key = row.key();
                match latest.get(&key) {
                    Some(old) if old.seq() >= row.seq() => {}
                    _ => {
                        latest.insert(key, row);
                    }
                }
            }
        }
        let mut loaded = LoadedRows { version: self.version(), ..Default::default() };
        self.index.clear();
        for (key, row) in latest {
            loaded.max_seq = loaded.max_seq.max(row.seq());
            match &row {
                OplogRow::Node { ino, .. } => loaded.max_ino = loaded.max_ino.max(*ino),
                OplogRow::Dirent { child: Some(c), .. } => loaded.max_ino = loaded.max_ino.max(*c),
                OplogRow::Dirent { .. } => {}
            }
            self.index.insert(key, row.seq());
            loaded.rows.push(row);
        }
        loaded.rows.sort_by_key(|r| r.seq());
        Ok(loaded)
    }

    /// Commit `rows` as one Delta version. Every large object the rows reference must already be
    /// durable (`LargeFileStore::put_*` returns only then); the data file is fsynced before the log
    /// entry is written, and the log entry before this returns.
    pub async fn commit_batch(&mut self, rows: Vec<OplogRow>, summary: CommitSummary) -> Result<Committed, OplogError> {
        let first_seq = rows.first().map(|r| r.seq()).unwrap_or(0);
        let name = format!("part-{first_seq:020}-{}.parquet", uuid::Uuid::new_v4());
        let size = datafile::write_data_file(&self.root, &name, &rows)?;
        let add = Add {
            path: name.clone(),
            size: size as i64,
            data_change: true,
            modification_time: now_ns() / 1_000_000,
            ..Default::default()
        };
        let op = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
        let version = match self.try_commit_actions(vec![Action::Add(add)], op, &summary).await {
            Ok(v) => v,
            Err(FailedCommit { error, landed }) => {
                // When no log entry names the data file it goes, so a full disk does not keep
                // filling with the data files of commits that never happened.
                if !landed && let Err(rm) = std::fs::remove_file(self.root.join(&name)) {
                    tracing::warn!("could not remove {name} after a failed commit: {rm}");
                }
                return Err(error);
            }
        };
        for row in &rows {
            self.index.insert(row.key(), row.seq());
        }
        self.commits_since_maintenance += 1;
        Ok(Committed { version, file: Arc::from(name.as_str()) })
    }

    async fn commit_actions(
        &mut self,
        actions: Vec<Action>,
        op: DeltaOperation,
        summary: &CommitSummary,
    ) -> Result<u64, OplogError> {
        self.try_commit_actions(actions, op, summary).await.map_err(|f| f.error)
    }

    /// Commit `actions` as the next version (see "Commits" in the module doc); a failure says
    /// whether its log entry landed.
    async fn try_commit_actions(
        &mut self,
        actions: Vec<Action>,
        op: DeltaOperation,
        summary: &CommitSummary,
    ) -> Result<u64, FailedCommit> {
        let not_landed = |error| FailedCommit { error, landed: false };
        let landed = |error| FailedCommit { error, landed: true };
        let log_dir = self.root.join(LOG_DIR);
        if log_dir.join(log_entry_name(self.version + 1)).exists() {
            // An earlier commit landed but our view of the table missed it: catch up first, so
            // the entry that exists after a failure below can only be this commit's.
            self.catch_up().await.map_err(not_landed)?;
        }
        let attempted = self.version + 1;
        let metadata = HashMap::from([
            ("pond.operation".to_string(), serde_json::json!(summary.operation)),
            ("pond.files_changed".to_string(), serde_json::json!(summary.files_changed)),
            ("pond.bytes".to_string(), serde_json::json!(summary.bytes)),
        ]);
        let data = CommitData::new(actions, op, metadata, Vec::new());
        let bytes = data.get_bytes().map_err(|e| not_landed(OplogError::delta(&self.url, e.into())))?;
        let entry = log_dir.join(log_entry_name(attempted));
        let written = self
            .table
            .log_store()
            .write_commit_entry(attempted, CommitOrBytes::LogBytes(bytes.clone()), uuid::Uuid::new_v4())
            .await;
        if let Err(e) = written {
            // The entry is written whole or not at all; one holding this commit's bytes is this
            // commit, whatever failed after it.
            let ours = std::fs::read(&entry).is_ok_and(|on_disk| on_disk == bytes);
            if !ours {
                return Err(not_landed(OplogError::delta(&self.url, e.into())));
            }
            tracing::warn!("version {attempted} is committed, though writing it reported: {e}");
        }
        self.version = attempted;
        for action in &data.actions {
            match action {
                Action::Add(add) => {
                    self.files.insert(Arc::from(add.path.as_str()), add.size.max(0) as u64);
                }
                Action::Remove(remove) => {
                    self.files.remove(remove.path.as_str());
                }
                _ => {}
            }
        }
        // object_store's local put does not fsync: make the log entry itself durable.
        std::fs::File::open(&entry)
            .and_then(|f| f.sync_all())
            .map_err(|e| landed(OplogError::Io { path: entry.clone(), source: e }))?;
        datafile::sync_dir(&log_dir).map_err(landed)?;
        self.checkpoint_if_due(attempted).await;
        Ok(attempted)
    }

    /// Write a checkpoint every [`CHECKPOINT_INTERVAL`] versions (or after a commit whose
    /// checkpoint failed). A failure is logged and retried after the next commit: the commit it
    /// follows stands.
    async fn checkpoint_if_due(&mut self, version: u64) {
        if !self.checkpoint_due && !(version + 1).is_multiple_of(self.checkpoint_interval.max(1)) {
            return;
        }
        let written = match self.table_up_to_date().await {
            Ok(()) => deltalake::checkpoints::create_checkpoint(&self.table, None).await,
            Err(e) => Err(deltalake::DeltaTableError::Generic(e.to_string())),
        };
        match written {
            Ok(()) => self.checkpoint_due = false,
            Err(e) => {
                tracing::warn!("checkpoint at version {version} failed, will retry after the next commit: {e}");
                self.checkpoint_due = true;
            }
        }
    }
}

impl Oplog {
    /// Writes a checkpoint of the loaded version (and `_last_checkpoint` naming it), then makes
    /// both durable: prune deletes the log entries before it only once it is on the disk.
    pub async fn write_checkpoint(&mut self) -> Result<(), OplogError> {
        self.table_up_to_date().await?;
        deltalake::checkpoints::create_checkpoint(&self.table, None)
            .await
            .map_err(|e| OplogError::delta(&self.url, e))?;
        let log_dir = self.root.join(LOG_DIR);
        for name in [crate::layout::checkpoint_name(self.version()), crate::layout::LAST_CHECKPOINT.to_string()] {
            let path = log_dir.join(name);
            std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|e| OplogError::Io { path, source: e })?;
        }
        datafile::sync_dir(&log_dir)
    }

    /// How many data files are active at the loaded version.
    pub fn active_file_count(&self) -> Result<usize, OplogError> {
        Ok(self.data_files()?.len())
    }
}

/// A commit that failed: its error, and whether its log entry landed (then what the entry names
/// must stay).
struct FailedCommit {
    error: OplogError,
    landed: bool,
}

/// The checkpoint files a Delta reader opening `version` (or the latest) would read that do not
/// read, by name in `_delta_log`: to be hidden from it (see [`store`]), so it takes an older
/// checkpoint or the JSON log. A reader uses the newest checkpoint version up to its own, and
/// `_last_checkpoint` may point it at another: those are read here first, newest first, each
/// version whole, until one reads (a version with one damaged file is hidden whole). delta-kernel
/// reads checkpoints with parquet, which panics on some damage and believes what a file claims (see
/// [`crate::parquet_bounds`]), so it must never meet a damaged one.
fn damaged_checkpoints(root: &Path, version: Option<u64>) -> Result<BTreeSet<String>, OplogError> {
    let log = root.join(LOG_DIR);
    let io = |e: std::io::Error| OplogError::Io { path: log.clone(), source: e };
    let mut by_version: BTreeMap<u64, Vec<(String, PathBuf)>> = BTreeMap::new();
    for entry in std::fs::read_dir(&log).map_err(io)? {
        let entry = entry.map_err(io)?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        let Some(v) = any_checkpoint_version(&name) else { continue };
        if version.is_none_or(|target| v <= target) {
            by_version.entry(v).or_default().push((name, entry.path()));
        }
    }
    // A hint that is not one (or is huge) names nothing worth checking.
    let hinted = read_last_checkpoint(root);
    let mut hidden = BTreeSet::new();
    let mut found_good = false;
    for (v, files) in by_version.iter().rev() {
        if found_good && Some(*v) != hinted {
            continue;
        }
        match files.iter().find_map(|(name, path)| datafile::check_parquet_file(path).err().map(|e| (name, e))) {
            None => found_good = true,
            Some((name, e)) => {
                tracing::warn!("checkpoint {name} does not read, reading the JSON log instead: {e}");
                hidden.extend(files.iter().map(|(name, _)| name.clone()));
            }
        }
    }
    Ok(hidden)
}
