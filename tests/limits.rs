//! Resource limits: the daemon's open-file limit (raised, and a commit with more files to make
//! durable than it allows open), the threads concurrent fsyncs take, and a thread limit met after
//! a quiet spell (nothing accepted may go uncommitted).

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

/// A pids cgroup (v1): the daemon moved into it with a limit of what it has (no new thread may
/// start), or an empty one a child process joins itself.
struct ThreadLimit {
    cgroup: PathBuf,
    pid: Option<i32>,
}

impl ThreadLimit {
    fn root() -> &'static Path {
        let root = Path::new("/sys/fs/cgroup/pids");
        assert!(
            root.join("cgroup.procs").exists(),
            "this test needs the cgroup v1 pids controller at {} (to limit a process's threads, even root's)",
            root.display()
        );
        root
    }

    fn new(pid: i32) -> ThreadLimit {
        let mut limit = ThreadLimit::empty(&pid.to_string());
        limit.pid = Some(pid);
        std::fs::write(limit.cgroup.join("cgroup.procs"), pid.to_string()).unwrap();
        let current = std::fs::read_to_string(limit.cgroup.join("pids.current")).unwrap();
        std::fs::write(limit.cgroup.join("pids.max"), current.trim()).unwrap();
        limit
    }

    fn empty(name: &str) -> ThreadLimit {
        let cgroup = ThreadLimit::root().join(format!("pond-test-{name}"));
        std::fs::create_dir(&cgroup).unwrap();
        ThreadLimit { cgroup, pid: None }
    }
}

impl Drop for ThreadLimit {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = std::fs::write(ThreadLimit::root().join("cgroup.procs"), pid.to_string());
        }
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

/// `pond mount POND MNT` with an open-file limit of `limit`, soft and hard (raising the soft
/// limit to the hard one gains nothing).
fn mount_with_nofile(pond: &TestPond, mnt: &Path, limit: u64) -> Mounted {
    let mut mount = std::process::Command::new(pond_bin());
    mount.args(["mount", pond.path(), mnt.to_str().unwrap()]);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs before exec.
    unsafe {
        mount.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, limit)?;
            Ok(())
        });
    }
    let out = mount.output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    Mounted { mountpoint: mnt.to_path_buf(), pond: pond.root.clone() }
}

/// A commit makes every object and pack stored since the last one durable. It opened them all
/// before fsyncing any: past the open-file limit each attempt failed with EMFILE, and the retries
/// (with still more files pending) failed forever.
#[test]
fn a_commit_with_more_files_pending_than_the_open_file_limit_allows_makes_them_durable_in_batches() {
    use std::os::unix::fs::FileExt;
    const LIMIT: u64 = 160;
    // Each poke below closes the pack the file's oldest stored chunk is in, and hands it to the
    // store (held in memory, written and made durable by the next commit): more of them pending
    // than the daemon may have open.
    const POKES: usize = 2 * LIMIT as usize;
    const C: usize = crate::common::sizes::C;
    let pond = TestPond::new();
    let mnt = pond.scratch("mnt");
    let m = mount_with_nofile(&pond, &mnt, LIMIT);
    // Write-only: direct I/O, each write reaches the daemon as it is made. Committed empty first,
    // so that the writes wake no commit until the fsync at the end.
    let f = std::fs::OpenOptions::new().write(true).create_new(true).open(m.path("big")).unwrap();
    f.sync_all().unwrap();
    // Seventeen chunks: one past what a draft keeps in memory, so the oldest is stored in a pack.
    let mut want = crate::common::pattern(17 * C, 5);
    f.write_all_at(&want, 0).unwrap();
    for k in 0..POKES {
        // The chunk stored last is written again: its pack closes, the next chunk starts another.
        let at = (k % 16) * C + k / 16;
        let byte = [(k % 251) as u8 ^ 0x5a];
        f.write_all_at(&byte, at as u64).unwrap();
        want[at] = byte[0];
    }
    let packs = || std::fs::read_dir(pond.root.join("_large_files/packs")).unwrap().count();
    let before = packs();
    // fsync commits: it must not fail (EMFILE, as EIO) nor hang.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let synced = f.sync_all();
        // Closed before the unmount below may run (an open file keeps the mount busy).
        drop(f);
        let _ = tx.send(synced);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(synced) => synced.unwrap_or_else(|e| panic!("fsync with {POKES} packs pending: {e}")),
        Err(_) => panic!("fsync with {POKES} packs pending still waiting after 60 s"),
    }
    let written = packs() - before;
    assert!(written > LIMIT as usize, "the commit wrote {written} packs: more than {LIMIT} were meant to be pending");
    m.unmount();
    let out = crate::common::pond(&["cat", pond.path(), "big"]);
    assert!(out.status.success(), "{}", describe(&out));
    crate::common::assert_same_bytes(&out.stdout, &want, "the file after its commit");
}

/// The child half of [`a_thread_limit_met_while_opening_refuses_the_open_or_commits`]: joins the
/// cgroup it is given, allows itself `POND_LIMIT_EXTRA` more threads than it has, opens the pond
/// read-write and writes, fsyncs and releases a file, printing `OUTCOME <what happened>`.
#[test]
#[ignore = "run in a child process by a_thread_limit_met_while_opening_refuses_the_open_or_commits"]
fn open_under_a_thread_limit_child() {
    use pond::fs::{FsOptions, PondFs};
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k}: set by the parent test"));
    let (root, cgroup) = (PathBuf::from(var("POND_LIMIT_POND")), PathBuf::from(var("POND_LIMIT_CGROUP")));
    let extra: u64 = var("POND_LIMIT_EXTRA").parse().unwrap();
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string()).unwrap();
    let current: u64 = std::fs::read_to_string(cgroup.join("pids.current")).unwrap().trim().parse().unwrap();
    std::fs::write(cgroup.join("pids.max"), (current + extra).to_string()).unwrap();
    let outcome = match PondFs::open(&root, FsOptions { read_only: false, version: None, threshold: None }) {
        Err(e) => format!("refused: {e}"),
        Ok(fs) => {
            let written = fs
                .create(pond::oplog::ROOT_INO, b"f", 0o644, libc::O_WRONLY | libc::O_CREAT, crate::common::ME)
                .and_then(|(_, fh)| fs.write(fh, 0, b"limited").and_then(|_| fs.fsync(fh, false)).map(|()| fh));
            match written.and_then(|fh| fs.release(fh)) {
                Ok(()) => "committed".to_string(),
                Err(e) => format!("failed: {e}"),
            }
        }
    };
    println!("OUTCOME {outcome}");
    // Nothing more to check here, and dropping a pond that could not start its threads may
    // itself need one.
    std::process::exit(0);
}

/// Opening a pond read-write starts threads (the I/O runtime's, the committer); a process or
/// thread limit can refuse any of them. Whichever is refused, the open must fail or the pond must
/// work: never an open that accepts a write whose fsync then waits forever (a committer thread
/// whose failed start was swallowed). Every number of threads the open may start is tried.
#[test]
fn a_thread_limit_met_while_opening_refuses_the_open_or_commits() {
    let pond = TestPond::new();
    pond.open().shutdown().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut outcomes = Vec::new();
    // Below 17 extra threads the I/O runtime cannot start (1 worker, 16 blocking threads); at 17
    // the committer cannot; past it the open works.
    for extra in [0u64, 1, 2, 16, 17, 18, 19, 20, 24, 32, 48, 64] {
        let limit = ThreadLimit::empty(&format!("open-{}-{extra}", std::process::id()));
        let child = std::process::Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "limits::open_under_a_thread_limit_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("POND_LIMIT_POND", &pond.root)
            .env("POND_LIMIT_CGROUP", &limit.cgroup)
            .env("POND_LIMIT_EXTRA", extra.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = crate::common::wait_with_timeout(child, Duration::from_secs(30)).unwrap_or_else(|| {
            panic!("with {extra} more threads allowed, the child did not finish in 30 s (an fsync waiting forever?)")
        });
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let outcome = text.lines().find_map(|l| l.split_once("OUTCOME ")).map(|(_, o)| o.to_string());
        let outcome = outcome.unwrap_or_else(|| panic!("with {extra} more threads: no outcome; {}", describe(&out)));
        outcomes.push(format!("{extra}: {outcome}"));
        drop(limit);
        if outcome == "committed" {
            break;
        }
    }
    let summary = outcomes.join("\n");
    eprintln!("outcomes by extra threads allowed:\n{summary}");
    assert!(outcomes.iter().any(|o| o.contains("refused")), "some limit refuses the open:\n{summary}");
    assert!(outcomes.last().unwrap().ends_with("committed"), "enough threads open and commit:\n{summary}");
    let out = crate::common::pond(&["cat", pond.path(), "f"]);
    assert_eq!(out.stdout, b"limited", "{}\n{summary}", describe(&out));
}
