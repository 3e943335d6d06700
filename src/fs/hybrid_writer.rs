//! `HybridWriter`: the content of one file being written, POSIX-style (writes at any offset,
//! reads, truncate/extend), kept in memory up to the inline threshold and in a [`LargeDraft`]
//! beyond it, so memory stays bounded whatever the size.
//!
//! A draft starts from the file's stored object, if it has one, and holds only the chunks that
//! change: appending to a 1 GiB file or patching a few bytes of it never copies the file, and
//! [`HybridWriter::finish`] hashes and stores only the changed chunks (the draft's module doc has
//! the details). A file written front to back (cp, dd, tar, rsync) is hashed and stored as it
//! arrives, a few chunks behind the writer. Content that shrinks back within the threshold comes
//! back into memory; `finish` turns it into inline bytes.

use std::sync::Arc;

use crate::config::Threshold;
use crate::large_files::{Blake3Hash, LargeDraft, LargeFileStore, ObjectReader, PutOutcome, StoreError};

/// What a finished file became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    /// Small enough to live in the oplog row.
    Inline { bytes: Vec<u8>, hash: Blake3Hash },
    /// Stored as a large object, durable at the store's next `make_durable`, which the committer
    /// runs before every commit.
    Large(PutOutcome),
}

enum Content {
    Memory(Vec<u8>),
    Large(Box<LargeDraft>),
    /// A failure while storing chunks (out of space, say) lost the unsaved changes; every later
    /// call fails, with ENOSPC again when that was the cause. The file's committed content is
    /// untouched.
    Lost {
        no_space: bool,
    },
}

/// A file's content while it is written (see the module doc).
pub struct HybridWriter {
    threshold: Threshold,
    store: LargeFileStore,
    content: Content,
}

impl std::fmt::Debug for HybridWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.content {
            Content::Memory(_) => "memory",
            Content::Large(_) => "large",
            Content::Lost { .. } => "lost",
        };
        f.debug_struct("HybridWriter").field("len", &self.len()).field("content", &state).finish_non_exhaustive()
    }
}

impl HybridWriter {
    /// An empty file; content past the threshold goes to `store`.
    pub fn new(threshold: Threshold, store: LargeFileStore) -> Self {
        HybridWriter { threshold, store, content: Content::Memory(Vec::new()) }
    }

    /// Starts from existing (inline) content.
    pub fn from_bytes(threshold: Threshold, store: LargeFileStore, bytes: &[u8]) -> Result<Self, StoreError> {
        let mut w = Self::new(threshold, store);
        w.write_at(0, bytes)?;
        Ok(w)
    }

    /// Starts from a stored object; nothing is read until a chunk changes.
    pub fn from_large(threshold: Threshold, store: LargeFileStore, reader: Arc<ObjectReader>) -> Self {
        let draft = LargeDraft::from_object(&store, reader);
        HybridWriter { threshold, store, content: Content::Large(Box::new(draft)) }
    }

    /// Content length.
    pub fn len(&self) -> u64 {
        match &self.content {
            Content::Memory(v) => v.len() as u64,
            Content::Large(d) => d.len(),
            Content::Lost { .. } => 0,
        }
    }

    /// True when the content is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once the content has left memory.
    pub fn is_large(&self) -> bool {
        matches!(self.content, Content::Large(_))
    }

    /// True once a failure lost the unsaved changes (see `Content::Lost`).
    pub fn is_lost(&self) -> bool {
        matches!(self.content, Content::Lost { .. })
    }

    /// Writes `data` at `offset`; a gap past the end reads as zeros.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        self.check_not_lost()?;
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| StoreError::InvalidInput("write past the largest offset".into()))?;
        if let Content::Memory(buf) = &mut self.content {
            if self.threshold.is_inline(end) {
                // end <= threshold here, so it fits in usize.
                let (start, end) = (offset as usize, end as usize);
                if buf.len() < end {
                    buf.resize(end, 0);
                }
                buf[start..end].copy_from_slice(data);
                return Ok(());
            }
            self.leave_memory()?;
        }
        self.with_draft(|d| d.write_at(offset, data))
    }

    /// Reads up to `buf.len()` bytes at `offset` (short only at the end; 0 past it).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        self.check_not_lost()?;
        match &mut self.content {
            Content::Memory(data) => {
                let start = (offset.min(data.len() as u64)) as usize;
                let n = buf.len().min(data.len() - start);
                buf[..n].copy_from_slice(&data[start..start + n]);
                Ok(n)
            }
            Content::Large(_) => self.with_draft(|d| d.read_at(offset, buf)),
            Content::Lost { .. } => unreachable!("checked above"),
        }
    }

    /// Truncates, or extends with zeros, to `len`. Truncating to empty (O_TRUNC, `: > file`) drops
    /// the old content without reading it, and content cut to within the threshold comes back into
    /// memory: neither needs disk space, so both work on a full disk (and free space there).
    pub fn set_len(&mut self, len: u64) -> Result<(), StoreError> {
        self.check_not_lost()?;
        if len == self.len() {
            return Ok(());
        }
        if len == 0 {
            self.content = Content::Memory(Vec::new());
            return Ok(());
        }
        match &mut self.content {
            Content::Memory(buf) if self.threshold.is_inline(len) => {
                buf.resize(len as usize, 0); // within the threshold
                Ok(())
            }
            Content::Memory(_) => {
                self.leave_memory()?;
                self.with_draft(|d| d.set_len(len))
            }
            Content::Large(d) if self.threshold.is_inline(len) && len < d.len() => {
                let mut buf = vec![0u8; len as usize]; // within the threshold
                let n = d.read_at(0, &mut buf)?;
                buf.truncate(n);
                self.content = Content::Memory(buf);
                Ok(())
            }
            Content::Large(_) => self.with_draft(|d| d.set_len(len)),
            Content::Lost { .. } => unreachable!("checked above"),
        }
    }

    /// Produces the file's final form without consuming the writer (writes may continue): inline
    /// bytes when the length is within the threshold, else a stored object.
    pub fn finish(&mut self) -> Result<Finished, StoreError> {
        self.check_not_lost()?;
        if self.threshold.is_inline(self.len())
            && let Content::Large(d) = &mut self.content
        {
            let mut buf = vec![0u8; d.len() as usize]; // within the threshold
            let n = d.read_at(0, &mut buf)?;
            buf.truncate(n);
            self.content = Content::Memory(buf);
        }
        match &mut self.content {
            Content::Memory(bytes) => {
                Ok(Finished::Inline { hash: Blake3Hash::from(blake3::hash(bytes)), bytes: bytes.clone() })
            }
            Content::Large(_) => self.with_draft(|d| d.finish()).map(Finished::Large),
            Content::Lost { .. } => unreachable!("checked above"),
        }
    }

    /// The objects and packs this writer's content uses (its stored base, the places of chunks
    /// it stored): a prune beside the mount keeps them.
    pub fn files_in_use(&self) -> Vec<crate::layout::PondFile> {
        match &self.content {
            Content::Large(d) => d.files_in_use(),
            _ => Vec::new(),
        }
    }

    /// Runs `op` on the draft; a failure that broke the draft (storing chunks ran out of space, say)
    /// loses the unsaved changes.
    fn with_draft<T>(&mut self, op: impl FnOnce(&mut LargeDraft) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let Content::Large(d) = &mut self.content else {
            return Err(StoreError::InvalidInput("the content is not large".into()));
        };
        let result = op(d);
        if let Err(e) = &result
            && d.is_broken()
        {
            self.content = Content::Lost { no_space: crate::os_error::is_out_of_space(e) };
        }
        result
    }

    /// Moves in-memory content into a draft (before a change that takes it past the threshold).
    fn leave_memory(&mut self) -> Result<(), StoreError> {
        let Content::Memory(buf) = &self.content else { return Ok(()) };
        let mut draft = LargeDraft::new(&self.store);
        draft.write_at(0, buf)?;
        self.content = Content::Large(Box::new(draft));
        Ok(())
    }

    fn check_not_lost(&self) -> Result<(), StoreError> {
        match self.content {
            Content::Lost { no_space: true } => Err(StoreError::Io {
                path: self.store.dir().to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "an earlier write ran out of space and lost this file's unsaved changes",
                ),
            }),
            Content::Lost { no_space: false } => {
                Err(StoreError::InvalidInput("an earlier failure lost this file's unsaved changes".into()))
            }
            _ => Ok(()),
        }
    }
}
