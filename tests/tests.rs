//! The one integration test binary (each extra binary is another slow link with deltalake in the tree).

/// Temp ponds, the mount guard, sizes relative to the threshold, byte comparisons.
mod common;
/// The filesystem core without FUSE: write path, threshold, POSIX namespace rules, persistence.
mod core_fs;
/// mount(8)/fstab/systemd helpers, scripts/install.sh, and pond mount's daemon mode under them.
mod mount_helper;
