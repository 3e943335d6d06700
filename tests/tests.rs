//! The one integration test binary (each extra binary is another slow link with deltalake in the tree).

/// Chunk-level storage end to end: what a change stores through a mount and rsync, shared and missing chunks, versions.
mod chunk_paths;
/// Temp ponds, the mount guard, sizes relative to the threshold, trees and byte comparisons.
mod common;
/// Writers, readers, ls -lR, replicate --follow and verify at once on one mount: no stall, no torn read, no lost update.
mod concurrency;
/// The filesystem core without FUSE: write path, threshold, POSIX namespace rules, persistence.
mod core_fs;
/// Orphans and gc, corrupt chunks, bad command-line input, torn checkpoints and the fsync order (strace),
/// an object a killed writer left unsynced made durable when reused.
mod crash;
/// Crash loop: random operations on a mount, SIGKILL at random moments, every fsynced state whole after remount.
mod crash_loop;
/// Python's deltalake reads the table: rows and inline content as written.
mod delta_reader;
/// A pond on a small tmpfs fills up: ENOSPC and nothing else, acknowledged files intact, recovery.
mod full_disk;
/// Real mounts: errno for each refusal, offsets/append/truncate, rename flags, xattrs, ro/version mounts.
mod fuse_posix;
/// Real mounts driven by cp -a, rsync -aH twice, tar, git, save-by-rename; remount keeps everything.
mod fuse_tools;
/// Seeded corruptions of log entries, checkpoints, data files, objects, a remote, mount options and names;
/// parquet that claims too much; directories that are not a tree.
mod hostile_input;
/// The large-file store and HybridWriter: chunking, hashing, dedup, corruption, bounded memory.
mod large_files;
/// Resource limits: the open-file limit (raised; commits within it), threads per fsync, a thread limit after a quiet spell.
mod limits;
/// mount(8)/fstab/systemd helpers, scripts/install.sh, and pond mount's daemon mode under them.
mod mount_helper;
/// noexec, nosuid/suid, nodev/dev, sync and dirsync through real mounts: each takes effect.
mod mount_options;
/// A pond written before chunk-level storage: reads at every version, takes new writes beside its old objects.
mod old_format;
/// A pond is its owner's alone (0700/0600 whatever the umask); no link followed in its own directories.
mod private_pond;
/// Set-ID bits and capabilities after writes and truncations, trusted.* listings: as on ext4.
mod privileges;
/// pond prune: dropped versions go with what only they need; kept ones read everywhere.
mod prune;
/// Prune racing a mount's commits, readers and replicate --follow: nothing kept or in flight goes.
mod prune_race;
/// pond prune URL on a directory and on S3; the remote's lock: a live holder is waited for, a gone one broken.
mod prune_remote;
/// A pruned pond replicates (a run from its checkpoint) and restores; a remote keeps what the pond pruned.
mod prune_replica;
/// Property test: random operations through the mount vs a native directory, with remounts.
mod reftest;
/// A replica mounted straight from S3 or a directory: lazy reads, refresh, tampering, a failing server.
mod remote_mount;
/// Replication: replicate/restore/verify URL over a directory and S3, resume, tampering, --follow; a remote
/// that lies (gaps, sizes, links), the order replicate makes files durable, private copies.
mod replica;
/// A failing remote: replicate through a store that refuses, breaks, truncates and delays uploads.
mod replica_faults;
