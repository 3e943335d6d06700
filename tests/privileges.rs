//! What a change of content takes away, and what a listing hides, compared with the native
//! filesystem under the test's temp directory (ext4 here) on the same sequence: set-ID bits and
//! file capabilities after writes through each open mode, O_TRUNC, truncate(2) and ftruncate(2),
//! by root and by another user; `trusted.*` xattrs listed to root only.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::tree::set_xattr;
use crate::common::{Mounted, TestPond, describe};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A pond mounted with `allow_other` and a native directory beside it, both reachable by uid 65534.
struct Places {
    // Dropped in this order: the mount before the directory holding it.
    mount: Mounted,
    native: PathBuf,
    _pond: TestPond,
}

impl Places {
    fn new() -> Places {
        let pond = TestPond::new();
        std::fs::set_permissions(pond.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mnt = pond.scratch("mnt");
        std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o755)).unwrap();
        let native = pond.scratch("native");
        std::fs::set_permissions(&native, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mount = Mounted::new(&pond.root, &mnt, &["allow_other"]);
        Places { mount, native, _pond: pond }
    }

    fn dirs(&self) -> [(&'static str, &Path); 2] {
        [("native", self.native.as_path()), ("pond", self.mount.mountpoint.as_path())]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Root,
    Nobody,
}

/// Run `program args` as `who`.
fn run_as(who: Who, program: &str, args: &[&str]) -> Output {
    let mut cmd = match who {
        Who::Root => Command::new(program),
        Who::Nobody => {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", program]);
            c
        }
    };
    cmd.args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"))
}

/// The content changes compared, each as a perl one-liner on the path in `$ARGV[0]`.
const CHANGES: &[(&str, &str)] = &[
    ("write through O_WRONLY", "sysopen(F, $ARGV[0], O_WRONLY) or die $!; syswrite(F, 'x') or die $!"),
    ("write through O_RDWR", "sysopen(F, $ARGV[0], O_RDWR) or die $!; syswrite(F, 'x') or die $!"),
    ("open with O_TRUNC", "sysopen(F, $ARGV[0], O_WRONLY | O_TRUNC) or die $!"),
    ("open with O_RDONLY | O_TRUNC", "sysopen(F, $ARGV[0], O_RDONLY | O_TRUNC) or die $!"),
    ("truncate(2)", "truncate($ARGV[0], 0) or die $!"),
    ("ftruncate(2)", "sysopen(F, $ARGV[0], O_WRONLY) or die $!; truncate(F, 0) or die $!"),
];

/// Set-ID combinations, with other-write so uid 65534 may write. 2767 and 6767: set-group-ID
/// without group-execute, where whether the writer is in the file's group decides.
const MODES: &[u32] = &[0o4777, 0o2777, 0o2767, 0o6777, 0o6767, 0o4766];

fn has_xattr(path: &Path, name: &str) -> bool {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings; size 0 asks for the length only.
    unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// A file capability as setcap(8) writes it: version 2, cap_net_raw permitted and effective.
const CAPABILITY: [u8; 20] = [1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// What is left after `change` by `who` on a file of `mode` with a capability: mode and
/// whether the capability survived.
fn after(dir: &Path, mode: u32, change: &str, who: Who) -> (String, bool) {
    let f = dir.join("f");
    let _ = std::fs::remove_file(&f);
    std::fs::write(&f, b"hello").unwrap();
    set_xattr(&f, "security.capability", &CAPABILITY);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    let out = run_as(who, "perl", &["-MFcntl", "-e", change, s(&f)]);
    assert!(out.status.success(), "{change} as {who:?} in {}: {}", dir.display(), describe(&out));
    let mode = std::fs::metadata(&f).unwrap().mode() & 0o7777;
    (format!("{mode:o}"), has_xattr(&f, "security.capability"))
}

/// Set-ID bits used to survive a write through a write-only open (the kernel sends those as
/// direct writes flagged `FUSE_WRITE_KILL_SUIDGID`, which pond ignored) and an open(O_TRUNC)
/// (with `FUSE_ATOMIC_O_TRUNC` the kernel leaves the truncation, and what it clears, to pond);
/// set-group-ID without group-execute survived every change; and a file capability survived a
/// direct write.
#[test]
fn changes_of_content_clear_set_id_bits_and_capabilities_as_on_a_native_filesystem() {
    let places = Places::new();
    let mut differences = Vec::new();
    for &mode in MODES {
        for (name, change) in CHANGES {
            for who in [Who::Root, Who::Nobody] {
                let [(_, native), (_, pond)] = places.dirs();
                let want = after(native, mode, change, who);
                let got = after(pond, mode, change, who);
                if got != want {
                    differences.push(format!(
                        "{mode:o}, {name} as {who:?}: pond gives mode {} capability {}, native {} {}",
                        got.0, got.1, want.0, want.1
                    ));
                }
            }
        }
    }
    assert!(differences.is_empty(), "pond differs from the native filesystem:\n{}", differences.join("\n"));
    // The sequence did reach both sides of every rule.
    let [(_, native), _] = places.dirs();
    assert_eq!(after(native, 0o6777, CHANGES[0].1, Who::Nobody).0, "777");
    assert_eq!(after(native, 0o6777, CHANGES[0].1, Who::Root), ("6777".into(), false));
}

/// A python3 that uid 65534 can run (a user's shims may live in root's home).
fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" }
}

fn listed(who: Who, path: &Path) -> String {
    let out =
        run_as(who, python3(), &["-c", "import os, sys; print(' '.join(sorted(os.listxattr(sys.argv[1]))))", s(path)]);
    assert!(out.status.success(), "listxattr as {who:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The VFS refuses `trusted.*` get and set to callers without CAP_SYS_ADMIN, but passes a FUSE
/// filesystem's list as it is: pond listed `trusted.*` names to everyone.
#[test]
fn trusted_xattrs_are_listed_to_privileged_callers_only() {
    let places = Places::new();
    for (what, dir) in places.dirs() {
        let f = dir.join("f");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        set_xattr(&f, "user.seen", b"1");
        set_xattr(&f, "trusted.hidden", b"1");
        assert_eq!(listed(Who::Root, &f), "trusted.hidden user.seen", "{what}: root sees both");
        assert_eq!(listed(Who::Nobody, &f), "user.seen", "{what}: uid 65534 sees user.* only");
    }
}
