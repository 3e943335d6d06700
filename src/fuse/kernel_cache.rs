//! [`KernelCache`]: tells the kernel to drop what it cached of a version a mounted replica's view
//! has moved past ([`Changes`]): directory entries that now name another inode or none, the
//! attributes of changed inodes, and their pages when no file open at the old version reads them.
//! Without it the kernel would go on showing the old entries and attributes for up to their TTL,
//! and the old pages of a file kept in the page cache (`FOPEN_KEEP_CACHE`) until evicted.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use fuser::{INodeNo, Notifier};

use crate::fs::Changes;

/// The session's channel for invalidations (fuser's [`Notifier`]); clone it freely.
#[derive(Clone)]
pub struct KernelCache {
    notifier: Notifier,
}

impl KernelCache {
    pub(super) fn new(notifier: Notifier) -> KernelCache {
        KernelCache { notifier }
    }

    /// Drop what `changes` made stale. The kernel answers ENOENT for what it holds nothing of,
    /// which is fine; other failures are logged (the TTL bounds how long the old view shows).
    pub fn invalidate(&self, changes: &Changes) {
        for (parent, name) in &changes.entries {
            note(self.notifier.inval_entry(INodeNo(*parent), OsStr::from_bytes(name)), "entry", *parent);
        }
        for (ino, pages) in &changes.inodes {
            // Offset -1: attributes only; offset 0 and length 0: attributes and every page.
            let offset = if *pages { 0 } else { -1 };
            note(self.notifier.inval_inode(INodeNo(*ino), offset, 0), "inode", *ino);
        }
    }
}

fn note(result: std::io::Result<()>, what: &str, ino: u64) {
    match result {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => tracing::debug!(ino, "could not invalidate the kernel's cached {what}: {e}"),
    }
}
