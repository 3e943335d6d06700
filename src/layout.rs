//! The on-disk layout of a pond, in one place: every name pond writes under a pond's root (or a
//! replica's), how each is built and how each is parsed. The oplog, the large-file store, the
//! audit and the replica all name files through here, so two parsers of one name cannot disagree.
//!
//! ```text
//! POND/
//!   _delta_log/<20 digits>.json                    one version's log entry
//!   _delta_log/<20 digits>.checkpoint.parquet      a checkpoint (pond writes single-file ones)
//!   _delta_log/_last_checkpoint                    hint naming the newest checkpoint
//!   <name>.parquet                                 oplog data files, top level only
//!   _large_files/<b3>.parquet                      a large file's object, named by its content's BLAKE3
//!   _large_files/packs/<id>.parquet                chunk data objects point into (see large_files)
//!   _large_files/.tmp/                             objects being written (never part of the layout)
//!   _pond/                                         the writer's private area: lock, spill files, log
//! ```
//!
//! Every name that comes from outside (a remote's listing, a path in a log entry) is parsed into a
//! [`PondFile`] before anything is read or written under it, and local paths are built only from a
//! `PondFile`: no name can lead outside the root (`..`, absolute paths, backslashes and other
//! directories never parse).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::large_files::hash::Blake3Hash;

/// The Delta log directory.
pub const LOG_DIR: &str = "_delta_log";
/// The large-file store's directory.
pub const LARGE_FILES_DIR: &str = "_large_files";
/// Under [`LARGE_FILES_DIR`]: packs of chunk data.
pub const PACKS_DIR: &str = "packs";
/// Under [`LARGE_FILES_DIR`]: objects and packs being written.
pub const STORE_TMP_DIR: &str = ".tmp";
/// The writer's private area (not part of the table, never replicated).
pub const WORK_DIR: &str = "_pond";
/// Under [`WORK_DIR`]: the single-writer lock file.
pub const WORK_LOCK: &str = "lock";
/// Under [`WORK_DIR`]: spill files of files being written.
pub const WORK_SPILL_DIR: &str = "tmp";
/// Under [`WORK_DIR`]: the mount daemon's default log.
pub const WORK_LOG: &str = "mount.log";
/// Under [`WORK_DIR`]: the read-write mount daemon's control socket (see `control`).
pub const WORK_CONTROL_SOCKET: &str = "control.sock";
/// Under [`WORK_DIR`]: one lock per mountpoint served.
pub const WORK_MOUNTS_DIR: &str = "mounts";
/// The checkpoint hint in [`LOG_DIR`].
pub const LAST_CHECKPOINT: &str = "_last_checkpoint";
/// `_last_checkpoint` is a line of JSON naming a version (Delta may add a schema): far below this.
pub const MAX_LAST_CHECKPOINT_SIZE: u64 = 1 << 20;
/// A log entry pond writes holds one commit's few actions (a compaction's: ten removes and an
/// add), a few kilobytes: far below this. Entries are read whole into memory.
pub const MAX_LOG_ENTRY_SIZE: u64 = 16 << 20;
/// A checkpoint holds a row per active data file and per removal still remembered: a pond's is tens
/// of kilobytes, and one of a million rows far below this.
pub const MAX_CHECKPOINT_SIZE: u64 = 256 << 20;
const PARQUET: &str = ".parquet";

/// What a pond's layout holds, for messages that refuse a name outside it.
pub const LAYOUT_SUMMARY: &str = "_delta_log/<version>.json, checkpoints, _last_checkpoint, top-level \
     <name>.parquet data files, _large_files/<blake3>.parquet and _large_files/packs/<blake3>.parquet";

/// A name that is not part of a pond's layout.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not part of a pond's layout ({LAYOUT_SUMMARY})")]
pub struct NotInLayout(pub String);

/// One file of a pond's layout (the Delta table plus the large-file store).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PondFile {
    /// `_large_files/<64 hex>.parquet`: a large file's object, named by the BLAKE3 of its content.
    Object(Blake3Hash),
    /// `_large_files/packs/<64 hex>.parquet`: chunk data that objects point into (a random id).
    Pack(Blake3Hash),
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
    /// Parse a slash-separated name relative to the root; anything outside the layout is refused.
    pub fn parse(name: &str) -> Result<PondFile, NotInLayout> {
        let parsed = match name.split_once('/') {
            None => data_file_name(name).map(|n| PondFile::Data(n.to_string())),
            Some((LOG_DIR, file)) => {
                if file == LAST_CHECKPOINT {
                    Some(PondFile::LastCheckpoint)
                } else if let Some(v) = log_entry_version(file) {
                    Some(PondFile::Log(v))
                } else {
                    checkpoint_version(file).map(PondFile::Checkpoint)
                }
            }
            Some((LARGE_FILES_DIR, file)) => match file.split_once('/') {
                None => hash_file_name(file).map(PondFile::Object),
                Some((PACKS_DIR, pack)) => hash_file_name(pack).map(PondFile::Pack),
                Some(_) => None,
            },
            Some(_) => None,
        };
        parsed.ok_or_else(|| NotInLayout(name.to_string()))
    }

    /// A data file named by a log entry's `add` or `remove` path.
    pub fn data(name: &str) -> Result<PondFile, NotInLayout> {
        match PondFile::parse(name)? {
            data @ PondFile::Data(_) => Ok(data),
            _ => Err(NotInLayout(name.to_string())),
        }
    }

    /// The name relative to the root, `/`-separated (object-store key and local path alike).
    pub fn name(&self) -> String {
        match self {
            PondFile::Object(h) => format!("{LARGE_FILES_DIR}/{}{PARQUET}", h.to_hex()),
            PondFile::Pack(h) => format!("{LARGE_FILES_DIR}/{PACKS_DIR}/{}{PARQUET}", h.to_hex()),
            PondFile::Data(n) => n.clone(),
            PondFile::Log(v) => format!("{LOG_DIR}/{}", log_entry_name(*v)),
            PondFile::Checkpoint(v) => format!("{LOG_DIR}/{}", checkpoint_name(*v)),
            PondFile::LastCheckpoint => format!("{LOG_DIR}/{LAST_CHECKPOINT}"),
        }
    }

    /// Where this file lives under a local root.
    pub fn local_path(&self, root: &Path) -> PathBuf {
        root.join(self.name())
    }

    /// The most bytes a file of this kind may hold for pond to fetch it: log entries, checkpoints
    /// and the hint are read whole (or decoded whole) and far smaller than their caps; objects and
    /// data files are streamed to disk and checked against their hashes, bounded only by the
    /// size listed for them.
    pub fn max_size(&self) -> Option<u64> {
        match self {
            PondFile::Log(_) => Some(MAX_LOG_ENTRY_SIZE),
            PondFile::Checkpoint(_) => Some(MAX_CHECKPOINT_SIZE),
            PondFile::LastCheckpoint => Some(MAX_LAST_CHECKPOINT_SIZE),
            PondFile::Object(_) | PondFile::Pack(_) | PondFile::Data(_) => None,
        }
    }
}

impl std::fmt::Display for PondFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// The file name (in [`LOG_DIR`]) of a version's log entry.
pub fn log_entry_name(version: u64) -> String {
    format!("{version:020}.json")
}

/// The file name (in [`LOG_DIR`]) of a version's single-file checkpoint.
pub fn checkpoint_name(version: u64) -> String {
    format!("{version:020}.checkpoint{PARQUET}")
}

/// The version of a JSON log entry's file name (`00000000000000000042.json` → 42).
pub fn log_entry_version(name: &str) -> Option<u64> {
    version_stem(name.strip_suffix(".json")?)
}

/// The version of a single-file checkpoint's name (`00000000000000000049.checkpoint.parquet` → 49),
/// the only kind pond writes and replicates.
pub fn checkpoint_version(name: &str) -> Option<u64> {
    version_stem(name.strip_suffix(".checkpoint.parquet")?)
}

/// The version of any checkpoint file's name a Delta reader may read: single-file, multi-part
/// (`<v>.checkpoint.<part>.<parts>.parquet`) or v2 (`<v>.checkpoint.<uuid>.parquet`).
pub fn any_checkpoint_version(name: &str) -> Option<u64> {
    let (stem, rest) = name.split_at_checked(20)?;
    (rest.starts_with(".checkpoint.") && rest.ends_with(PARQUET)).then(|| version_stem(stem)).flatten()
}

/// Delta's zero-padded 20-digit version.
fn version_stem(stem: &str) -> Option<u64> {
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok()).flatten()
}

/// `<64 lowercase hex>.parquet` (what the store writes; uppercase is another name).
fn hash_file_name(name: &str) -> Option<Blake3Hash> {
    let stem = name.strip_suffix(PARQUET)?;
    Blake3Hash::from_hex(stem).filter(|h| h.to_hex() == stem)
}

/// A data file's name: `<name>.parquet` of letters, digits, `-`, `_` and `.`, not hidden, at the top
/// level. Stricter than what Delta allows (pond writes `part-<seq>-<uuid>[-compacted].parquet`), so
/// a log entry can never name a path elsewhere, even percent-encoded.
pub fn data_file_name(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(PARQUET)?;
    let ok = !stem.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && stem.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then_some(name)
}

/// The checkpoint version `_last_checkpoint`'s bytes name, if they are the JSON Delta writes.
pub fn parse_last_checkpoint(bytes: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(bytes).ok().and_then(|v| v.get("version")?.as_u64())
}

/// The checkpoint version named by the `_last_checkpoint` of the pond at `root`: `None` when it is
/// missing, unreadable, larger than [`MAX_LAST_CHECKPOINT_SIZE`] or not a hint (a hint only:
/// readers then list the log instead).
pub fn read_last_checkpoint(root: &Path) -> Option<u64> {
    let mut bytes = Vec::new();
    let file = std::fs::File::open(PondFile::LastCheckpoint.local_path(root)).ok()?;
    file.take(MAX_LAST_CHECKPOINT_SIZE + 1).read_to_end(&mut bytes).ok()?;
    if bytes.len() as u64 > MAX_LAST_CHECKPOINT_SIZE {
        return None;
    }
    parse_last_checkpoint(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_names_round_trip() {
        let hex = "a0943b35a7c00700f64cdff47c65e4093560f266dd4018d0bff56e44dbe57283";
        for name in [
            format!("_large_files/{hex}.parquet"),
            format!("_large_files/packs/{hex}.parquet"),
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
            "_delta_log/00000000000000000042.checkpoint.0000000001.0000000002.parquet",
            "_large_files/xyz.parquet",
            "_large_files/A0943B35A7C00700F64CDFF47C65E4093560F266DD4018D0BFF56E44DBE57283.parquet",
            "_large_files/packs/xyz.parquet",
            "_large_files/packs/sub/a0943b35a7c00700f64cdff47c65e4093560f266dd4018d0bff56e44dbe57283.parquet",
            "_large_files/other/a0943b35a7c00700f64cdff47c65e4093560f266dd4018d0bff56e44dbe57283.parquet",
            "_large_files/.tmp/put-1.parquet.tmp",
            "_pond/lock",
            "",
        ] {
            assert_eq!(PondFile::parse(name), Err(NotInLayout(name.to_string())), "{name:?} must be refused");
        }
        assert!(PondFile::data("_delta_log/00000000000000000042.json").is_err(), "a log entry is not a data file");
    }

    #[test]
    fn checkpoint_names_of_every_kind_give_their_version() {
        assert_eq!(any_checkpoint_version("00000000000000000049.checkpoint.parquet"), Some(49));
        assert_eq!(any_checkpoint_version("00000000000000000049.checkpoint.0000000001.0000000002.parquet"), Some(49));
        assert_eq!(checkpoint_version("00000000000000000049.checkpoint.0000000001.0000000002.parquet"), None);
        assert_eq!(any_checkpoint_version("0000000000000000004x.checkpoint.parquet"), None);
    }

    #[test]
    fn last_checkpoint_hints_parse_or_are_ignored() {
        assert_eq!(parse_last_checkpoint(br#"{"version":49,"size":12}"#), Some(49));
        assert_eq!(parse_last_checkpoint(b"{\"version\":-1}"), None);
        assert_eq!(parse_last_checkpoint(b"garbage"), None);
    }
}
