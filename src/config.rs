//! Pond-wide constants and per-pond settings: the inline/large threshold and the chunk size.
//!
//! Everything that decides *where* bytes live is named here so tests can size their data relative to it
//! (seed 000: a test written against `64 * 1024` breaks the day the threshold moves).

/// Content of at most this many bytes is stored inline in the oplog row; larger content goes to
/// `_large_files/`. Inclusive: a file of exactly the threshold is inline (seed 000).
pub const LARGE_FILE_THRESHOLD: u64 = 64 * 1024;

/// Size of one chunk (one parquet row) of a large-file object.
///
/// 64 KiB because: a random 4 KiB read has to decode and hash at most one chunk, and 64 KiB hashes in
/// ~25 µs here, so chunk verification costs about what a FUSE round trip costs; it is a whole BLAKE3
/// subtree (64 × the 1 KiB BLAKE3 chunk), so per-chunk chaining values merge into the standard
/// `b3sum` hash of the file and the object's name authenticates every chunk hash; and a 4 GiB file is
/// 65,536 rows, whose 32-byte hashes (2 MiB) and page index are cheap to load when the object opens.
pub const CHUNK_SIZE: u64 = 64 * 1024;

/// The inline/large boundary in force for a pond or a mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threshold(pub u64);

impl Threshold {
    /// True when content of `size` bytes is stored inline in the oplog.
    pub fn is_inline(self, size: u64) -> bool {
        size <= self.0
    }
}

impl Default for Threshold {
    fn default() -> Self {
        Threshold(LARGE_FILE_THRESHOLD)
    }
}
