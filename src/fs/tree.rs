//! The in-memory inode tree: every live inode's attributes, every directory's entries, and which keys
//! changed since the last commit. Built from the oplog rows current at a version; turned back into rows
//! by [`Tree::take_cut`]. Guarded by one mutex in `PondFs`; nothing here does I/O.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::attr::Attr;
use super::error::FsError;
use super::handles::OpenFile;
use crate::oplog::schema::{Content, NodeData, NodeKind, OplogRow, RowKey};
use crate::oplog::tree_shape::check_tree;
use crate::oplog::{LoadedRows, ROOT_INO};

/// Longest name a directory entry may have (as on ext4).
pub const NAME_MAX: usize = 255;

/// Check a directory-entry name: not empty, not `.`/`..`, no `/` or NUL, at most [`NAME_MAX`] bytes.
pub fn check_name(name: &[u8]) -> Result<(), FsError> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(FsError::Invalid("bad file name"));
    }
    Ok(())
}

/// Attributes of a file with an open write session that are not yet part of its committed content.
#[derive(Clone, Copy, Debug)]
pub struct Live {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

#[derive(Debug)]
pub struct Inode {
    /// The node as it will be committed next: attributes, xattrs, finalized content.
    pub data: NodeData,
    /// For directories: entries by name, and the parent.
    pub dir: Option<Dir>,
    /// While any handle is open: the shared open-file state (sessions, cached readers).
    pub open: Option<Arc<OpenFile>>,
    /// Handles open on this inode (the OpenFile is dropped when it reaches zero).
    pub open_count: u32,
    /// Size and times written through an open session but not finalized yet.
    pub live: Option<Live>,
    /// Entries the kernel holds for this inode (its lookup count, see [`PondFs::count_kernel_lookups`]):
    /// an unlinked inode stays while the kernel may still send requests for it.
    ///
    /// [`PondFs::count_kernel_lookups`]: super::PondFs::count_kernel_lookups
    pub lookups: u64,
}

#[derive(Debug, Default)]
pub struct Dir {
    pub entries: BTreeMap<Vec<u8>, u64>,
    pub parent: u64,
}

impl Inode {
    pub fn attr(&self, ino: u64) -> Attr {
        let d = &self.data;
        let (size, mtime, ctime) = match self.live {
            Some(l) => (l.size, l.mtime_ns, l.ctime_ns),
            None => (d.size, d.mtime_ns, d.ctime_ns),
        };
        Attr {
            ino,
            kind: d.kind,
            perm: d.mode & 0o7777,
            uid: d.uid,
            gid: d.gid,
            size,
            atime_ns: d.atime_ns,
            mtime_ns: mtime,
            ctime_ns: ctime,
            nlink: d.nlink,
            rdev: d.rdev,
            volatile: false,
        }
    }
}

/// What one commit carries: rows plus the numbers `pond log` shows.
pub struct Cut {
    pub rows: Vec<OplogRow>,
    pub files_changed: u64,
    pub bytes: u64,
    /// The dirty generation this cut covers: fsyncs waiting on a generation ≤ this are satisfied.
    pub generation: u64,
}

#[derive(Debug, Default)]
pub struct Tree {
    pub nodes: HashMap<u64, Inode>,
    next_ino: u64,
    next_seq: u64,
    dirty: HashSet<RowKey>,
    content_changed: HashSet<u64>,
    /// Bumped on every change; a cut records the value it covers.
    pub generation: u64,
}

impl Tree {
    /// Build the tree from the rows current at a version. Rows for names whose parent or child is
    /// missing are ignored (they cannot be reached), never a panic. Directories that do not form a
    /// tree (one with two names, or inside itself) are refused: walks up the tree would not end.
    pub fn from_rows(loaded: LoadedRows) -> Result<Tree, FsError> {
        check_tree(&loaded.rows).map_err(|e| {
            FsError::Corrupt(format!(
                "at version {}, the pond's directories do not form a tree: {e} (`pond verify` names it; \
                 an older version may still open with --version)",
                loaded.version
            ))
        })?;
        let mut tree =
            Tree { next_ino: loaded.max_ino.max(ROOT_INO) + 1, next_seq: loaded.max_seq + 1, ..Default::default() };
        let mut dirents = Vec::new();
        for row in loaded.rows {
            match row {
                OplogRow::Node { ino, data: Some(data), .. } => {
                    let dir = (data.kind == NodeKind::Dir).then(Dir::default);
                    tree.nodes.insert(ino, Inode { data, dir, open: None, open_count: 0, live: None, lookups: 0 });
                }
                OplogRow::Node { data: None, .. } => {}
                OplogRow::Dirent { parent, name, child: Some(child), .. } => dirents.push((parent, name, child)),
                OplogRow::Dirent { child: None, .. } => {}
            }
        }
        for (parent, name, child) in dirents {
            if !tree.nodes.contains_key(&child) {
                tracing::warn!(parent, child, "directory entry names a missing inode; ignored");
                continue;
            }
            let child_is_dir = tree.nodes.get(&child).is_some_and(|n| n.dir.is_some());
            let Some(dir) = tree.nodes.get_mut(&parent).and_then(|p| p.dir.as_mut()) else {
                tracing::warn!(parent, "directory entry in a missing directory; ignored");
                continue;
            };
            dir.entries.insert(name, child);
            if child_is_dir && let Some(d) = tree.nodes.get_mut(&child).and_then(|c| c.dir.as_mut()) {
                d.parent = parent;
            }
        }
        match tree.nodes.get_mut(&ROOT_INO).and_then(|r| r.dir.as_mut()) {
            Some(root) => root.parent = ROOT_INO,
            None => return Err(FsError::Corrupt("the pond has no root directory".into())),
        }
        Ok(tree)
    }

    pub fn node(&self, ino: u64) -> Result<&Inode, FsError> {
        self.nodes.get(&ino).ok_or(FsError::NotFound)
    }

    pub fn node_mut(&mut self, ino: u64) -> Result<&mut Inode, FsError> {
        self.nodes.get_mut(&ino).ok_or(FsError::NotFound)
    }

    pub fn dir(&self, ino: u64) -> Result<&Dir, FsError> {
        self.node(ino)?.dir.as_ref().ok_or(FsError::NotDir)
    }

    pub fn dir_mut(&mut self, ino: u64) -> Result<&mut Dir, FsError> {
        self.node_mut(ino)?.dir.as_mut().ok_or(FsError::NotDir)
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<u64, FsError> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        let dir = self.dir(parent)?;
        match name {
            b"." => Ok(parent),
            b".." => Ok(dir.parent),
            _ => dir.entries.get(name).copied().ok_or(FsError::NotFound),
        }
    }

    pub fn alloc_ino(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    /// Record that `ino`'s node row must be written (attributes or content changed).
    pub fn touch_node(&mut self, ino: u64) {
        self.dirty.insert(RowKey::Node(ino));
        self.generation += 1;
    }

    /// Record that `ino`'s content changed (its size counts in the commit summary's bytes).
    pub fn touch_content(&mut self, ino: u64) {
        self.content_changed.insert(ino);
        self.touch_node(ino);
    }

    pub fn touch_entry(&mut self, parent: u64, name: &[u8]) {
        self.dirty.insert(RowKey::Dirent(parent, name.into()));
        self.generation += 1;
    }

    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Insert `name -> child` in `parent` and mark both the entry and the parent (mtime) dirty.
    pub fn add_entry(&mut self, parent: u64, name: &[u8], child: u64, now: i64) -> Result<(), FsError> {
        let child_is_dir = self.node(child)?.dir.is_some();
        let p = self.node_mut(parent)?;
        let dir = p.dir.as_mut().ok_or(FsError::NotDir)?;
        dir.entries.insert(name.to_vec(), child);
        p.data.mtime_ns = now;
        p.data.ctime_ns = now;
        if child_is_dir {
            p.data.nlink += 1;
        }
        self.touch_entry(parent, name);
        self.touch_node(parent);
        if child_is_dir && let Some(d) = self.node_mut(child)?.dir.as_mut() {
            d.parent = parent;
        }
        Ok(())
    }

    /// Remove `name` from `parent`, returning the inode it named.
    pub fn remove_entry(&mut self, parent: u64, name: &[u8], now: i64) -> Result<u64, FsError> {
        let p = self.node_mut(parent)?;
        let dir = p.dir.as_mut().ok_or(FsError::NotDir)?;
        let child = dir.entries.remove(name).ok_or(FsError::NotFound)?;
        p.data.mtime_ns = now;
        p.data.ctime_ns = now;
        let child_is_dir = self.node(child)?.dir.is_some();
        if child_is_dir {
            self.node_mut(parent)?.data.nlink -= 1;
        }
        self.touch_entry(parent, name);
        self.touch_node(parent);
        Ok(child)
    }

    /// Drop one link to `ino`; an inode left with no links, no open handle and no kernel reference
    /// is forgotten.
    pub fn drop_link(&mut self, ino: u64, now: i64) -> Result<(), FsError> {
        let node = self.node_mut(ino)?;
        node.data.nlink = if node.dir.is_some() { 0 } else { node.data.nlink.saturating_sub(1) };
        node.data.ctime_ns = now;
        self.touch_node(ino);
        self.forget_if_unreferenced(ino);
        Ok(())
    }

    pub fn forget_if_unreferenced(&mut self, ino: u64) {
        if self.nodes.get(&ino).is_some_and(|n| n.data.nlink == 0 && n.open.is_none() && n.lookups == 0) {
            self.nodes.remove(&ino);
        }
    }

    /// True if `ancestor` is `ino` or one of its parent directories. The tree is checked to be one
    /// when built and every change keeps it one; should a walk still go round, it ends after as
    /// many steps as there are inodes and says true (so a rename depending on it is refused).
    pub fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> bool {
        for _ in 0..=self.nodes.len() {
            if ino == ancestor {
                return true;
            }
            match self.nodes.get(&ino).and_then(|n| n.dir.as_ref()) {
                Some(d) if d.parent != ino => ino = d.parent,
                _ => return false,
            }
        }
        true
    }

    /// Take every dirty key as rows describing the tree as it is now (a consistent snapshot), with
    /// fresh sequence numbers. Inline content whose bytes are not in memory is left for the committer
    /// to load (its `loc` says where).
    pub fn take_cut(&mut self) -> Cut {
        let keys: Vec<RowKey> = self.dirty.drain().collect();
        let changed: HashSet<u64> = std::mem::take(&mut self.content_changed);
        let mut rows = Vec::with_capacity(keys.len());
        let (mut files_changed, mut bytes) = (0, 0);
        for key in keys {
            let seq = self.next_seq;
            self.next_seq += 1;
            match key {
                RowKey::Node(ino) => {
                    let data = self.nodes.get(&ino).filter(|n| n.data.nlink > 0).map(|n| n.data.clone());
                    // A changed file: any version of a non-directory (content, attributes, removal)
                    // and a new directory, but not a directory whose mtime moved because an entry
                    // in it changed. Bytes count content that changed.
                    let is_dir = data.as_ref().is_some_and(|d| d.kind == NodeKind::Dir);
                    if !is_dir || changed.contains(&ino) {
                        files_changed += 1;
                    }
                    if changed.contains(&ino) {
                        bytes += data.as_ref().filter(|d| d.content.is_some()).map(|d| d.size).unwrap_or(0);
                    }
                    rows.push(OplogRow::Node { ino, seq, data });
                }
                RowKey::Dirent(parent, name) => {
                    let child = self
                        .nodes
                        .get(&parent)
                        .and_then(|p| p.dir.as_ref())
                        .and_then(|d| d.entries.get(&*name))
                        .copied();
                    rows.push(OplogRow::Dirent { parent, name: name.into_vec(), seq, child });
                }
            }
        }
        Cut { rows, files_changed, bytes, generation: self.generation }
    }

    /// After a commit: inline content that is now stored drops its in-memory bytes (the row location
    /// replaces them), so memory does not grow with the number of files written.
    pub fn release_committed_bytes(&mut self, file: &Arc<str>, rows: &[OplogRow]) {
        for (i, row) in rows.iter().enumerate() {
            let OplogRow::Node { ino, data: Some(d), .. } = row else { continue };
            let Some(Content::Inline { hash: committed, .. }) = &d.content else { continue };
            if let Some(node) = self.nodes.get_mut(ino)
                && let Some(Content::Inline { bytes, loc, hash, .. }) = &mut node.data.content
                && hash == committed
            {
                *loc = Some(crate::oplog::schema::RowLoc { file: file.clone(), row: i as u64 });
                *bytes = None;
            }
        }
    }

    /// After the rows were rewritten into another data file (a compaction before a prune removes
    /// the old ones): inline content read lazily from the old place is read from the new one.
    /// `rows` are the new file's rows, read with their locations.
    pub fn relocate_inline(&mut self, rows: &[OplogRow]) {
        for row in rows {
            let OplogRow::Node { ino, data: Some(d), .. } = row else { continue };
            let Some(Content::Inline { hash: stored, loc: Some(new_loc), .. }) = &d.content else { continue };
            if let Some(node) = self.nodes.get_mut(ino)
                && let Some(Content::Inline { bytes: None, loc, hash, .. }) = &mut node.data.content
                && hash == stored
            {
                *loc = Some(new_loc.clone());
            }
        }
    }

    /// Put keys back after a failed commit so the next attempt includes them.
    pub fn requeue(&mut self, rows: &[OplogRow]) {
        for row in rows {
            self.dirty.insert(row.key());
        }
        self.generation += 1;
    }

    pub fn node_count(&self) -> u64 {
        self.nodes.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_inode(parent: u64) -> Inode {
        let data = NodeData::empty_dir(0, 0, 0);
        let dir = Some(Dir { entries: BTreeMap::new(), parent });
        Inode { data, dir, open: None, open_count: 0, live: None, lookups: 0 }
    }

    #[test]
    fn a_walk_up_a_tree_that_goes_round_ends() {
        let mut tree = Tree::default();
        tree.nodes.insert(ROOT_INO, dir_inode(ROOT_INO));
        tree.nodes.insert(2, dir_inode(3));
        tree.nodes.insert(3, dir_inode(2));
        assert!(tree.is_ancestor(ROOT_INO, ROOT_INO));
        assert!(tree.is_ancestor(9, 2), "a walk that goes round says true (a rename is refused)");
    }
}
