//! The names a pond replica may hold, as a type. Every name that comes from a remote (an object
//! listing, a path in a log entry) is parsed into a [`PondFile`] before anything is read or written
//! under it, and local paths are built only from a `PondFile`: so no remote name can make pond write
//! outside the target (`..`, absolute paths, backslashes and other directories never parse).

use std::path::{Path, PathBuf};

use crate::large_files::LARGE_FILES_DIR;
use crate::large_files::hash::Blake3Hash;
use crate::oplog::history::{checkpoint_version, log_entry_version};

use super::error::ReplicaError;

/// The Delta log directory.
pub const LOG_DIR: &str = "_delta_log";
const LAST_CHECKPOINT: &str = "_last_checkpoint";

/// One file of a pond's layout (the Delta table plus its large objects).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PondFile {
    /// `_large_files/<64 hex>.parquet`: a content-addressed large object.
    Object(Blake3Hash),
    /// `<name>.parquet` at the top level: an oplog data file.
    Data(String),
    /// `_delta_log/<20 digits>.json`: one version's log entry.
    Log(u64),
    /// `_delta_log/<20 digits>.checkpoint.parquet`.
    Checkpoint(u64),
    /// `_delta_log/_last_checkpoint`: the one mutable file (a hint to the newest checkpoint).
    LastCheckpoint,
}

impl PondFile {
    /// Parse a slash-separated name relative to the pond (or remote) root; anything that is not
    /// part of the layout is refused with an error naming it.
    pub fn parse(name: &str) -> Result<PondFile, ReplicaError> {
        let refuse = || ReplicaError::PathEscape(name.to_string());
        match name.split_once('/') {
            None => data_file_name(name).map(|n| PondFile::Data(n.to_string())).ok_or_else(refuse),
            Some((LOG_DIR, file)) => {
                if file == LAST_CHECKPOINT {
                    Ok(PondFile::LastCheckpoint)
                } else if let Some(v) = log_entry_version(file) {
                    Ok(PondFile::Log(v))
                } else if let Some(v) = checkpoint_version(file) {
                    Ok(PondFile::Checkpoint(v))
                } else {
                    Err(refuse())
                }
            }
            Some((LARGE_FILES_DIR, file)) => file
                .strip_suffix(".parquet")
                .and_then(|stem| Blake3Hash::from_hex(stem).filter(|h| h.to_hex() == stem))
                .map(PondFile::Object)
                .ok_or_else(refuse),
            Some(_) => Err(refuse()),
        }
    }

    /// A data file named by a log entry's `add` or `remove` path.
    pub fn data(name: &str) -> Result<PondFile, ReplicaError> {
        match PondFile::parse(name)? {
            data @ PondFile::Data(_) => Ok(data),
            _ => Err(ReplicaError::PathEscape(name.to_string())),
        }
    }

    /// The name relative to the root, `/`-separated (object-store key and local path alike).
    pub fn name(&self) -> String {
        match self {
            PondFile::Object(h) => format!("{LARGE_FILES_DIR}/{}.parquet", h.to_hex()),
            PondFile::Data(n) => n.clone(),
            PondFile::Log(v) => format!("{LOG_DIR}/{v:020}.json"),
            PondFile::Checkpoint(v) => format!("{LOG_DIR}/{v:020}.checkpoint.parquet"),
            PondFile::LastCheckpoint => format!("{LOG_DIR}/{LAST_CHECKPOINT}"),
        }
    }

    /// Where this file lives under a local pond root.
    pub fn local_path(&self, root: &Path) -> PathBuf {
        root.join(self.name())
    }
}

impl std::fmt::Display for PondFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// A data file's name: `<name>.parquet` of letters, digits, `-`, `_` and `.`, not hidden. Stricter
/// than what Delta allows (pond writes `part-<seq>-<uuid>[-compacted].parquet`), so a log entry can
/// never name a path elsewhere, even percent-encoded.
fn data_file_name(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".parquet")?;
    let ok = !stem.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && stem.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_names_round_trip() {
        let hex = "a0943b35a7c00700f64cdff47c65e4093560f266dd4018d0bff56e44dbe57283";
        for name in [
            format!("_large_files/{hex}.parquet"),
            "part-00000000000000000001-dc3210b4-ebf8-4d77-a035-0fae0bbc29f4.parquet".to_string(),
            "_delta_log/00000000000000000042.json".to_string(),
            "_delta_log/00000000000000000049.checkpoint.parquet".to_string(),
            "_delta_log/_last_checkpoint".to_string(),
        ] {
            assert_eq!(PondFile::parse(&name).expect(&name).name(), name);
        }
    }

    #[test]
    fn names_outside_the_layout_are_refused() {
        for name in [
            "../evil.parquet",
            "/etc/passwd",
            "/abs.parquet",
            "a/../b.parquet",
            "sub/x.parquet",
            "..\\evil.parquet",
            "x\\y.parquet",
            ".hidden.parquet",
            ".parquet",
            "%2e%2e%2fevil.parquet",
            "notes.txt",
            "_delta_log/../x.json",
            "_delta_log/42.json",
            "_delta_log/0000000000000000004a.json",
            "_delta_log/sub/00000000000000000042.json",
            "_large_files/xyz.parquet",
            "_large_files/A0943B35A7C00700F64CDFF47C65E4093560F266DD4018D0BFF56E44DBE57283.parquet",
            "_large_files/.tmp/put-1.parquet.tmp",
            "_pond/lock",
            "",
        ] {
            assert!(
                matches!(PondFile::parse(name), Err(ReplicaError::PathEscape(n)) if n == name),
                "{name:?} must be refused"
            );
        }
        assert!(PondFile::data("_delta_log/00000000000000000042.json").is_err(), "a log entry is not a data file");
    }
}
