//! The large-file store: content larger than the inline threshold, under `<pond>/_large_files/`.
//!
//! Every version of a large file is an *object* named by the BLAKE3 (`b3sum`) of its content: a
//! manifest listing each 64 KiB chunk's hash and where its bytes are (format 2), or, in ponds written
//! before chunk-level storage, the chunks themselves (format 1). Chunk bytes live in *packs*
//! (`_large_files/packs/`), written as a file is stored, and shared: a version that appends to or
//! patches a file stores only the chunks that changed and points at the others where they already
//! are ([`draft`]), and a chunk already stored for another file is not stored again (the dedup
//! index, [`index`]). The formats are in [`format`], reading in [`reader`], hashing in [`hash`].
//!
//! This module owns writing files durably (temp file in `.tmp/`, then a no-clobber rename; fsync of
//! the file and the directory either at once or, for what a close writes, at the next commit through
//! [`LargeFileStore::make_durable`], which also writes the small files a close left in memory
//! ([`held`])), the dedup index, opening objects, listing and removing files, and cleaning crash
//! leftovers. An existing object is never rewritten: identical content is stored
//! once.

mod direct_sink;
pub mod draft;
pub mod error;
pub mod format;
pub mod hash;
mod held;
pub mod index;
pub mod reader;
pub mod write_behind;

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tempfile::NamedTempFile;

use held::{Held, HeldBlobs};

pub use draft::LargeDraft;
pub use error::StoreError;
pub use format::{ChunkLoc, ObjectFormat};
pub use hash::{Blake3Hash, Sha256Digest, chunk_count, chunk_cv, chunk_hash, chunk_len, root_from_chunk_hashes};
use index::ChunkIndex;
pub use reader::{Blob, BlobSource, LocalBlobs, ObjectReader};

use crate::layout::{LARGE_FILES_DIR, PACKS_DIR, PondFile, STORE_TMP_DIR};
use crate::private_fs::PrivateDir;

/// Files a batch of [`LargeFileStore::make_durable`] holds open at once (well under a soft
/// `RLIMIT_NOFILE` of 1,024, whatever else is open).
const DURABLE_BATCH: usize = 64;

/// Result of storing content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    /// The object's name: BLAKE3 of the content.
    pub hash: Blake3Hash,
    pub size: u64,
    /// True when the object was already in the store (no object was written).
    pub existed: bool,
}

/// State shared by the clones of one store.
#[derive(Default)]
struct Shared {
    /// Files published without an fsync: made durable before any commit may reference them.
    not_durable: Mutex<Vec<PondFile>>,
    /// Where chunks of content this store has seen live (see [`index`]).
    index: Mutex<ChunkIndex>,
    /// Objects known to be whole: written here, or opened for content committed in the pond.
    known: Mutex<HashSet<Blake3Hash>>,
    /// Small files a close made, written by the next `make_durable` (see [`held`]).
    held: Arc<Held>,
    /// Taken while held files are written: two writers of one held file would each take the
    /// other's for a file discarded meanwhile.
    writing_held: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Handle on the `_large_files` directory of one pond. Clones share the dedup index and the list
/// of files waiting to be made durable.
#[derive(Clone)]
pub struct LargeFileStore {
    root: PathBuf,
    dir: PathBuf,
    tmp: PathBuf,
    source: Arc<dyn BlobSource>,
    shared: Arc<Shared>,
    /// `.tmp/`, opened without following links (see `private_fs`), once something is written.
    tmp_dir: Arc<std::sync::OnceLock<PrivateDir>>,
}

impl std::fmt::Debug for LargeFileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LargeFileStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl LargeFileStore {
    /// The store of the pond rooted at `pond_root` (nothing is touched on disk).
    pub fn new(pond_root: &Path) -> Self {
        Self::with_source(pond_root, Arc::new(LocalBlobs::new(pond_root)))
    }

    /// The store of the pond rooted at `pond_root` whose objects and packs are read from `source`
    /// (a replica, fetched lazily: the table is at `pond_root`, its large files elsewhere). Only
    /// reading goes through `source`; such a store is for read-only use.
    pub fn with_source(pond_root: &Path, source: Arc<dyn BlobSource>) -> Self {
        let dir = pond_root.join(LARGE_FILES_DIR);
        let tmp = dir.join(STORE_TMP_DIR);
        let shared = Arc::new(Shared::default());
        LargeFileStore {
            root: pond_root.to_path_buf(),
            dir,
            tmp,
            source: Arc::new(HeldBlobs { held: shared.held.clone(), inner: source }),
            shared,
            tmp_dir: Arc::default(),
        }
    }

    /// The `_large_files` directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `.tmp/`, where files are made before they get their names.
    pub(crate) fn temp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Where the store's files are read from.
    pub fn source(&self) -> Arc<dyn BlobSource> {
        self.source.clone()
    }

    /// Creates `_large_files/`, `packs/` and `.tmp/` if missing (0700), refusing any of them that
    /// is a symlink: the store never writes or removes through a link planted in its directories.
    pub fn create_dirs(&self) -> Result<(), StoreError> {
        self.private_tmp().map(|_| ())
    }

    /// `.tmp/` as a private directory (created with its parents on first use).
    fn private_tmp(&self) -> Result<&PrivateDir, StoreError> {
        if let Some(dir) = self.tmp_dir.get() {
            return Ok(dir);
        }
        let private = |e: crate::private_fs::PrivateFsError| StoreError::io(&self.tmp, std::io::Error::other(e));
        let store = PrivateDir::ensure(&self.root, LARGE_FILES_DIR).map_err(private)?;
        store.ensure_dir(PACKS_DIR).map_err(private)?;
        let tmp = store.ensure_dir(STORE_TMP_DIR).map_err(private)?;
        Ok(self.tmp_dir.get_or_init(|| tmp))
    }

    /// Where the object named `hash` lives.
    pub fn object_path(&self, hash: &Blake3Hash) -> PathBuf {
        PondFile::Object(*hash).local_path(&self.root)
    }

    /// Where `file` (an object or a pack) lives.
    pub fn path_of(&self, file: &PondFile) -> PathBuf {
        file.local_path(&self.root)
    }

    /// True when the object named `hash` exists (held, or on disk).
    pub fn contains(&self, hash: &Blake3Hash) -> bool {
        self.shared.held.contains(&PondFile::Object(*hash)) || self.on_disk(hash)
    }

    /// True when the object named `hash` is a file on disk.
    fn on_disk(&self, hash: &Blake3Hash) -> bool {
        fs::metadata(self.object_path(hash)).is_ok_and(|m| m.is_file())
    }

    /// True when the object named `hash` exists and every chunk reads back verified. Dedup trusts
    /// an existing object it does not know only through this: one written just before a crash may
    /// be torn (no commit references it then, but new content equal to it must not be deduplicated
    /// against it).
    pub fn contains_intact(&self, hash: &Blake3Hash) -> bool {
        // A held object was made here, from its chunks' hashes.
        self.shared.held.contains(&PondFile::Object(*hash)) || self.intact_on_disk(hash)
    }

    /// True when the object named `hash` is on disk and every chunk reads back verified.
    fn intact_on_disk(&self, hash: &Blake3Hash) -> bool {
        if !self.on_disk(hash) {
            return false;
        }
        let disk: Arc<dyn BlobSource> = Arc::new(LocalBlobs::new(&self.root));
        let intact = ObjectReader::open(disk, hash).is_ok_and(|r| r.verify(None).is_ok());
        if !intact {
            tracing::warn!(object = %hash, "an existing object is damaged; storing the content again replaces it");
        }
        intact
    }

    /// Opens the object named `hash` (format 1 or 2), its chunk hashes authenticated by its name.
    pub fn open(&self, hash: &Blake3Hash) -> Result<ObjectReader, StoreError> {
        ObjectReader::open(self.source.clone(), hash)
    }

    /// Records that `reader`'s content is committed in the pond: it is whole, and its chunks may be
    /// referenced by new versions instead of being stored again.
    pub fn remember(&self, reader: &ObjectReader) {
        lock(&self.shared.known).insert(reader.hash());
        if reader.chunk_count() > 1 {
            let entries = reader.chunk_hashes().iter().copied().zip(reader.chunk_locs().iter().cloned());
            lock(&self.shared.index).insert_all(entries);
        }
    }

    /// Adds chunks just stored to the dedup index.
    pub(crate) fn learn_chunks(&self, chunks: Vec<([u8; 32], ChunkLoc)>) {
        lock(&self.shared.index).insert_all(chunks);
    }

    /// Deletes a file this store published and nothing points into (no commit can reference it).
    pub(crate) fn discard(&self, file: &PondFile) {
        if self.shared.held.release(file) {
            return; // never written
        }
        lock(&self.shared.not_durable).retain(|f| f != file);
        if let Err(e) = std::fs::remove_file(self.path_of(file)) {
            tracing::debug!(%file, "could not remove an unused file (gc will): {e}");
        }
    }

    /// Where a chunk of `len` bytes with chaining value `cv` is already stored, if this store knows.
    pub(crate) fn lookup_chunk(&self, cv: &[u8; 32], len: u32) -> Option<ChunkLoc> {
        lock(&self.shared.index).get(cv).filter(|loc| loc.len == len)
    }

    /// Forgets every place in `files` (removed by prune or gc): nothing new may point there.
    pub fn forget_files(&self, files: &HashSet<PondFile>) {
        lock(&self.shared.index).retain(|loc| !files.contains(&*loc.file));
        lock(&self.shared.known).retain(|h| !files.contains(&PondFile::Object(*h)));
    }

    /// The verified bytes of the chunk at `loc` whose chaining value at `idx` is `cv`.
    pub(crate) fn read_verified(&self, loc: &ChunkLoc, idx: u64, cv: &[u8; 32]) -> Result<Bytes, StoreError> {
        let blob = self.source.open(&loc.file)?;
        let (start, len) = format::raw_range(loc);
        let corrupt = || StoreError::CorruptChunk {
            object: Blake3Hash(*cv),
            chunk: idx,
            file: (*loc.file).clone(),
            offset: loc.offset,
        };
        let raw = blob.read_range(start, len).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => corrupt(),
            _ => StoreError::io(self.path_of(&loc.file), e),
        })?;
        let bytes = format::strip_len_prefix(raw, loc.len).ok_or_else(corrupt)?;
        if chunk_cv(idx, &bytes) != *cv {
            return Err(corrupt());
        }
        Ok(bytes)
    }

    /// Stores the manifest of content `root` (`size` bytes, chunks `hashes` at `locs`) unless an
    /// object of that name is there already and whole. Returns true when it was.
    pub(crate) fn put_manifest(
        &self,
        root: &Blake3Hash,
        size: u64,
        hashes: &[[u8; 32]],
        locs: &[ChunkLoc],
    ) -> Result<bool, StoreError> {
        if self.is_known_or_intact(root) {
            return Ok(true);
        }
        let file = PondFile::Object(*root);
        let mut bytes = Vec::new();
        format::write_manifest(&mut bytes, &self.path_of(&file), size, root, hashes, locs)?;
        let existed = self.put_small(&file, Bytes::from(bytes))?;
        lock(&self.shared.known).insert(*root);
        Ok(existed)
    }

    /// An object that exists is reused when it is known whole (this store wrote it, or opened it
    /// for committed content), or found whole by reading it; it is then made durable before the
    /// commit that names it (a crash may have left it unsynced).
    fn is_known_or_intact(&self, root: &Blake3Hash) -> bool {
        if lock(&self.shared.known).contains(root) && self.contains(root) {
            return true;
        }
        if self.contains_intact(root) {
            lock(&self.shared.not_durable).push(PondFile::Object(*root));
            if let Ok(r) = self.open(root) {
                lock(&self.shared.not_durable).extend(r.data_files());
            }
            lock(&self.shared.known).insert(*root);
            return true;
        }
        false
    }

    /// Stores `data` as an object (for tests and tools: a mount stores through [`LargeDraft`]).
    /// Durable when it returns.
    pub fn put_bytes(&self, data: &[u8]) -> Result<PutOutcome, StoreError> {
        let mut draft = LargeDraft::new(self);
        draft.write_at(0, data)?;
        let out = draft.finish()?;
        self.make_durable()?;
        Ok(out)
    }

    /// Stores `file`, made whole in memory: held for the next [`make_durable`](Self::make_durable)
    /// to write, or, past what may be held, written now (durable at that `make_durable` too).
    /// Returns true when a file of that name was there (see [`publish`](Self::publish)).
    pub(crate) fn put_small(&self, file: &PondFile, bytes: Bytes) -> Result<bool, StoreError> {
        match self.shared.held.hold(file, bytes) {
            Ok(()) => Ok(false),
            Err(bytes) => self.write_out(file, &bytes),
        }
    }

    /// Writes `bytes` as `file` (see [`publish`](Self::publish), not durable yet).
    fn write_out(&self, file: &PondFile, bytes: &[u8]) -> Result<bool, StoreError> {
        let mut tmp = self.temp_file(match file {
            PondFile::Pack(_) => "pack-",
            _ => "obj-",
        })?;
        io::Write::write_all(&mut tmp, bytes).map_err(|e| StoreError::io(tmp.path(), e))?;
        self.publish(tmp, file, false)
    }

    /// Writes every held file (each stays held until it is on disk, so a reader finds it in one
    /// place or the other). A file discarded meanwhile is removed again.
    fn write_held(&self) -> Result<(), StoreError> {
        let _one_writer = lock(&self.shared.writing_held);
        for (file, bytes) in self.shared.held.snapshot() {
            self.write_out(&file, &bytes)?;
            if !self.shared.held.release(&file) {
                self.discard(&file);
            }
        }
        Ok(())
    }

    /// A new temp file in `.tmp/` (removed when dropped unless published).
    pub(crate) fn temp_file(&self, prefix: &str) -> Result<NamedTempFile, StoreError> {
        let dir = self.private_tmp()?.pinned_path();
        tempfile::Builder::new()
            .prefix(prefix)
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| StoreError::io(&self.tmp, e))
    }

    /// Puts a finished temp file under its name in the layout. `durable`: fsync it first and the
    /// directory after; otherwise it is listed for [`make_durable`](Self::make_durable). A file of
    /// that name already there is kept (ours is deleted): objects and packs are named by what they
    /// hold. Returns true when one was there.
    pub(crate) fn publish(&self, tmp: NamedTempFile, file: &PondFile, durable: bool) -> Result<bool, StoreError> {
        if durable {
            tmp.as_file().sync_all().map_err(|e| StoreError::io(tmp.path(), e))?;
        }
        let dest = self.path_of(file);
        let existed = match tmp.persist_noclobber(&dest) {
            Ok(_) => false,
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                // A damaged object of that name (see `is_known_or_intact`) is replaced.
                if let PondFile::Object(h) = file
                    && !self.intact_on_disk(h)
                {
                    e.file.persist(&dest).map_err(|e| StoreError::io(&dest, e.error))?;
                    false
                } else {
                    true
                }
            }
            Err(e) => return Err(StoreError::io(&dest, e.error)),
        };
        if durable {
            sync_dir(dest.parent().unwrap_or(&self.dir))?;
        } else {
            lock(&self.shared.not_durable).push(file.clone());
        }
        tracing::debug!(%file, durable, existed, "stored");
        Ok(existed)
    }

    /// Writes the held files, then makes every file published without an fsync durable, in batches
    /// of [`DURABLE_BATCH`]: starts writeback of a batch, fsyncs each, then the directories once.
    /// On failure the files not done stay held or listed.
    pub fn make_durable(&self) -> Result<(), StoreError> {
        self.write_held()?;
        let mut pending = std::mem::take(&mut *lock(&self.shared.not_durable));
        pending.sort();
        pending.dedup();
        if pending.is_empty() {
            return Ok(());
        }
        let mut done = 0;
        let result = (|| {
            for batch in pending.chunks(DURABLE_BATCH) {
                let mut files = Vec::with_capacity(batch.len());
                for file in batch {
                    let path = self.path_of(file);
                    let f = File::open(&path).map_err(|e| StoreError::io(&path, e))?;
                    write_behind::queue_writeback(&f, 0, 0);
                    files.push((path, f));
                }
                for (path, f) in &files {
                    f.sync_all().map_err(|e| StoreError::io(path, e))?;
                }
                done += batch.len();
            }
            sync_dir(&self.dir)?;
            sync_dir(&self.dir.join(PACKS_DIR))
        })();
        if result.is_err() {
            lock(&self.shared.not_durable).extend(pending.into_iter().skip(done));
        }
        result
    }

    /// fsyncs the store's directories (after removals, so they stay removed).
    pub fn sync_dirs(&self) -> Result<(), StoreError> {
        sync_dir(&self.dir)?;
        sync_dir(&self.dir.join(PACKS_DIR))
    }

    /// Every object and pack in the store, sorted (temp files and foreign names are ignored).
    pub fn list(&self) -> Result<Vec<PondFile>, StoreError> {
        let mut out = Vec::new();
        for (dir, prefix) in [
            (self.dir.clone(), LARGE_FILES_DIR.to_string()),
            (self.dir.join(PACKS_DIR), format!("{LARGE_FILES_DIR}/{PACKS_DIR}")),
        ] {
            // What is listed may be removed (gc, prune): never through a link.
            if fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
                let e = crate::private_fs::PrivateFsError::Symlink(dir.clone());
                return Err(StoreError::io(&dir, std::io::Error::other(e)));
            }
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if let Ok(file @ (PondFile::Object(_) | PondFile::Pack(_))) =
                    PondFile::parse(&format!("{prefix}/{name}"))
                {
                    out.push(file);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Names of all objects in the store, sorted.
    pub fn list_objects(&self) -> Result<Vec<Blake3Hash>, StoreError> {
        Ok(self.list()?.into_iter().filter_map(|f| if let PondFile::Object(h) = f { Some(h) } else { None }).collect())
    }

    /// Deletes `file` (an object or a pack; the directory is not fsynced).
    pub fn remove(&self, file: &PondFile) -> Result<(), StoreError> {
        let path = self.path_of(file);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::Missing(file.clone())),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    /// Deletes everything in `.tmp/` (leftovers of interrupted writes) and returns how many entries
    /// went, never following a link or leaving the filesystem. Call it when nothing is being
    /// written (e.g. at mount), or it may fail that write.
    pub fn clear_tmp(&self) -> Result<usize, StoreError> {
        match PrivateDir::open_existing(&self.root, LARGE_FILES_DIR).and_then(|d| match d {
            Some(store) => store.open_dir(STORE_TMP_DIR),
            None => Ok(None),
        }) {
            Ok(Some(tmp)) => tmp.empty().map_err(|e| StoreError::io(&self.tmp, std::io::Error::other(e))),
            Ok(None) => Ok(0),
            Err(e) => Err(StoreError::io(&self.tmp, std::io::Error::other(e))),
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(dir, e)),
    }
}
