//! Real mounts, POSIX behaviour through the kernel: errno for each refusal, read-your-writes,
//! O_APPEND, truncation, rename flags, xattrs, statfs, read-only and old-version mounts, one writer.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};

use crate::common::sizes::{C, T};
use crate::common::tree::{set_xattr, xattrs};
use crate::common::{Mounted, TestPond, assert_same_bytes, pattern, pond_ok};

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error").raw_os_error().expect("an OS error")
}

#[test]
fn refusals_carry_posix_errnos() {
    let pond = TestPond::new();
    let m = Mounted::new(&pond.root, &pond.scratch("mnt"), &[]);
    std::fs::create_dir(m.path("d")).unwrap();
    std::fs::write(m.path("d/f"), b"x").unwrap();
    assert_eq!(errno(std::fs::create_dir(m.path("d"))), libc::EEXIST);
    assert_eq!(errno(std::fs::remove_dir(m.path("d"))), libc::ENOTEMPTY);
    assert_eq!(errno(std::fs::read(m.path("missing"))), libc::ENOENT);
    assert_eq!(errno(std::fs::remove_file(m.path("d"))), libc::EISDIR);
    assert_eq!(errno(std::fs::read_dir(m.path("d/f"))), libc::ENOTDIR);
    assert_eq!(errno(std::fs::write(m.path(&"x".repeat(256)), b"")), libc::ENAMETOOLONG);
    assert_eq!(errno(std::fs::rename(m.path("d"), m.path("d/sub"))), libc::EINVAL);
    assert_eq!(errno(OpenOptions::new().write(true).create_new(true).open(m.path("d/f"))), libc::EEXIST);
    assert_eq!(errno(std::fs::hard_link(m.path("d"), m.path("dl"))), libc::EPERM);
}

#[test]
fn writes_at_offsets_append_and_truncate_match_a_reference_file() {
    let pond = TestPond::new();
    let m = Mounted::new(&pond.root, &pond.scratch("mnt"), &[]);
    let reference = pond.dir.path().join("reference");
    for path in [m.path("f"), reference.clone()] {
        std::fs::write(&path, pattern(3 * C + 11, 1)).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        f.write_all_at(&pattern(5000, 2), (T - 100) as u64).unwrap(); // across the threshold
        f.write_all_at(b"sparse", (5 * C) as u64).unwrap(); // hole
        f.set_len((4 * C + 3) as u64).unwrap();
        drop(f);
        let mut a = OpenOptions::new().append(true).open(&path).unwrap();
        a.write_all(&pattern(C, 3)).unwrap();
    }
    let got = std::fs::read(m.path("f")).unwrap();
    assert_same_bytes(&got, &std::fs::read(&reference).unwrap(), "through the mount");
    m.unmount();
    let m = Mounted::new(&pond.root, &pond.scratch("mnt"), &[]);
    assert_same_bytes(&std::fs::read(m.path("f")).unwrap(), &std::fs::read(&reference).unwrap(), "after remount");
}

#[test]
fn an_open_file_reads_its_own_writes_and_survives_unlink() {
    let pond = TestPond::new();
    let m = Mounted::new(&pond.root, &pond.scratch("mnt"), &[]);
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.path("f")).unwrap();
    let data = pattern(T * 2, 4);
    f.write_all(&data).unwrap();
    std::fs::remove_file(m.path("f")).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    f.read_to_end(&mut back).unwrap();
    assert_same_bytes(&back, &data, "read back after unlink");
    drop(f);
    assert!(!m.path("f").exists());
}

#[test]
fn rename_noreplace_and_exchange_work_through_the_kernel() {
    let pond = TestPond::new();
    let m = Mounted::new(&pond.root, &pond.scratch("mnt"), &[]);
    std::fs::write(m.path("a"), b"A").unwrap();
    std::fs::write(m.path("b"), b"B").unwrap();
    let c = |p: std::path::PathBuf| std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let (a, b) = (c(m.path("a")), c(m.path("b")));
    // SAFETY: valid NUL-terminated paths.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_NOREPLACE) };
    assert_eq!((rc, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EEXIST)));
    // SAFETY: as above.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(std::fs::read(m.path("a")).unwrap(), b"B");
    assert_eq!(std::fs::read(m.path("b")).unwrap(), b"A");
}

#[test]
fn xattrs_modes_and_times_persist_across_remount() {
    let pond = TestPond::new();
    let mnt = pond.scratch("mnt");
    let m = Mounted::new(&pond.root, &mnt, &[]);
    std::fs::write(m.path("f"), b"x").unwrap();
    set_xattr(&m.path("f"), "user.color", b"blue");
    std::fs::set_permissions(m.path("f"), std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    crate::common::tree::set_mtime(&m.path("f"), 1_500_000_000, 42);
    let ino = std::fs::metadata(m.path("f")).unwrap().ino();
    m.unmount();
    let m = Mounted::new(&pond.root, &mnt, &[]);
    let md = std::fs::metadata(m.path("f")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.mtime(), md.mtime_nsec(), md.ino()), (0o640, 1_500_000_000, 42, ino));
    assert_eq!(xattrs(&m.path("f")), vec![(b"user.color".to_vec(), b"blue".to_vec())]);
}

#[test]
fn statfs_reports_the_underlying_disk() {
    let pond = TestPond::new();
    let m = Mounted::new(&pond.root, &pond.scratch("mnt"), &[]);
    let df = std::process::Command::new("df").arg("--output=size,avail").arg(&m.mountpoint).output().unwrap();
    let text = String::from_utf8_lossy(&df.stdout);
    let numbers: Vec<u64> = text.lines().nth(1).unwrap().split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert!(numbers[0] > 0 && numbers[1] > 0, "df shows real numbers: {text}");
}

#[test]
fn one_read_write_mount_at_a_time_but_readers_keep_working() {
    let pond = TestPond::new();
    let m = Mounted::new(&pond.root, &pond.scratch("mnt"), &[]);
    std::fs::write(m.path("f"), b"hello").unwrap();
    let second = crate::common::pond(&["mount", pond.path(), pond.scratch("mnt2").to_str().unwrap()]);
    assert!(!second.status.success(), "a second read-write mount must fail");
    let msg = String::from_utf8_lossy(&second.stderr);
    assert!(msg.contains("already mounted read-write"), "clear message: {msg}");
    // ls/cat/log/verify and a read-only mount work meanwhile (they see committed versions).
    let fh = std::fs::File::open(m.path("f")).unwrap();
    fh.sync_all().unwrap();
    assert_eq!(pond_ok(&["cat", pond.path(), "f"]), "hello");
    assert!(pond_ok(&["ls", pond.path()]).contains(" f"));
    assert!(pond_ok(&["verify", pond.path()]).starts_with("clean"));
    let ro = Mounted::new(&pond.root, &pond.scratch("mnt-ro"), &["ro"]);
    assert_eq!(std::fs::read(ro.path("f")).unwrap(), b"hello");
    assert_eq!(errno(std::fs::write(ro.path("g"), b"")), libc::EROFS);
}

#[test]
fn a_version_mount_shows_the_old_tree_read_only() {
    let pond = TestPond::new();
    let m = Mounted::new(&pond.root, &pond.scratch("mnt"), &[]);
    std::fs::write(m.path("f"), b"old").unwrap();
    std::fs::File::open(m.path("f")).unwrap().sync_all().unwrap();
    let log = pond_ok(&["log", pond.path()]);
    let version = log.lines().last().unwrap().split_whitespace().next().unwrap().to_string();
    std::fs::write(m.path("f"), b"new").unwrap();
    m.unmount();
    let old = Mounted::new(&pond.root, &pond.scratch("mnt-old"), &[&format!("version={version}")]);
    assert_eq!(std::fs::read(old.path("f")).unwrap(), b"old");
    assert_eq!(errno(std::fs::write(old.path("f"), b"x")), libc::EROFS);
}
