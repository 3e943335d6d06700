//! Conversions between the core's attribute types and fuser's: [`Attr`] → [`FileAttr`],
//! [`NodeKind`] ↔ [`FileType`] / `S_IFMT` bits, nanosecond timestamps ↔ [`SystemTime`], and device
//! numbers between `dev_t` (what the core stores, as `stat` shows it) and FUSE's 32-bit encoding.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};

use crate::fs::{Attr, NodeKind, TimeSet};

/// `st_blksize`: the preferred I/O size reported by `stat`. 1 MiB, the largest request FUSE passes
/// (256 pages), as NFS reports its `wsize`: every request is a round trip through the kernel, and
/// tools size their buffers by it (`cp` writes `max(128 KiB, st_blksize)` at a time: 1 GiB took
/// 0.84-0.96 s instead of 1.04-1.11 s, 3 alternated runs). glibc's stdio only takes it when it is
/// below 8 KiB, so buffered streams do not grow.
pub const BLOCK_SIZE: u32 = 1 << 20;

pub fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
    }
}

/// The node kind `mknod` asks for, from the `S_IFMT` bits of its mode (0 means a regular file, as in
/// mknod(2)). `None` for directories, symlinks and unknown types.
pub fn mknod_kind(mode: u32) -> Option<NodeKind> {
    match mode & libc::S_IFMT {
        0 | libc::S_IFREG => Some(NodeKind::File),
        libc::S_IFIFO => Some(NodeKind::Fifo),
        libc::S_IFSOCK => Some(NodeKind::Socket),
        libc::S_IFCHR => Some(NodeKind::CharDevice),
        libc::S_IFBLK => Some(NodeKind::BlockDevice),
        _ => None,
    }
}

/// A timestamp in nanoseconds since the epoch (negative: before it).
pub fn system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// A utimens time from setattr.
///
/// fuser 0.18.0 turns the kernel's normalized `(secs, nsec)` pair (`nsec` in `0..1e9`, added to
/// `secs`) into `EPOCH - (|secs| s + nsec ns)` when `secs` is negative, i.e. it subtracts the
/// nanoseconds it should add (its `time::system_time_from_time` has a TODO about it). This undoes
/// that to recover the pair: a pre-epoch time with a fraction (`touch -d '1969-12-31 23:59:59.5'`)
/// then lands where the caller asked. Re-check on a fuser upgrade (see the test below).
pub fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => {
                let d = e.duration();
                let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                secs.saturating_mul(-1_000_000_000).saturating_add(i64::from(d.subsec_nanos()))
            }
        }),
    }
}

/// `dev_t` (glibc's encoding, as `st_rdev` shows it) → FUSE's 32-bit `rdev` (the kernel's
/// `new_encode_dev`: 12-bit major, 20-bit minor).
pub fn fuse_rdev(dev: u64) -> u32 {
    let (major, minor) = (libc::major(dev) as u64, libc::minor(dev) as u64);
    ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & 0xf_ff00) << 12)) as u32
}

/// FUSE's 32-bit `rdev` (from mknod) → `dev_t`.
pub fn dev_t(rdev: u32) -> u64 {
    let rdev = rdev as u64;
    let major = (rdev & 0xf_ff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xf_ff00);
    libc::makedev(major as u32, minor as u32)
}

/// The attributes of an entry that names nothing: inode 0 tells the kernel to cache the name as
/// missing for the entry's TTL.
pub fn absent() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

pub fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks(),
        atime: system_time(a.atime_ns),
        mtime: system_time(a.mtime_ns),
        ctime: system_time(a.ctime_ns),
        crtime: system_time(a.ctime_ns),
        kind: file_type(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: fuse_rdev(a.rdev),
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_on_both_sides_of_the_epoch() {
        for ns in [0, 1, 1_700_000_000_123_456_789, -1, -1_500_000_000, -86_400_000_000_000] {
            let t = system_time(ns);
            let back = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => d.as_nanos() as i64,
                Err(e) => -(e.duration().as_nanos() as i64),
            };
            assert_eq!(back, ns);
        }
    }

    /// What fuser 0.18.0 hands over for the kernel's `(secs, nsec)`; see [`time_set`].
    fn fuser_0_18_setattr_time(secs: i64, nsec: u32) -> SystemTime {
        if secs >= 0 {
            UNIX_EPOCH + Duration::new(secs as u64, nsec)
        } else {
            UNIX_EPOCH - Duration::new((-secs) as u64, nsec)
        }
    }

    #[test]
    fn setattr_times_land_where_the_kernel_said() {
        for (secs, nsec, ns) in [
            (1_700_000_000, 5, 1_700_000_000_000_000_005),
            (0, 0, 0),
            (-2, 500_000_000, -1_500_000_000),
            (-1, 0, -1_000_000_000),
        ] {
            let t = TimeOrNow::SpecificTime(fuser_0_18_setattr_time(secs, nsec));
            assert_eq!(time_set(t), TimeSet::At(ns), "({secs}, {nsec})");
        }
        assert_eq!(time_set(TimeOrNow::Now), TimeSet::Now);
    }

    #[test]
    fn device_numbers_survive_the_fuse_encoding() {
        for (major, minor) in [(0, 0), (1, 3), (8, 17), (259, 65_537), (4095, 0xf_ffff)] {
            let dev = libc::makedev(major, minor);
            let back = dev_t(fuse_rdev(dev));
            assert_eq!((libc::major(back), libc::minor(back)), (major, minor));
        }
        // Small numbers encode the same either way (what `mknod` passes for `/dev/null`).
        assert_eq!(fuse_rdev(libc::makedev(1, 3)), (1 << 8) | 3);
    }

    #[test]
    fn mknod_modes() {
        assert_eq!(mknod_kind(libc::S_IFIFO | 0o644), Some(NodeKind::Fifo));
        assert_eq!(mknod_kind(0o644), Some(NodeKind::File));
        assert_eq!(mknod_kind(libc::S_IFDIR | 0o755), None);
    }
}
