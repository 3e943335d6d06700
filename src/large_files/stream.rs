//! [`ObjectStream`]: a large object written while its content arrives in order, so a file written
//! front to back (cp, dd, tar, rsync) is encoded, hashed and handed to the disk once, as it comes,
//! instead of being spilled to a temp file and re-read at close.
//!
//! Chunks are encoded into a temp file in `_large_files/.tmp/` as soon as they are full (a full
//! chunk waits for the next byte, because a lone chunk's hash is a root hash, not a chaining value).
//! SHA-256, the one hash that cannot be split by chunk, runs on a worker thread once the content
//! passes [`SHA_THREAD_AFTER`], so on a multi-core machine it overlaps the encoding. The temp
//! file's bytes go to the disk as it grows ([`super::write_behind`]), so the fsync at the end has
//! little left to do.
//! [`ObjectStream::finish`] publishes the object exactly as [`LargeFileStore::put_file`] does.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use super::chunked::{ChunkWriter, ObjectMeta};
use super::hash::{Sha256Digest, root_from_chunk_hashes};
use super::{LargeFileReader, LargeFileStore, PutOutcome, StoreError};
use crate::config::CHUNK_SIZE;

/// Content size after which SHA-256 moves to its own thread (smaller files are not worth one).
pub const SHA_THREAD_AFTER: u64 = 1 << 20;
/// Chunks queued for the SHA-256 thread at most (bounds the memory it holds: 4 MiB).
const SHA_QUEUE_CHUNKS: usize = 64;

/// An object being written front to back (see the module doc).
pub struct ObjectStream {
    store: LargeFileStore,
    tmp: NamedTempFile,
    writer: ChunkWriter,
    /// The current chunk (full chunks wait here for the next byte).
    pending: Vec<u8>,
    /// Hashes of the chunks already written (all full, none of them the last).
    chunk_hashes: Vec<[u8; 32]>,
    size: u64,
    sha: Sha,
}

impl std::fmt::Debug for ObjectStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStream").field("size", &self.size).field("tmp", &self.tmp.path()).finish_non_exhaustive()
    }
}

impl ObjectStream {
    /// Starts an object in `store` (its temp file is created now).
    pub fn new(store: &LargeFileStore) -> Result<Self, StoreError> {
        let (tmp, writer) = store.begin_object()?;
        Ok(ObjectStream {
            store: store.clone(),
            tmp,
            writer,
            pending: Vec::with_capacity(CHUNK_SIZE as usize),
            chunk_hashes: Vec::new(),
            size: 0,
            sha: Sha::Inline(Sha256::new()),
        })
    }

    /// Bytes appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends `data` to the content.
    pub fn append(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        while !data.is_empty() {
            if self.pending.len() as u64 == CHUNK_SIZE {
                self.write_pending(false)?;
            }
            let room = CHUNK_SIZE as usize - self.pending.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.pending.extend_from_slice(now);
            self.size += now.len() as u64;
            data = rest;
        }
        Ok(())
    }

    /// Encodes the current chunk; `last` when no byte will follow it.
    fn write_pending(&mut self, last: bool) -> Result<(), StoreError> {
        let index = self.chunk_hashes.len() as u64;
        let hash = if last && index == 0 {
            *blake3::hash(&self.pending).as_bytes()
        } else {
            let mut hasher = blake3::Hasher::new();
            blake3::hazmat::HasherExt::set_input_offset(&mut hasher, index * CHUNK_SIZE);
            hasher.update(&self.pending);
            blake3::hazmat::HasherExt::finalize_non_root(&hasher)
        };
        let capacity = if last { 0 } else { CHUNK_SIZE as usize };
        let chunk = Bytes::from(std::mem::replace(&mut self.pending, Vec::with_capacity(capacity)));
        self.sha.update(chunk.clone(), self.size)?;
        self.writer.write_chunk(&hash, chunk, self.tmp.path())?;
        self.chunk_hashes.push(hash);
        Ok(())
    }

    /// Encodes the last chunk, writes the footer and publishes the object durably (or finds it
    /// already stored). Same guarantees as [`LargeFileStore::put_file`].
    pub fn finish(self) -> Result<PutOutcome, StoreError> {
        self.finish_with(true)
    }

    /// Like [`finish`](Self::finish), but the object is only written and named: it becomes
    /// durable at the store's next [`LargeFileStore::make_durable`], which must come before any
    /// commit references it. A close need not wait for the disk; the commit does.
    pub fn finish_deferred(self) -> Result<PutOutcome, StoreError> {
        self.finish_with(false)
    }

    fn finish_with(mut self, durable: bool) -> Result<PutOutcome, StoreError> {
        let meta = self.close_content()?;
        let outcome = |existed| PutOutcome { hash: meta.blake3, sha256: meta.sha256, size: meta.size, existed };
        if self.store.contains_intact(&meta.blake3) {
            return Ok(outcome(true)); // the temp file is dropped (deleted)
        }
        self.writer.finish(&meta, self.tmp.path())?;
        let existed = self.store.publish(self.tmp, &meta.blake3, durable)?;
        Ok(outcome(existed))
    }

    /// Finishes the object in its temp file without publishing it, and opens it for reading:
    /// how a writer that stops appending gets its content back. The temp file lives as long as
    /// the returned handle.
    pub fn into_reader(mut self) -> Result<(LargeFileReader, NamedTempFile), StoreError> {
        let meta = self.close_content()?;
        self.writer.finish(&meta, self.tmp.path())?;
        let reader = LargeFileStore::open_path(self.tmp.path(), &meta.blake3)?;
        Ok((reader, self.tmp))
    }

    /// Encodes the last chunk and computes the object's metadata.
    fn close_content(&mut self) -> Result<ObjectMeta, StoreError> {
        self.write_pending(true)?;
        let sha256 = std::mem::replace(&mut self.sha, Sha::Inline(Sha256::new())).finish()?;
        let blake3 = match root_from_chunk_hashes(&self.chunk_hashes) {
            Some(root) => root,
            None => unreachable!("write_pending(true) always adds a chunk"),
        };
        Ok(ObjectMeta { size: self.size, blake3, sha256 })
    }
}

/// SHA-256 of the content: inline for small content, on a worker thread past [`SHA_THREAD_AFTER`].
enum Sha {
    Inline(Sha256),
    Thread { queue: SyncSender<Bytes>, worker: JoinHandle<Sha256> },
}

impl Sha {
    /// Feeds the next chunk; `size` is the content length so far (decides when to move to a thread).
    fn update(&mut self, chunk: Bytes, size: u64) -> Result<(), StoreError> {
        match self {
            Sha::Inline(sha) => {
                sha.update(&chunk);
                if size >= SHA_THREAD_AFTER {
                    let state = sha.clone();
                    // No thread to be had: keep hashing inline.
                    if let Some(threaded) = Sha::spawn(state) {
                        *self = threaded;
                    }
                }
                Ok(())
            }
            Sha::Thread { queue, .. } => queue.send(chunk).map_err(|_| sha_thread_died()),
        }
    }

    fn spawn(mut sha: Sha256) -> Option<Sha> {
        let (queue, chunks) = sync_channel::<Bytes>(SHA_QUEUE_CHUNKS);
        let worker = std::thread::Builder::new()
            .name("pond-sha256".into())
            .spawn(move || {
                for chunk in chunks {
                    sha.update(&chunk);
                }
                sha
            })
            .ok()?;
        Some(Sha::Thread { queue, worker })
    }

    fn finish(self) -> Result<Sha256Digest, StoreError> {
        let sha = match self {
            Sha::Inline(sha) => sha,
            Sha::Thread { queue, worker } => {
                drop(queue);
                worker.join().map_err(|_| sha_thread_died())?
            }
        };
        Ok(Sha256Digest(sha.finalize().into()))
    }
}

fn sha_thread_died() -> StoreError {
    StoreError::InvalidInput("the SHA-256 worker thread stopped".into())
}
