//! The pond's history as `pond log` prints it: one entry per Delta version, read from the commit
//! info of each `_delta_log/NNN.json` (pond keeps every log entry: expired-log cleanup is off).

use std::path::Path;

use super::OplogError;

/// One Delta version of the pond.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryEntry {
    pub version: u64,
    pub timestamp_ms: i64,
    pub operation: String,
    pub files_changed: u64,
    pub bytes: u64,
}

/// Every version whose log entry is present, oldest first.
pub fn read_history(root: &Path) -> Result<Vec<HistoryEntry>, OplogError> {
    super::check_is_pond(root)?;
    let log = root.join("_delta_log");
    let io = |e: std::io::Error| OplogError::Io { path: log.clone(), source: e };
    let mut versions: Vec<(u64, std::path::PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&log).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".json")
            && stem.len() == 20
            && let Ok(v) = stem.parse::<u64>()
        {
            versions.push((v, entry.path()));
        }
    }
    versions.sort();
    let mut out = Vec::with_capacity(versions.len());
    for (version, path) in versions {
        let text = std::fs::read_to_string(&path).map_err(|e| OplogError::Io { path: path.clone(), source: e })?;
        let mut entry = HistoryEntry { version, timestamp_ms: 0, operation: String::new(), files_changed: 0, bytes: 0 };
        let mut found = false;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| OplogError::Corrupt { path: path.clone(), reason: format!("not a JSON log entry: {e}") })?;
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

/// Every data file that any version of the log adds (history included: compaction removes files from
/// the latest version, but older versions still read them). Fails if the log has a gap or names a
/// path outside the table, so callers that delete (gc) never act on a partial picture.
pub fn referenced_data_files(root: &Path) -> Result<std::collections::BTreeSet<String>, OplogError> {
    super::check_is_pond(root)?;
    let log = root.join("_delta_log");
    let history = read_history(root)?;
    for (expected, entry) in history.iter().enumerate() {
        if entry.version != expected as u64 {
            return Err(OplogError::Corrupt {
                path: log.clone(),
                reason: format!("log entry for version {expected} is missing"),
            });
        }
    }
    let mut files = std::collections::BTreeSet::new();
    for entry in &history {
        let path = log.join(format!("{:020}.json", entry.version));
        let text = std::fs::read_to_string(&path).map_err(|e| OplogError::Io { path: path.clone(), source: e })?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| OplogError::Corrupt { path: path.clone(), reason: format!("not a JSON log entry: {e}") })?;
            if let Some(p) = value.get("add").and_then(|a| a.get("path")).and_then(|p| p.as_str()) {
                let decoded = percent_decode(p);
                let rel = super::safe_relative(&decoded).ok_or_else(|| OplogError::Corrupt {
                    path: path.clone(),
                    reason: format!("the log names a data file outside the table: {p:?}"),
                })?;
                files.insert(rel.to_string());
            }
        }
    }
    Ok(files)
}

/// Delta log paths are URL-encoded (RFC 3986); pond's own names never need it, but decode anyway.
fn percent_decode(s: &str) -> String {
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
