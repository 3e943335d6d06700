//! Shared test helpers: temporary ponds, the `pond` binary, a mount guard that always unmounts,
//! sizes relative to the threshold, and byte comparisons that name the first difference.

#![allow(dead_code)]

pub mod sizes;
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
    assert!(
        out.status.success(),
        "pond {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
        PondFs::open(&self.root, FsOptions { version: Some(version), ..Default::default() }).expect("open pond at version")
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
