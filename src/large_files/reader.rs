//! Reading stored content: [`ObjectReader`] opens an object (format 1 or 2, see [`super::format`]),
//! authenticates its chunk hashes against its name, and serves verified reads of any byte range,
//! fetching each chunk's bytes from wherever the object says they are.
//!
//! Where bytes come from is a [`BlobSource`]: the pond's own directory ([`LocalBlobs`]), or anything
//! else that can read a byte range of a file of the layout (a remote replica, through a cache). The
//! reader itself never assumes a local file: it asks the source for ranges, so the same code serves
//! a mount of a pond and a lazy mount of a replica.
//!
//! A source that keeps copies (a cache) can be wrong about one: bytes that fail to authenticate are
//! dropped from it ([`Blob::forget_range`], [`BlobSource::forget`]) and read once more, so a damaged
//! cache entry is fetched again rather than served or reported as damage of the replica. A source
//! for which reading ahead pays ([`BlobSource::reads_ahead`]) is told which chunks a sequential
//! reader will want next ([`Blob::prefetch`]); where those chunks are is decided here, never there.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};
use sha2::{Digest, Sha256};

use super::error::StoreError;
use super::format::{self, ChunkLoc, ObjectFormat, PreadFile};
use super::hash::{
    Blake3Hash, PIECE_SIZE, Sha256Digest, chunk_hash, chunk_len, merge_pieces, piece_cv, root_from_chunk_hashes,
};
use crate::config::CHUNK_SIZE;
use crate::layout::PondFile;

/// Chunks found whole while verifying many objects: the same bytes in the same place with the same
/// hash need reading once.
pub type VerifiedChunks = std::collections::HashSet<(ChunkLoc, [u8; 32])>;

/// Verified chunks an open reader keeps (4 × 64 KiB).
const CACHED_CHUNKS: usize = 4;
/// A read of at most this many bytes inside one full chunk of an object is a *small read*:
/// verified piece by piece ([`PIECE_SIZE`]) once the chunk's piece hashes are known (see
/// [`ObjectReader::read_to_vec`]).
const SMALL_READ: u64 = 4 * PIECE_SIZE;
const PIECES: usize = (CHUNK_SIZE / PIECE_SIZE) as usize;
/// Chunks whose piece hashes a reader keeps: 16 × 32 bytes each, 8 MiB at most.
const KEPT_PIECE_HASHES: usize = 16 * 1024;
/// Read-ahead of a source that wants it: the first window past a sequential read (chunks), doubled
/// while reading stays sequential up to the largest (96 MiB), and topped up a quarter at a time
/// ([`READ_AHEAD_TOP_UP`]): at least three quarters of it stay announced ahead of the read, in
/// requests of a quarter (24 MiB, two of the remote's spans). Little's law sets the size: at 20 ms
/// a request and ~1 GiB/s, a reader needs about 30 MiB on its way at every moment, and a window
/// of 48 MiB topped up by halves left it, between top-ups, with three spans of 8 MiB on the way
/// and the reader waiting for them (a cold read of 1 GiB through 20 ms: 560-650 MiB/s at 48 MiB
/// by halves, 690-850 at 96 MiB by quarters, alternated on one machine).
const READ_AHEAD_FIRST: u64 = 8;
const READ_AHEAD_MAX: u64 = 1536;
/// The part of the window announced at once when it is topped up (the rest stays ahead).
const READ_AHEAD_TOP_UP: u64 = 4;
/// A read starting this many chunks behind the furthest one read still counts as sequential (the
/// kernel's read-ahead requests arrive on several threads, not quite in order).
const READ_AHEAD_SLACK: u64 = 32;

/// One readable file: its length and byte ranges of it.
pub trait Blob: Send + Sync {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Exactly `len` bytes at `offset` (an error if the file is shorter).
    fn read_range(&self, offset: u64, len: u64) -> io::Result<Bytes>;
    /// Bytes read through this handle so far.
    fn bytes_read(&self) -> u64 {
        0
    }
    /// Drops any copy this handle or its source keeps of the range (its bytes did not authenticate),
    /// so the next `read_range` of it reads the original again. True when a copy was dropped (a
    /// second read may then differ); a blob that keeps none returns false.
    fn forget_range(&self, _offset: u64, _len: u64) -> bool {
        false
    }
    /// A hint: these ranges (`(offset, len)`, ascending) will be read soon. A source where a read
    /// costs a round trip fetches them ahead, together; others ignore it.
    fn prefetch(&self, _ranges: &[(u64, u64)]) {}
}

/// Where the files of a pond's layout are read from.
pub trait BlobSource: Send + Sync {
    /// Opens `file`; [`StoreError::Missing`] when it is not there.
    fn open(&self, file: &PondFile) -> Result<Arc<dyn Blob>, StoreError>;
    /// A path or URL naming `file`, for messages.
    fn describe(&self, file: &PondFile) -> PathBuf;
    /// Drops any copy the source keeps of `file` (it did not authenticate), so the next `open`
    /// reads the original. True when a copy was dropped.
    fn forget(&self, _file: &PondFile) -> bool {
        false
    }
    /// True when telling the blobs what a sequential reader wants next pays ([`Blob::prefetch`]).
    fn reads_ahead(&self) -> bool {
        false
    }
}

impl Blob for PreadFile {
    fn len(&self) -> u64 {
        Length::len(self)
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Bytes> {
        PreadFile::read_range(self, offset, len)
    }

    fn bytes_read(&self) -> u64 {
        PreadFile::bytes_read(self)
    }
}

/// The files under a local pond root.
#[derive(Clone, Debug)]
pub struct LocalBlobs {
    root: PathBuf,
}

impl LocalBlobs {
    pub fn new(root: &Path) -> Self {
        LocalBlobs { root: root.to_path_buf() }
    }
}

impl BlobSource for LocalBlobs {
    fn open(&self, file: &PondFile) -> Result<Arc<dyn Blob>, StoreError> {
        let path = file.local_path(&self.root);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::Missing(file.clone())),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let len = f.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        Ok(Arc::new(PreadFile::new(f, len)))
    }

    fn describe(&self, file: &PondFile) -> PathBuf {
        file.local_path(&self.root)
    }
}

/// A [`Blob`] as parquet's `ChunkReader`, for reading footers and columns.
#[derive(Clone)]
pub(crate) struct BlobReader(pub Arc<dyn Blob>);

impl Length for BlobReader {
    fn len(&self) -> u64 {
        self.0.len()
    }
}

impl ChunkReader for BlobReader {
    type T = BlobCursor;

    fn get_read(&self, start: u64) -> Result<BlobCursor, ParquetError> {
        if start > self.0.len() {
            return Err(ParquetError::EOF(format!("read from {start} past the end ({} bytes)", self.0.len())));
        }
        Ok(BlobCursor { blob: self.0.clone(), pos: start })
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        Ok(self.0.read_range(start, length as u64)?)
    }
}

/// Sequential reads of a blob, one range at a time.
pub(crate) struct BlobCursor {
    blob: Arc<dyn Blob>,
    pos: u64,
}

impl Read for BlobCursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.blob.len().saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left).min(CHUNK_SIZE);
        if n == 0 {
            return Ok(0);
        }
        let bytes = self.blob.read_range(self.pos, n)?;
        buf[..bytes.len()].copy_from_slice(&bytes);
        self.pos += bytes.len() as u64;
        Ok(bytes.len())
    }
}

/// One attempt at reading a chunk.
enum Attempt {
    Done(Result<Bytes, StoreError>),
    /// Its bytes failed to authenticate and a kept copy of them was dropped: read it again.
    Again,
}

/// An open, authenticated object: verified random-access reads. `Send + Sync`; share it.
pub struct ObjectReader {
    name: Blake3Hash,
    format: ObjectFormat,
    size: u64,
    sha256: Option<Sha256Digest>,
    hashes: Arc<[[u8; 32]]>,
    locs: Arc<[ChunkLoc]>,
    source: Arc<dyn BlobSource>,
    /// The files this reader has opened (the object itself, the packs it points into).
    blobs: Mutex<HashMap<Arc<PondFile>, Arc<dyn Blob>>>,
    /// The last chunks verified (most recent first), so sequential small reads, and the
    /// neighbouring reads of parallel readahead, fetch and hash each chunk once.
    cache: Mutex<VecDeque<(u64, Bytes)>>,
    /// Where sequential reading stands, for a source that reads ahead.
    ahead: Mutex<ReadAhead>,
    /// The piece hashes of chunks a small read verified whole (they merged into the chunk's hash).
    pieces: Mutex<HashMap<u64, Arc<[[u8; 32]; PIECES]>>>,
}

/// Sequential-read detection for [`BlobSource::reads_ahead`] sources.
#[derive(Debug, Default)]
struct ReadAhead {
    /// One past the furthest chunk read so far.
    next: u64,
    /// One past the furthest chunk announced to the source.
    hinted: u64,
    /// The current window past the read (chunks); 0 while reads are not sequential.
    window: u64,
}

impl ReadAhead {
    /// A read of chunks `first..=last` of `chunks`: the chunks to announce now (`from..to`, empty
    /// when none). A sequential read doubles the window up to [`READ_AHEAD_MAX`] and, once less
    /// than all but a [`READ_AHEAD_TOP_UP`]th of it is announced past the read, announces up to
    /// its end; any other read starts over (nothing ahead, only the chunks it touches).
    fn plan(&mut self, first: u64, last: u64, chunks: u64) -> std::ops::Range<u64> {
        // Again over what was just read (a re-read, or a read-ahead request arriving late):
        // nothing new to announce, and no reason to start over.
        if last < self.next && first + READ_AHEAD_SLACK >= self.next {
            return 0..0;
        }
        let sequential = first <= self.hinted && first + READ_AHEAD_SLACK >= self.next;
        if sequential {
            self.window = (self.window * 2).clamp(READ_AHEAD_FIRST, READ_AHEAD_MAX);
            self.next = self.next.max(last + 1);
        } else {
            self.window = 0;
            self.next = last + 1;
            self.hinted = first;
        }
        let from = self.hinted.max(first);
        let kept = self.window - self.window / READ_AHEAD_TOP_UP;
        let to = if self.hinted >= last + 1 + kept { from } else { (last + 1 + self.window).min(chunks) };
        self.hinted = self.hinted.max(to);
        from..to.max(from)
    }
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader").field("name", &self.name).field("size", &self.size).finish_non_exhaustive()
    }
}

impl ObjectReader {
    /// Opens the object named `name` from `source`, checking its format, its metadata, and that its
    /// chunk hashes hash to its name.
    ///
    /// A copy the source kept (a cache) that fails these checks is dropped and the object read once
    /// more: only the original can be damaged.
    pub fn open(source: Arc<dyn BlobSource>, name: &Blake3Hash) -> Result<ObjectReader, StoreError> {
        let file = PondFile::Object(*name);
        match Self::open_once(&source, name, &file) {
            Err(
                e @ (StoreError::Malformed { .. } | StoreError::HashTreeMismatch { .. } | StoreError::Parquet { .. }),
            ) if source.forget(&file) => {
                tracing::warn!(object = %name, "a kept copy of the object did not authenticate ({e}); reading it again");
                Self::open_once(&source, name, &file)
            }
            other => other,
        }
    }

    fn open_once(source: &Arc<dyn BlobSource>, name: &Blake3Hash, file: &PondFile) -> Result<ObjectReader, StoreError> {
        let path = source.describe(file);
        let blob = match source.open(file) {
            Err(StoreError::Missing(_)) => return Err(StoreError::NotFound(*name)),
            other => other?,
        };
        let opened = format::open_object(&BlobReader(blob.clone()), &path, file)?;
        if opened.meta.blake3 != *name {
            return Err(StoreError::malformed(
                &path,
                format!("metadata names {} but the file is named {name}", opened.meta.blake3),
            ));
        }
        if root_from_chunk_hashes(&opened.hashes) != Some(*name) {
            return Err(StoreError::HashTreeMismatch { object: *name });
        }
        let source = source.clone();
        let reader = ObjectReader::from_parts(
            source,
            *name,
            opened.meta.format,
            opened.meta.size,
            opened.meta.sha256,
            opened.hashes.into(),
            opened.locs.into(),
        );
        // A manifest is done with once opened (its chunks are elsewhere): only a self-contained
        // object is kept open, for its chunks.
        if reader.format == ObjectFormat::Full {
            reader.blobs.lock().unwrap_or_else(|p| p.into_inner()).insert(Arc::new(file.clone()), blob);
        }
        Ok(reader)
    }

    /// A reader over hashes and locations already known to be right (a version just written).
    pub(crate) fn from_parts(
        source: Arc<dyn BlobSource>,
        name: Blake3Hash,
        format: ObjectFormat,
        size: u64,
        sha256: Option<Sha256Digest>,
        hashes: Arc<[[u8; 32]]>,
        locs: Arc<[ChunkLoc]>,
    ) -> ObjectReader {
        ObjectReader {
            name,
            format,
            size,
            sha256,
            hashes,
            locs,
            source,
            blobs: Mutex::new(HashMap::new()),
            cache: Mutex::new(VecDeque::with_capacity(CACHED_CHUNKS)),
            ahead: Mutex::new(ReadAhead::default()),
            pieces: Mutex::new(HashMap::new()),
        }
    }

    /// The object's name (BLAKE3 of the content).
    pub fn hash(&self) -> Blake3Hash {
        self.name
    }

    /// Format 1 (self-contained) or 2 (a manifest).
    pub fn format(&self) -> ObjectFormat {
        self.format
    }

    /// SHA-256 of the content, as recorded by format 1 objects.
    pub fn sha256(&self) -> Option<Sha256Digest> {
        self.sha256
    }

    /// Content length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of chunks (at least 1).
    pub fn chunk_count(&self) -> u64 {
        self.hashes.len() as u64
    }

    /// The (authenticated) chunk hashes.
    pub fn chunk_hashes(&self) -> &[[u8; 32]] {
        &self.hashes
    }

    /// Where each chunk's bytes are.
    pub fn chunk_locs(&self) -> &[ChunkLoc] {
        &self.locs
    }

    /// The files holding this object's chunks' bytes, each once.
    pub fn data_files(&self) -> Vec<PondFile> {
        let mut seen: Vec<PondFile> = Vec::new();
        for loc in self.locs.iter() {
            if seen.last() != Some(&loc.file) && !seen.contains(&loc.file) {
                seen.push((*loc.file).clone());
            }
        }
        seen
    }

    /// Approximate heap held by this open reader (hashes, locations, cache).
    pub fn memory_size(&self) -> usize {
        let cached: usize = self.cache.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(_, b)| b.len()).sum();
        self.hashes.len() * (32 + std::mem::size_of::<ChunkLoc>()) + cached
    }

    /// Bytes read from storage by this reader since open (metadata included).
    pub fn bytes_read_from_disk(&self) -> u64 {
        self.blobs.lock().unwrap_or_else(|p| p.into_inner()).values().map(|b| b.bytes_read()).sum()
    }

    /// Reads up to `buf.len()` bytes at `offset`; short only at the end of the content (0 at or
    /// past it). Every chunk touched is verified before its bytes are returned.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        self.plan_read(offset, buf.len() as u64);
        let mut done = 0;
        self.copy_out(offset, buf.len(), |piece| {
            buf[done..done + piece.len()].copy_from_slice(piece);
            done += piece.len();
        })
    }

    /// Hands `sink` the bytes of up to `len` bytes at `offset`, a verified chunk's part at a time
    /// and in order, and returns how many (short only at the end of the content). A chunk the read
    /// covers whole is not kept among the reader's last chunks.
    fn copy_out(&self, offset: u64, len: usize, mut sink: impl FnMut(&[u8])) -> Result<usize, StoreError> {
        let len = (len as u64).min(self.size.saturating_sub(offset)) as usize;
        let mut done = 0;
        while done < len {
            let pos = offset + done as u64;
            let whole = self.covers_chunk(pos, len - done);
            let chunk = self.read_chunk_kept(pos / CHUNK_SIZE, !whole)?;
            // Less than CHUNK_SIZE, so fits in usize.
            let within = (pos % CHUNK_SIZE) as usize;
            let n = chunk.len().saturating_sub(within).min(len - done);
            if n == 0 {
                break; // cannot happen for a verified chunk; avoids a loop regardless
            }
            sink(&chunk[within..within + n]);
            done += n;
        }
        Ok(done)
    }

    /// Up to `len` bytes at `offset` as a new vector (short only at the end of the content), every
    /// chunk touched verified first; nothing is zero-filled on the way.
    ///
    /// A small read (a 4 KiB random read) inside one full chunk of an object reads and hashes
    /// only the 4 KiB pieces it touches once the chunk has been verified whole by an earlier small
    /// read: that check computed the pieces' chaining values and merged them into the chunk's hash,
    /// so each piece is authenticated on its own. (Reading and hashing the whole 64 KiB chunk for
    /// every 4 KiB miss held random reads to about half a passthrough's rate.)
    pub fn read_to_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let len = (len as u64).min(self.size.saturating_sub(offset)) as usize;
        // Announced before a small read too: 4 KiB reads in order (`O_DIRECT`) still read ahead.
        self.plan_read(offset, len as u64);
        if let Some(small) = self.read_small(offset, len)? {
            return Ok(small);
        }
        let mut out = Vec::with_capacity(len);
        self.copy_out(offset, len, |piece| out.extend_from_slice(piece))?;
        Ok(out)
    }

    /// A small read by pieces (see [`ObjectReader::read_to_vec`]); `None` when the read is not one,
    /// or anything on the way is not as expected: the whole-chunk path then reads it, and reports
    /// what is wrong. An I/O error is the read's answer, though: the whole-chunk path would only
    /// ask the source again (and wait for a remote that is down a second time).
    fn read_small(&self, offset: u64, len: usize) -> Result<Option<Vec<u8>>, StoreError> {
        let failed = |file: &PondFile, e: io::Error| match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::NotFound => Ok(None),
            _ => Err(StoreError::io(self.source.describe(file), e)),
        };
        let (idx, within) = (offset / CHUNK_SIZE, offset % CHUNK_SIZE);
        if len == 0
            || len as u64 > SMALL_READ
            || within + len as u64 > CHUNK_SIZE
            || self.chunk_count() < 2
            || chunk_len(self.size, idx) != CHUNK_SIZE
        {
            return Ok(None);
        }
        let Some(loc) = self.locs.get(idx as usize).filter(|loc| u64::from(loc.len) == CHUNK_SIZE) else {
            return Ok(None);
        };
        if let Some(bytes) = self.cached_chunk(idx) {
            return Ok(Some(bytes[within as usize..within as usize + len].to_vec()));
        }
        let known = self.pieces.lock().unwrap_or_else(|p| p.into_inner()).get(&idx).cloned();
        let Ok(blob) = self.blob(&loc.file) else { return Ok(None) };
        let Some(pieces) = known else {
            // The first small read of this chunk: read it whole, hash it by pieces, and keep the
            // pieces' hashes if they merge into the chunk's.
            let (start, raw_len) = format::raw_range(loc);
            let raw = match blob.read_range(start, raw_len) {
                Ok(raw) => raw,
                Err(e) => return failed(&loc.file, e),
            };
            let Some(chunk) = format::strip_len_prefix(raw, loc.len) else { return Ok(None) };
            let mut pieces = [[0u8; 32]; PIECES];
            for (j, piece) in chunk.chunks(PIECE_SIZE as usize).enumerate() {
                pieces[j] = piece_cv(idx * CHUNK_SIZE + j as u64 * PIECE_SIZE, piece);
            }
            if merge_pieces(&pieces) != self.hashes[idx as usize] {
                return Ok(None);
            }
            let mut kept = self.pieces.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() >= KEPT_PIECE_HASHES {
                kept.clear();
            }
            kept.insert(idx, Arc::new(pieces));
            return Ok(Some(chunk[within as usize..within as usize + len].to_vec()));
        };
        let (first, last) = (within / PIECE_SIZE, (within + len as u64 - 1) / PIECE_SIZE);
        let span = (last - first + 1) * PIECE_SIZE;
        let raw = match blob.read_range(loc.offset + first * PIECE_SIZE, span) {
            Ok(raw) if raw.len() as u64 == span => raw,
            Ok(_) => return Ok(None),
            Err(e) => return failed(&loc.file, e),
        };
        for (k, piece) in raw.chunks(PIECE_SIZE as usize).enumerate() {
            let j = first + k as u64;
            if piece_cv(idx * CHUNK_SIZE + j * PIECE_SIZE, piece) != pieces[j as usize] {
                return Ok(None);
            }
        }
        let from = (within - first * PIECE_SIZE) as usize;
        Ok(Some(raw[from..from + len].to_vec()))
    }

    /// Chunk `idx` from the last chunks verified, if it is one of them.
    fn cached_chunk(&self, idx: u64) -> Option<Bytes> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.iter().find(|(i, _)| *i == idx).map(|(_, bytes)| bytes.clone())
    }

    /// The verified bytes of chunk `idx`.
    pub fn read_chunk(&self, idx: u64) -> Result<Bytes, StoreError> {
        self.read_chunk_kept(idx, true)
    }

    /// True when `len` bytes read at `pos` cover the chunk holding `pos` from its first byte to its
    /// last (a sequential reader, having read all of it, does not come back for part of it).
    fn covers_chunk(&self, pos: u64, len: usize) -> bool {
        pos.is_multiple_of(CHUNK_SIZE) && len as u64 >= chunk_len(self.size, pos / CHUNK_SIZE)
    }

    /// Chunk `idx`, kept among the last chunks verified when `keep` (a read that takes a chunk
    /// whole, as a sequential reader's do, keeps nothing). A remote replica's chunk may be a slice
    /// of a read-ahead request's buffer: a slice kept would keep the whole buffer in memory (and
    /// its room in the mount's read-ahead bound, for as long as the file stays open), so a copy
    /// of it is kept instead.
    fn read_chunk_kept(&self, idx: u64, keep: bool) -> Result<Bytes, StoreError> {
        if let Some(bytes) = self.cached_chunk(idx) {
            return Ok(bytes);
        }
        let bytes = self.read_chunk_uncached(idx)?;
        if !keep {
            return Ok(bytes);
        }
        let bytes = if self.source.reads_ahead() { Bytes::copy_from_slice(&bytes) } else { bytes };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() == CACHED_CHUNKS {
            cache.pop_back();
        }
        cache.push_front((idx, bytes.clone()));
        Ok(bytes)
    }

    /// For a source that reads ahead: announce the chunks a read of `len` bytes at `offset` touches
    /// (so several in one place come in one request), and while reading is sequential, a window
    /// past them that doubles up to [`READ_AHEAD_MAX`] ([`ReadAhead::plan`]). The window is topped
    /// up only once a quarter of it has been read, so what is announced comes in wide requests
    /// rather than a chunk or two per read. Chunks already announced are not announced again.
    fn plan_read(&self, offset: u64, len: u64) {
        if len == 0 || offset >= self.size || !self.source.reads_ahead() {
            return;
        }
        let first = offset / CHUNK_SIZE;
        let last = (offset.saturating_add(len).min(self.size) - 1) / CHUNK_SIZE;
        let chunks = self.chunk_count();
        let std::ops::Range { start: from, end: to } =
            self.ahead.lock().unwrap_or_else(|p| p.into_inner()).plan(first, last, chunks);
        // One chunk wanted now and nothing ahead: the read itself fetches it.
        if to <= from || (to - from == 1 && from == first) {
            return;
        }
        // The raw ranges to read, by the file holding them.
        type Ranges = Vec<(u64, u64)>;
        let mut by_file: Vec<(Arc<PondFile>, Ranges)> = Vec::new();
        for loc in &self.locs[from as usize..to as usize] {
            let range = format::raw_range(loc);
            match by_file.iter_mut().find(|(f, _)| *f == loc.file) {
                Some((_, ranges)) => ranges.push(range),
                None => by_file.push((loc.file.clone(), vec![range])),
            }
        }
        for (file, mut ranges) in by_file {
            if let Ok(blob) = self.blob(&file) {
                ranges.sort_unstable();
                blob.prefetch(&ranges);
            }
        }
    }

    fn blob(&self, file: &Arc<PondFile>) -> Result<Arc<dyn Blob>, StoreError> {
        if let Some(b) = self.blobs.lock().unwrap_or_else(|p| p.into_inner()).get(file) {
            return Ok(b.clone());
        }
        let b = self.source.open(file)?;
        self.blobs.lock().unwrap_or_else(|p| p.into_inner()).insert(file.clone(), b.clone());
        Ok(b)
    }

    /// Fetches chunk `idx` (no cache) and checks its length and hash. Bytes that fail the check
    /// and came from a copy the source kept are dropped there and read once more from the original.
    pub fn read_chunk_uncached(&self, idx: u64) -> Result<Bytes, StoreError> {
        match self.read_chunk_once(idx, true) {
            Attempt::Done(result) => result,
            Attempt::Again => match self.read_chunk_once(idx, false) {
                Attempt::Done(result) => result,
                Attempt::Again => Err(StoreError::InvalidInput(format!("chunk {idx} asked for a third read"))),
            },
        }
    }

    /// One attempt at chunk `idx`; [`Attempt::Again`] when its bytes failed to authenticate,
    /// `may_retry`, and the blob dropped a kept copy of them.
    fn read_chunk_once(&self, idx: u64, may_retry: bool) -> Attempt {
        let n = self.chunk_count();
        let Some(loc) = self.locs.get(idx as usize) else {
            return Attempt::Done(Err(StoreError::ChunkOutOfRange { object: self.name, chunk: idx, chunks: n }));
        };
        let (start, len) = format::raw_range(loc);
        let missing = |file: PondFile| {
            tracing::warn!(object = %self.name, chunk = idx, %file, "the file holding a chunk is missing");
            Attempt::Done(Err(StoreError::ChunkFileMissing { object: self.name, chunk: idx, file }))
        };
        let blob = match self.blob(&loc.file) {
            Ok(b) => b,
            Err(StoreError::Missing(file)) => return missing(file),
            Err(e) => return Attempt::Done(Err(e)),
        };
        let corrupt = |why: &str| {
            if may_retry && blob.forget_range(start, len) {
                tracing::warn!(object = %self.name, chunk = idx, file = %loc.file, "a kept copy of a chunk: {why}; reading it again");
                return Attempt::Again;
            }
            tracing::warn!(
                object = %self.name, chunk = idx, file = %self.source.describe(&loc.file).display(), offset = loc.offset,
                "{why}"
            );
            Attempt::Done(Err(StoreError::CorruptChunk {
                object: self.name,
                chunk: idx,
                file: (*loc.file).clone(),
                offset: loc.offset,
            }))
        };
        let raw = match blob.read_range(start, len) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return corrupt("chunk past the end of its file"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return missing((*loc.file).clone()),
            Err(e) => return Attempt::Done(Err(StoreError::io(self.source.describe(&loc.file), e))),
        };
        let Some(bytes) = format::strip_len_prefix(raw, loc.len) else {
            return corrupt("chunk's length prefix does not match");
        };
        if bytes.len() as u64 != chunk_len(self.size, idx) || chunk_hash(idx, n, &bytes) != self.hashes[idx as usize] {
            return corrupt("chunk does not match its hash");
        }
        Attempt::Done(Ok(bytes))
    }

    /// Re-reads and re-hashes every chunk, and for a format 1 object checks the SHA-256 it records.
    /// (The whole BLAKE3 needs no second pass: every chunk matched its hash, and the chunk hashes
    /// merged to the object's name when it was opened.) Returns every problem found, each bad chunk
    /// once; `seen` lets a caller verifying many objects skip chunks (same bytes, same place, same
    /// hash) it has checked already.
    pub fn verify(&self, seen: Option<&Mutex<VerifiedChunks>>) -> Result<(), Vec<StoreError>> {
        let mut errors = Vec::new();
        let mut sha = self.sha256.map(|_| Sha256::new());
        for idx in 0..self.chunk_count() {
            let key = (self.locs[idx as usize].clone(), self.hashes[idx as usize]);
            if sha.is_none()
                && let Some(seen) = seen
                && seen.lock().unwrap_or_else(|p| p.into_inner()).contains(&key)
            {
                continue;
            }
            match self.read_chunk_uncached(idx) {
                Ok(bytes) => {
                    if let Some(sha) = sha.as_mut() {
                        sha.update(&bytes);
                    }
                    if let Some(seen) = seen {
                        seen.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty()
            && let (Some(sha), Some(recorded)) = (sha, self.sha256)
        {
            let got = Sha256Digest(sha.finalize().into());
            if got != recorded {
                errors.push(StoreError::ContentMismatch {
                    object: self.name,
                    reason: format!("content SHA-256 is {got}, metadata says {recorded}"),
                });
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PER_READ: u64 = (1 << 20) / CHUNK_SIZE;

    /// 1 MiB reads in order over a file of `chunks`: each read's first chunk, what it announced,
    /// and the window after it.
    fn read_in_order(ahead: &mut ReadAhead, chunks: u64) -> Vec<(u64, std::ops::Range<u64>, u64)> {
        (0..chunks.div_ceil(PER_READ))
            .map(|i| {
                let first = i * PER_READ;
                let got = ahead.plan(first, (first + PER_READ).min(chunks) - 1, chunks);
                (first, got, ahead.window)
            })
            .collect()
    }

    #[test]
    fn a_sequential_read_keeps_three_quarters_of_the_window_announced_in_wide_pieces() {
        let chunks = 20 * READ_AHEAD_MAX;
        let reads = read_in_order(&mut ReadAhead::default(), chunks);
        let mut hinted = 0;
        let mut top_ups = 0;
        for (first, got, window) in &reads {
            if !got.is_empty() {
                assert_eq!(got.start, hinted.max(*first), "announced once each, in order, no gap");
                if *window == READ_AHEAD_MAX && got.end < chunks {
                    top_ups += 1;
                    assert!(got.end - got.start >= READ_AHEAD_MAX / READ_AHEAD_TOP_UP, "a narrow top-up: {got:?}");
                }
                hinted = got.end;
            }
            let ahead = hinted.saturating_sub(first + PER_READ);
            if *window == READ_AHEAD_MAX && hinted < chunks {
                assert!(ahead >= READ_AHEAD_MAX * 3 / 4, "only {ahead} chunks announced ahead of the read at {first}");
            }
        }
        assert_eq!(hinted, chunks, "to the file's end");
        assert!(top_ups > 50, "the window was whole for most of the file ({top_ups} top-ups)");
    }

    #[test]
    fn a_jump_starts_read_ahead_over_from_the_read_itself() {
        let chunks = 10 * READ_AHEAD_MAX;
        let mut ahead = ReadAhead::default();
        read_in_order(&mut ahead, 4 * READ_AHEAD_MAX);
        assert_eq!(ahead.window, READ_AHEAD_MAX);
        let far = 8 * READ_AHEAD_MAX;
        assert_eq!(ahead.plan(far, far + 15, chunks), far..far + 16, "only what the read touches");
        assert_eq!(ahead.window, 0);
        assert_eq!(
            ahead.plan(far + 16, far + 31, chunks),
            far + 16..far + 32 + READ_AHEAD_FIRST,
            "then a small window"
        );
        assert_eq!(ahead.plan(far + 16, far + 31, chunks), 0..0, "a re-read announces nothing");
    }
}
