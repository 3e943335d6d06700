//! [`ChunkCache`]: the disk cache of what a mounted replica fetched of its large files — chunk
//! ranges of packs (and of old self-contained objects) and the ends of objects (manifests) — bounded
//! by `-o cache_size` with least-recently-used eviction.
//!
//! One file per entry under `blobs/<2 hex>/`, named by what it holds (`p<pack>-<offset>-<len>`,
//! `o<object>.end`), written to a temp file and renamed, so a reader finds an entry whole or not at
//! all, whoever wrote it: mounts of one replica may share the directory, now or one after another.
//! Nothing here is trusted: every chunk is checked against its hash by the large-file store when it
//! is read back, and an entry that fails is dropped ([`ChunkCache::remove`]) and fetched again.
//!
//! The index (entry, size, last use) lives in memory. At start it is filled from the directory in
//! the background (oldest file first), so mounting never waits for a large cache to be walked;
//! entries another mount adds are learned when read. Each mount keeps the total it knows of under
//! its bound, evicting down to 90% of it at a time.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::layout::PondFile;

/// Ticks of entries found on disk at start are below this; uses after start are above it, so
/// anything used in this mount is newer than anything merely found.
const LIVE_TICKS: u64 = 1 << 48;

/// The key of one cache entry: its relative path under the cache directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// The bytes `offset..offset + len` of `file` (a pack or an object).
    pub fn range(file: &PondFile, offset: u64, len: u64) -> Option<Key> {
        let (kind, hex) = kind_and_hex(file)?;
        Some(Key(format!("{}/{kind}{hex}-{offset:x}-{len:x}", &hex[..2])))
    }

    /// The end of object `file` (its manifest, or the footer of a self-contained one).
    pub fn end(file: &PondFile) -> Option<Key> {
        let (kind, hex) = kind_and_hex(file)?;
        Some(Key(format!("{}/{kind}{hex}.end", &hex[..2])))
    }
}

fn kind_and_hex(file: &PondFile) -> Option<(char, String)> {
    match file {
        PondFile::Object(h) => Some(('o', h.to_hex())),
        PondFile::Pack(h) => Some(('p', h.to_hex())),
        _ => None,
    }
}

#[derive(Debug, Default)]
struct Index {
    /// Entry → (bytes on disk, last use).
    entries: HashMap<Key, (u64, u64)>,
    /// Last use → entry: the oldest first.
    by_use: BTreeMap<u64, Key>,
    total: u64,
    next_tick: u64,
}

impl Index {
    fn touch(&mut self, key: &Key, size: u64) {
        let tick = self.next_tick.max(LIVE_TICKS);
        self.next_tick = tick + 1;
        self.insert_at(key, size, tick);
    }

    fn insert_at(&mut self, key: &Key, size: u64, tick: u64) {
        if let Some((old_size, old_tick)) = self.entries.insert(key.clone(), (size, tick)) {
            self.by_use.remove(&old_tick);
            self.total -= old_size;
        }
        self.by_use.insert(tick, key.clone());
        self.total += size;
    }

    fn remove(&mut self, key: &Key) -> bool {
        match self.entries.remove(key) {
            Some((size, tick)) => {
                self.by_use.remove(&tick);
                self.total -= size;
                true
            }
            None => false,
        }
    }
}

/// The chunk cache of one replica.
#[derive(Debug)]
pub struct ChunkCache {
    dir: PathBuf,
    tmp: PathBuf,
    budget: u64,
    index: Mutex<Index>,
    /// For temp file names unique within this process.
    serial: AtomicU64,
}

impl ChunkCache {
    /// The cache in `dir` (created 0700 if missing), holding about `budget` bytes at most. Starts
    /// learning what the directory holds in the background.
    pub fn open(dir: &Path, budget: u64) -> std::io::Result<Arc<ChunkCache>> {
        let tmp = dir.join(".tmp");
        super::make_private_dir(&tmp)?;
        // Temp files of a mount that died are worth nothing.
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let cache = Arc::new(ChunkCache {
            dir: dir.to_path_buf(),
            tmp,
            budget,
            index: Mutex::default(),
            serial: AtomicU64::new(0),
        });
        let scanning = cache.clone();
        std::thread::Builder::new().name("pond-cache-scan".into()).spawn(move || scanning.learn_directory())?;
        Ok(cache)
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.dir.join(&key.0)
    }

    /// The bytes cached under `key`, if any (unchecked: the caller authenticates them).
    pub fn get(&self, key: &Key) -> Option<Bytes> {
        match std::fs::read(self.path(key)) {
            Ok(bytes) => {
                self.index().touch(key, bytes.len() as u64);
                Some(Bytes::from(bytes))
            }
            Err(_) => {
                self.index().remove(key);
                None
            }
        }
    }

    /// True when this mount knows `key` to be cached (no disk access: a hint, for read-ahead).
    pub fn contains(&self, key: &Key) -> bool {
        self.index().entries.contains_key(key)
    }

    /// Keeps `bytes` under `key`. A failure (a full disk) only costs the next read a fetch.
    pub fn put(&self, key: &Key, bytes: &[u8]) {
        if bytes.len() as u64 > self.budget {
            return;
        }
        if let Err(e) = self.write(key, bytes) {
            tracing::debug!(entry = %key.0, "could not cache a fetched range: {e}");
            return;
        }
        let over = {
            let mut index = self.index();
            index.touch(key, bytes.len() as u64);
            index.total > self.budget
        };
        if over {
            self.evict();
        }
    }

    fn write(&self, key: &Key, bytes: &[u8]) -> std::io::Result<()> {
        let dest = self.path(key);
        if let Some(parent) = dest.parent() {
            super::make_private_dir(parent)?;
        }
        let tmp = self.tmp.join(format!("{}-{}", std::process::id(), self.serial.fetch_add(1, Ordering::Relaxed)));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode_private().open(&tmp)?;
            f.write_all(bytes)?;
            std::fs::rename(&tmp, &dest)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Drops the entry `key` (its bytes did not authenticate); true when there was one.
    pub fn remove(&self, key: &Key) -> bool {
        let known = self.index().remove(key);
        let removed = std::fs::remove_file(self.path(key)).is_ok();
        known || removed
    }

    /// Bytes this mount knows to be cached.
    pub fn size(&self) -> u64 {
        self.index().total
    }

    /// Removes the least recently used entries until the total is 90% of the budget.
    fn evict(&self) {
        let target = self.budget / 10 * 9;
        loop {
            let victim = {
                let mut index = self.index();
                if index.total <= target {
                    return;
                }
                let Some((_, key)) = index.by_use.pop_first() else { return };
                if let Some((size, _)) = index.entries.remove(&key) {
                    index.total -= size;
                }
                key
            };
            let _ = std::fs::remove_file(self.path(&victim));
        }
    }

    /// Fills the index from the directory (oldest modification first), then evicts if over budget.
    fn learn_directory(&self) {
        let mut found: Vec<(std::time::SystemTime, Key, u64)> = Vec::new();
        let Ok(dirs) = std::fs::read_dir(&self.dir) else { return };
        for dir in dirs.flatten() {
            let name = dir.file_name();
            let Some(sub) = name.to_str().filter(|n| n.len() == 2) else { continue };
            let Ok(files) = std::fs::read_dir(dir.path()) else { continue };
            for f in files.flatten() {
                let (Ok(meta), Some(file)) = (f.metadata(), f.file_name().to_str().map(str::to_string)) else {
                    continue;
                };
                let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                found.push((modified, Key(format!("{sub}/{file}")), meta.len()));
            }
        }
        found.sort();
        {
            let mut index = self.index();
            for (tick, (_, key, size)) in found.into_iter().enumerate() {
                if !index.entries.contains_key(&key) {
                    index.insert_at(&key, size, tick as u64);
                }
            }
        }
        if self.index().total > self.budget {
            self.evict();
        }
    }
}

/// `OpenOptions` creating files readable by their owner only.
trait PrivateMode {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateMode for std::fs::OpenOptions {
    fn mode_private(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::large_files::Blake3Hash;

    fn pack(n: u8) -> PondFile {
        PondFile::Pack(Blake3Hash([n; 32]))
    }

    #[test]
    fn the_least_recently_used_entries_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 1000).unwrap();
        let keys: Vec<Key> = (0..4).map(|i| Key::range(&pack(1), i * 300, 300).unwrap()).collect();
        cache.put(&keys[0], &[0; 300]);
        cache.put(&keys[1], &[1; 300]);
        cache.put(&keys[2], &[2; 300]);
        assert_eq!(cache.get(&keys[0]).as_deref(), Some(&[0u8; 300][..]), "used: now the newest");
        cache.put(&keys[3], &[3; 300]); // 1200 > 1000: down to 900 or less
        assert!(cache.get(&keys[1]).is_none(), "the least recently used entry was evicted");
        assert!(cache.get(&keys[0]).is_some() && cache.get(&keys[3]).is_some());
        assert!(cache.size() <= 1000);
    }

    #[test]
    fn a_removed_entry_is_fetched_again_and_a_new_mount_finds_the_old_entries() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::end(&PondFile::Object(Blake3Hash([7; 32]))).unwrap();
        {
            let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
            cache.put(&key, b"manifest");
            assert!(cache.remove(&key));
            assert!(cache.get(&key).is_none());
            cache.put(&key, b"manifest");
        }
        let again = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(again.get(&key).as_deref(), Some(&b"manifest"[..]));
    }
}
