//! [`Held`]: the small files of the store that a close made and the next commit writes. A file
//! closed with a few hundred KiB of content used to cost its close two files made, written and
//! renamed (its pack and its manifest), in the directories the committer was fsyncing at the same
//! time; `tar -x` of 200 KiB files waited on that. Now such a pack or manifest is kept here, in
//! memory, and the committer writes it (`LargeFileStore::make_durable`) before any commit can name
//! it. Until then it is read from here ([`HeldBlobs`]): a reader never sees the difference.
//!
//! Held bytes are bounded ([`HELD_MAX`]): past that, a close writes its files itself, as before.
//! What a crash loses is what no commit named: the same as before, when such files were written
//! but not yet committed.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::error::StoreError;
use super::reader::{Blob, BlobSource};
use crate::layout::PondFile;

/// Bytes held at most (then closes write their files themselves).
pub(crate) const HELD_MAX: usize = 64 << 20;

/// Files waiting for the next commit to write them (see the module doc).
#[derive(Default)]
pub(crate) struct Held {
    files: Mutex<HeldFiles>,
}

#[derive(Default)]
struct HeldFiles {
    by_name: HashMap<PondFile, Bytes>,
    bytes: usize,
}

impl Held {
    fn files(&self) -> MutexGuard<'_, HeldFiles> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `bytes` as `file`, unless that would pass [`HELD_MAX`]: then they come back. A file
    /// of that name held already stays as it is (files are named by what they hold).
    pub(crate) fn hold(&self, file: &PondFile, bytes: Bytes) -> Result<(), Bytes> {
        let mut held = self.files();
        if held.by_name.contains_key(file) {
            return Ok(());
        }
        if held.bytes + bytes.len() > HELD_MAX {
            return Err(bytes);
        }
        held.bytes += bytes.len();
        held.by_name.insert(file.clone(), bytes);
        Ok(())
    }

    pub(crate) fn get(&self, file: &PondFile) -> Option<Bytes> {
        self.files().by_name.get(file).cloned()
    }

    pub(crate) fn contains(&self, file: &PondFile) -> bool {
        self.files().by_name.contains_key(file)
    }

    /// What is held now, for writing out (it stays held until [`release`](Self::release)).
    pub(crate) fn snapshot(&self) -> Vec<(PondFile, Bytes)> {
        let mut files: Vec<_> = self.files().by_name.iter().map(|(f, b)| (f.clone(), b.clone())).collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        files
    }

    /// Stops holding `file` (written out, or not wanted). True when it was held.
    pub(crate) fn release(&self, file: &PondFile) -> bool {
        let mut held = self.files();
        match held.by_name.remove(file) {
            Some(bytes) => {
                held.bytes -= bytes.len();
                true
            }
            None => false,
        }
    }

    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        self.files().bytes
    }
}

/// A [`BlobSource`] that reads held files from memory and everything else from `inner`.
pub(crate) struct HeldBlobs {
    pub(crate) held: Arc<Held>,
    pub(crate) inner: Arc<dyn BlobSource>,
}

impl BlobSource for HeldBlobs {
    fn open(&self, file: &PondFile) -> Result<Arc<dyn Blob>, StoreError> {
        match self.held.get(file) {
            Some(bytes) => Ok(Arc::new(HeldBlob(bytes))),
            None => self.inner.open(file),
        }
    }

    fn describe(&self, file: &PondFile) -> PathBuf {
        self.inner.describe(file)
    }

    fn forget(&self, file: &PondFile) -> bool {
        self.inner.forget(file)
    }

    fn reads_ahead(&self) -> bool {
        self.inner.reads_ahead()
    }
}

/// A held file's bytes.
struct HeldBlob(Bytes);

impl Blob for HeldBlob {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Bytes> {
        let end = offset.checked_add(len).filter(|&end| end <= self.0.len() as u64);
        match end {
            Some(end) => Ok(self.0.slice(offset as usize..end as usize)),
            None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of a held file")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::large_files::Blake3Hash;

    #[test]
    fn held_bytes_are_bounded_and_counted_once_per_name() {
        let held = Held::default();
        let a = PondFile::Pack(Blake3Hash([1; 32]));
        let b = PondFile::Pack(Blake3Hash([2; 32]));
        held.hold(&a, Bytes::from(vec![7; 1000])).unwrap();
        held.hold(&a, Bytes::from(vec![8; 1000])).unwrap();
        assert_eq!(held.held_bytes(), 1000);
        assert_eq!(held.get(&a).unwrap()[0], 7, "the first bytes held under a name stay");
        assert!(held.hold(&b, Bytes::from(vec![0; HELD_MAX])).is_err(), "past the bound they come back");
        assert!(held.release(&a));
        assert!(!held.release(&a));
        assert_eq!(held.held_bytes(), 0);
        held.hold(&b, Bytes::from(vec![0; HELD_MAX])).unwrap();
    }

    #[test]
    fn a_held_blob_reads_ranges_and_refuses_past_its_end() {
        let blob = HeldBlob(Bytes::from((0..=255u8).collect::<Vec<_>>()));
        assert_eq!(&blob.read_range(10, 3).unwrap()[..], &[10, 11, 12]);
        assert_eq!(blob.read_range(256, 0).unwrap().len(), 0);
        assert_eq!(blob.read_range(250, 7).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(blob.read_range(u64::MAX, 2).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
