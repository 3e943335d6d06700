//! Whether the rows current at a version describe a tree: every directory named by one entry at
//! most, the root by none, and no directory among its own ancestors. Rows come from disk or a
//! remote and may say anything; a directory reachable from itself would send every walk up the
//! tree (rename's "is the target inside the source?") round forever. The filesystem refuses to
//! open such a version and `pond verify` reports it; both ask here.
//!
//! What counts is what the filesystem builds (`fs::tree`): entries whose parent is a live
//! directory and whose child is a live inode; entries naming a missing inode are ignored there.

use std::collections::{HashMap, HashSet};

use super::ROOT_INO;
use super::schema::{NodeKind, OplogRow};

/// How the directories fail to form a tree.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotATree {
    #[error("directory inode {dir} has two names, in directories {first} and {second}")]
    TwoNames { dir: u64, first: u64, second: u64 },
    #[error("directory {parent} has an entry naming the root directory")]
    RootNamed { parent: u64 },
    #[error("directory inode {dir} is inside itself (its parents lead back to it)")]
    Cycle { dir: u64 },
}

/// Check that the directories of `rows` (the rows current at one version) form a tree.
pub fn check_tree(rows: &[OplogRow]) -> Result<(), NotATree> {
    let dirs: HashSet<u64> = rows
        .iter()
        .filter_map(|r| match r {
            OplogRow::Node { ino, data: Some(d), .. } if d.kind == NodeKind::Dir => Some(*ino),
            _ => None,
        })
        .collect();
    let mut parent_of: HashMap<u64, u64> = HashMap::new();
    for row in rows {
        let OplogRow::Dirent { parent, child: Some(child), .. } = row else { continue };
        if !dirs.contains(parent) || !dirs.contains(child) {
            continue;
        }
        if *child == ROOT_INO {
            return Err(NotATree::RootNamed { parent: *parent });
        }
        if let Some(first) = parent_of.insert(*child, *parent) {
            return Err(NotATree::TwoNames { dir: *child, first, second: *parent });
        }
    }
    // Each directory has one parent at most: walk up from each, remembering directories known to
    // end at the root (or at a directory no entry names), so every directory is walked once.
    let mut ends: HashSet<u64> = HashSet::new();
    for &start in parent_of.keys() {
        let mut path = Vec::new();
        let mut on_path = HashSet::new();
        let mut dir = start;
        while !ends.contains(&dir) {
            if !on_path.insert(dir) {
                return Err(NotATree::Cycle { dir });
            }
            path.push(dir);
            match parent_of.get(&dir) {
                Some(&parent) => dir = parent,
                None => break,
            }
        }
        ends.extend(path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oplog::schema::NodeData;

    fn dir(ino: u64) -> OplogRow {
        let data = NodeData::empty_dir(0, 0, 0);
        OplogRow::Node { ino, seq: ino, data: Some(data) }
    }

    fn entry(parent: u64, name: &str, child: u64) -> OplogRow {
        OplogRow::Dirent { parent, name: name.as_bytes().to_vec(), seq: 100, child: Some(child) }
    }

    #[test]
    fn a_tree_passes_and_each_way_of_not_being_one_is_named() {
        let tree = vec![dir(1), dir(2), dir(3), entry(1, "a", 2), entry(2, "b", 3)];
        assert_eq!(check_tree(&tree), Ok(()));
        let mut two_names = tree.clone();
        two_names.push(entry(3, "again", 2));
        assert_eq!(check_tree(&two_names), Err(NotATree::TwoNames { dir: 2, first: 1, second: 3 }));
        let mut root = tree.clone();
        root.push(entry(3, "up", 1));
        assert_eq!(check_tree(&root), Err(NotATree::RootNamed { parent: 3 }));
        // Two directories inside each other, reachable from nowhere.
        let cycle = vec![dir(1), dir(2), dir(3), entry(2, "x", 3), entry(3, "y", 2)];
        assert!(matches!(check_tree(&cycle), Err(NotATree::Cycle { .. })));
        // Entries of a removed name, or naming a missing inode, do not count (as in fs::tree).
        let ignored = vec![dir(1), dir(2), entry(1, "a", 2), entry(9, "x", 2), entry(2, "y", 7)];
        assert_eq!(check_tree(&ignored), Ok(()));
    }

    #[test]
    fn a_chain_a_million_directories_deep_is_checked_without_recursion() {
        let mut rows: Vec<OplogRow> = (1..=1_000_000).map(dir).collect();
        rows.extend((1..1_000_000).map(|i| entry(i, "d", i + 1)));
        assert_eq!(check_tree(&rows), Ok(()));
    }
}
