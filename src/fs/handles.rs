//! Open files and handles. An inode opened by one or more handles has one [`OpenFile`], shared by
//! them: the write session (a HybridWriter, created on the first write or truncate) and a cached
//! reader of its committed content. The last release finalizes a dirty session (its content becomes
//! a new node version) and drops the OpenFile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::attr::{Attr, DirEntry, OpenMode};
use super::error::FsError;
use super::hybrid_writer::HybridWriter;
use crate::large_files::ObjectReader;
use crate::oplog::schema::Content;

/// A reader of committed content, opened once per OpenFile (cheap to clone: shared bytes or a
/// shared reader), so reads run outside the session lock.
#[derive(Clone)]
pub enum ContentReader {
    Inline(Bytes),
    Large(Arc<ObjectReader>),
}

impl ContentReader {
    pub fn read_at(&self, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        match self {
            ContentReader::Inline(bytes) => {
                let start = (offset.min(bytes.len() as u64)) as usize;
                let end = (start + size as usize).min(bytes.len());
                Ok(bytes[start..end].to_vec())
            }
            ContentReader::Large(reader) => Ok(reader.read_to_vec(offset, size as usize)?),
        }
    }
}

/// The state behind an OpenFile's mutex.
#[derive(Default)]
pub struct Session {
    pub handles: u32,
    /// Present once the file was written or truncated while open.
    pub writer: Option<HybridWriter>,
    /// The writer holds changes not yet finalized into the node's content.
    pub dirty: bool,
    /// Reader of the committed content (when there is no writer).
    pub reader: Option<ContentReader>,
    /// Read-only: the version of the file this open reads, whatever version the view moves to.
    pub pinned: Option<Pinned>,
}

/// The content and attributes a read-only open file keeps reading.
#[derive(Clone, Debug)]
pub struct Pinned {
    pub content: Content,
    pub attr: Attr,
    /// The view it was opened in (see `PondFs::advance_to`).
    pub view: u64,
}

/// Shared by every handle of one inode.
#[derive(Default)]
pub struct OpenFile {
    session: Mutex<Session>,
}

impl std::fmt::Debug for OpenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenFile")
    }
}

impl OpenFile {
    /// Lock the session. A panic while holding it cannot leave bytes half-applied in a way later
    /// callers could misread (the writer is append/patch only), so a poisoned lock is recovered.
    pub fn lock(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a file handle refers to.
pub enum Handle {
    File {
        ino: u64,
        file: Arc<OpenFile>,
        mode: OpenMode,
    },
    /// A directory listing snapshotted at opendir, so entries added or removed while `ls` or
    /// `rm -rf` iterates neither repeat nor vanish; offsets index into it.
    Dir {
        /// The directory listed.
        ino: u64,
        entries: Arc<Vec<DirEntry>>,
    },
}

/// Handle numbers to handles.
#[derive(Default)]
pub struct HandleTable {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Arc<Handle>>>,
}

impl HandleTable {
    pub fn insert(&self, h: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.map.lock().unwrap_or_else(|p| p.into_inner()).insert(fh, Arc::new(h));
        fh
    }

    pub fn get(&self, fh: u64) -> Result<Arc<Handle>, FsError> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).get(&fh).cloned().ok_or(FsError::BadHandle)
    }

    pub fn remove(&self, fh: u64) -> Result<Arc<Handle>, FsError> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&fh).ok_or(FsError::BadHandle)
    }
}
