//! Sizes that matter, written relative to the threshold and the chunk size (seed 000): each says
//! which storage path it exercises.

use pond::config::{CHUNK_SIZE, LARGE_FILE_THRESHOLD};

pub const T: usize = LARGE_FILE_THRESHOLD as usize;
pub const C: usize = CHUNK_SIZE as usize;

/// (size, what it exercises)
pub const INTERESTING: &[(usize, &str)] = &[
    (0, "empty file: inline"),
    (1, "one byte: inline"),
    (T / 64, "small: inline"),
    (T - 1, "just below the threshold: inline"),
    (T, "exactly the threshold: inline (inclusive)"),
    (T + 1, "just above the threshold: large object, two chunks"),
    (2 * C, "two full chunks"),
    (3 * C + 7, "chunks plus a short last chunk"),
];
