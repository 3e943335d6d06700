//! The dedup index: where the chunks of content this store has seen live, by chaining value, so a
//! version that repeats a chunk (rsync rebuilding a file beside its old version, a copy, an undo)
//! points at the stored bytes instead of storing them again.
//!
//! It is a cache, never the truth: a miss only costs a chunk stored twice, and a hit is checked
//! like any read (the chunk's bytes must hash to the chaining value before they are returned). It
//! holds only places that are durable or will be before the next commit (chunks of content
//! committed in the pond, chunks this store wrote), and it is bounded: past [`MAX_ENTRIES`] it
//! starts over, which keeps memory under ~100 MiB whatever the pond's size.

use std::collections::HashMap;

use super::format::ChunkLoc;

/// Chunks remembered at most (64 GiB of distinct content).
pub const MAX_ENTRIES: usize = 1 << 20;

/// Chaining value → where those bytes are.
#[derive(Default)]
pub(crate) struct ChunkIndex {
    map: HashMap<[u8; 32], ChunkLoc>,
}

impl ChunkIndex {
    pub(crate) fn get(&self, cv: &[u8; 32]) -> Option<ChunkLoc> {
        self.map.get(cv).cloned()
    }

    /// Remembers chunks (a place already known for a chaining value is kept).
    pub(crate) fn insert_all(&mut self, entries: impl IntoIterator<Item = ([u8; 32], ChunkLoc)>) {
        for (cv, loc) in entries {
            if self.map.len() >= MAX_ENTRIES {
                self.map.clear();
            }
            self.map.entry(cv).or_insert(loc);
        }
    }

    /// Keeps the places `keep` accepts.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&ChunkLoc) -> bool) {
        self.map.retain(|_, loc| keep(loc));
    }
}
