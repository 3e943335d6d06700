//! Shared test helpers: temporary ponds, the `pond` binary, a mount guard that always unmounts,
//! sizes relative to the threshold, and byte comparisons that name the first difference.

#![allow(dead_code)]

pub mod parquet_craft;
pub mod proxy;
pub mod rng;
pub mod s3;
pub mod sizes;
pub mod soak;
pub mod store;
pub mod tree;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pond::config::Threshold;
use pond::fs::{FsOptions, PondFs};
use pond::oplog::Oplog;

pub fn pond_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pond"))
}

/// Run the pond binary; returns its output (never panics on a non-zero exit).
pub fn pond(args: &[&str]) -> Output {
    Command::new(pond_bin()).args(args).output().expect("run the pond binary")
}

/// Run the pond binary and require success.
pub fn pond_ok(args: &[&str]) -> String {
    let out = pond(args);
    assert!(out.status.success(), "pond {args:?} failed: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's exit status and both outputs, for failure messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run a command and require success; its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", describe(&out));
    out
}

/// The `pond mount` daemons serving `pond` (on mountpoint `at`, if given), zombies excluded.
pub fn daemons(pond: &Path, at: Option<&Path>) -> Vec<i32> {
    let want = pond.to_str().expect("utf-8 path");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let is_pond = args.first().is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == "pond"));
        let at_dir = at.is_none_or(|d| args.iter().any(|a| Some(a.as_str()) == d.to_str()));
        if is_pond
            && args.get(1).is_some_and(|a| a == "mount")
            && args.iter().any(|a| a == want)
            && at_dir
            && alive(pid)
        {
            pids.push(pid);
        }
    }
    pids
}

/// Running (a zombie, waiting for a parent to reap it, has exited).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
    }
}

/// Wait up to `limit` for `pid` to exit; false if it is still running.
pub fn wait_for_exit(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A temporary directory holding a fresh pond at `root`.
pub struct TestPond {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl TestPond {
    pub fn new() -> TestPond {
        Self::with_threshold(Threshold::default())
    }

    pub fn with_threshold(threshold: Threshold) -> TestPond {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("pond");
        runtime().block_on(Oplog::create(&root, threshold)).expect("create pond");
        TestPond { dir, root }
    }

    pub fn open(&self) -> PondFs {
        PondFs::open(&self.root, FsOptions::default()).expect("open pond")
    }

    pub fn open_at(&self, version: u64) -> PondFs {
        PondFs::open(&self.root, FsOptions { version: Some(version), ..Default::default() })
            .expect("open pond at version")
    }

    pub fn path(&self) -> &str {
        self.root.to_str().expect("utf-8 temp path")
    }

    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("scratch dir");
        p
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Fail loudly (never skip) where FUSE is missing.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "this test needs FUSE: /dev/fuse is missing (run scripts/test.sh, which installs fuse3, on a machine with FUSE)"
    );
}

pub fn is_mounted(mountpoint: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(mountpoint) else { return false };
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = canon.to_string_lossy().replace(' ', "\\040");
    text.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// A live mount of a pond; unmounts in Drop on every path (panics included) and never leaves a
/// daemon behind.
pub struct Mounted {
    pub mountpoint: PathBuf,
    pub pond: PathBuf,
}

impl Mounted {
    pub fn new(pond: &Path, mountpoint: &Path, options: &[&str]) -> Mounted {
        require_fuse();
        std::fs::create_dir_all(mountpoint).expect("mountpoint");
        let mut args = vec!["mount", pond.to_str().unwrap(), mountpoint.to_str().unwrap()];
        let joined = options.join(",");
        if !options.is_empty() {
            args.push("-o");
            args.push(&joined);
        }
        pond_ok(&args);
        assert!(is_mounted(mountpoint), "pond mount returned but {} is not mounted", mountpoint.display());
        Mounted { mountpoint: mountpoint.to_path_buf(), pond: pond.to_path_buf() }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// Unmount through `pond umount` (waits for the final commit).
    pub fn unmount(self) {
        let out = pond(&["umount", self.mountpoint.to_str().unwrap()]);
        assert!(out.status.success(), "pond umount failed: {}", String::from_utf8_lossy(&out.stderr));
        // Drop runs too and finds nothing left to do.
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !is_mounted(&self.mountpoint) {
            return;
        }
        let _ = pond(&["umount", self.mountpoint.to_str().unwrap()]);
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_mounted(&self.mountpoint) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Compare bytes; on mismatch name the first differing offset with a little context, never a dump.
pub fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let lo = i.saturating_sub(8);
        panic!(
            "{what}: first difference at byte {i}: got {:02x?}, want {:02x?} (bytes {lo}..)",
            &got[lo..(i + 8).min(got.len())],
            &want[lo..(i + 8).min(want.len())]
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: same first {} bytes but length differs", got.len().min(want.len()));
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The caller the library-level tests act as.
pub const ME: pond::fs::Caller = pond::fs::Caller { uid: 1000, gid: 1000 };

/// Create `name` in `parent` holding `data`, written in FUSE-sized pieces, and release it.
pub fn write_file(fs: &PondFs, parent: u64, name: &str, data: &[u8]) -> u64 {
    let (attr, fh) = fs.create(parent, name.as_bytes(), 0o644, libc::O_WRONLY | libc::O_CREAT, ME).expect("create");
    for (i, piece) in data.chunks(128 * 1024).enumerate() {
        fs.write(fh, (i * 128 * 1024) as u64, piece).expect("write");
    }
    fs.flush(fh).expect("flush");
    fs.release(fh).expect("release");
    attr.ino
}

/// The whole content of `ino`.
pub fn read_file(fs: &PondFs, ino: u64) -> Vec<u8> {
    let fh = fs.open_file(ino, libc::O_RDONLY).expect("open");
    let mut out = Vec::new();
    loop {
        let buf = fs.read(fh, out.len() as u64, 128 * 1024).expect("read");
        if buf.is_empty() {
            break;
        }
        out.extend_from_slice(&buf);
    }
    fs.release(fh).expect("release");
    out
}

/// The latest committed version of the pond at `root`.
pub fn latest_version(root: &Path) -> u64 {
    runtime().block_on(Oplog::open(root, None)).expect("open oplog").version()
}

/// Everything a user can see of one inode (atime aside: reading may move it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub attr_without_atime: pond::fs::Attr,
    pub symlink: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub content: Option<Vec<u8>>,
}

/// Every path of the tree with what it shows, walked from the root.
pub fn tree_snapshot(fs: &PondFs) -> std::collections::BTreeMap<String, Seen> {
    use pond::fs::NodeKind;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![(String::new(), pond::oplog::ROOT_INO)];
    while let Some((path, ino)) = stack.pop() {
        let mut attr = fs.getattr(ino).expect("getattr");
        attr.atime_ns = 0;
        let names = fs.listxattr(ino).expect("listxattr");
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = names
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| (n.to_vec(), fs.getxattr(ino, n).expect("getxattr")))
            .collect();
        xattrs.sort();
        let symlink = (attr.kind == NodeKind::Symlink).then(|| fs.readlink(ino).expect("readlink"));
        let content = (attr.kind == NodeKind::File).then(|| read_file(fs, ino));
        if attr.kind == NodeKind::Dir {
            let fh = fs.opendir(ino).expect("opendir");
            for (entry, _) in fs.readdirplus(fh, 2).expect("readdir") {
                stack.push((format!("{path}/{}", String::from_utf8_lossy(&entry.name)), entry.ino));
            }
            fs.releasedir(fh).expect("releasedir");
        }
        out.insert(
            if path.is_empty() { "/".into() } else { path },
            Seen { attr_without_atime: attr, symlink, xattrs, content },
        );
    }
    out
}

/// Compare two snapshots path by path, naming the first difference (never dumping content).
pub fn assert_same_tree(
    got: &std::collections::BTreeMap<String, Seen>,
    want: &std::collections::BTreeMap<String, Seen>,
    what: &str,
) {
    let got_paths: Vec<_> = got.keys().collect();
    let want_paths: Vec<_> = want.keys().collect();
    assert_eq!(got_paths, want_paths, "{what}: the same paths");
    for (path, w) in want {
        let g = &got[path];
        if let (Some(gc), Some(wc)) = (&g.content, &w.content) {
            assert_same_bytes(gc, wc, &format!("{what}: content of {path}"));
        }
        assert_eq!(g.attr_without_atime, w.attr_without_atime, "{what}: attributes of {path}");
        assert_eq!(g.symlink, w.symlink, "{what}: symlink target of {path}");
        assert_eq!(g.xattrs, w.xattrs, "{what}: xattrs of {path}");
    }
}

/// `close(2)` with its result: a FUSE flush error surfaces here, where dropping a `File` hides it.
pub fn close(f: std::fs::File) -> std::io::Result<()> {
    // SAFETY: the fd is taken out of the `File`, which no longer owns it, and closed once.
    if unsafe { libc::close(std::os::fd::IntoRawFd::into_raw_fd(f)) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A child process that is killed (and reaped) on every path out of the test.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run `script` with `args` under the Python venv with deltalake (`POND_PY_VENV`, made by
/// scripts/test.sh). The script's last line is followed by `os._exit(0)`: deltalake's runtime
/// threads may abort a normal interpreter exit ("terminate called without an active exception",
/// delta-io/delta-rs#2184), which would fail a test whose reading all went well. A script that
/// fails still exits non-zero (its exception ends it before).
pub fn python_deltalake(script: &str, args: &[&std::ffi::OsStr]) -> Output {
    let venv = std::env::var("POND_PY_VENV").unwrap_or_else(|_| {
        panic!(
            "POND_PY_VENV is not set: run the tests through scripts/test.sh, which makes a Python venv with deltalake"
        )
    });
    let script = format!("{script}\nimport os, sys\nsys.stdout.flush()\nos._exit(0)\n");
    Command::new(Path::new(&venv).join("bin/python")).arg("-c").arg(script).args(args).output().expect("run python")
}

/// `pond cat ROOT PATH --version VERSION`.
pub fn cat_at(root: &Path, path: &str, version: u64) -> Output {
    pond(&["cat", root.to_str().expect("utf-8 path"), path, "--version", &version.to_string()])
}

/// One session that writes `name` (created, or truncated and rewritten) with `data`; returns the
/// version it committed once it shuts down.
pub fn write_version(p: &TestPond, name: &str, data: &[u8]) -> u64 {
    let fs = p.open();
    match fs.lookup(pond::oplog::ROOT_INO, name.as_bytes()) {
        Ok(attr) => {
            let fh = fs.open_file(attr.ino, libc::O_WRONLY | libc::O_TRUNC).expect("open");
            for (i, piece) in data.chunks(128 * 1024).enumerate() {
                fs.write(fh, (i * 128 * 1024) as u64, piece).expect("write");
            }
            fs.release(fh).expect("release");
        }
        Err(_) => {
            write_file(&fs, pond::oplog::ROOT_INO, name, data);
        }
    }
    fs.shutdown().expect("shutdown");
    latest_version(&p.root)
}

/// Waits for `child` (its output piped) for `limit` at most: its output, or `None` after killing it.
pub fn wait_with_timeout(child: std::process::Child, limit: Duration) -> Option<std::process::Output> {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Some(out.expect("wait for a child process")),
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
            None
        }
    }
}
