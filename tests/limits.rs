//! Resource limits: the daemon's open-file limit, the threads concurrent fsyncs take, and a
//! thread limit met after a quiet spell (nothing accepted may go uncommitted).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use crate::common::{Mounted, TestPond, daemons, describe, pond_bin, wait_for_exit};

fn daemon_pid(pond: &Path) -> i32 {
    let pids = daemons(pond, None);
    assert_eq!(pids.len(), 1, "expected one daemon for {}: {pids:?}", pond.display());
    pids[0]
}

/// A line of `/proc/<pid>/...` starting with `key`, split on whitespace after it.
fn proc_field(pid: i32, file: &str, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|rest| rest.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

fn threads(pid: i32) -> usize {
    proc_field(pid, "status", "Threads:").first().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// A commit opens every object written since the last: 256 open files is a few large files.
#[test]
fn the_daemon_raises_its_open_file_limit_to_the_hard_one() {
    let pond = TestPond::new();
    let mnt = pond.scratch("mnt");
    let mut mount = std::process::Command::new(pond_bin());
    mount.args(["mount", pond.path(), mnt.to_str().unwrap()]);
    // SAFETY: getrlimit and setrlimit are async-signal-safe; nothing else runs before exec.
    unsafe {
        mount.pre_exec(|| {
            let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 256, hard)?;
            Ok(())
        });
    }
    let out = mount.output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let m = Mounted { mountpoint: mnt, pond: pond.root.clone() };
    let limits = proc_field(daemon_pid(&pond.root), "limits", "Max open files");
    assert!(limits.len() >= 2 && limits[0] == limits[1], "soft limit raised to the hard one: {limits:?}");
    m.unmount();
}

#[test]
fn concurrent_fsyncs_do_not_each_take_a_thread() {
    const WRITERS: usize = 300;
    let pond = TestPond::new();
    let m = Mounted::new(&pond.root, &pond.scratch("mnt"), &[]);
    let pid = daemon_pid(&pond.root);
    std::fs::write(m.path("warm"), b"x").unwrap();
    let before = threads(pid);
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(threads(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let barrier = Arc::new(Barrier::new(WRITERS));
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (barrier, path) = (barrier.clone(), m.path(&format!("f{i}")));
            std::thread::spawn(move || {
                let f = std::fs::File::create(&path).unwrap();
                std::io::Write::write_all(&mut &f, b"data").unwrap();
                barrier.wait();
                f.sync_all().unwrap();
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    // Before: one thread per fsync in flight, hundreds at the peak.
    assert!(peak < before + 20, "{WRITERS} concurrent fsyncs took the daemon from {before} threads to {peak}");
    m.unmount();
    assert_eq!(crate::common::pond(&["cat", pond.path(), "f299"]).stdout, b"data");
}

/// The daemon moved into a pids cgroup (v1) whose limit is what it has: no new thread may start.
struct ThreadLimit {
    cgroup: PathBuf,
    pid: i32,
}

impl ThreadLimit {
    fn new(pid: i32) -> ThreadLimit {
        let root = Path::new("/sys/fs/cgroup/pids");
        assert!(
            root.join("cgroup.procs").exists(),
            "this test needs the cgroup v1 pids controller at {} (to limit a process's threads, even root's)",
            root.display()
        );
        let cgroup = root.join(format!("pond-test-{pid}"));
        std::fs::create_dir(&cgroup).unwrap();
        let limit = ThreadLimit { cgroup, pid };
        std::fs::write(limit.cgroup.join("cgroup.procs"), pid.to_string()).unwrap();
        let current = std::fs::read_to_string(limit.cgroup.join("pids.current")).unwrap();
        std::fs::write(limit.cgroup.join("pids.max"), current.trim()).unwrap();
        limit
    }
}

impl Drop for ThreadLimit {
    fn drop(&mut self) {
        let _ = std::fs::write("/sys/fs/cgroup/pids/cgroup.procs", self.pid.to_string());
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// tokio lets an idle blocking thread go after 10 s and panics when it must start one and the OS
/// refuses: the committer died, every later fsync failed and every later write was accepted and
/// never committed.
#[test]
fn a_thread_limit_after_a_quiet_spell_fails_no_commit() {
    let pond = TestPond::new();
    let m = Mounted::new(&pond.root, &pond.scratch("mnt"), &[]);
    let pid = daemon_pid(&pond.root);
    std::fs::File::create(m.path("before")).unwrap().sync_all().unwrap();
    std::thread::sleep(Duration::from_secs(11));
    let limit = ThreadLimit::new(pid);
    for i in 0..3 {
        let f = std::fs::File::create(m.path(&format!("during-{i}"))).unwrap();
        std::io::Write::write_all(&mut &f, b"limited").unwrap();
        f.sync_all().unwrap_or_else(|e| panic!("fsync {i} under a thread limit: {e}"));
    }
    drop(limit);
    m.unmount();
    assert!(wait_for_exit(pid, Duration::from_secs(30)));
    for i in 0..3 {
        let out = crate::common::pond(&["cat", pond.path(), &format!("during-{i}")]);
        assert_eq!(out.stdout, b"limited", "{}", describe(&out));
    }
}
