//! [`TableMirror`]: a local copy of what one version of a replica's table needs — the log entries
//! from its base (the newest checkpoint before it, or version 0), that checkpoint, and the data
//! files active at the version — laid out as a pond (`table/`), so the filesystem core opens it as
//! it opens any pond. Large objects are never fetched here.
//!
//! **Finding the version.** `_delta_log/_last_checkpoint` names a recent checkpoint; the log is
//! listed from it (one request per thousand names, from the checkpoint on rather than from version
//! 0), and the newest version readable from a checkpoint through entries all present is the one
//! served (a replica receives each entry after the files it names, and entries in order, so a
//! listed entry is complete). `-o version=N` lists the whole log when N is older than the hint.
//! A refresh lists only what sorts after the version served.
//!
//! **What is kept, and trusted.** Each file is downloaded to a temp file and renamed in, and a
//! record of it is kept beside (`meta/`): its size, the remote's ETag and the BLAKE3 of what was
//! written. A file is reused only when it still hashes to its record, has the size the log (data
//! files) or the listing (log entries, checkpoints) gives, and — for log files — the remote's ETag
//! is the one recorded: an entry of the same name that changed on the remote means another history
//! was put at the URL, and everything cached for it is dropped ([`Rewritten`]). Table files are
//! never removed while the cache is in use: data files are immutable and uniquely named, and a
//! mount sharing the cache may be reading an older version's.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::error::{FetchError, RemoteMountError};
use super::fetch::Fetcher;
use crate::layout::{LOG_DIR, MAX_LAST_CHECKPOINT_SIZE, PondFile, log_entry_name, parse_last_checkpoint};
use crate::oplog::history::{FileActions, HistoryEntry, parse_log_entry, read_history};
use crate::oplog::log::{Base, LogView, checkpoint_adds, describe_readable};

/// Table files downloaded at once.
const FILES_IN_FLIGHT: usize = 16;
/// The largest table file taken (a data file of a few million rows; a log entry is far smaller).
const MAX_TABLE_FILE: u64 = 4 << 30;

/// A log file as the remote lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Listed {
    size: u64,
    etag: Option<String>,
}

/// What is kept beside each mirrored file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    size: u64,
    etag: Option<String>,
    b3: String,
}

/// A log file on the remote no longer has the ETag it had when it was mirrored: another history.
#[derive(Debug)]
pub struct Rewritten(pub PondFile);

/// The mirror of one replica's table.
pub struct TableMirror {
    fetcher: Arc<Fetcher>,
    table: PathBuf,
    meta: PathBuf,
    tmp: PathBuf,
    /// Log files the remote has listed (the log as far as this mount has looked).
    listed: Mutex<BTreeMap<PondFile, Listed>>,
    /// Files checked against their records in this process (not hashed again).
    checked: Mutex<HashSet<PondFile>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TableMirror {
    /// The mirror under `dir` (this replica's cache directory): `table/`, `meta/`, `tmp/`.
    pub fn open(fetcher: Arc<Fetcher>, dir: &Path) -> Result<TableMirror, RemoteMountError> {
        let table = dir.join("table");
        let (meta, tmp) = (dir.join("meta"), dir.join("tmp"));
        for d in [table.join(LOG_DIR), meta.clone(), tmp.clone()] {
            super::make_private_dir(&d).map_err(|e| RemoteMountError::cache(&d, e))?;
        }
        Ok(TableMirror { fetcher, table, meta, tmp, listed: Mutex::default(), checked: Mutex::default() })
    }

    /// The mirrored table: a pond layout the filesystem core opens.
    pub fn table(&self) -> &Path {
        &self.table
    }

    /// Removes everything mirrored (another history is at the URL).
    pub fn clear(&self) -> Result<(), RemoteMountError> {
        lock(&self.listed).clear();
        lock(&self.checked).clear();
        for d in [&self.table, &self.meta] {
            std::fs::remove_dir_all(d).map_err(|e| RemoteMountError::cache(d, e))?;
        }
        for d in [self.table.join(LOG_DIR), self.meta.clone()] {
            super::make_private_dir(&d).map_err(|e| RemoteMountError::cache(&d, e))?;
        }
        Ok(())
    }

    fn url(&self) -> &str {
        self.fetcher.url()
    }

    fn fetch_error(&self, what: impl Into<String>, source: FetchError) -> RemoteMountError {
        RemoteMountError::Fetch { url: self.url().to_string(), what: what.into(), source }
    }

    /// Brings the mirror to `want` (the newest readable version when `None`) and returns it; or,
    /// with `newer_than`, to the newest version past it, `None` when there is none yet.
    pub fn sync(
        &self,
        want: Option<u64>,
        newer_than: Option<u64>,
    ) -> Result<Result<Option<u64>, Rewritten>, RemoteMountError> {
        self.list(want, newer_than)?;
        let listed = lock(&self.listed).clone();
        let view = presence(&listed);
        let readable = view.readable();
        let pick = match want {
            Some(n) => {
                readable.iter().find(|(v, _)| *v == n).copied().ok_or_else(|| RemoteMountError::NoSuchVersion {
                    url: self.url().to_string(),
                    asked: n,
                    holds: format!("it holds {}", describe_readable(&readable)),
                })?
            }
            None => *readable.last().ok_or_else(|| self.unreadable(&listed))?,
        };
        let (target, base) = pick;
        if newer_than.is_some_and(|current| target <= current) {
            return Ok(Ok(None));
        }
        let first = match base {
            Base::Start => 0,
            Base::Checkpoint(c) => c + 1,
        };
        let mut log_files: Vec<PondFile> = (first..=target).map(PondFile::Log).collect();
        if let Base::Checkpoint(c) = base {
            log_files.push(PondFile::Checkpoint(c));
        }
        let wanted: Vec<(PondFile, Option<Listed>)> =
            log_files.into_iter().map(|f| (f.clone(), listed.get(&f).cloned())).collect();
        if let Err(rewritten) = self.fetch_all(wanted)? {
            return Ok(Err(rewritten));
        }
        let mut entries = BTreeMap::new();
        for v in first..=target {
            entries.insert(v, self.read_entry(v)?);
        }
        let checkpoints: BTreeSet<u64> = match base {
            Base::Checkpoint(c) => [c].into(),
            Base::Start => BTreeSet::new(),
        };
        let active = LogView::from_parts(entries, checkpoints).active_files(&[target].into(), &mut |c| {
            checkpoint_adds(&PondFile::Checkpoint(c).local_path(&self.table))
        })?;
        let files = active.get(&target).ok_or_else(|| RemoteMountError::BadTable {
            url: self.url().to_string(),
            name: format!("{LOG_DIR}/{}", log_entry_name(target)),
            reason: "the version does not replay from its base".into(),
        })?;
        let mut data = Vec::with_capacity(files.len());
        for (name, size) in files {
            let file = PondFile::data(name).map_err(|e| RemoteMountError::BadTable {
                url: self.url().to_string(),
                name: name.clone(),
                reason: format!("the log names a data file outside the table: {e}"),
            })?;
            data.push((file, Some(Listed { size: *size, etag: None })));
        }
        match self.fetch_all(data)? {
            Ok(()) => Ok(Ok(Some(target))),
            Err(rewritten) => Ok(Err(rewritten)),
        }
    }

    /// The history as `pond log` prints it: every log entry the remote holds, mirrored.
    pub fn history(&self) -> Result<Result<Vec<HistoryEntry>, Rewritten>, RemoteMountError> {
        let metas = self.list_from(None)?;
        let listed = lock(&self.listed).clone();
        let entries: Vec<(PondFile, Option<Listed>)> = listed
            .iter()
            .filter(|(f, _)| matches!(f, PondFile::Log(_)))
            .map(|(f, l)| (f.clone(), Some(l.clone())))
            .collect();
        if entries.is_empty() {
            return Err(self.unreadable(&listed));
        }
        if let Err(rewritten) = self.fetch_all(entries)? {
            return Ok(Err(rewritten));
        }
        let on_remote: BTreeSet<u64> =
            metas.iter().filter_map(|f| if let PondFile::Log(v) = f { Some(*v) } else { None }).collect();
        let mut history = read_history(&self.table)?;
        history.retain(|e| on_remote.contains(&e.version));
        Ok(Ok(history))
    }

    fn unreadable(&self, listed: &BTreeMap<PondFile, Listed>) -> RemoteMountError {
        if listed.keys().any(|f| matches!(f, PondFile::Log(_) | PondFile::Checkpoint(_))) {
            RemoteMountError::BadTable {
                url: self.url().to_string(),
                name: LOG_DIR.to_string(),
                reason: "no version can be read: the log has a gap before every version and no checkpoint after it"
                    .into(),
            }
        } else {
            RemoteMountError::NotAReplica(self.url().to_string())
        }
    }

    /// Lists the log for [`sync`](Self::sync): after `newer_than`, or from the checkpoint the
    /// hint names (the whole log when the hint is missing, newer than `want`, or names nothing).
    fn list(&self, want: Option<u64>, newer_than: Option<u64>) -> Result<(), RemoteMountError> {
        if let Some(current) = newer_than {
            self.list_from(Some(format!("{LOG_DIR}/{}", log_entry_name(current))))?;
            return Ok(());
        }
        let hint = self.last_checkpoint()?.filter(|c| want.is_none_or(|n| *c <= n));
        if let Some(c) = hint {
            self.list_from(Some(format!("{LOG_DIR}/{c:020}")))?;
            let readable = presence(&lock(&self.listed)).readable();
            if readable.iter().any(|(v, _)| want.is_none_or(|n| *v == n)) {
                return Ok(());
            }
        }
        self.list_from(None)?;
        Ok(())
    }

    /// Lists `_delta_log/` after `offset` into `listed`; returns the layout files listed.
    fn list_from(&self, offset: Option<String>) -> Result<Vec<PondFile>, RemoteMountError> {
        let f = &self.fetcher;
        let metas = f
            .block_on(f.list(LOG_DIR, offset.as_deref(), f.deadline()))
            .map_err(|e| self.fetch_error(format!("listing {LOG_DIR}/"), e))?;
        let mut listed = lock(&self.listed);
        let mut out = Vec::new();
        for meta in metas {
            // Names outside the layout (a writer's staging files, other kinds of checkpoint) are
            // not part of any version pond reads.
            let Ok(file @ (PondFile::Log(_) | PondFile::Checkpoint(_))) = PondFile::parse(meta.location.as_ref())
            else {
                continue;
            };
            listed.insert(file.clone(), Listed { size: meta.size, etag: meta.e_tag.clone() });
            out.push(file);
        }
        Ok(out)
    }

    /// The version `_last_checkpoint` names, if it is there and is a hint.
    fn last_checkpoint(&self) -> Result<Option<u64>, RemoteMountError> {
        let f = &self.fetcher;
        match f.block_on(f.get_whole(&PondFile::LastCheckpoint, MAX_LAST_CHECKPOINT_SIZE, f.deadline())) {
            Ok(got) => Ok(parse_last_checkpoint(&got.bytes)),
            Err(FetchError::NotFound | FetchError::Refused(_)) => Ok(None),
            Err(e) => Err(self.fetch_error("reading _delta_log/_last_checkpoint", e)),
        }
    }

    fn read_entry(&self, version: u64) -> Result<FileActions, RemoteMountError> {
        let path = PondFile::Log(version).local_path(&self.table);
        let text = std::fs::read_to_string(&path).map_err(|e| RemoteMountError::cache(&path, e))?;
        Ok(parse_log_entry(&text, &path)?)
    }

    fn record_path(&self, file: &PondFile) -> PathBuf {
        self.meta.join(file.name().replace('/', "%"))
    }

    fn record(&self, file: &PondFile) -> Option<Record> {
        serde_json::from_slice(&std::fs::read(self.record_path(file)).ok()?).ok()
    }

    /// `Ok(true)` when the mirrored `file` can be used as the remote lists it (`listed`); an error
    /// when its ETag changed on the remote.
    fn usable(&self, file: &PondFile, listed: &Option<Listed>) -> Result<bool, Rewritten> {
        let Some(record) = self.record(file) else { return Ok(false) };
        if let Some(listed) = listed {
            let is_log = matches!(file, PondFile::Log(_) | PondFile::Checkpoint(_));
            if is_log && listed.etag.is_some() && record.etag.is_some() && listed.etag != record.etag {
                return Err(Rewritten(file.clone()));
            }
            if listed.size != record.size {
                return Ok(false);
            }
        }
        if lock(&self.checked).contains(file) {
            return Ok(true);
        }
        let path = file.local_path(&self.table);
        let same = std::fs::read(&path)
            .is_ok_and(|b| b.len() as u64 == record.size && blake3::hash(&b).to_hex().as_str() == record.b3);
        if same {
            lock(&self.checked).insert(file.clone());
        } else {
            tracing::warn!(file = %path.display(), "a cached table file does not match its record; fetching it again");
        }
        Ok(same)
    }

    /// Makes sure each file is mirrored as listed (its size and, for log files, its ETag),
    /// downloading what is missing or stale, [`FILES_IN_FLIGHT`] at a time.
    fn fetch_all(&self, files: Vec<(PondFile, Option<Listed>)>) -> Result<Result<(), Rewritten>, RemoteMountError> {
        let mut missing = Vec::new();
        for (file, listed) in files {
            match self.usable(&file, &listed) {
                Ok(true) => {}
                Ok(false) => missing.push((file, listed)),
                Err(rewritten) => return Ok(Err(rewritten)),
            }
        }
        if missing.is_empty() {
            return Ok(Ok(()));
        }
        tracing::debug!(files = missing.len(), "fetching table files");
        let f = &self.fetcher;
        let deadline = f.deadline();
        f.block_on(
            futures::stream::iter(missing)
                .map(|(file, listed)| self.fetch_one(file, listed, deadline))
                .buffer_unordered(FILES_IN_FLIGHT)
                .try_collect::<Vec<()>>(),
        )?;
        Ok(Ok(()))
    }

    async fn fetch_one(
        &self,
        file: PondFile,
        listed: Option<Listed>,
        deadline: std::time::Instant,
    ) -> Result<(), RemoteMountError> {
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{}-{serial}", std::process::id()));
        let fetched = self.fetcher.get_to_file(&file, &tmp, MAX_TABLE_FILE, deadline).await;
        let done = (|| {
            let (meta, b3) = fetched.map_err(|e| self.fetch_error(format!("fetching {file}"), e))?;
            if let Some(listed) = &listed
                && listed.size != meta.size
            {
                return Err(RemoteMountError::BadTable {
                    url: self.url().to_string(),
                    name: file.name(),
                    reason: format!("{} bytes, but the log says {}", meta.size, listed.size),
                });
            }
            let dest = file.local_path(&self.table);
            std::fs::rename(&tmp, &dest).map_err(|e| RemoteMountError::cache(&dest, e))?;
            let record = Record { size: meta.size, etag: meta.e_tag.clone(), b3: b3.to_hex().to_string() };
            let json =
                serde_json::to_vec(&record).map_err(|e| RemoteMountError::cache(self.record_path(&file), e.into()))?;
            let rec_path = self.record_path(&file);
            let rec_tmp = self.tmp.join(format!("{}-{serial}.record", std::process::id()));
            std::fs::write(&rec_tmp, json)
                .and_then(|()| std::fs::rename(&rec_tmp, &rec_path))
                .map_err(|e| RemoteMountError::cache(&rec_path, e))?;
            lock(&self.checked).insert(file.clone());
            Ok(())
        })();
        if done.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        done
    }
}

/// The log's versions and checkpoints as listed (entries' contents not known yet).
fn presence(listed: &BTreeMap<PondFile, Listed>) -> LogView {
    let entries = listed.keys().filter_map(|f| if let PondFile::Log(v) = f { Some(*v) } else { None });
    let checkpoints = listed.keys().filter_map(|f| if let PondFile::Checkpoint(v) = f { Some(*v) } else { None });
    LogView::from_names(entries, checkpoints)
}
