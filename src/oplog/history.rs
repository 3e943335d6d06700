//! The pond's history as `pond log` prints it: one entry per Delta version, read from the commit
//! info of each `_delta_log/NNN.json` (pond keeps every log entry: expired-log cleanup is off).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::OplogError;
use crate::layout::{LOG_DIR, PondFile, checkpoint_version, log_entry_name, log_entry_version};

/// One Delta version of the pond.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryEntry {
    pub version: u64,
    pub timestamp_ms: i64,
    pub operation: String,
    pub files_changed: u64,
    pub bytes: u64,
}

/// The JSON log entries present in `_delta_log`, as (version, path), oldest first. Other names
/// (checkpoints, `_last_checkpoint`, a writer's staging files) are not log entries and are skipped.
pub fn log_entries(root: &Path) -> Result<Vec<(u64, PathBuf)>, OplogError> {
    super::check_is_pond(root)?;
    versions_named(root, log_entry_version)
}

/// The versions of the checkpoints in `_delta_log`, sorted.
pub fn checkpoint_versions(root: &Path) -> Result<Vec<u64>, OplogError> {
    Ok(versions_named(root, checkpoint_version)?.into_iter().map(|(v, _)| v).collect())
}

/// The files of `_delta_log` whose name `parse` reads as a version, sorted by version.
fn versions_named(root: &Path, parse: fn(&str) -> Option<u64>) -> Result<Vec<(u64, PathBuf)>, OplogError> {
    let log = root.join(LOG_DIR);
    let io = |e: std::io::Error| OplogError::Io { path: log.clone(), source: e };
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(&log).map_err(io)? {
        let entry = entry.map_err(io)?;
        if let Some(v) = entry.file_name().to_str().and_then(parse) {
            versions.push((v, entry.path()));
        }
    }
    versions.sort();
    Ok(versions)
}

/// Every version whose log entry is present, oldest first.
pub fn read_history(root: &Path) -> Result<Vec<HistoryEntry>, OplogError> {
    let versions = log_entries(root)?;
    let mut out = Vec::with_capacity(versions.len());
    for (version, path) in versions {
        let text = std::fs::read_to_string(&path).map_err(|e| OplogError::Io { path: path.clone(), source: e })?;
        let mut entry = HistoryEntry { version, timestamp_ms: 0, operation: String::new(), files_changed: 0, bytes: 0 };
        let mut found = false;
        for value in json_lines(&text, &path)? {
            if let Some(info) = value.get("commitInfo") {
                found = true;
                entry.timestamp_ms = info.get("timestamp").and_then(|t| t.as_i64()).unwrap_or(0);
                entry.operation = info
                    .get("pond.operation")
                    .and_then(|o| o.as_str())
                    .or_else(|| info.get("operation").and_then(|o| o.as_str()))
                    .unwrap_or("")
                    .to_string();
                entry.files_changed = info.get("pond.files_changed").and_then(|n| n.as_u64()).unwrap_or(0);
                entry.bytes = info.get("pond.bytes").and_then(|n| n.as_u64()).unwrap_or(0);
            }
        }
        if !found {
            entry.operation = "unknown".into();
        }
        out.push(entry);
    }
    Ok(out)
}

fn json_lines(text: &str, path: &Path) -> Result<Vec<serde_json::Value>, OplogError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).map_err(|e| OplogError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("not a JSON log entry: {e}"),
            })
        })
        .collect()
}

/// The data-file actions of one log entry: paths as the log names them (percent-decoded, not yet
/// checked: callers decide what a safe name is).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileActions {
    /// Files this version adds, with the size the log records.
    pub added: Vec<(String, u64)>,
    pub removed: Vec<String>,
}

/// Parse one JSON log entry (`path` only names it in errors).
pub fn parse_log_entry(text: &str, path: &Path) -> Result<FileActions, OplogError> {
    let mut actions = FileActions::default();
    for value in json_lines(text, path)? {
        let bad = |what: &str| OplogError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("{what} action without a path"),
        };
        if let Some(add) = value.get("add") {
            let p = add.get("path").and_then(|p| p.as_str()).ok_or_else(|| bad("add"))?;
            let size = add.get("size").and_then(|s| s.as_u64()).unwrap_or(0);
            actions.added.push((percent_decode(p), size));
        }
        if let Some(remove) = value.get("remove") {
            let p = remove.get("path").and_then(|p| p.as_str()).ok_or_else(|| bad("remove"))?;
            actions.removed.push(percent_decode(p));
        }
    }
    Ok(actions)
}

/// The file actions of every version, oldest first. Fails if an entry is missing, so callers never
/// act on a partial picture.
pub fn file_actions(root: &Path) -> Result<Vec<(u64, FileActions)>, OplogError> {
    let log = root.join(LOG_DIR);
    let mut out = Vec::new();
    for (expected, (version, path)) in log_entries(root)?.into_iter().enumerate() {
        if version != expected as u64 {
            return Err(OplogError::Corrupt {
                path: log,
                reason: format!("log entry for version {expected} is missing"),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|e| OplogError::Io { path: path.clone(), source: e })?;
        out.push((version, parse_log_entry(&text, &path)?));
    }
    Ok(out)
}

/// Every data file that `actions` add (history included: compaction removes files from the latest
/// version, but older versions still read them), with the size the log records. Fails if the log
/// names a path outside the table, so callers that delete (gc) never act on a partial picture.
pub fn added_files(root: &Path, actions: &[(u64, FileActions)]) -> Result<BTreeMap<String, u64>, OplogError> {
    let mut files = BTreeMap::new();
    for (version, a) in actions {
        for (p, size) in &a.added {
            PondFile::data(p).map_err(|e| OplogError::Corrupt {
                path: root.join(LOG_DIR).join(log_entry_name(*version)),
                reason: format!("the log names a data file outside the table: {e}"),
            })?;
            files.insert(p.clone(), *size);
        }
    }
    Ok(files)
}

/// Every data file that any version adds ([`added_files`] of the whole log), names only.
pub fn referenced_data_files(root: &Path) -> Result<BTreeSet<String>, OplogError> {
    Ok(added_files(root, &file_actions(root)?)?.into_keys().collect())
}

/// The active data files after each version in `at`, replaying adds and removes: what a Delta
/// reader computes from the JSON entries alone (a checkpoint must agree with it).
pub fn replay_active_files(actions: &[(u64, FileActions)], at: &BTreeSet<u64>) -> BTreeMap<u64, BTreeSet<String>> {
    let mut active = BTreeSet::new();
    let mut out = BTreeMap::new();
    for (version, a) in actions {
        for p in &a.removed {
            active.remove(p);
        }
        for (p, _) in &a.added {
            active.insert(p.clone());
        }
        if at.contains(version) {
            out.insert(*version, active.clone());
        }
    }
    out
}

/// Delta log paths are URL-encoded (RFC 3986); pond's own names never need it, but decode anyway.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
