//! [`ChunkCache`]: the disk cache of what a mounted replica fetched of its large files, bounded by
//! `-o cache_size` with least-recently-used eviction.
//!
//! **Layout.** One sparse file per pack (and per old self-contained object) under
//! `blobs/<2 hex>/<p|o><hex>`, holding the bytes fetched at the offsets they have in the original:
//! a chunk is cached by writing it where it lies (one `pwrite`, a read-ahead request's bytes in one)
//! and read back with one `pread` on a descriptor kept open, as a pond reads its own packs. An
//! object's end (its manifest) is a small file of its own, `<o><hex>.end`, written to a temp file
//! and renamed. A file per chunk would be simpler and was measured first: creating 16,384 files
//! per GiB read cost more than fetching the bytes (ext4's inode allocation dominated a profile of
//! a cold read), and a cached read paid an open and a close per chunk.
//!
//! **What is there.** This mount's index (extents of each file, with their last use) says what it
//! wrote or found; a range the index does not know is looked for on disk (`SEEK_DATA`/`SEEK_HOLE`),
//! since a mount sharing the directory may have written it, now or before. At start the index is
//! filled from the files' extents in the background (oldest file first), so mounting never waits
//! for a large cache to be walked.
//!
//! **Trust.** None: every chunk is checked against its hash by the large-file store each time it
//! is read, and a range that fails is dropped ([`ChunkCache::forget_range`]) and fetched again;
//! an end entry carries its own BLAKE3 (see `blobs`). A range another mount evicts while this one
//! reads it reads as zeros, fails its hash, and is fetched again.
//!
//! **Writes that skip the page cache.** A cached range is wanted by the read that fetched it (which
//! has it in memory) more than by anyone later, and keeping every byte of a large read dirty in
//! memory is slow. Read-ahead requests arrive in page-aligned buffers (`span_buf`) and their whole
//! pages are written with `O_DIRECT` ([`ChunkCache::put_span`]): a cold read of 1 GiB spent a
//! quarter of its CPU copying into the page cache, writing back and dropping the pages (with no
//! cache writes at all it ran 25% faster). Other writes (a read's own small fetch, the partial
//! pages at a request's ends, a filesystem without `O_DIRECT`) go through the page cache: each is
//! queued for writeback, and the one [`BEHIND`] writes before is waited for and dropped.
//!
//! **Eviction.** Before bytes are kept that would take the total over the budget, the least
//! recently used extents go until 90% of what is left for them is free: a
//! hole is punched from the end of the extent before to the start of the one after (so the bytes
//! between chunks go too), and a file with nothing left is removed. Each mount keeps the total it
//! knows of under its own bound.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::span_buf::{PAGE, Span};
use crate::aligned_buf::open_direct;
use crate::layout::PondFile;

/// Ticks of extents found on disk at start are below this; uses after start are above it, so
/// anything used in this mount is newer than anything merely found.
const LIVE_TICKS: u64 = 1 << 48;
/// Descriptors of cache files kept open (all are closed when there would be more).
const OPEN_FILES: usize = 256;
/// Punched holes are whole blocks of this size.
const BLOCK: u64 = PAGE;
/// Writes kept in the page cache before the oldest is written back and dropped.
const BEHIND: usize = 4;

/// The cache's name of one pack or object: its data file's path under the cache directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey(String);

impl FileKey {
    /// `file`'s, when it is a pack or an object (the only files cached here).
    pub fn of(file: &PondFile) -> Option<FileKey> {
        let (kind, hex) = match file {
            PondFile::Object(h) => ('o', h.to_hex()),
            PondFile::Pack(h) => ('p', h.to_hex()),
            _ => return None,
        };
        Some(FileKey(format!("{}/{kind}{hex}", &hex[..2])))
    }

    /// The entry holding an object's end.
    fn end(&self) -> FileKey {
        FileKey(format!("{}.end", self.0))
    }

    fn is_end(&self) -> bool {
        self.0.ends_with(".end")
    }
}

/// What this mount knows is cached: extents `[start, end)` of each file, with their last use. An
/// end entry is one extent from 0.
#[derive(Debug, Default)]
struct Index {
    extents: BTreeMap<(FileKey, u64), (u64, u64)>,
    by_use: BTreeMap<u64, (FileKey, u64)>,
    total: u64,
    next_tick: u64,
}

impl Index {
    fn tick(&mut self) -> u64 {
        let tick = self.next_tick.max(LIVE_TICKS);
        self.next_tick = tick + 1;
        tick
    }

    /// The extent holding `[offset, offset + len)` of `file`, if one does.
    fn holding(&self, file: &FileKey, offset: u64, len: u64) -> Option<(u64, u64)> {
        let (&(ref f, start), &(end, _)) = self.extents.range(..=(file.clone(), offset)).next_back()?;
        (f == file && start <= offset && offset + len <= end).then_some((start, end))
    }

    fn touch(&mut self, file: &FileKey, start: u64) {
        let tick = self.tick();
        if let Some((_, old)) = self.extents.get_mut(&(file.clone(), start)) {
            self.by_use.remove(old);
            *old = tick;
            self.by_use.insert(tick, (file.clone(), start));
        }
    }

    /// Adds `[start, end)` (replacing an extent starting there) as used now or at `tick`.
    fn insert(&mut self, file: &FileKey, start: u64, end: u64, tick: Option<u64>) {
        self.remove(file, start);
        let tick = tick.unwrap_or_else(|| self.tick());
        self.extents.insert((file.clone(), start), (end, tick));
        self.by_use.insert(tick, (file.clone(), start));
        self.total += end - start;
    }

    fn remove(&mut self, file: &FileKey, start: u64) -> Option<u64> {
        let (end, tick) = self.extents.remove(&(file.clone(), start))?;
        self.by_use.remove(&tick);
        self.total -= end - start;
        Some(end)
    }

    /// The end of the extent before `start` in `file` and the start of the one after it (what a
    /// hole punched there may reach to).
    fn neighbours(&self, file: &FileKey, start: u64) -> (u64, Option<u64>) {
        let before =
            self.extents.range((file.clone(), 0)..(file.clone(), start)).next_back().map_or(0, |(_, (e, _))| *e);
        let after = self
            .extents
            .range((file.clone(), start + 1)..)
            .next()
            .filter(|((f, _), _)| f == file)
            .map(|((_, s), _)| *s);
        (before, after)
    }

    fn has_extents(&self, file: &FileKey) -> bool {
        self.extents.range((file.clone(), 0)..).next().is_some_and(|((f, _), _)| f == file)
    }
}

/// The chunk cache of one replica.
#[derive(Debug)]
pub struct ChunkCache {
    dir: PathBuf,
    tmp: PathBuf,
    budget: u64,
    index: Mutex<Index>,
    open: Mutex<HashMap<FileKey, Arc<File>>>,
    /// Writes queued for writeback, oldest first (see the module doc).
    behind: Mutex<std::collections::VecDeque<(Arc<File>, u64, u64)>>,
    /// For temp file names unique within this process.
    serial: AtomicU64,
    /// False once the cache's filesystem refused an `O_DIRECT` write.
    direct: AtomicBool,
}

impl ChunkCache {
    /// The cache in `dir` (created 0700 if missing), holding about `budget` bytes at most. Starts
    /// learning what the directory holds in the background.
    pub fn open(dir: &Path, budget: u64) -> std::io::Result<Arc<ChunkCache>> {
        let tmp = dir.join(".tmp");
        super::make_private_dir(&tmp)?;
        // Temp files of a mount that died are worth nothing (another mount's may be in use: only
        // those of processes that are gone go).
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let pid = e.file_name().to_str().and_then(|n| n.split('-').next()?.parse::<u32>().ok());
                if pid.is_some_and(|p| !Path::new("/proc").join(p.to_string()).exists()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let cache = Arc::new(ChunkCache {
            dir: dir.to_path_buf(),
            tmp,
            budget,
            index: Mutex::default(),
            open: Mutex::default(),
            behind: Mutex::default(),
            serial: AtomicU64::new(0),
            direct: AtomicBool::new(true),
        });
        let scanning = cache.clone();
        std::thread::Builder::new().name("pond-cache-scan".into()).spawn(move || scanning.learn_directory())?;
        Ok(cache)
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, file: &FileKey) -> PathBuf {
        self.dir.join(&file.0)
    }

    /// The descriptor of `file`'s cache file, opened (and with `create`, created) if need be.
    fn descriptor(&self, file: &FileKey, create: bool) -> std::io::Result<Arc<File>> {
        if let Some(f) = self.open.lock().unwrap_or_else(|p| p.into_inner()).get(file) {
            return Ok(f.clone());
        }
        let path = self.path(file);
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).mode(0o600).custom_flags(libc::O_CLOEXEC);
        if create {
            if let Some(parent) = path.parent() {
                super::make_private_dir(parent)?;
            }
            options.create(true);
        }
        let f = Arc::new(options.open(&path)?);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= OPEN_FILES {
            open.clear();
        }
        open.insert(file.clone(), f.clone());
        Ok(f)
    }

    /// The cached bytes `[offset, offset + len)` of `file`, if there (unchecked: the caller
    /// authenticates them).
    pub fn range(&self, file: &FileKey, offset: u64, len: u64) -> Option<Bytes> {
        let known = {
            let mut index = self.index();
            let held = index.holding(file, offset, len);
            if let Some((start, _)) = held {
                index.touch(file, start);
            }
            held.is_some()
        };
        let f = self.descriptor(file, false).ok()?;
        if !known && !on_disk(&f, offset, len) {
            return None;
        }
        let buf = crate::large_files::format::pread_exact(&f, offset, usize::try_from(len).ok()?).ok()?;
        if !known {
            self.index().insert(file, offset, offset + len, None);
        }
        Some(Bytes::from(buf))
    }

    /// True when this mount knows `[offset, offset + len)` of `file` to be cached (no disk access:
    /// a hint, for read-ahead).
    pub fn contains(&self, file: &FileKey, offset: u64, len: u64) -> bool {
        self.index().holding(file, offset, len).is_some()
    }

    /// Keeps `bytes`, which lie at `start` in `file`, as the extents `ranges` (each `(offset,
    /// len)` inside them: what is used and evicted one by one), making room first. More than half
    /// the cache at once is not kept (it would only push out what was kept before it). A failure
    /// (a full disk) only costs the next read a fetch.
    pub fn put(&self, file: &FileKey, start: u64, bytes: &[u8], ranges: &[(u64, u64)]) {
        if bytes.len() as u64 > self.budget / 2 {
            return;
        }
        self.evict(self.budget.saturating_sub(bytes.len() as u64));
        let written = self.descriptor(file, true).and_then(|f| f.write_all_at(bytes, start).map(|()| f));
        match written {
            Ok(f) => self.write_behind(f, start, bytes.len() as u64),
            Err(e) => {
                tracing::debug!(file = %file.0, "could not cache fetched bytes: {e}");
                return;
            }
        }
        self.remember(file, ranges);
    }

    /// Records the extents `ranges` of `file` as cached, used now.
    fn remember(&self, file: &FileKey, ranges: &[(u64, u64)]) {
        let mut index = self.index();
        for &(offset, len) in ranges {
            index.insert(file, offset, offset + len, None);
        }
    }

    /// Keeps a read-ahead request's bytes (`span.data`, at `start` in `file`) as the extents
    /// `ranges`, as [`ChunkCache::put`] does, but writes their whole pages with `O_DIRECT` from the
    /// page-aligned buffer: no copy into the page cache and nothing left to write back (see the
    /// module doc). The partial pages at either end are written through the page cache. A
    /// filesystem that refuses `O_DIRECT` (tmpfs, some FUSE ones) gets every write buffered.
    pub fn put_span(&self, file: &FileKey, start: u64, span: &Span, ranges: &[(u64, u64)]) {
        let len = span.data.len() as u64;
        let (first_page, last_page) = (start.next_multiple_of(PAGE), (start + len) / PAGE * PAGE);
        if last_page <= first_page || !self.direct.load(Ordering::Relaxed) || len > self.budget / 2 {
            return self.put(file, start, &span.data, ranges);
        }
        self.evict(self.budget.saturating_sub(len));
        let pad = start - start / PAGE * PAGE;
        let at = |offset: u64| (offset - start + pad) as usize;
        let written = self.descriptor(file, true).and_then(|f| {
            open_direct(&self.path(file))?.write_all_at(&span.padded[at(first_page)..at(last_page)], first_page)?;
            f.write_all_at(&span.data[..(first_page - start) as usize], start)?;
            f.write_all_at(&span.data[(last_page - start) as usize..], last_page)
        });
        if let Err(e) = written {
            if e.raw_os_error() == Some(libc::EINVAL) {
                tracing::debug!("the cache's filesystem refuses O_DIRECT: writing through the page cache");
                self.direct.store(false, Ordering::Relaxed);
                return self.put(file, start, &span.data, ranges);
            }
            tracing::debug!(file = %file.0, "could not cache fetched bytes: {e}");
            return;
        }
        self.remember(file, ranges);
    }

    /// Queues what was just written for writeback; retires the write [`BEHIND`] before.
    fn write_behind(&self, f: Arc<File>, start: u64, len: u64) {
        use crate::large_files::write_behind::{drop_cached, queue_writeback, wait_written};
        queue_writeback(&f, start, len);
        let oldest = {
            let mut queue = self.behind.lock().unwrap_or_else(|p| p.into_inner());
            queue.push_back((f, start, len));
            if queue.len() > BEHIND { queue.pop_front() } else { None }
        };
        if let Some((f, start, len)) = oldest
            && wait_written(&f, start, len).is_ok()
        {
            drop_cached(&f, start, len);
        }
    }

    /// Drops `[offset, offset + len)` of `file` (its bytes did not authenticate); true when this
    /// mount knew it or found it on disk.
    pub fn forget_range(&self, file: &FileKey, offset: u64, len: u64) -> bool {
        let mut index = self.index();
        let held = index.holding(file, offset, len);
        if let Some((start, _)) = held {
            index.remove(file, start);
        }
        drop(index);
        let f = self.descriptor(file, false);
        let on = f.as_ref().is_ok_and(|f| on_disk(f, offset, len));
        if let Ok(f) = f {
            punch(&f, offset, offset + len);
        }
        held.is_some() || on
    }

    /// The end entry of object `file`, if cached (unchecked).
    pub fn end(&self, file: &FileKey) -> Option<Bytes> {
        let key = file.end();
        match std::fs::read(self.path(&key)) {
            Ok(bytes) => {
                let mut index = self.index();
                if index.holding(&key, 0, bytes.len() as u64).is_some() {
                    index.touch(&key, 0);
                } else {
                    index.insert(&key, 0, bytes.len() as u64, None);
                }
                Some(Bytes::from(bytes))
            }
            Err(_) => {
                self.index().remove(&key, 0);
                None
            }
        }
    }

    /// Keeps `bytes` as the end entry of object `file` (a temp file renamed in: whole or absent).
    pub fn put_end(&self, file: &FileKey, bytes: &[u8]) {
        if bytes.len() as u64 > self.budget / 2 {
            return;
        }
        self.evict(self.budget.saturating_sub(bytes.len() as u64));
        let key = file.end();
        let dest = self.path(&key);
        let tmp = self.tmp.join(format!("{}-{}", std::process::id(), self.serial.fetch_add(1, Ordering::Relaxed)));
        let written = (|| {
            if let Some(parent) = dest.parent() {
                super::make_private_dir(parent)?;
            }
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(bytes)?;
            std::fs::rename(&tmp, &dest)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(file = %key.0, "could not cache an object's end: {e}");
            return;
        }
        self.index().insert(&key, 0, bytes.len() as u64, None);
    }

    /// Drops the end entry of object `file`; true when there was one.
    pub fn forget_end(&self, file: &FileKey) -> bool {
        let key = file.end();
        let known = self.index().remove(&key, 0).is_some();
        std::fs::remove_file(self.path(&key)).is_ok() || known
    }

    /// Bytes this mount knows to be cached.
    pub fn size(&self) -> u64 {
        self.index().total
    }

    /// When the total is over `room`, evicts the least recently used extents until it is at 90% of
    /// `room`.
    fn evict(&self, room: u64) {
        if self.index().total <= room {
            return;
        }
        let target = room / 10 * 9;
        loop {
            let mut index = self.index();
            if index.total <= target {
                return;
            }
            let Some((_, (file, start))) = index.by_use.pop_first() else { return };
            let Some((end, _)) = index.extents.remove(&(file.clone(), start)) else { continue };
            index.total -= end - start;
            if file.is_end() {
                drop(index);
                let _ = std::fs::remove_file(self.path(&file));
                continue;
            }
            let (before, after) = index.neighbours(&file, start);
            let empty = !index.has_extents(&file);
            drop(index);
            if empty {
                self.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&file);
                let _ = std::fs::remove_file(self.path(&file));
            } else if let Ok(f) = self.descriptor(&file, false) {
                punch(&f, before, after.unwrap_or(u64::MAX));
            }
        }
    }

    /// Fills the index from the directory (the extents of each file, oldest file first), then
    /// evicts if over budget.
    fn learn_directory(&self) {
        type Extents = Vec<(u64, u64)>;
        let mut found: Vec<(std::time::SystemTime, FileKey, Extents)> = Vec::new();
        let Ok(dirs) = std::fs::read_dir(&self.dir) else { return };
        for dir in dirs.flatten() {
            let name = dir.file_name();
            let Some(sub) = name.to_str().filter(|n| n.len() == 2) else { continue };
            let Ok(files) = std::fs::read_dir(dir.path()) else { continue };
            for entry in files.flatten() {
                let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
                let key = FileKey(format!("{sub}/{name}"));
                let Ok(meta) = entry.metadata() else { continue };
                let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                let extents = if key.is_end() {
                    vec![(0, meta.len())]
                } else {
                    File::open(entry.path()).map(|f| data_extents(&f, meta.len())).unwrap_or_default()
                };
                found.push((modified, key, extents));
            }
        }
        found.sort_by_key(|f| f.0);
        {
            let mut index = self.index();
            let mut tick = 0;
            for (_, key, extents) in found {
                for (start, end) in extents {
                    if index.holding(&key, start, end - start).is_none()
                        && !index.extents.contains_key(&(key.clone(), start))
                    {
                        index.insert(&key, start, end, Some(tick));
                        tick += 1;
                    }
                }
            }
        }
        self.evict(self.budget);
    }
}

/// True when `[offset, offset + len)` of `f` is written data, no hole in it.
fn on_disk(f: &File, offset: u64, len: u64) -> bool {
    let (Ok(at), Some(end)) = (i64::try_from(offset), offset.checked_add(len)) else { return false };
    // SAFETY: lseek on a descriptor this `File` owns; it only moves the file's offset, which
    // nothing here uses (reads and writes are positioned).
    let data = unsafe { libc::lseek(f.as_raw_fd(), at, libc::SEEK_DATA) };
    if data != at {
        return false;
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(f.as_raw_fd(), at, libc::SEEK_HOLE) };
    hole >= 0 && hole as u64 >= end
}

/// The written extents of a cache file of `len` bytes.
fn data_extents(f: &File, len: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at: i64 = 0;
    while (at as u64) < len {
        // SAFETY: lseek on a descriptor `f` owns (see `on_disk`).
        let data = unsafe { libc::lseek(f.as_raw_fd(), at, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole <= data {
            break;
        }
        out.push((data as u64, hole as u64));
        at = hole;
    }
    out
}

/// Frees the whole blocks of `[from, to)` in `f` (`to` past the end: to the end).
fn punch(f: &File, from: u64, to: u64) {
    let start = from.div_ceil(BLOCK) * BLOCK;
    let len = f.metadata().map_or(0, |m| m.len());
    let end = (to.min(len.div_ceil(BLOCK) * BLOCK) / BLOCK) * BLOCK;
    if end <= start {
        return;
    }
    let (Ok(s), Ok(n)) = (i64::try_from(start), i64::try_from(end - start)) else { return };
    // SAFETY: fallocate on a descriptor `f` owns; punching a hole never changes the size.
    let done = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, s, n) };
    if done != 0 {
        tracing::debug!("could not punch a hole in a cache file: {}", std::io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::large_files::Blake3Hash;

    fn pack(n: u8) -> FileKey {
        FileKey::of(&PondFile::Pack(Blake3Hash([n; 32]))).unwrap()
    }

    #[test]
    fn the_least_recently_used_ranges_go_first_and_their_blocks_are_freed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 3 * 65536).unwrap();
        // (Each chunk is at most half the budget, so each is kept.)
        let p = pack(1);
        let chunk = |i: u64| (i * 65536, 65536);
        for i in 0..3 {
            cache.put(&p, chunk(i).0, &[i as u8 + 1; 65536], &[chunk(i)]);
        }
        assert!(cache.range(&p, chunk(0).0, 65536).is_some(), "used: now the newest");
        cache.put(&p, chunk(3).0, &[4; 65536], &[chunk(3)]); // over the bound: down to 90%
        assert!(cache.range(&p, chunk(1).0, 65536).is_none(), "the least recently used range was evicted");
        assert_eq!(cache.range(&p, chunk(0).0, 65536).as_deref(), Some(&[1u8; 65536][..]));
        assert_eq!(cache.range(&p, chunk(3).0, 65536).as_deref(), Some(&[4u8; 65536][..]));
        assert!(cache.size() <= 3 * 65536);
        let blocks = std::fs::metadata(cache.path(&p)).map(|m| std::os::unix::fs::MetadataExt::blocks(&m)).unwrap();
        assert!(blocks * 512 <= 3 * 65536, "evicted blocks are given back ({} bytes allocated)", blocks * 512);
    }

    #[test]
    fn a_new_mount_finds_what_an_earlier_one_cached_and_a_forgotten_range_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (p, obj) = (pack(2), FileKey::of(&PondFile::Object(Blake3Hash([7; 32]))).unwrap());
        {
            let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
            cache.put(&p, 10_000, b"0123456789", &[(10_000, 4), (10_004, 6)]);
            cache.put_end(&obj, b"manifest");
            assert!(cache.forget_range(&p, 10_000, 4));
        }
        let again = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(again.range(&p, 10_004, 6).as_deref(), Some(&b"456789"[..]));
        assert_eq!(again.end(&obj).as_deref(), Some(&b"manifest"[..]));
        assert!(again.range(&p, 20_000, 4).is_none(), "never written");
        assert!(again.forget_end(&obj));
        assert!(again.end(&obj).is_none());
    }
}
