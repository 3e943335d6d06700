//! Building a mixed directory tree (sizes around the threshold, symlinks, hard links, modes, mtimes,
//! xattrs) and comparing two trees entry by entry, attribute by attribute.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::pattern;
use super::sizes::INTERESTING;

/// What is compared for each path.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub link_target: Option<Vec<u8>>,
    /// Index of the hard-link group (paths sharing an inode), when nlink > 1.
    pub link_group: Option<usize>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub fn set_mtime(path: &Path, secs: i64, nsec: i64) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let times = [libc::timespec { tv_sec: secs, tv_nsec: nsec }, libc::timespec { tv_sec: secs, tv_nsec: nsec }];
    // SAFETY: valid NUL-terminated path and two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(rc, 0, "utimensat {}: {}", path.display(), std::io::Error::last_os_error());
}

pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid pointers and lengths.
    let rc = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(rc, 0, "setxattr {}: {}", path.display(), std::io::Error::last_os_error());
}

pub fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    // SAFETY: buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in names[..n as usize].split(|b| *b == 0).filter(|n| !n.is_empty() && n.starts_with(b"user.")) {
        let cn = CString::new(name).unwrap();
        let mut value = vec![0u8; 65536];
        // SAFETY: buffer of the given length.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        assert!(len >= 0, "getxattr {}: {}", path.display(), std::io::Error::last_os_error());
        value.truncate(len as usize);
        out.push((name.to_vec(), value));
    }
    out.sort();
    out
}

/// A tree with every interesting size, nested directories, symlinks, a hard-link pair, odd modes,
/// fixed mtimes (with nanoseconds) and xattrs.
pub fn make_mixed_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    for (i, (size, _)) in INTERESTING.iter().enumerate() {
        let dir = if i % 2 == 0 { root.to_path_buf() } else { root.join("sub") };
        std::fs::write(dir.join(format!("file-{i}.bin")), pattern(*size, i as u64)).unwrap();
    }
    std::fs::write(root.join("sub/deeper/notes.txt"), b"some text\n").unwrap();
    std::fs::write(root.join("name with spaces & unicode \u{e9}.txt"), b"x").unwrap();
    std::fs::hard_link(root.join("file-2.bin"), root.join("sub/hardlink-to-file-2")).unwrap();
    std::os::unix::fs::symlink("file-0.bin", root.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("sub/link-dangling")).unwrap();
    std::fs::set_permissions(root.join("file-4.bin"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(root.join("sub/file-5.bin"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(root.join("sub/deeper/notes.txt"), std::fs::Permissions::from_mode(0o444)).unwrap();
    set_xattr(&root.join("file-6.bin"), "user.origin", b"mixed tree");
    set_xattr(&root.join("sub"), "user.dir-attr", b"\x00\x01binary");
    // mtimes last (children first, so directory times are not bumped afterwards).
    let mut paths: Vec<_> = walk(root).into_iter().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in paths.iter().enumerate() {
        set_mtime(p, 1_600_000_000 + i as i64 * 1000, 123_456_789);
    }
}

fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        let ft = std::fs::symlink_metadata(&p).unwrap().file_type();
        if ft.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// Every path under `root` (relative) with what is compared; file contents are compared separately.
pub fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    let mut groups: BTreeMap<u64, usize> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut paths = walk(root);
    paths.sort();
    for p in paths {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else {
            "file"
        };
        let link_group = (kind == "file" && m.nlink() > 1).then(|| {
            let n = groups.len();
            *groups.entry(m.ino()).or_insert(n)
        });
        out.insert(
            p.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
            Entry {
                kind,
                mode: m.mode() & 0o7777,
                size: if kind == "dir" { 0 } else { m.size() },
                mtime: (m.mtime(), m.mtime_nsec()),
                link_target: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()),
                link_group,
                xattrs: if ft.is_symlink() { Vec::new() } else { xattrs(&p) },
            },
        );
    }
    out
}

/// Assert two trees are the same: entries, attributes, and every file's bytes.
pub fn assert_same_tree(got: &Path, want: &Path) {
    let (g, w) = (snapshot(got), snapshot(want));
    let gk: Vec<_> = g.keys().collect();
    let wk: Vec<_> = w.keys().collect();
    assert_eq!(gk, wk, "the trees hold different paths");
    for (path, we) in &w {
        assert_eq!(&g[path], we, "attributes of {path} differ (left: {}, right: {})", got.display(), want.display());
        if we.kind == "file" {
            let (a, b) = (std::fs::read(got.join(path)).unwrap(), std::fs::read(want.join(path)).unwrap());
            super::assert_same_bytes(&a, &b, path);
        }
    }
}
