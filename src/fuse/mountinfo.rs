//! What the kernel shows of FUSE mounts (`/proc/self/mountinfo`): whether a directory has a FUSE
//! mount on it, its source (for a pond, the pond's path) and its device, which names the mount's
//! backing device info in sysfs ([`super::read_ahead`]).

use std::path::Path;

/// A FUSE mount the kernel shows on a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuseMount {
    /// The mount's source (`fsname`).
    pub source: String,
    /// The superblock's device, `major:minor` as mountinfo shows it.
    pub device: String,
}

/// The FUSE mount on `mountpoint`, the topmost when several are stacked there.
pub fn fuse_mount_at(mountpoint: &Path) -> Option<FuseMount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    fuse_mount_in(&text, mountpoint.to_str()?)
}

/// [`fuse_mount_at`] over mountinfo's text (later lines are mounts made later, so on top).
fn fuse_mount_in(mountinfo: &str, mountpoint: &str) -> Option<FuseMount> {
    let mut found = None;
    for line in mountinfo.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source superopts
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else { continue };
        if fields.get(4).map(|m| unescape(m)).as_deref() == Some(mountpoint)
            && fields.get(sep + 1).is_some_and(|t| t.starts_with("fuse"))
            && let (Some(device), Some(source)) = (fields.get(2), fields.get(sep + 2))
        {
            found = Some(FuseMount { source: unescape(source), device: device.to_string() });
        }
    }
    found
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
50 22 0:45 / /mnt/my\\040pond rw,nosuid,nodev shared:30 - fuse.pond /srv/my\\040pond rw,user_id=0
51 22 0:46 / /mnt/other rw - fuseblk /dev/sdb1 rw
52 22 0:47 / /mnt/plain rw - fuse sshfs#host: rw
53 50 0:48 / /mnt/my\\040pond rw - fuse.pond /srv/second rw
";

    #[test]
    fn the_topmost_fuse_mount_on_a_directory_is_found_with_its_device_and_escaped_names() {
        let top = fuse_mount_in(MOUNTINFO, "/mnt/my pond").unwrap();
        assert_eq!(top, FuseMount { source: "/srv/second".into(), device: "0:48".into() });
        assert_eq!(fuse_mount_in(MOUNTINFO, "/mnt/plain").unwrap().device, "0:47");
    }

    #[test]
    fn only_fuse_types_count() {
        assert_eq!(fuse_mount_in(MOUNTINFO, "/"), None);
        assert_eq!(fuse_mount_in(MOUNTINFO, "/mnt/other").unwrap().source, "/dev/sdb1");
        assert_eq!(fuse_mount_in(MOUNTINFO, "/mnt/missing"), None);
    }
}
