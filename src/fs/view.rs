//! Moving a read-only view to a later version ([`PondFs::advance_to`]), and what the move changed
//! ([`Changes`]) for the kernel's caches.
//!
//! The new version's tree is built beside the old one (from the table at `root`, which the caller
//! has brought up to that version) and swapped in under the tree lock, so every request sees one
//! version or the other, never a mix. Open files keep the version they were opened at (their
//! [`Pinned`](super::handles::Pinned) content and attributes); directory listings opened before
//! keep their snapshot of names. What the kernel cached of the old version is named in [`Changes`]:
//! entries that now name another inode or none, and inodes whose attributes or content changed or
//! that are gone.

use std::sync::atomic::Ordering;

use super::tree::{Inode, Tree};
use super::{FsError, PondFs};
use crate::oplog::Oplog;
use crate::oplog::schema::NodeData;

/// What moving a view from one version to another changed, as far as the kernel's caches go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub from: u64,
    pub to: u64,
    /// Directory entries `(parent, name)` whose inode changed: another, none, or one where there
    /// was none (the kernel caches missing names too).
    pub entries: Vec<(u64, Vec<u8>)>,
    /// Inodes whose attributes changed or that are gone: the kernel's attributes must be dropped.
    /// `true` when their cached pages must be dropped as well (the content changed and no file
    /// open at the old version reads it through the cache).
    pub inodes: Vec<(u64, bool)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.inodes.is_empty()
    }
}

/// True when the two versions of a node look the same from outside: attributes and content bytes
/// (inline content that moved to another data file is the same content).
fn same_node(a: &NodeData, b: &NodeData) -> bool {
    a.kind == b.kind
        && a.mode == b.mode
        && a.uid == b.uid
        && a.gid == b.gid
        && a.size == b.size
        && a.atime_ns == b.atime_ns
        && a.mtime_ns == b.mtime_ns
        && a.ctime_ns == b.ctime_ns
        && a.nlink == b.nlink
        && a.rdev == b.rdev
        && a.symlink == b.symlink
        && a.xattrs == b.xattrs
        && a.content.as_ref().map(|c| c.hash()) == b.content.as_ref().map(|c| c.hash())
}

fn same_content(a: &Inode, b: &Inode) -> bool {
    a.data.size == b.data.size && a.data.content.as_ref().map(|c| c.hash()) == b.data.content.as_ref().map(|c| c.hash())
}

impl PondFs {
    /// Move this read-only view (see [`PondFs::open_view`]) to `version`, whose table the caller
    /// has put at [`PondFs::root`]. Returns what changed for the kernel's caches; a failure leaves
    /// the view where it was.
    pub fn advance_to(&self, version: u64) -> Result<Changes, FsError> {
        let Some(pages) = &self.pages else {
            return Err(FsError::Invalid("only a view of a replica moves to another version"));
        };
        let from = self.opened_version();
        let mut oplog = self._rt.block_on(Oplog::open(&self.root, Some(version)))?;
        let mut next = Tree::from_rows(oplog.load()?)?;
        let mut t = self.lock_tree();
        let mut changes = Changes { from, to: version, ..Default::default() };
        let mut pages = pages.lock().unwrap_or_else(|p| p.into_inner());
        for (ino, old) in &t.nodes {
            let Some(new) = next.nodes.get_mut(ino) else {
                changes.inodes.push((*ino, pages.content_changed(*ino)));
                continue;
            };
            // The kernel's references carry over: they are to the inode, in whatever version.
            new.lookups = old.lookups;
            if !same_node(&old.data, &new.data) {
                let content = !same_content(old, new) && pages.content_changed(*ino);
                changes.inodes.push((*ino, content));
            }
            if let (Some(old_dir), Some(new_dir)) = (&old.dir, &new.dir) {
                for (name, child) in &old_dir.entries {
                    if new_dir.entries.get(name) != Some(child) {
                        changes.entries.push((*ino, name.clone()));
                    }
                }
                for name in new_dir.entries.keys() {
                    if !old_dir.entries.contains_key(name) {
                        changes.entries.push((*ino, name.clone()));
                    }
                }
            }
        }
        *t = next;
        self.version.store(version, Ordering::SeqCst);
        self.view.fetch_add(1, Ordering::SeqCst);
        drop(pages);
        drop(t);
        changes.inodes.sort_unstable();
        changes.entries.sort_unstable();
        Ok(changes)
    }
}
