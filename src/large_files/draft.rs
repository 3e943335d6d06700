//! [`LargeDraft`]: the content of a large file while it is written: the stored object it started
//! from (if any) plus the chunks that differ from it. Opening a 1 GiB file to append or to patch a
//! few bytes costs what changes, not a copy of the file, and [`LargeDraft::finish`] hashes and
//! stores only the chunks that changed: the others keep their chaining values (BLAKE3's tree) and
//! their places in the packs that hold them, and the new version is a manifest naming them all.
//!
//! A chunk of the draft is in one of four states: untouched (the base object's chunk), dirty (its
//! bytes in memory), a hole (zeros, after a truncate that extends or a write past the end), or
//! stored (hashed, and either appended to this draft's pack or found already stored: the dedup
//! index ([`super::index`]) knows where chunks of content this mount has seen live, so the chunks
//! rsync copies from a file's old version into its new one are never written twice). Memory stays
//! bounded: past [`DIRTY_BUDGET`] dirty chunks the oldest are stored early (never the last chunk,
//! which an append would change again). A stored chunk that is written again becomes dirty again.
//!
//! The pack is written as chunks are stored, into a temp file once it outgrows a buffer (a smaller
//! one is handed to the store whole at close, to be held until the next commit writes it); its
//! chunks' places are known once it is closed, so reading back a chunk stored in the open pack
//! closes it first (published as is) and a later chunk starts a new pack. Every chunk read back is
//! verified against its hash.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::direct_sink::SinkOutput;
use super::error::StoreError;
use super::format::{ChunkBuf, ChunkLoc, ObjectFormat, PackWriter};
use super::hash::{chunk_count, chunk_cv, chunk_hash, chunk_len, root_from_chunk_hashes};
use super::reader::ObjectReader;
use super::{LargeFileStore, PutOutcome};
use crate::config::CHUNK_SIZE;
use crate::layout::PondFile;

/// A chunk's chaining value and where its bytes were stored.
type Placed = ([u8; 32], ChunkLoc);

/// Dirty chunks a draft keeps in memory before storing the oldest (1 MiB).
pub const DIRTY_BUDGET: usize = 16;

enum Slot {
    /// The chunk's bytes, exactly its length.
    Dirty(ChunkBuf),
    /// Zeros, the chunk's length.
    Hole,
    /// Hashed (`cv`: its chaining value at its index) and stored at `loc`; `in_open_pack` while
    /// that is the pack still being written (read back only once it is closed).
    Stored { cv: [u8; 32], loc: ChunkLoc, in_open_pack: bool },
}

struct OpenPack {
    writer: PackWriter,
    name: Arc<PondFile>,
    /// For messages: where the pack is written.
    path: std::path::PathBuf,
}

/// Large content being written (see the module doc).
pub struct LargeDraft {
    store: LargeFileStore,
    base: Option<Arc<ObjectReader>>,
    len: u64,
    /// Chunks that differ from the base (by index); every chunk below the content's chunk count and
    /// absent here is the base's, with the same length.
    slots: BTreeMap<u64, Slot>,
    /// Chunks in the order they became dirty (entries may be stale: checked when taken).
    dirty_order: VecDeque<u64>,
    dirty: usize,
    pack: Option<OpenPack>,
    /// Writing the pack failed: chunks stored in it may be lost, so the draft's content is.
    broken: bool,
    /// Packs closed since the last `finish`, with the chunks they hold: taught to the dedup index
    /// once a manifest points into them, deleted if none ever does.
    closed: Vec<(PondFile, Vec<Placed>)>,
}

impl std::fmt::Debug for LargeDraft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LargeDraft")
            .field("len", &self.len)
            .field("base", &self.base.as_ref().map(|b| b.hash()))
            .field("changed_chunks", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl Drop for LargeDraft {
    /// Packs that no manifest points into (the file was abandoned, or lost) go with the draft.
    fn drop(&mut self) {
        for (pack, _) in std::mem::take(&mut self.closed) {
            self.store.discard(&pack);
        }
    }
}

/// Chunks holding `len` bytes (0 for empty content, unlike [`chunk_count`]).
fn chunks_of(len: u64) -> u64 {
    len.div_ceil(CHUNK_SIZE)
}

impl LargeDraft {
    /// Empty content.
    pub fn new(store: &LargeFileStore) -> Self {
        LargeDraft {
            store: store.clone(),
            base: None,
            len: 0,
            slots: BTreeMap::new(),
            dirty_order: VecDeque::new(),
            dirty: 0,
            pack: None,
            broken: false,
            closed: Vec::new(),
        }
    }

    /// Starts from stored content (nothing is read until a chunk changes).
    pub fn from_object(store: &LargeFileStore, base: Arc<ObjectReader>) -> Self {
        let len = base.size();
        let mut draft = LargeDraft::new(store);
        draft.len = len;
        draft.base = Some(base);
        draft
    }

    /// Content length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the content is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when nothing differs from the stored content the draft started from.
    pub fn is_unchanged(&self) -> bool {
        self.slots.is_empty() && self.base.as_ref().is_some_and(|b| b.size() == self.len)
    }

    /// The objects and packs this draft's content uses: its base object and the files it points
    /// into, the places of chunks it stored or found stored, the packs it closed.
    pub fn files_in_use(&self) -> Vec<PondFile> {
        let mut files = Vec::new();
        if let Some(base) = &self.base {
            files.push(PondFile::Object(base.hash()));
            files.extend(base.data_files());
        }
        for slot in self.slots.values() {
            if let Slot::Stored { loc, in_open_pack: false, .. } = slot {
                files.push((*loc.file).clone());
            }
        }
        files.extend(self.closed.iter().map(|(f, _)| f.clone()));
        files
    }

    /// True once writing the pack failed: the draft's content can no longer be trusted whole.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The base object (what the draft started from, or what the last `finish` stored).
    pub fn base(&self) -> Option<&Arc<ObjectReader>> {
        self.base.as_ref()
    }

    /// Writes `data` at `offset`; a gap past the end reads as zeros.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| StoreError::InvalidInput("write past the largest offset".into()))?;
        if end > self.len {
            self.grow(end)?;
        }
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let idx = pos / CHUNK_SIZE;
            let within = (pos % CHUNK_SIZE) as usize;
            let clen = chunk_len(self.len, idx) as usize;
            let n = (clen - within).min(rest.len());
            let whole = within == 0 && n == clen;
            if whole && !matches!(self.slots.get(&idx), Some(Slot::Dirty(_))) {
                // Overwritten whole: the old bytes need not be read.
                self.set_dirty(idx, ChunkBuf::from_slice(&rest[..n]));
            } else {
                self.dirty_bytes(idx)?.bytes_mut()[within..within + n].copy_from_slice(&rest[..n]);
            }
            pos += n as u64;
            rest = &rest[n..];
        }
        self.store_over_budget()
    }

    /// Reads up to `buf.len()` bytes at `offset` (short only at the end; 0 past it).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        let mut done = 0;
        while done < buf.len() {
            let pos = offset.saturating_add(done as u64);
            if pos >= self.len {
                break;
            }
            let idx = pos / CHUNK_SIZE;
            let within = (pos % CHUNK_SIZE) as usize;
            let clen = chunk_len(self.len, idx) as usize;
            let n = (clen - within).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match self.slots.get(&idx) {
                Some(Slot::Dirty(v)) => out.copy_from_slice(&v.bytes()[within..within + n]),
                Some(Slot::Hole) => out.fill(0),
                _ => out.copy_from_slice(&self.chunk_bytes(idx)?[within..within + n]),
            }
            done += n;
        }
        Ok(done)
    }

    /// Truncates, or extends with zeros, to `len`.
    pub fn set_len(&mut self, len: u64) -> Result<(), StoreError> {
        if len > self.len {
            return self.grow(len);
        }
        if len == self.len {
            return Ok(());
        }
        let keep = chunks_of(len);
        let gone: Vec<u64> = self.slots.range(keep..).map(|(i, _)| *i).collect();
        for idx in gone {
            if let Some(Slot::Dirty(_)) = self.slots.remove(&idx) {
                self.dirty -= 1;
            }
        }
        let tail = len % CHUNK_SIZE;
        if tail != 0 {
            // The new last chunk gets shorter.
            let idx = len / CHUNK_SIZE;
            self.dirty_bytes(idx)?.set_len(tail as usize);
        }
        self.len = len;
        Ok(())
    }

    /// Extends to `len` > the current length with zeros.
    fn grow(&mut self, len: u64) -> Result<(), StoreError> {
        let old = self.len;
        let tail = old % CHUNK_SIZE;
        if tail != 0 {
            // The old last chunk gets longer: its new bytes are zeros.
            let idx = old / CHUNK_SIZE;
            let new_len = chunk_len(len, idx) as usize;
            self.dirty_bytes(idx)?.set_len(new_len);
        }
        for idx in chunks_of(old)..chunks_of(len) {
            if let Some(Slot::Dirty(_)) = self.slots.insert(idx, Slot::Hole) {
                self.dirty -= 1;
            }
        }
        self.len = len;
        Ok(())
    }

    /// Makes chunk `idx` dirty (reading its current bytes) and returns them.
    fn dirty_bytes(&mut self, idx: u64) -> Result<&mut ChunkBuf, StoreError> {
        if !matches!(self.slots.get(&idx), Some(Slot::Dirty(_))) {
            let bytes = match self.slots.get(&idx) {
                Some(Slot::Hole) => ChunkBuf::zeroed(chunk_len(self.len, idx) as usize),
                _ => ChunkBuf::from_slice(&self.chunk_bytes(idx)?),
            };
            self.set_dirty(idx, bytes);
        }
        match self.slots.get_mut(&idx) {
            Some(Slot::Dirty(v)) => Ok(v),
            _ => unreachable!("set dirty above"),
        }
    }

    fn set_dirty(&mut self, idx: u64, bytes: ChunkBuf) {
        if !matches!(self.slots.insert(idx, Slot::Dirty(bytes)), Some(Slot::Dirty(_))) {
            self.dirty += 1;
            self.dirty_order.push_back(idx);
        }
    }

    /// The current bytes of a chunk that is not dirty (verified when they come from storage).
    fn chunk_bytes(&mut self, idx: u64) -> Result<Bytes, StoreError> {
        if matches!(self.slots.get(&idx), Some(Slot::Stored { in_open_pack: true, .. })) {
            self.close_pack()?;
        }
        match self.slots.get(&idx) {
            Some(Slot::Dirty(v)) => Ok(Bytes::copy_from_slice(v.bytes())),
            Some(Slot::Hole) => Ok(Bytes::from(vec![0u8; chunk_len(self.len, idx) as usize])),
            Some(Slot::Stored { cv, loc, .. }) => self.store.read_verified(loc, idx, cv),
            None => match &self.base {
                Some(base) if idx < base.chunk_count() => base.read_chunk(idx),
                _ => Err(StoreError::InvalidInput(format!("chunk {idx} of a draft has no bytes"))),
            },
        }
    }

    /// Stores the oldest dirty chunks (never the last one) until at most [`DIRTY_BUDGET`] remain.
    fn store_over_budget(&mut self) -> Result<(), StoreError> {
        let last = chunks_of(self.len).saturating_sub(1);
        let mut kept_last = false;
        while self.dirty > DIRTY_BUDGET {
            let Some(idx) = self.dirty_order.pop_front() else { break };
            if !matches!(self.slots.get(&idx), Some(Slot::Dirty(_))) {
                continue; // stale entry
            }
            if idx == last {
                if kept_last {
                    break;
                }
                kept_last = true;
                self.dirty_order.push_back(idx);
                continue;
            }
            self.store_chunk(idx)?;
        }
        Ok(())
    }

    /// Hashes dirty (or hole) chunk `idx` and stores it: found in the dedup index, or appended to
    /// the pack. Returns its chaining value.
    fn store_chunk(&mut self, idx: u64) -> Result<[u8; 32], StoreError> {
        let bytes = match self.slots.remove(&idx) {
            Some(Slot::Dirty(v)) => {
                self.dirty -= 1;
                v
            }
            Some(Slot::Hole) => ChunkBuf::zeroed(chunk_len(self.len, idx) as usize),
            other => {
                if let Some(slot) = other {
                    self.slots.insert(idx, slot);
                }
                return Err(StoreError::InvalidInput(format!("chunk {idx} is not dirty")));
            }
        };
        let cv = chunk_cv(idx, bytes.bytes());
        let len = bytes.bytes().len() as u32;
        let slot = match self.store.lookup_chunk(&cv, len) {
            Some(loc) => Slot::Stored { cv, loc, in_open_pack: false },
            None => Slot::Stored { cv, loc: self.append_to_pack(idx, &cv, bytes)?, in_open_pack: true },
        };
        self.slots.insert(idx, slot);
        Ok(cv)
    }

    fn append_to_pack(&mut self, idx: u64, cv: &[u8; 32], bytes: ChunkBuf) -> Result<ChunkLoc, StoreError> {
        let appended = self.try_append_to_pack(idx, cv, bytes);
        self.broken |= appended.is_err();
        appended
    }

    fn try_append_to_pack(&mut self, idx: u64, cv: &[u8; 32], bytes: ChunkBuf) -> Result<ChunkLoc, StoreError> {
        if self.pack.is_none() {
            let store = self.store.clone();
            let make = Box::new(move || store.temp_file("pack-").map_err(StoreError::into_io));
            let path = self.store.temp_dir().join("pack-");
            let writer = PackWriter::new(make, &path)?;
            let name = Arc::new(PondFile::Pack(writer.name()));
            self.pack = Some(OpenPack { writer, name, path });
        }
        let pack = self.pack.as_mut().expect("opened above");
        let (offset, len) = pack.writer.append(idx, cv, bytes, &pack.path)?;
        Ok(ChunkLoc { file: pack.name.clone(), offset, len })
    }

    /// Closes the open pack, publishes it (durable at the next `make_durable`) and turns its
    /// chunks' rows into places.
    fn close_pack(&mut self) -> Result<(), StoreError> {
        let closed = self.try_close_pack();
        self.broken |= closed.is_err();
        closed
    }

    fn try_close_pack(&mut self) -> Result<(), StoreError> {
        let Some(OpenPack { writer, name, path }) = self.pack.take() else { return Ok(()) };
        match writer.finish(&path)? {
            SinkOutput::Memory(bytes) => self.store.put_small(&name, bytes)?,
            SinkOutput::File(tmp) => self.store.publish(tmp, &name, false)?,
        };
        let mut held = Vec::new();
        for slot in self.slots.values_mut() {
            if let Slot::Stored { cv, loc, in_open_pack: open @ true } = slot {
                held.push((*cv, loc.clone()));
                *open = false;
            }
        }
        self.closed.push(((*name).clone(), held));
        Ok(())
    }

    /// Stores every changed chunk and a manifest naming all of them: the content becomes the object
    /// named by its BLAKE3, durable at the store's next `make_durable`. The draft stays usable (it
    /// continues from what was stored).
    pub fn finish(&mut self) -> Result<PutOutcome, StoreError> {
        if self.is_unchanged()
            && let Some(base) = &self.base
        {
            return Ok(PutOutcome { hash: base.hash(), size: base.size(), existed: true });
        }
        let n = chunk_count(self.len);
        if self.base.is_none() {
            // Content made from nothing: a chunk never written is a hole (the one empty chunk of
            // empty content included).
            for idx in 0..n {
                self.slots.entry(idx).or_insert(Slot::Hole);
            }
        }
        let mut hashes: Vec<[u8; 32]> = Vec::with_capacity(n as usize);
        for idx in 0..n {
            let hash = match self.slots.get(&idx) {
                None => {
                    let base =
                        self.base.as_ref().ok_or_else(|| StoreError::InvalidInput("draft without base".into()))?;
                    if n > 1 && base.chunk_count() > 1 {
                        base.chunk_hashes()[idx as usize]
                    } else {
                        // A lone chunk's hash is the root hash, not its chaining value (or the other way round).
                        chunk_hash(idx, n, &base.read_chunk(idx)?)
                    }
                }
                Some(Slot::Dirty(_) | Slot::Hole) => {
                    let cv = self.store_chunk(idx)?;
                    if n > 1 { cv } else { chunk_hash(idx, n, &self.chunk_bytes(idx)?) }
                }
                Some(Slot::Stored { cv, .. }) => {
                    let cv = *cv;
                    if n > 1 { cv } else { chunk_hash(idx, n, &self.chunk_bytes(idx)?) }
                }
            };
            hashes.push(hash);
        }
        self.close_pack()?;
        let locs: Vec<ChunkLoc> = (0..n)
            .map(|idx| match self.slots.get(&idx) {
                Some(Slot::Stored { loc, in_open_pack: false, .. }) => Ok(loc.clone()),
                None => self
                    .base
                    .as_ref()
                    .map(|b| b.chunk_locs()[idx as usize].clone())
                    .ok_or_else(|| StoreError::InvalidInput("draft without base".into())),
                Some(_) => Err(StoreError::InvalidInput(format!("chunk {idx} not stored at finish"))),
            })
            .collect::<Result<_, _>>()?;
        let root = root_from_chunk_hashes(&hashes).expect("at least one chunk");
        let existed = self.store.put_manifest(&root, self.len, &hashes, &locs)?;
        // The manifest points into the packs closed since the last finish (or, when the content
        // was stored already, nothing does: they go).
        for (pack, held) in std::mem::take(&mut self.closed) {
            if existed {
                self.store.discard(&pack);
            } else {
                self.store.learn_chunks(held);
            }
        }
        let (hashes, locs) = if existed {
            // Read what is stored (the locations of this draft's chunks are gone with its packs).
            let stored = self.store.open(&root)?;
            (stored.chunk_hashes().to_vec(), stored.chunk_locs().to_vec())
        } else {
            (hashes, locs)
        };
        let reader = ObjectReader::from_parts(
            self.store.source(),
            root,
            ObjectFormat::Manifest,
            self.len,
            None,
            hashes.into(),
            locs.into(),
        );
        self.base = Some(Arc::new(reader));
        self.slots.clear();
        self.dirty_order.clear();
        self.dirty = 0;
        Ok(PutOutcome { hash: root, size: self.len, existed })
    }
}
