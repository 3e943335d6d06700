//! Content hashes of large files: the [`Blake3Hash`] and [`Sha256Digest`] newtypes, the per-chunk
//! BLAKE3 chaining values, the merge of chunk hashes into the root, and the streaming
//! [`StreamHasher`] that computes all of it in one pass.
//!
//! The whole-content hash is standard BLAKE3 (exactly what `b3sum` prints). Content is cut into
//! chunks of [`CHUNK_SIZE`] bytes (the last may be short; empty content is one empty chunk). Because
//! a chunk is a whole BLAKE3 subtree, each chunk's stored hash is its BLAKE3 *chaining value* at its
//! offset, and those merge into the root as a left-balanced tree (left subtree = the largest power
//! of two of chunks strictly less than n). When the content is a single chunk there is no tree:
//! its stored hash is the root hash itself. So an object's name authenticates every chunk hash.

use std::fmt;

use blake3::hazmat::{HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};
use sha2::{Digest, Sha256};

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

/// Everything known about some content once hashed: its names and its chunk hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashSummary {
    /// Standard BLAKE3 of the whole content.
    pub root: Blake3Hash,
    /// SHA-256 of the whole content.
    pub sha256: Sha256Digest,
    /// Content length in bytes.
    pub size: u64,
    /// One hash per chunk (see the module doc); never empty.
    pub chunk_hashes: Vec<[u8; 32]>,
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

/// The stored hash of chunk `index` of content that has `n_chunks` chunks.
pub fn chunk_hash(index: u64, n_chunks: u64, data: &[u8]) -> [u8; 32] {
    if n_chunks == 1 {
        return *blake3::hash(data).as_bytes();
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(index * CHUNK_SIZE);
    hasher.update(data);
    hasher.finalize_non_root()
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

/// Streaming hasher: BLAKE3 chunk chaining values, the BLAKE3 root and SHA-256, in one pass.
///
/// Any slicing of the input gives the same result. [`StreamHasher::summary`] does not consume the
/// hasher, so a writer can snapshot mid-stream and keep appending.
#[derive(Clone)]
pub struct StreamHasher {
    /// Chaining values of the chunks before the current one (all full).
    done: Vec<[u8; 32]>,
    /// Hasher of the current chunk, set to its offset. A full chunk stays current until more input
    /// arrives, because a lone chunk's hash is a root hash, not a chaining value.
    current: blake3::Hasher,
    current_len: u64,
    sha: Sha256,
    size: u64,
}

impl Default for StreamHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for StreamHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamHasher").field("size", &self.size).finish_non_exhaustive()
    }
}

impl StreamHasher {
    /// A hasher that has seen no input.
    pub fn new() -> Self {
        StreamHasher { done: Vec::new(), current: blake3::Hasher::new(), current_len: 0, sha: Sha256::new(), size: 0 }
    }

    /// Bytes hashed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends `data` to the hashed content.
    pub fn update(&mut self, mut data: &[u8]) {
        self.sha.update(data);
        self.size += data.len() as u64;
        while !data.is_empty() {
            if self.current_len == CHUNK_SIZE {
                self.done.push(self.current.finalize_non_root());
                let mut next = blake3::Hasher::new();
                next.set_input_offset(self.done.len() as u64 * CHUNK_SIZE);
                self.current = next;
                self.current_len = 0;
            }
            // Bounded by CHUNK_SIZE, so the cast is lossless.
            let room = (CHUNK_SIZE - self.current_len) as usize;
            let (now, rest) = data.split_at(room.min(data.len()));
            self.current.update(now);
            self.current_len += now.len() as u64;
            data = rest;
        }
    }

    /// The hashes of everything fed so far (does not consume or reset the hasher).
    pub fn summary(&self) -> HashSummary {
        let mut chunk_hashes = Vec::with_capacity(self.done.len() + 1);
        chunk_hashes.extend_from_slice(&self.done);
        if self.done.is_empty() {
            // A single (possibly empty) chunk: its hash is the root hash.
            chunk_hashes.push(*self.current.finalize().as_bytes());
        } else {
            chunk_hashes.push(self.current.finalize_non_root());
        }
        let root = match root_from_chunk_hashes(&chunk_hashes) {
            Some(root) => root,
            None => unreachable!("chunk_hashes always has at least one entry"),
        };
        HashSummary { root, sha256: Sha256Digest(self.sha.clone().finalize().into()), size: self.size, chunk_hashes }
    }
}

/// Hashes a whole in-memory buffer (convenience over [`StreamHasher`]).
pub fn summarize(data: &[u8]) -> HashSummary {
    let mut h = StreamHasher::new();
    h.update(data);
    h.summary()
}
