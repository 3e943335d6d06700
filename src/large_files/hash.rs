//! Content hashes of large files: the [`Blake3Hash`] and [`Sha256Digest`] newtypes, the per-chunk
//! BLAKE3 chaining values and the merge of chunk hashes into the root.
//!
//! The whole-content hash is standard BLAKE3 (exactly what `b3sum` prints). Content is cut into
//! chunks of [`CHUNK_SIZE`] bytes (the last may be short; empty content is one empty chunk). Because
//! a chunk is a whole BLAKE3 subtree, each chunk's stored hash is its BLAKE3 *chaining value* at its
//! offset, and those merge into the root as a left-balanced tree (left subtree = the largest power
//! of two of chunks strictly less than n). When the content is a single chunk there is no tree:
//! its stored hash is the root hash itself. So an object's name authenticates every chunk hash.

use std::fmt;

use blake3::hazmat::{HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};

use crate::config::CHUNK_SIZE;

macro_rules! hex_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Lowercase hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses 64 hex digits (either case); `None` for anything else.
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some($name(out))
            }

            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.to_hex())
            }
        }

        impl From<[u8; 32]> for $name {
            fn from(bytes: [u8; 32]) -> Self {
                $name(bytes)
            }
        }
    };
}

hex_newtype!(
    /// A standard BLAKE3 hash (of a whole file: what `b3sum` prints, and a large object's name).
    Blake3Hash
);
hex_newtype!(
    /// A SHA-256 digest (of a whole file; kept for interoperability, e.g. S3 checksums).
    Sha256Digest
);

impl From<blake3::Hash> for Blake3Hash {
    fn from(h: blake3::Hash) -> Self {
        Blake3Hash(*h.as_bytes())
    }
}

/// Number of chunks content of `size` bytes is cut into (empty content is one empty chunk).
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_SIZE).max(1)
}

/// Length of chunk `index` of content of `size` bytes (0 for an index past the end).
pub fn chunk_len(size: u64, index: u64) -> u64 {
    let start = index.saturating_mul(CHUNK_SIZE);
    size.saturating_sub(start).min(CHUNK_SIZE)
}

/// The stored hash of chunk `index` of content that has `n_chunks` chunks: its chaining value, or
/// for content of one chunk the root hash itself.
pub fn chunk_hash(index: u64, n_chunks: u64, data: &[u8]) -> [u8; 32] {
    if n_chunks == 1 {
        return *blake3::hash(data).as_bytes();
    }
    chunk_cv(index, data)
}

/// The BLAKE3 chaining value of `data` as chunk `index` of content of more than one chunk. It
/// depends on the bytes and the position only, not on the content's length: a chunk that an append
/// or an edit elsewhere leaves alone keeps it, and the dedup index and packs key chunks by it.
///
/// Empty content's one (empty) chunk has no chaining value in BLAKE3; its root hash stands in.
pub fn chunk_cv(index: u64, data: &[u8]) -> [u8; 32] {
    if data.is_empty() {
        return *blake3::hash(data).as_bytes();
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(index.saturating_mul(CHUNK_SIZE));
    hasher.update(data);
    hasher.finalize_non_root()
}

/// A chunk's verification unit for small reads: 4 KiB, four BLAKE3 chunks (see
/// `ObjectReader::read_to_vec`).
pub const PIECE_SIZE: u64 = 4096;

/// The chaining value of the [`PIECE_SIZE`] bytes `data` at `offset` in content of more than one
/// chunk (`offset` a multiple of `PIECE_SIZE`): a subtree of the BLAKE3 tree, so a full chunk's
/// pieces merge ([`merge_pieces`]) into its [`chunk_cv`].
pub fn piece_cv(offset: u64, data: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(offset);
    hasher.update(data);
    hasher.finalize_non_root()
}

/// The chaining value of a full chunk from its pieces' ([`piece_cv`]), in order.
pub fn merge_pieces(pieces: &[[u8; 32]]) -> [u8; 32] {
    subtree_cv(pieces)
}

/// The root (standard BLAKE3 of the whole content) from the chunk hashes; `None` for no chunks.
pub fn root_from_chunk_hashes(hashes: &[[u8; 32]]) -> Option<Blake3Hash> {
    match hashes.len() {
        0 => None,
        1 => Some(Blake3Hash(hashes[0])),
        n => {
            let (left, right) = hashes.split_at(left_subtree_chunks(n));
            let root = merge_subtrees_root(&subtree_cv(left), &subtree_cv(right), Mode::Hash);
            Some(Blake3Hash(*root.as_bytes()))
        }
    }
}

/// Largest power of two strictly less than `n` (n >= 2).
fn left_subtree_chunks(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// Chaining value of a non-root subtree made of `hashes` (chunk CVs), len >= 1.
fn subtree_cv(hashes: &[[u8; 32]]) -> [u8; 32] {
    if hashes.len() == 1 {
        return hashes[0];
    }
    let (left, right) = hashes.split_at(left_subtree_chunks(hashes.len()));
    merge_subtrees_non_root(&subtree_cv(left), &subtree_cv(right), Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_chunk_s_pieces_merge_into_its_chaining_value() {
        let data: Vec<u8> = (0..3 * CHUNK_SIZE).map(|i| (i * 7 % 251) as u8).collect();
        for index in 0..3u64 {
            let chunk = &data[(index * CHUNK_SIZE) as usize..((index + 1) * CHUNK_SIZE) as usize];
            let pieces: Vec<[u8; 32]> = chunk
                .chunks(PIECE_SIZE as usize)
                .enumerate()
                .map(|(j, p)| piece_cv(index * CHUNK_SIZE + j as u64 * PIECE_SIZE, p))
                .collect();
            assert_eq!(merge_pieces(&pieces), chunk_cv(index, chunk), "chunk {index}");
            let mut other = pieces.clone();
            other[5][0] ^= 1;
            assert_ne!(merge_pieces(&other), chunk_cv(index, chunk), "a changed piece changes the chunk's value");
        }
    }
}
