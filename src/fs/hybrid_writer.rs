//! `HybridWriter`: the content of one file being written, POSIX-style (writes at any offset,
//! reads, truncate/extend), kept in memory up to the inline threshold and spilled to an anonymous
//! temp file beyond it, so memory stays bounded whatever the size.
//!
//! While the content is only ever appended to (starting from empty, or from `from_bytes` /
//! `from_large`, which feed sequentially) its hashes (BLAKE3 chunk chaining values, root, SHA-256)
//! are computed as the data streams in. Any other write or truncate drops that streaming state and
//! [`HybridWriter::finish`] re-reads the content once to hash it. `finish` does not consume the
//! writer: an fsync can snapshot an open file that keeps being written.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::config::{CHUNK_SIZE, Threshold};
use crate::large_files::{
    Blake3Hash, LargeFileReader, LargeFileStore, PutOutcome, Sha256Digest, StoreError, StreamHasher,
};

/// What a finished file became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    /// Small enough to live in the oplog row.
    Inline { bytes: Vec<u8>, hash: Blake3Hash, sha256: Sha256Digest },
    /// Stored (durably) as a large-file object.
    Large(PutOutcome),
}

enum Content {
    Memory(Vec<u8>),
    Spilled(File),
}

/// A file's content while it is written (see the module doc).
pub struct HybridWriter {
    threshold: Threshold,
    spill_dir: PathBuf,
    content: Content,
    len: u64,
    /// Hashes of bytes 0..len, valid while every change was an append at the end.
    hasher: Option<StreamHasher>,
}

impl std::fmt::Debug for HybridWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridWriter")
            .field("len", &self.len)
            .field("spilled", &self.is_spilled())
            .field("streaming_hash", &self.hasher.is_some())
            .finish_non_exhaustive()
    }
}

impl HybridWriter {
    /// An empty file; a spill file, if needed, is created in `spill_dir`.
    pub fn new(threshold: Threshold, spill_dir: PathBuf) -> Self {
        HybridWriter {
            threshold,
            spill_dir,
            content: Content::Memory(Vec::new()),
            len: 0,
            hasher: Some(StreamHasher::new()),
        }
    }

    /// Starts from existing (inline) content.
    pub fn from_bytes(threshold: Threshold, spill_dir: PathBuf, bytes: &[u8]) -> io::Result<Self> {
        let mut w = Self::new(threshold, spill_dir);
        w.write_at(0, bytes)?;
        Ok(w)
    }

    /// Starts from a large object, copying its verified chunks one at a time.
    pub fn from_large(threshold: Threshold, spill_dir: PathBuf, reader: &LargeFileReader) -> Result<Self, StoreError> {
        let mut w = Self::new(threshold, spill_dir);
        for idx in 0..reader.chunk_count() {
            let chunk = reader.read_chunk(idx)?;
            let at = w.len;
            w.write_at(at, &chunk).map_err(|e| w.spill_error(e))?;
        }
        Ok(w)
    }

    /// Content length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the content is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True once the content lives in the spill file.
    pub fn is_spilled(&self) -> bool {
        matches!(self.content, Content::Spilled(_))
    }

    /// Writes `data` at `offset`; a gap past the end reads as zeros.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset.checked_add(data.len() as u64).ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        if !self.threshold.is_inline(end) {
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
            Content::Spilled(file) => file.write_all_at(data, offset)?,
        }
        match &mut self.hasher {
            Some(h) if offset == self.len => h.update(data),
            _ => self.hasher = None,
        }
        self.len = self.len.max(end);
        Ok(())
    }

    /// Reads up to `buf.len()` bytes at `offset` (short only at the end; 0 past it).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = buf.len().min(usize::try_from(self.len - offset).unwrap_or(usize::MAX));
        match &self.content {
            Content::Memory(data) => {
                let start = offset as usize; // < len <= threshold, held in memory
                buf[..n].copy_from_slice(&data[start..start + n]);
            }
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
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(n)
    }

    /// Truncates, or extends with zeros, to `len`. Setting the current length changes nothing.
    pub fn set_len(&mut self, len: u64) -> io::Result<()> {
        if len == self.len {
            return Ok(());
        }
        if !self.threshold.is_inline(len) {
            self.spill()?;
        }
        match &mut self.content {
            Content::Memory(buf) => buf.resize(len as usize, 0), // len <= threshold
            Content::Spilled(file) => file.set_len(len)?,
        }
        self.len = len;
        self.hasher = None;
        Ok(())
    }

    /// Produces the file's final form without consuming the writer (writes may continue):
    /// inline bytes when the length is within the threshold, else a durable large object.
    pub fn finish(&mut self, store: &LargeFileStore) -> Result<Finished, StoreError> {
        if self.hasher.is_none() {
            self.rehash().map_err(|e| self.spill_error(e))?;
        }
        let summary = match &self.hasher {
            Some(h) => h.summary(),
            None => unreachable!("rehash sets the hasher"),
        };
        if self.threshold.is_inline(self.len) {
            let mut bytes = vec![0u8; self.len as usize]; // within the threshold
            let n = self.read_at(0, &mut bytes).map_err(|e| self.spill_error(e))?;
            bytes.truncate(n);
            return Ok(Finished::Inline { bytes, hash: summary.root, sha256: summary.sha256 });
        }
        self.spill().map_err(|e| self.spill_error(e))?;
        match &self.content {
            Content::Spilled(file) => Ok(Finished::Large(store.put_file(file, self.len, Some(&summary))?)),
            Content::Memory(_) => unreachable!("spill() leaves the content spilled"),
        }
    }

    /// Reads the whole content once to rebuild the streaming hash state.
    fn rehash(&mut self) -> io::Result<()> {
        let mut hasher = StreamHasher::new();
        let mut buf = vec![0u8; CHUNK_SIZE as usize];
        let mut pos = 0;
        while pos < self.len {
            let n = self.read_at(pos, &mut buf)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "spill file shrank"));
            }
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
        self.hasher = Some(hasher);
        Ok(())
    }

    /// Moves the content to an anonymous temp file (no-op when already there).
    fn spill(&mut self) -> io::Result<()> {
        if let Content::Memory(buf) = &self.content {
            let file = tempfile::tempfile_in(&self.spill_dir)?;
            file.write_all_at(buf, 0)?;
            self.content = Content::Spilled(file);
        }
        Ok(())
    }

    fn spill_error(&self, source: io::Error) -> StoreError {
        StoreError::Io { path: self.spill_dir.clone(), source }
    }
}
