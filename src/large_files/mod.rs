//! The large-file store: content-addressed objects under `<pond>/_large_files/`, one chunked
//! parquet file per distinct content, named by the BLAKE3 (`b3sum`) of that content.
//!
//! It owns: writing objects durably (temp file in `.tmp/`, fsync, no-clobber rename, directory
//! fsync; an existing object is never rewritten, so identical content is stored once), opening
//! them with every structural and hash-tree check ([`LargeFileStore::open`]), verified random-access
//! reads that decode only the chunks touched ([`LargeFileReader`]), listing, removal and cleanup of
//! crash leftovers. The format itself is in [`chunked`], the hashing in [`hash`].

pub mod chunked;
pub mod error;
pub mod hash;
pub mod stream;
pub mod write_behind;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use crate::config::CHUNK_SIZE;
use crate::layout::{LARGE_FILES_DIR, PondFile, STORE_TMP_DIR};
use chunked::{ChunkWriter, ObjectMeta, PreadFile};
pub use error::StoreError;
pub use hash::{
    Blake3Hash, HashSummary, Sha256Digest, StreamHasher, chunk_count, chunk_hash, chunk_len, root_from_chunk_hashes,
};
pub use stream::ObjectStream;

/// Verified chunks an open reader keeps (4 × 64 KiB).
const CACHED_CHUNKS: usize = 4;

/// Result of storing content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    /// The object's name: BLAKE3 of the content.
    pub hash: Blake3Hash,
    pub sha256: Sha256Digest,
    pub size: u64,
    /// True when the object was already in the store (nothing was written).
    pub existed: bool,
}

/// Handle on the `_large_files` directory of one pond. Clones share the list of objects stored
/// with deferred durability ([`ObjectStream::finish_deferred`]) that [`make_durable`](Self::make_durable)
/// syncs before a commit may reference them.
#[derive(Clone, Debug)]
pub struct LargeFileStore {
    dir: PathBuf,
    tmp: PathBuf,
    not_durable: Arc<Mutex<Vec<Blake3Hash>>>,
}

impl LargeFileStore {
    /// The store of the pond rooted at `pond_root` (nothing is touched on disk).
    pub fn new(pond_root: &Path) -> Self {
        let dir = pond_root.join(LARGE_FILES_DIR);
        let tmp = dir.join(STORE_TMP_DIR);
        LargeFileStore { dir, tmp, not_durable: Arc::default() }
    }

    /// The `_large_files` directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pond's root.
    fn root(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    /// Creates `_large_files/` and `_large_files/.tmp/` if missing.
    pub fn create_dirs(&self) -> Result<(), StoreError> {
        fs::create_dir_all(&self.tmp).map_err(|e| StoreError::io(&self.tmp, e))
    }

    /// Where the object named `hash` lives.
    pub fn object_path(&self, hash: &Blake3Hash) -> PathBuf {
        PondFile::Object(*hash).local_path(self.root())
    }

    /// True when the object named `hash` exists.
    pub fn contains(&self, hash: &Blake3Hash) -> bool {
        fs::metadata(self.object_path(hash)).is_ok_and(|m| m.is_file())
    }

    /// True when the object named `hash` exists and every chunk reads back verified. Dedup trusts
    /// an existing object only through this: one stored with deferred durability may have been
    /// torn by a crash before it was synced (no commit references it then, but new content equal
    /// to it must not be deduplicated against it).
    pub fn contains_intact(&self, hash: &Blake3Hash) -> bool {
        if !self.contains(hash) {
            return false;
        }
        let intact = self.open(hash).is_ok_and(|r| (0..r.chunk_count()).all(|i| r.decode_verified(i).is_ok()));
        if !intact {
            tracing::warn!(object = %hash, "an existing object is damaged; storing the content again replaces it");
        }
        intact
    }

    /// Makes every object stored with deferred durability durable: starts writeback of all of
    /// them, fsyncs each, then the directory once. On failure the ones not done stay listed.
    pub fn make_durable(&self) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut *self.not_durable.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return Ok(());
        }
        let result = (|| {
            let mut files = Vec::with_capacity(pending.len());
            for hash in &pending {
                let path = self.object_path(hash);
                let file = File::open(&path).map_err(|e| StoreError::io(&path, e))?;
                write_behind::queue_writeback(&file, 0, 0);
                files.push((path, file));
            }
            for (path, file) in &files {
                file.sync_all().map_err(|e| StoreError::io(path, e))?;
            }
            sync_dir(&self.dir)
        })();
        if result.is_err() {
            self.not_durable.lock().unwrap_or_else(|p| p.into_inner()).extend(pending);
        }
        result
    }

    /// Stores the first `size` bytes of `src` (read with positional reads, in chunks). With `known`
    /// hashes and an existing object nothing is read. Durable when it returns.
    pub fn put_file(&self, src: &File, size: u64, known: Option<&HashSummary>) -> Result<PutOutcome, StoreError> {
        if let Some(k) = known {
            if k.size != size || k.chunk_hashes.len() as u64 != chunk_count(size) {
                return Err(StoreError::InvalidInput(format!(
                    "hash summary is for {} bytes in {} chunks, not {size} bytes",
                    k.size,
                    k.chunk_hashes.len()
                )));
            }
            if self.contains_intact(&k.root) {
                return Ok(PutOutcome { hash: k.root, sha256: k.sha256, size, existed: true });
            }
        }
        self.put_with(size, known, |offset, buf| {
            src.read_exact_at(buf, offset).map_err(|source| StoreError::ReadSource { offset, source })
        })
    }

    /// Stores `data` (same rules as [`put_file`](Self::put_file), hashes computed here).
    pub fn put_bytes(&self, data: &[u8]) -> Result<PutOutcome, StoreError> {
        self.put_with(data.len() as u64, None, |offset, buf| {
            // In range by construction: put_with asks only for 0..size.
            let start = offset as usize;
            buf.copy_from_slice(&data[start..start + buf.len()]);
            Ok(())
        })
    }

    /// Writes the object (one pass over the source), then publishes it durably.
    fn put_with(
        &self,
        size: u64,
        known: Option<&HashSummary>,
        mut read: impl FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
    ) -> Result<PutOutcome, StoreError> {
        let (tmp, mut writer) = self.begin_object()?;
        let tmp_path = tmp.path().to_path_buf();
        let n = chunk_count(size);
        // Without known hashes: chunk hashes and SHA-256 computed here, in the same pass.
        let mut computed = known.is_none().then(|| (Vec::new(), Sha256::new()));
        for i in 0..n {
            let mut buf = vec![0u8; chunk_len(size, i) as usize];
            read(i * CHUNK_SIZE, &mut buf)?;
            let h = chunk_hash(i, n, &buf);
            match (&mut computed, known) {
                (Some((hashes, sha)), _) => {
                    hashes.push(h);
                    sha.update(&buf);
                }
                // Trust but verify: the source must still be what was hashed.
                (None, Some(k)) if k.chunk_hashes.get(i as usize) != Some(&h) => {
                    return Err(StoreError::ContentMismatch {
                        object: k.root,
                        reason: format!("source chunk {i} changed since it was hashed"),
                    });
                }
                (None, _) => {}
            }
            writer.write_chunk(&h, Bytes::from(buf), &tmp_path)?;
        }
        let (root, sha256) = match (computed, known) {
            (Some((hashes, sha)), _) => match root_from_chunk_hashes(&hashes) {
                Some(root) => (root, Sha256Digest(sha.finalize().into())),
                None => unreachable!("there is always at least one chunk"),
            },
            (None, Some(k)) => (k.root, k.sha256),
            (None, None) => unreachable!("hashes are computed when none are known"),
        };
        let outcome = |existed| PutOutcome { hash: root, sha256, size, existed };
        if self.contains_intact(&root) {
            return Ok(outcome(true)); // temp file dropped (deleted)
        }
        writer.finish(&ObjectMeta { size, blake3: root, sha256 }, &tmp_path)?;
        let existed = self.publish(tmp, &root, true)?;
        Ok(outcome(existed))
    }

    /// A new temp file in `.tmp/` and an object writer on it.
    fn begin_object(&self) -> Result<(NamedTempFile, ChunkWriter), StoreError> {
        self.create_dirs()?;
        let tmp = tempfile::Builder::new()
            .prefix("put-")
            .suffix(".parquet.tmp")
            .tempfile_in(&self.tmp)
            .map_err(|e| StoreError::io(&self.tmp, e))?;
        let handle = tmp.as_file().try_clone().map_err(|e| StoreError::io(tmp.path(), e))?;
        let writer = ChunkWriter::new(handle, tmp.path())?;
        Ok((tmp, writer))
    }

    /// Puts a finished temp object under its name. `durable`: fsync it first and the directory
    /// after; otherwise it is listed for [`make_durable`](Self::make_durable). A damaged object of
    /// that name (see [`contains_intact`](Self::contains_intact)) is replaced. Returns true when
    /// an intact object of that name was there already (ours is then deleted; theirs stays).
    fn publish(&self, tmp: NamedTempFile, root: &Blake3Hash, durable: bool) -> Result<bool, StoreError> {
        if durable {
            tmp.as_file().sync_all().map_err(|e| StoreError::io(tmp.path(), e))?;
        }
        let dest = self.object_path(root);
        let tmp = match tmp.persist_noclobber(&dest) {
            Ok(_) => None,
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Some(e.file),
            Err(e) => return Err(StoreError::io(&dest, e.error)),
        };
        if let Some(tmp) = tmp {
            if self.contains_intact(root) {
                return Ok(true);
            }
            tmp.persist(&dest).map_err(|e| StoreError::io(&dest, e.error))?;
        }
        if durable {
            sync_dir(&self.dir)?;
        } else {
            self.not_durable.lock().unwrap_or_else(|p| p.into_inner()).push(*root);
        }
        tracing::debug!(object = %root, durable, "stored large object");
        Ok(false)
    }

    /// Opens the object named `hash`, checking its format, its metadata, and that its chunk hashes
    /// hash to its name.
    pub fn open(&self, hash: &Blake3Hash) -> Result<LargeFileReader, StoreError> {
        Self::open_path(&self.object_path(hash), hash)
    }

    /// Opens the object file at `path`, which must be the object named `hash` (same checks as
    /// [`open`](Self::open)).
    pub fn open_path(path: &Path, hash: &Blake3Hash) -> Result<LargeFileReader, StoreError> {
        let path = path.to_path_buf();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(*hash));
            }
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        let file = PreadFile::new(file, len);
        let opened = chunked::open_object(&file, &path)?;
        if opened.kv.blake3 != *hash {
            return Err(StoreError::malformed(
                &path,
                format!("metadata names {} but the file is named {hash}", opened.kv.blake3),
            ));
        }
        if root_from_chunk_hashes(&opened.chunk_hashes) != Some(*hash) {
            return Err(StoreError::HashTreeMismatch { object: *hash });
        }
        Ok(LargeFileReader {
            hash: *hash,
            sha256: opened.kv.sha256,
            size: opened.kv.size,
            path,
            file,
            meta: opened.meta,
            chunk_hashes: opened.chunk_hashes,
            rg_starts: opened.rg_starts,
            cache: Mutex::new(VecDeque::with_capacity(CACHED_CHUNKS)),
        })
    }

    /// Names of all objects in the store, sorted (temp files and foreign names are ignored).
    pub fn list(&self) -> Result<Vec<Blake3Hash>, StoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(&self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Ok(PondFile::Object(h)) = PondFile::parse(&format!("{LARGE_FILES_DIR}/{name}")) {
                out.push(h);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes the object named `hash` (the directory is not fsynced).
    pub fn remove(&self, hash: &Blake3Hash) -> Result<(), StoreError> {
        let path = self.object_path(hash);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound(*hash)),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    /// Deletes everything in `.tmp/` (leftovers of interrupted puts) and returns how many entries
    /// went. Call it when no put is running (e.g. at mount), or it may fail that put.
    pub fn clear_tmp(&self) -> Result<usize, StoreError> {
        let entries = match fs::read_dir(&self.tmp) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StoreError::io(&self.tmp, e)),
        };
        let mut removed = 0;
        for entry in entries {
            let path = entry.map_err(|e| StoreError::io(&self.tmp, e))?.path();
            let res = match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
                Ok(_) => fs::remove_file(&path),
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&path, e)),
            }
        }
        Ok(removed)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io(dir, e))
}

/// An open, checked object: verified random-access reads. `Send + Sync`; share it across threads.
pub struct LargeFileReader {
    hash: Blake3Hash,
    sha256: Sha256Digest,
    size: u64,
    path: PathBuf,
    file: PreadFile,
    meta: ArrowReaderMetadata,
    chunk_hashes: Vec<[u8; 32]>,
    /// First chunk number of each row group, plus the chunk count at the end.
    rg_starts: Vec<u64>,
    /// The last chunks verified (most recent first), so sequential small reads, and the
    /// neighbouring reads of parallel readahead, decode each chunk once.
    cache: Mutex<VecDeque<(u64, Bytes)>>,
}

impl std::fmt::Debug for LargeFileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LargeFileReader").field("hash", &self.hash).field("size", &self.size).finish_non_exhaustive()
    }
}

impl LargeFileReader {
    /// The object's name (BLAKE3 of the content).
    pub fn hash(&self) -> Blake3Hash {
        self.hash
    }

    /// SHA-256 of the content, as recorded when stored.
    pub fn sha256(&self) -> Sha256Digest {
        self.sha256
    }

    /// Content length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of chunks (at least 1).
    pub fn chunk_count(&self) -> u64 {
        self.chunk_hashes.len() as u64
    }

    /// The stored (and, at open, authenticated) chunk hashes.
    pub fn chunk_hashes(&self) -> &[[u8; 32]] {
        &self.chunk_hashes
    }

    /// Approximate heap held by this open reader (footer, page index, chunk hashes, cache).
    pub fn memory_size(&self) -> usize {
        let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let cached: usize = cached.iter().map(|(_, b)| b.len()).sum();
        self.meta.metadata().memory_size() + self.chunk_hashes.len() * 32 + cached
    }

    /// Bytes read from the object file by this reader since open (footer and page index included).
    pub fn bytes_read_from_disk(&self) -> u64 {
        self.file.bytes_read()
    }

    /// Reads up to `buf.len()` bytes at `offset`; short only at the end of the content (0 at or
    /// past it). Every chunk touched is verified before its bytes are returned.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        let mut done = 0;
        while done < buf.len() {
            let pos = offset.saturating_add(done as u64);
            if pos >= self.size {
                break;
            }
            let chunk = self.read_chunk(pos / CHUNK_SIZE)?;
            // Less than CHUNK_SIZE, so fits in usize.
            let within = (pos % CHUNK_SIZE) as usize;
            let n = chunk.len().saturating_sub(within).min(buf.len() - done);
            if n == 0 {
                break; // cannot happen for a verified chunk; avoids a loop regardless
            }
            buf[done..done + n].copy_from_slice(&chunk[within..within + n]);
            done += n;
        }
        Ok(done)
    }

    /// The verified bytes of chunk `idx`.
    pub fn read_chunk(&self, idx: u64) -> Result<Bytes, StoreError> {
        if let Some((_, bytes)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(i, _)| *i == idx) {
            return Ok(bytes.clone());
        }
        let bytes = self.decode_verified(idx)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() == CACHED_CHUNKS {
            cache.pop_back();
        }
        cache.push_front((idx, bytes.clone()));
        Ok(bytes)
    }

    /// Decodes chunk `idx` from disk (no cache) and checks its length and hash.
    pub(crate) fn decode_verified(&self, idx: u64) -> Result<Bytes, StoreError> {
        let n = self.chunk_count();
        if idx >= n {
            return Err(StoreError::ChunkOutOfRange { object: self.hash, chunk: idx, chunks: n });
        }
        // rg_starts is sorted, starts at 0 and ends at n > idx, so rg is a valid row group.
        let rg = self.rg_starts.partition_point(|&s| s <= idx) - 1;
        let row = idx - self.rg_starts[rg];
        let rg_rows = self.rg_starts[rg + 1] - self.rg_starts[rg];
        let corrupt = StoreError::CorruptChunk { object: self.hash, chunk: idx };
        let bytes = match chunked::decode_chunk(&self.file, &self.meta, rg, row, rg_rows, &self.path) {
            Ok(b) => b,
            Err(e @ StoreError::Io { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(object = %self.hash, chunk = idx, error = %e, "undecodable chunk");
                return Err(corrupt);
            }
        };
        if bytes.len() as u64 != chunk_len(self.size, idx)
            || chunk_hash(idx, n, &bytes) != self.chunk_hashes[idx as usize]
        {
            tracing::warn!(object = %self.hash, chunk = idx, "chunk does not match its hash");
            return Err(corrupt);
        }
        Ok(bytes)
    }

    /// Re-reads and re-hashes every chunk, then checks the SHA-256 and size of the whole. (The
    /// whole BLAKE3 needs no second pass: every chunk matched its hash, and the chunk hashes
    /// merged to the object's name when it was opened.) Returns every problem found (each bad
    /// chunk once).
    pub fn verify(&self) -> Result<(), Vec<StoreError>> {
        let mut errors = Vec::new();
        let mut sha = Sha256::new();
        let mut size = 0u64;
        for idx in 0..self.chunk_count() {
            match self.decode_verified(idx) {
                Ok(bytes) => {
                    sha.update(&bytes);
                    size += bytes.len() as u64;
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            let mut mismatch = |reason: String| errors.push(StoreError::ContentMismatch { object: self.hash, reason });
            if size != self.size {
                mismatch(format!("content is {size} bytes, metadata says {}", self.size));
            }
            let sha = Sha256Digest(sha.finalize().into());
            if sha != self.sha256 {
                mismatch(format!("content SHA-256 is {sha}, metadata says {}", self.sha256));
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}
