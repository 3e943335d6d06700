//! A pond is its owner's alone: every directory 0700 and every file 0600 whatever the umask, an
//! older pond made private when a writer opens it, and no link followed in the pond's own
//! directories (`_pond/`, its lock, spill directory and log), so whoever can write into a pond
//! cannot make its owner (root, for an fstab mount or `pond gc`) touch anything elsewhere; a log
//! given as `log=FILE` is a regular file of its own too (never a FIFO, a symlink or a hard link).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{Mounted, TestPond, describe, pattern, pond, pond_bin, pond_ok};

/// `pond ARGS` with umask 022, as a user's shell would run it.
fn pond_with_umask_022(args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("umask 022 && exec \"$@\"")
        .arg("sh")
        .arg(pond_bin())
        .args(args)
        .output()
        .expect("run pond")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Every path under `root` whose mode is not 0700 (directories) or 0600 (files), with its mode.
fn not_private(root: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            let want = if meta.is_dir() { 0o700 } else { 0o600 };
            if meta.mode() & 0o7777 != want || meta.file_type().is_symlink() {
                bad.push(format!("{:o} {}", meta.mode() & 0o7777, entry.path().display()));
            }
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    bad.sort();
    bad
}

fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .output()
        .expect("setpriv")
}

fn a_data_file(pond: &Path) -> PathBuf {
    std::fs::read_dir(pond)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .expect("a data file")
}

fn assert_nobody_cannot_read(pond: &Path) {
    for path in [a_data_file(pond), pond.join("_delta_log/00000000000000000000.json")] {
        let out = as_nobody(&["cat", s(&path)]);
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "uid 65534 must not read {}: {}",
            path.display(),
            describe(&out)
        );
    }
}

#[test]
fn a_pond_is_readable_by_its_owner_only_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    // Others may reach the pond's directory; what is inside must stop them.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = tmp.path().join("pond");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = pond_with_umask_022(&["init", s(&root)]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = pond_with_umask_022(&["mount", s(&root), s(&mnt)]);
    assert!(out.status.success(), "{}", describe(&out));
    let m = Mounted { mountpoint: mnt.clone(), pond: root.clone() };
    // Everything pond and the Delta library write: data files (and compacted ones every 8
    // commits), log entries, a checkpoint (at 50 versions) and its hint, a large object and its
    // temp directory, the lock, the spill directory, the mount lock and the daemon's log.
    std::fs::create_dir(m.path("dir")).unwrap();
    std::fs::write(m.path("dir/large"), pattern(200 * 1024, 1)).unwrap();
    for i in 0..55 {
        let f = std::fs::File::create(m.path(&format!("dir/f{i}"))).unwrap();
        std::io::Write::write_all(&mut &f, b"secret").unwrap();
        f.sync_all().unwrap();
    }
    m.unmount();
    assert!(
        std::fs::read_dir(root.join("_delta_log"))
            .unwrap()
            .flatten()
            .any(|e| { e.file_name().to_string_lossy().ends_with(".checkpoint.parquet") })
    );
    assert!(root.join("_pond/mount.log").exists() && root.join("_pond/mounts").exists());
    let root_mode = std::fs::metadata(&root).unwrap().mode() & 0o7777;
    assert_eq!(root_mode, 0o700, "the pond's root");
    assert_eq!(not_private(&root), Vec::<String>::new(), "every directory 0700, every file 0600");
    assert_nobody_cannot_read(&root);
}

#[test]
fn an_older_pond_is_made_private_when_a_writer_opens_it_and_init_tightens_an_empty_directory() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // As an older pond left it: 0755 directories, 0644 files.
    let pond = TestPond::new();
    let root = tmp.path().join("old");
    std::fs::rename(&pond.root, &root).unwrap();
    std::fs::create_dir_all(root.join("_pond/tmp")).unwrap();
    std::fs::write(root.join("_pond/lock"), b"").unwrap();
    let mut stack = vec![root.clone()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::metadata(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(if meta.is_dir() { 0o755 } else { 0o644 }))
            .unwrap();
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        }
    }
    let out = as_nobody(&["cat", s(&a_data_file(&root))]);
    assert!(out.status.success(), "the setup: an older pond is readable by anyone");
    let m = Mounted::new(&root, &tmp.path().join("mnt"), &[]);
    std::fs::write(m.path("f"), b"x").unwrap();
    m.unmount();
    assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o7777, 0o700, "the root, at a read-write mount");
    assert_eq!(std::fs::metadata(root.join("_pond")).unwrap().mode() & 0o7777, 0o700, "_pond/");
    assert_eq!(std::fs::metadata(root.join("_pond/lock")).unwrap().mode() & 0o7777, 0o600, "the lock");
    assert_nobody_cannot_read(&root);

    // `pond init` into an empty directory someone made 0755.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o755)).unwrap();
    pond_ok(&["init", s(&empty)]);
    assert_eq!(std::fs::metadata(&empty).unwrap().mode() & 0o7777, 0o700);
}

/// A pond whose `_pond/` entry `name` is replaced by a link to `target`.
fn pond_with_link(name: &str, target: &Path) -> TestPond {
    let pond = TestPond::new();
    let work = pond.root.join("_pond");
    std::fs::create_dir_all(work.join("tmp")).unwrap();
    let at = pond.root.join(name);
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    if at.is_dir() {
        std::fs::remove_dir_all(&at).unwrap();
    } else if at.exists() {
        std::fs::remove_file(&at).unwrap();
    }
    std::os::unix::fs::symlink(target, &at).unwrap();
    pond
}

/// A directory elsewhere holding one file, and a file path that does not exist yet.
struct Victim {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    file: PathBuf,
    absent: PathBuf,
}

impl Victim {
    fn new() -> Victim {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("precious");
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, b"precious").unwrap();
        let absent = tmp.path().join("absent");
        Victim { _tmp: tmp, dir, file, absent }
    }

    fn assert_untouched(&self, what: &str) {
        assert_eq!(std::fs::read(&self.file).ok().as_deref(), Some(&b"precious"[..]), "{what}: the file elsewhere");
        let names: Vec<_> = std::fs::read_dir(&self.dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file")], "{what}: nothing added or removed elsewhere");
        assert!(!self.absent.exists(), "{what}: nothing created elsewhere");
    }
}

fn assert_refused(out: &Output, what: &str) {
    assert!(!out.status.success(), "{what} must be refused: {}", describe(out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a symlink"), "{what}: {}", describe(out));
}

#[test]
fn links_in_the_ponds_own_directories_are_never_followed() {
    // `pond gc` empties `_pond/tmp`: through a link it emptied the directory it points to.
    let victim = Victim::new();
    let p = pond_with_link("_pond/tmp", &victim.dir);
    assert_refused(&pond(&["gc", p.path()]), "gc with _pond/tmp a link");
    victim.assert_untouched("gc");
    // A mount no longer uses `_pond/tmp` (only gc empties what older ponds left there).
    let m = Mounted::new(&p.root, &p.scratch("mnt"), &[]);
    std::fs::write(m.path("f"), crate::common::pattern(300 * 1024, 2)).unwrap();
    m.unmount();
    victim.assert_untouched("mount");

    // The daemon appended its log through a link.
    let victim = Victim::new();
    let p = pond_with_link("_pond/mount.log", &victim.file);
    assert_refused(&pond(&["mount", p.path(), s(&p.scratch("mnt"))]), "a mount with its log a link");
    victim.assert_untouched("the log");

    // The lock was created (and flocked) through a link, by a mount and by gc.
    let victim = Victim::new();
    let p = pond_with_link("_pond/lock", &victim.absent);
    assert_refused(&pond(&["mount", p.path(), s(&p.scratch("mnt"))]), "a mount with its lock a link");
    assert_refused(&pond(&["gc", p.path()]), "gc with the lock a link");
    victim.assert_untouched("the lock");

    // `_pond/` itself.
    let victim = Victim::new();
    let p = pond_with_link("_pond", &victim.dir);
    assert_refused(&pond(&["mount", p.path(), s(&p.scratch("mnt"))]), "a mount with _pond a link");
    assert_refused(&pond(&["gc", p.path()]), "gc with _pond a link");
    victim.assert_untouched("_pond");

    // A link inside `_pond/tmp` is removed, never entered; so is one for the mount locks'
    // directory, where a mount then goes without its lock (pond umount waits for the kernel only).
    let victim = Victim::new();
    let p = TestPond::new();
    std::fs::create_dir_all(p.root.join("_pond/tmp/sub")).unwrap();
    std::os::unix::fs::symlink(&victim.dir, p.root.join("_pond/tmp/link")).unwrap();
    std::os::unix::fs::symlink(&victim.dir, p.root.join("_pond/tmp/sub/link")).unwrap();
    std::os::unix::fs::symlink(&victim.dir, p.root.join("_pond/mounts")).unwrap();
    pond_ok(&["gc", p.path()]);
    assert_eq!(std::fs::read_dir(p.root.join("_pond/tmp")).unwrap().count(), 0, "gc empties _pond/tmp");
    let m = Mounted::new(&p.root, &p.scratch("mnt"), &[]);
    std::fs::write(m.path("f"), b"x").unwrap();
    m.unmount();
    victim.assert_untouched("links inside _pond");

    // The store's temp directory, emptied at mount and by gc, and its packs directory.
    for link in ["_large_files/.tmp", "_large_files/packs"] {
        let victim = Victim::new();
        let p = pond_with_link(link, &victim.dir);
        assert_refused(&pond(&["mount", p.path(), s(&p.scratch("mnt"))]), &format!("a mount with {link} a link"));
        assert_refused(&pond(&["gc", p.path()]), &format!("gc with {link} a link"));
        victim.assert_untouched(link);
    }
}

/// `pond ARGS`, killed (with the daemons it left for this pond) if it has not exited within
/// `limit`: a test that would hang fails instead.
fn pond_within(args: &[&str], pond_root: &Path, limit: std::time::Duration) -> Output {
    let child = Command::new(pond_bin())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pond");
    crate::common::wait_with_timeout(child, limit).unwrap_or_else(|| {
        for daemon in crate::common::daemons(pond_root, None) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon), nix::sys::signal::SIGKILL);
        }
        panic!("pond {args:?} still running after {limit:?}");
    })
}

#[test]
fn a_log_file_that_is_a_fifo_a_symlink_or_a_hard_link_is_refused_at_once_by_name() {
    // A FIFO blocked the daemon's open forever (the mount never came up, nor failed); a hard link
    // to a file elsewhere was appended to, and a symlink refused only by a lucky ELOOP.
    let victim = Victim::new();
    let p = TestPond::new();
    let logs = p.scratch("logs");
    let fifo = logs.join("fifo.log");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let symlink = logs.join("symlink.log");
    std::os::unix::fs::symlink(&victim.file, &symlink).unwrap();
    let hard = logs.join("hard.log");
    std::fs::hard_link(&victim.file, &hard).unwrap();
    let victim_mode = std::fs::metadata(&victim.file).unwrap().mode();
    let mnt = p.scratch("mnt");
    for (log, expect) in [
        (&fifo, "is not a regular file (a FIFO or a socket)"),
        (&symlink, "is a symlink"),
        (&hard, "has other hard links"),
    ] {
        // Unmounts should a refused log mount after all.
        let _guard = Mounted { mountpoint: mnt.clone(), pond: p.root.clone() };
        let opt = format!("log={}", s(log));
        let out = pond_within(&["mount", p.path(), s(&mnt), "-o", &opt], &p.root, std::time::Duration::from_secs(20));
        let what = format!("log={}", log.file_name().unwrap().to_string_lossy());
        assert!(!out.status.success(), "{what} must be refused: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("log file {} {expect}", s(log))), "{what}: {}", describe(&out));
        assert!(!crate::common::is_mounted(&mnt), "{what}: not mounted");
    }
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO is left as it was");
    assert_eq!(std::fs::metadata(&victim.file).unwrap().mode(), victim_mode, "the linked file's mode untouched");
    victim.assert_untouched("log=");
    // A regular file is the log.
    let ok = logs.join("mount.log");
    let m = Mounted::new(&p.root, &mnt, &[&format!("log={}", s(&ok))]);
    std::fs::write(m.path("f"), b"x").unwrap();
    m.unmount();
    assert_eq!(std::fs::metadata(&ok).unwrap().mode() & 0o7777, 0o600, "the log is private");
    // /dev/null keeps no log (only root makes device nodes, so none is planted).
    let m = Mounted::new(&p.root, &mnt, &["log=/dev/null"]);
    std::fs::write(m.path("g"), b"y").unwrap();
    m.unmount();
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device(), "/dev/null left a device");
    // A replica's mount opens its log= the same way.
    let remote = p.scratch("remote");
    let out = pond_within(&["replicate", p.path(), s(&remote)], &p.root, std::time::Duration::from_secs(60));
    assert!(out.status.success(), "{}", describe(&out));
    let _guard = Mounted { mountpoint: mnt.clone(), pond: p.root.clone() };
    let url = format!("file://{}", s(&remote));
    let opts = format!("log={},cache={}", s(&fifo), s(&p.scratch("cache")));
    let out = pond_within(&["mount", &url, s(&mnt), "-o", &opts], &p.root, std::time::Duration::from_secs(20));
    assert!(!out.status.success(), "a replica mount with log= a FIFO must be refused: {}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a regular file"), "the replica mount names the log: {}", describe(&out));
    assert!(!crate::common::is_mounted(&mnt), "the replica is not mounted");
}
