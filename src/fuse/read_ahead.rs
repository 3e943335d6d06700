//! The kernel's read-ahead for a pond mount: [`READ_AHEAD_KIB`] instead of the kernel's default
//! 128 KiB, so that a sequential reader's pages come in FUSE read requests of 1 MiB (FUSE's
//! largest) rather than eight of 128 KiB. Each request costs the daemon a wake-up, a context switch
//! and a reply; reading a 1 GiB file whose packs are in the page cache took 0.55-0.61 s and
//! 0.51-0.60 CPU-s of the daemon instead of 0.71-0.83 s and 0.62-0.70 CPU-s (4 rounds each,
//! alternated). gcsfuse documents the same setting for the same reason.
//!
//! The setting lives in sysfs (`/sys/class/bdi/MAJOR:MINOR/read_ahead_kb` of the mount's device),
//! which only root may write: for other users the kernel's default stays, and nothing fails. The
//! kernel lowers it to the `max_readahead` of the daemon's INIT reply when it processes that reply,
//! so it is written once a request answered after INIT has come back: the stat of the mount's
//! root. The device is taken from mountinfo's line for a FUSE mount on the mountpoint, never from
//! the stat alone: had the session already ended, that stat would name the disk below.

use std::path::{Path, PathBuf};

use super::mountinfo::fuse_mount_at;

/// The read-ahead a pond mount asks for, in KiB: FUSE's largest read request (256 pages).
pub(crate) const READ_AHEAD_KIB: u32 = 1024;

/// Raise the read-ahead of the FUSE mount on `mountpoint` to [`READ_AHEAD_KIB`], on a thread of
/// its own (it waits for the session to answer), logging what happened.
pub(crate) fn raise_when_served(mountpoint: PathBuf) {
    let spawned = std::thread::Builder::new().name("pond-read-ahead".into()).spawn(move || match raise(&mountpoint) {
        Ok(path) => tracing::debug!(%path, kib = READ_AHEAD_KIB, "read-ahead raised"),
        Err(why) => tracing::debug!("read-ahead left at the kernel's default: {why}"),
    });
    if let Err(e) = spawned {
        tracing::debug!("read-ahead left at the kernel's default: no thread ({e})");
    }
}

fn raise(mountpoint: &Path) -> Result<String, String> {
    std::fs::metadata(mountpoint).map_err(|e| format!("stat of {}: {e}", mountpoint.display()))?;
    let mount = fuse_mount_at(mountpoint).ok_or_else(|| format!("no FUSE mount on {}", mountpoint.display()))?;
    let path = bdi_read_ahead_path(&mount.device)?;
    std::fs::write(&path, READ_AHEAD_KIB.to_string()).map_err(|e| format!("writing {path}: {e}"))?;
    Ok(path)
}

/// The sysfs file of a FUSE mount's read-ahead, from its `major:minor` device.
fn bdi_read_ahead_path(device: &str) -> Result<String, String> {
    let (major, minor) = device.split_once(':').ok_or_else(|| format!("device {device:?} is not major:minor"))?;
    let number = |s: &str| s.parse::<u32>().map_err(|_| format!("device {device:?} is not major:minor"));
    Ok(format!("/sys/class/bdi/{}:{}/read_ahead_kb", number(major)?, number(minor)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sysfs_file_is_named_by_the_mounts_device_and_nothing_else() {
        assert_eq!(bdi_read_ahead_path("0:48").unwrap(), "/sys/class/bdi/0:48/read_ahead_kb");
        for bad in ["0", "0:", ":1", "a:b", "0:48/../../x", "0:4 8"] {
            assert!(bdi_read_ahead_path(bad).is_err(), "{bad:?}");
        }
    }
}
