//! `HybridWriter`: the content of one file being written, POSIX-style (writes at any offset,
//! reads, truncate/extend), kept in memory up to the inline threshold and moved out of memory
//! beyond it, so memory stays bounded whatever the size.
//!
//! Beyond the threshold the content goes one of two ways. While it has only ever been appended to
//! (the way cp, dd, tar and rsync write) it streams straight into its large object
//! ([`ObjectStream`]): encoded and hashed once, as it arrives, with nothing to re-read at close.
//! Any other change (a write before the end, a truncate, a read of the content being streamed)
//! moves it to an anonymous spill file, where writes at any offset work; `finish` then hashes
//! the spill file once and stores it. A finished stream leaves the writer on its stored object
//! ([`LargeFileReader`]), so an fsync can snapshot an open file that keeps being written.
//!
//! In memory and in the spill file the hashes (BLAKE3 chunk chaining values, root, SHA-256) are
//! computed as the data streams in while the content is only appended to; any other change drops
//! that state and [`HybridWriter::finish`] re-reads the content once to hash it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{CHUNK_SIZE, Threshold};
use crate::large_files::{
    Blake3Hash, LargeFileReader, LargeFileStore, ObjectStream, PutOutcome, Sha256Digest, StoreError, StreamHasher,
};

/// What a finished file became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    /// Small enough to live in the oplog row.
    Inline { bytes: Vec<u8>, hash: Blake3Hash, sha256: Sha256Digest },
    /// Stored as a large-file object: durable, or (when streamed) listed for the store's
    /// `make_durable`, which the committer runs before every commit.
    Large(PutOutcome),
}

enum Content {
    Memory(Vec<u8>),
    /// Appended-only content past the threshold, going straight into its object.
    Streaming(Box<ObjectStream>),
    /// Content already stored as this object (a finished stream); unchanged since.
    Stored(Arc<LargeFileReader>),
    Spilled(File),
    /// A failure in the middle of moving the content (out of space, say) lost the unsaved
    /// changes; every later call fails, with ENOSPC again when that was the cause. The file's
    /// committed content is untouched.
    Lost {
        no_space: bool,
    },
}

/// A file's content while it is written (see the module doc).
pub struct HybridWriter {
    threshold: Threshold,
    spill_dir: PathBuf,
    store: LargeFileStore,
    content: Content,
    len: u64,
    /// Hashes of bytes 0..len (memory and spill file only), valid while every change was an
    /// append at the end.
    hasher: Option<StreamHasher>,
}

impl std::fmt::Debug for HybridWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.content {
            Content::Memory(_) => "memory",
            Content::Streaming(_) => "streaming",
            Content::Stored(_) => "stored",
            Content::Spilled(_) => "spilled",
            Content::Lost { .. } => "lost",
        };
        f.debug_struct("HybridWriter")
            .field("len", &self.len)
            .field("content", &state)
            .field("streaming_hash", &self.hasher.is_some())
            .finish_non_exhaustive()
    }
}

impl HybridWriter {
    /// An empty file; content past the threshold streams into `store` or spills into `spill_dir`.
    pub fn new(threshold: Threshold, spill_dir: PathBuf, store: LargeFileStore) -> Self {
        HybridWriter {
            threshold,
            spill_dir,
            store,
            content: Content::Memory(Vec::new()),
            len: 0,
            hasher: Some(StreamHasher::new()),
        }
    }

    /// Starts from existing (inline) content.
    pub fn from_bytes(
        threshold: Threshold,
        spill_dir: PathBuf,
        store: LargeFileStore,
        bytes: &[u8],
    ) -> Result<Self, StoreError> {
        let mut w = Self::new(threshold, spill_dir, store);
        w.write_at(0, bytes)?;
        Ok(w)
    }

    /// Starts from a stored large object; its content is copied (verified, one chunk at a time)
    /// only when the first change comes.
    pub fn from_large(
        threshold: Threshold,
        spill_dir: PathBuf,
        store: LargeFileStore,
        reader: Arc<LargeFileReader>,
    ) -> Self {
        let len = reader.size();
        HybridWriter { threshold, spill_dir, store, content: Content::Stored(reader), len, hasher: None }
    }

    /// Content length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the content is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True once the content has left memory (streaming, stored or spilled).
    pub fn is_spilled(&self) -> bool {
        !matches!(self.content, Content::Memory(_))
    }

    /// True once a failure lost the unsaved changes (see `Content::Lost`).
    pub fn is_lost(&self) -> bool {
        matches!(self.content, Content::Lost { .. })
    }

    /// True while the content streams straight into its object.
    pub fn is_streaming(&self) -> bool {
        matches!(self.content, Content::Streaming(_))
    }

    /// Writes `data` at `offset`; a gap past the end reads as zeros.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        self.check_not_lost()?;
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| self.spill_error(io::Error::from_raw_os_error(libc::EFBIG)))?;
        let append = offset == self.len;
        if let Content::Stored(_) = self.content {
            self.unstore(append, end)?;
        }
        if !self.threshold.is_inline(end) {
            self.leave_memory(append)?;
        }
        if !append && self.is_streaming() {
            self.spill()?;
        }
        match &mut self.content {
            Content::Memory(buf) => {
                // end <= threshold here, and the buffer holds it, so it fits in usize.
                let (start, end) = (offset as usize, end as usize);
                if buf.len() < end {
                    buf.resize(end, 0);
                }
                buf[start..end].copy_from_slice(data);
            }
            Content::Streaming(stream) => {
                if let Err(e) = stream.append(data) {
                    // A half-written chunk cannot be trusted or taken back.
                    self.content = Content::Lost { no_space: e.is_enospc() };
                    return Err(e);
                }
            }
            Content::Spilled(file) => {
                if let Err(e) = file.write_all_at(data, offset) {
                    // Bytes that landed past the end before the failure must not show up later
                    // (an extending truncate reads zeros there).
                    if end > self.len {
                        let _ = file.set_len(self.len);
                    }
                    return Err(self.spill_error(e));
                }
            }
            Content::Stored(_) | Content::Lost { .. } => unreachable!("leave_memory moves stored content out"),
        }
        let streaming = self.is_streaming();
        match &mut self.hasher {
            Some(h) if append && !streaming => h.update(data),
            _ => self.hasher = None,
        }
        self.len = self.len.max(end);
        Ok(())
    }

    /// Reads up to `buf.len()` bytes at `offset` (short only at the end; 0 past it). Reading
    /// content that is being streamed moves it to the spill file first.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        self.check_not_lost()?;
        if offset >= self.len {
            return Ok(0);
        }
        if self.is_streaming() {
            self.spill()?;
        }
        let n = buf.len().min(usize::try_from(self.len - offset).unwrap_or(usize::MAX));
        match &self.content {
            Content::Memory(data) => {
                let start = offset as usize; // < len <= threshold, held in memory
                buf[..n].copy_from_slice(&data[start..start + n]);
            }
            Content::Stored(reader) => return reader.read_at(offset, &mut buf[..n]),
            Content::Spilled(file) => {
                let mut done = 0;
                while done < n {
                    match file.read_at(&mut buf[done..n], offset + done as u64) {
                        // The spill file is never shorter than len; treat a hole as zeros.
                        Ok(0) => {
                            buf[done..n].fill(0);
                            done = n;
                        }
                        Ok(k) => done += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(self.spill_error(e)),
                    }
                }
            }
            Content::Streaming(_) | Content::Lost { .. } => unreachable!("spilled above"),
        }
        Ok(n)
    }

    /// Truncates, or extends with zeros, to `len`. Setting the current length changes nothing.
    /// Truncating to empty (O_TRUNC, `: > file`) drops the old content without reading it, and a
    /// stored object cut to within the threshold comes back into memory: neither needs disk
    /// space, so both work on a full disk (and free space there).
    pub fn set_len(&mut self, len: u64) -> Result<(), StoreError> {
        self.check_not_lost()?;
        if len == self.len {
            return Ok(());
        }
        if len == 0 {
            self.content = Content::Memory(Vec::new());
            self.len = 0;
            self.hasher = Some(StreamHasher::new());
            return Ok(());
        }
        if len < self.len
            && self.threshold.is_inline(len)
            && let Content::Stored(reader) = &self.content
        {
            let mut buf = vec![0u8; len as usize]; // within the threshold
            let n = reader.read_at(0, &mut buf)?;
            buf.truncate(n);
            buf.resize(len as usize, 0);
            self.content = Content::Memory(buf);
            self.len = len;
            self.hasher = None;
            return Ok(());
        }
        if !self.threshold.is_inline(len) || !matches!(self.content, Content::Memory(_)) {
            self.spill()?;
        }
        match &mut self.content {
            Content::Memory(buf) => buf.resize(len as usize, 0), // len <= threshold
            Content::Spilled(file) => {
                let res = file.set_len(len);
                res.map_err(|e| self.spill_error(e))?;
            }
            Content::Streaming(_) | Content::Stored(_) | Content::Lost { .. } => unreachable!("spilled above"),
        }
        self.len = len;
        self.hasher = None;
        Ok(())
    }

    /// Produces the file's final form without consuming the writer (writes may continue):
    /// inline bytes when the length is within the threshold, else a durable large object.
    pub fn finish(&mut self) -> Result<Finished, StoreError> {
        self.check_not_lost()?;
        match std::mem::replace(&mut self.content, Content::Lost { no_space: false }) {
            Content::Streaming(stream) => {
                // Durable at the next commit (LargeFileStore::make_durable), not at every close.
                let put = stream
                    .finish_deferred()
                    .inspect_err(|e| self.content = Content::Lost { no_space: e.is_enospc() })?;
                let reader = self.store.open(&put.hash)?;
                self.content = Content::Stored(Arc::new(reader));
                return Ok(Finished::Large(put));
            }
            Content::Stored(reader) => {
                let put =
                    PutOutcome { hash: reader.hash(), sha256: reader.sha256(), size: reader.size(), existed: true };
                self.content = Content::Stored(reader);
                return Ok(Finished::Large(put));
            }
            other => self.content = other,
        }
        if self.hasher.is_none() {
            self.rehash()?;
        }
        let summary = match &self.hasher {
            Some(h) => h.summary(),
            None => unreachable!("rehash sets the hasher"),
        };
        if self.threshold.is_inline(self.len) {
            let mut bytes = vec![0u8; self.len as usize]; // within the threshold
            let n = self.read_at(0, &mut bytes)?;
            bytes.truncate(n);
            return Ok(Finished::Inline { bytes, hash: summary.root, sha256: summary.sha256 });
        }
        self.spill()?;
        match &self.content {
            Content::Spilled(file) => Ok(Finished::Large(self.store.put_file(file, self.len, Some(&summary))?)),
            _ => unreachable!("spill() leaves the content spilled"),
        }
    }

    /// Reads the whole content once to rebuild the streaming hash state.
    fn rehash(&mut self) -> Result<(), StoreError> {
        let mut hasher = StreamHasher::new();
        let mut buf = vec![0u8; CHUNK_SIZE as usize];
        let mut pos = 0;
        while pos < self.len {
            let n = self.read_at(pos, &mut buf)?;
            if n == 0 {
                return Err(self.spill_error(io::Error::new(io::ErrorKind::UnexpectedEof, "spill file shrank")));
            }
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
        self.hasher = Some(hasher);
        Ok(())
    }

    /// Before a change that takes memory content past the threshold: an append goes on as a
    /// stream (starting with what there is), anything else spills.
    fn leave_memory(&mut self, append: bool) -> Result<(), StoreError> {
        match &self.content {
            Content::Memory(buf) if append => {
                let mut stream = ObjectStream::new(&self.store)?;
                stream.append(buf)?;
                self.content = Content::Streaming(Box::new(stream));
                self.hasher = None;
            }
            Content::Memory(_) => self.spill()?,
            Content::Stored(_) => unreachable!("unstore runs first"),
            Content::Streaming(_) | Content::Spilled(_) | Content::Lost { .. } => {}
        }
        Ok(())
    }

    /// Before the first change to stored content: content that will fit the threshold comes back
    /// into memory, an append streams a copy of the object, anything else spills it.
    fn unstore(&mut self, append: bool, end: u64) -> Result<(), StoreError> {
        let Content::Stored(reader) = &self.content else { return Ok(()) };
        let reader = reader.clone();
        if self.threshold.is_inline(end.max(self.len)) {
            let mut buf = Vec::with_capacity(self.len as usize); // within the threshold
            let mut hasher = StreamHasher::new();
            for idx in 0..reader.chunk_count() {
                let chunk = reader.read_chunk(idx)?;
                hasher.update(&chunk);
                buf.extend_from_slice(&chunk);
            }
            self.content = Content::Memory(buf);
            self.hasher = Some(hasher);
        } else if append {
            let mut stream = ObjectStream::new(&self.store)?;
            for idx in 0..reader.chunk_count() {
                stream.append(&reader.read_chunk(idx)?)?;
            }
            self.content = Content::Streaming(Box::new(stream));
            self.hasher = None;
        } else {
            self.spill()?;
        }
        Ok(())
    }

    /// Moves the content to an anonymous spill file (no-op when already there). A failure leaves
    /// memory or stored content as it was; a stream cannot be put back, so its content is lost.
    fn spill(&mut self) -> Result<(), StoreError> {
        let file = match std::mem::replace(&mut self.content, Content::Lost { no_space: false }) {
            Content::Spilled(file) => file,
            Content::Memory(buf) => {
                let spilled = tempfile::tempfile_in(&self.spill_dir).and_then(|f| f.write_all_at(&buf, 0).map(|_| f));
                match spilled {
                    Ok(file) => file,
                    Err(e) => {
                        self.content = Content::Memory(buf);
                        return Err(self.spill_error(e));
                    }
                }
            }
            // The object so far, finished in its temp file and read back (the temp goes after).
            Content::Streaming(stream) => {
                match stream.into_reader().and_then(|(reader, _tmp)| self.copy_to_spill(&reader)) {
                    Ok(file) => file,
                    Err(e) => {
                        self.content = Content::Lost { no_space: e.is_enospc() };
                        return Err(e);
                    }
                }
            }
            Content::Stored(reader) => match self.copy_to_spill(&reader) {
                Ok(file) => file,
                Err(e) => {
                    self.content = Content::Stored(reader);
                    return Err(e);
                }
            },
            lost @ Content::Lost { .. } => {
                self.content = lost;
                return self.check_not_lost();
            }
        };
        self.content = Content::Spilled(file);
        Ok(())
    }

    fn check_not_lost(&self) -> Result<(), StoreError> {
        match self.content {
            Content::Lost { no_space: true } => Err(StoreError::Io {
                path: self.spill_dir.clone(),
                source: io::Error::new(
                    io::ErrorKind::StorageFull,
                    "an earlier write ran out of space and lost this file's unsaved changes",
                ),
            }),
            Content::Lost { no_space: false } => Err(lost()),
            _ => Ok(()),
        }
    }

    /// A new spill file holding the verified content of `reader`.
    fn copy_to_spill(&self, reader: &LargeFileReader) -> Result<File, StoreError> {
        let file = tempfile::tempfile_in(&self.spill_dir).map_err(|e| self.spill_error(e))?;
        for idx in 0..reader.chunk_count() {
            let chunk = reader.read_chunk(idx)?;
            file.write_all_at(&chunk, idx * CHUNK_SIZE).map_err(|e| self.spill_error(e))?;
        }
        Ok(file)
    }

    fn spill_error(&self, source: io::Error) -> StoreError {
        StoreError::Io { path: self.spill_dir.clone(), source }
    }
}

fn lost() -> StoreError {
    StoreError::InvalidInput("an earlier failure lost this file's unsaved changes".into())
}
