//! The one integration test binary (each extra binary is another slow link with deltalake in the tree).

/// Temp ponds, the mount guard, sizes relative to the threshold, byte comparisons.
mod common;
/// The filesystem core without FUSE: write path, threshold, POSIX namespace rules, persistence.
mod core_fs;
/// Replication: replicate/restore/verify URL over a directory and S3, resume, tampering, --follow.
mod replica;
