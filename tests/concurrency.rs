//! Concurrency (issue 7.5): on one mount at once, writers (each its own file replaced by
//! save-by-rename, one file all of them replace by rename, and counters all of them rewrite in place
//! under `flock`, and a scratch file all of them write, truncate and fsync in place with no lock),
//! readers that check every read is one whole version, `ls -lR` in a loop,
//! `pond replicate --follow` to a directory remote and `pond verify` again and again, while a monitor
//! stats the mount every ~100 ms. No deadlock (every stat answers within a second), no torn read, no
//! lost update (each file ends at the last version written to it, each counter at the number of
//! increments), verify clean throughout and at the end, and the replica restores equal to the pond.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pond::fs::{FsOptions, PondFs};
use pond::oplog::ROOT_INO;

use crate::common::sizes::{C, T};
use crate::common::{
    ChildGuard, Mounted, TestPond, assert_same_tree, close, describe, pattern, pond, pond_bin, pond_ok, read_file,
    soak, tree_snapshot,
};

const WRITERS: usize = 4;
const READERS: usize = 3;
const COUNTERS: usize = 2;

/// A version's header: magic, writer, version, payload length, BLAKE3 of the payload.
const MAGIC: &[u8; 4] = b"PVv1";
const HEADER: usize = 4 + 4 + 8 + 8 + 32;

/// Payload sizes: inline, around the threshold, and over it by chunks.
const PAYLOADS: &[usize] = &[10, T / 2, T - HEADER, T - HEADER + 1, 2 * C + 5, 3 * C];

/// Version `version` of writer `writer`'s content: self-checking, so a reader can tell a whole
/// version from a torn one without knowing what was written.
fn version_bytes(writer: u32, version: u64, payload: usize) -> Vec<u8> {
    let body = pattern(payload, (u64::from(writer) << 40) ^ version);
    let mut out = Vec::with_capacity(HEADER + payload);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&writer.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(&body).as_bytes());
    out.extend_from_slice(&body);
    out
}

/// `(writer, version)` of a whole version, or what is wrong with the bytes.
fn parse(bytes: &[u8]) -> Result<(u32, u64), String> {
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err(format!("{} bytes without a header", bytes.len()));
    }
    let writer = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let version = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let body = &bytes[HEADER..];
    if body.len() as u64 != len {
        return Err(format!("writer {writer} version {version}: {} payload bytes, header says {len}", body.len()));
    }
    if blake3::hash(body).as_bytes() != &bytes[24..HEADER] {
        return Err(format!("writer {writer} version {version}: payload does not match its hash"));
    }
    Ok((writer, version))
}

fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid fd.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn read_all(f: &mut File) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    Ok(v)
}

fn own(i: usize) -> String {
    format!("own/w{i}")
}

fn counter(k: usize) -> String {
    format!("shared/counter{k}")
}

const COMMON: &str = "common";

/// A file every writer scribbles on in place, with no lock: its content is whatever the last writes
/// made it, so only that each call succeeds is checked (and that nothing stalls).
const SCRATCH: &str = "scratch";

/// What the writers did that must show at the end.
#[derive(Default)]
struct Done {
    /// Per writer: the last version of its own file whose rename returned.
    own: Vec<u64>,
    /// Per writer: the last version it renamed onto `common`.
    common: Vec<u64>,
    /// Per counter: increments made.
    increments: Vec<u64>,
    iterations: u64,
    errors: Vec<String>,
}

struct Shared {
    mnt: PathBuf,
    stop: AtomicBool,
    done: Mutex<Done>,
    reads: AtomicU64,
    /// Whole-version violations seen by readers (torn reads, versions going back).
    torn: Mutex<Vec<String>>,
}

impl Shared {
    fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    fn error(&self, e: String) {
        self.done.lock().unwrap().errors.push(e);
    }
}

/// Write `data` as `tmp`, fsync it if asked, and rename it onto `dst`.
fn save_by_rename(s: &Shared, tmp: &str, dst: &str, data: &[u8], fsync: bool) -> Result<(), String> {
    let fail = |what: &str, e: io::Error| format!("{what} {tmp}: {e}");
    let mut f = File::create(s.path(tmp)).map_err(|e| fail("create", e))?;
    io::Write::write_all(&mut f, data).map_err(|e| fail("write", e))?;
    if fsync {
        f.sync_all().map_err(|e| fail("fsync", e))?;
    }
    close(f).map_err(|e| fail("close", e))?;
    std::fs::rename(s.path(tmp), s.path(dst)).map_err(|e| format!("rename {tmp} to {dst}: {e}"))
}

/// Write at a random offset of the scratch file (across the threshold), truncate it or fsync it.
fn scribble(s: &Shared, me: usize, r: u64, payload: usize) -> Result<(), String> {
    let fail = |what: &str, e: io::Error| format!("writer {me}: {what} {SCRATCH}: {e}");
    let f = OpenOptions::new().write(true).open(s.path(SCRATCH)).map_err(|e| fail("open", e))?;
    let at = (r >> 24) % (4 * C as u64);
    match (r >> 40) % 4 {
        0 => f.set_len(at).map_err(|e| fail("truncate", e))?,
        1 => f.sync_all().map_err(|e| fail("fsync", e))?,
        _ => f.write_all_at(&pattern(payload, r), at).map_err(|e| fail("write", e))?,
    }
    close(f).map_err(|e| fail("close", e))
}

/// Read counter `k` under an exclusive lock and write the next version in place.
fn increment(s: &Shared, me: u32, k: usize, payload: usize, truncate_first: bool, fsync: bool) -> Result<(), String> {
    let path = counter(k);
    let io = |what: &str, e: io::Error| format!("writer {me}: {what} {path}: {e}");
    let mut f = OpenOptions::new().read(true).write(true).open(s.path(&path)).map_err(|e| io("open", e))?;
    flock(&f, libc::LOCK_EX).map_err(|e| io("flock", e))?;
    let old = read_all(&mut f).map_err(|e| io("read", e))?;
    let (_, version) = parse(&old).map_err(|e| format!("writer {me}: {path} under an exclusive lock: {e}"))?;
    let new = version_bytes(me, version + 1, payload);
    if truncate_first {
        f.set_len(0).map_err(|e| io("truncate", e))?;
        f.write_all_at(&new, 0).map_err(|e| io("write", e))?;
    } else {
        f.write_all_at(&new, 0).map_err(|e| io("write", e))?;
        f.set_len(new.len() as u64).map_err(|e| io("truncate", e))?;
    }
    if fsync {
        f.sync_all().map_err(|e| io("fsync", e))?;
    }
    // Closing drops the lock, after the close's flush.
    close(f).map_err(|e| io("close", e))
}

fn writer(s: &Shared, me: usize, seed: u64) {
    let mut rng = seed;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut own_v, mut common_v) = (1u64, 0u64);
    let id = me as u32;
    while !s.stop.load(Ordering::Relaxed) {
        let r = next();
        let payload = PAYLOADS[(r >> 8) as usize % PAYLOADS.len()];
        let fsync = r & 0x10000 != 0;
        let result = match r % 12 {
            10.. => scribble(s, me, r, payload),
            0..5 => {
                own_v += 1;
                let data = version_bytes(id, own_v, payload);
                save_by_rename(s, &format!("tmp/w{me}"), &own(me), &data, fsync)
                    .and_then(|()| {
                        if r & 0x20000 != 0 {
                            File::open(s.path("own")).and_then(|d| d.sync_all()).map_err(|e| format!("fsync own/: {e}"))
                        } else {
                            Ok(())
                        }
                    })
                    .map(|()| s.done.lock().unwrap().own[me] = own_v)
                    .map_err(|e| format!("writer {me}: save own version {own_v}: {e}"))
            }
            5..7 => {
                common_v += 1;
                let data = version_bytes(id, common_v, payload);
                save_by_rename(s, &format!("tmp/c{me}"), COMMON, &data, fsync)
                    .map(|()| s.done.lock().unwrap().common[me] = common_v)
                    .map_err(|e| format!("writer {me}: save common version {common_v}: {e}"))
            }
            _ => {
                let k = (r >> 20) as usize % COUNTERS;
                increment(s, id, k, payload, r & 0x40000 != 0, fsync)
                    .map(|()| s.done.lock().unwrap().increments[k] += 1)
            }
        };
        let mut done = s.done.lock().unwrap();
        done.iterations += 1;
        if let Err(e) = result {
            done.errors.push(e);
            return;
        }
    }
}

/// Read files again and again; every read must be one whole version, and a file written by one
/// writer (or counted up) never goes back to an older version.
fn reader(s: &Shared, me: usize) {
    let mut files: Vec<String> = (0..WRITERS).map(own).collect();
    files.push(COMMON.into());
    files.extend((0..COUNTERS).map(counter));
    files.push(SCRATCH.into());
    let mut last_seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut reads = me;
    while !s.stop.load(Ordering::Relaxed) {
        // Each reader goes round every file, starting at its own.
        reads += 1;
        let rel = &files[reads % files.len()];
        let locked = rel.starts_with("shared/");
        let read = File::open(s.path(rel)).and_then(|mut f| {
            if locked {
                flock(&f, libc::LOCK_SH)?;
            }
            read_all(&mut f)
        });
        let bytes = match read {
            Ok(b) => b,
            Err(e) => return s.error(format!("reader {me}: read {rel}: {e}")),
        };
        s.reads.fetch_add(1, Ordering::Relaxed);
        if rel == SCRATCH {
            continue; // no versions to check
        }
        match parse(&bytes) {
            Err(e) => s.torn.lock().unwrap().push(format!("reader {me}: {rel}: torn read: {e}")),
            Ok((_, v)) if rel != COMMON => {
                let before = last_seen.insert(rel.clone(), v).unwrap_or(0);
                if v < before {
                    s.torn.lock().unwrap().push(format!("reader {me}: {rel} went back from version {before} to {v}"));
                }
            }
            Ok(_) => {}
        }
    }
}

/// `ls -lR` until stopped; the number of runs. An entry that vanishes between the listing and its
/// stat (a temp file renamed away) is the one failure allowed.
fn ls_loop(s: &Shared) -> u64 {
    let mut runs = 0;
    while !s.stop.load(Ordering::Relaxed) {
        let out = match Command::new("ls").arg("-lR").arg(&s.mnt).stdout(Stdio::null()).output() {
            Ok(o) => o,
            Err(e) => {
                s.error(format!("run ls: {e}"));
                return runs;
            }
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        let vanished = |l: &str| l.contains("/tmp/") && l.contains("No such file or directory");
        if !out.status.success() && !stderr.lines().all(vanished) {
            s.error(format!("ls -lR: {}", describe(&out)));
            return runs;
        }
        runs += 1;
    }
    runs
}

/// `pond verify` until stopped; the number of runs.
fn verify_loop(s: &Shared, pond_path: &str) -> u64 {
    let mut runs = 0;
    while !s.stop.load(Ordering::Relaxed) {
        let out = pond(&["verify", pond_path]);
        if !out.status.success() {
            s.error(format!("pond verify while mounted (run {runs}): {}", describe(&out)));
            return runs;
        }
        runs += 1;
    }
    runs
}

/// Stat the mount's root and a name that does not exist (a lookup the kernel cannot answer from
/// its cache) every ~100 ms; the longest either took.
fn monitor(s: &Shared) -> (Duration, u64) {
    let (mut worst, mut probes) = (Duration::ZERO, 0u64);
    while !s.stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        if let Err(e) = std::fs::metadata(&s.mnt) {
            s.error(format!("stat of the mount: {e}"));
        }
        let absent = std::fs::symlink_metadata(s.path(&format!("probe-{probes}")));
        if !absent.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::NotFound) {
            s.error(format!("stat of a missing name: {absent:?}"));
        }
        worst = worst.max(t.elapsed());
        probes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    (worst, probes)
}

/// The content of `rel` in the pond opened by `fs`.
fn content(fs: &PondFs, rel: &str) -> Vec<u8> {
    let mut ino = ROOT_INO;
    for part in rel.split('/') {
        ino = fs.lookup(ino, part.as_bytes()).unwrap_or_else(|e| panic!("{rel}: {e}")).ino;
    }
    read_file(fs, ino)
}

fn open_ro(root: &Path) -> PondFs {
    PondFs::open(root, FsOptions { read_only: true, ..Default::default() }).expect("open read-only")
}

#[test]
fn writers_readers_ls_replicate_and_verify_at_once_lose_nothing_and_never_stall() {
    let pond_dir = TestPond::new();
    let remote = pond_dir.scratch("remote");
    let m = Mounted::new(&pond_dir.root, &pond_dir.dir.path().join("mnt"), &[]);
    for dir in ["own", "shared", "tmp"] {
        std::fs::create_dir(m.path(dir)).unwrap();
    }
    for i in 0..WRITERS {
        std::fs::write(m.path(&own(i)), version_bytes(i as u32, 1, 10)).unwrap();
    }
    std::fs::write(m.path(COMMON), version_bytes(0, 0, 10)).unwrap();
    std::fs::write(m.path(SCRATCH), b"").unwrap();
    for k in 0..COUNTERS {
        std::fs::write(m.path(&counter(k)), version_bytes(0, 0, 10)).unwrap();
    }
    let shared = Arc::new(Shared {
        mnt: m.mountpoint.clone(),
        stop: AtomicBool::new(false),
        done: Mutex::new(Done {
            own: vec![1; WRITERS],
            common: vec![0; WRITERS],
            increments: vec![0; COUNTERS],
            ..Default::default()
        }),
        reads: AtomicU64::new(0),
        torn: Mutex::new(Vec::new()),
    });
    let log = |name: &str| File::create(pond_dir.dir.path().join(name)).expect("log file");
    let follow = Command::new(pond_bin())
        .args(["replicate", pond_dir.path(), remote.to_str().unwrap(), "--follow"])
        .stdout(log("follow.out"))
        .stderr(log("follow.err"))
        .spawn()
        .expect("start pond replicate --follow");
    let mut follow = ChildGuard(follow);

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let spawn = |f: Box<dyn FnOnce(&Shared) -> u64 + Send>| {
        let s = shared.clone();
        std::thread::spawn(move || f(&s))
    };
    let mut threads = Vec::new();
    for i in 0..WRITERS {
        threads.push(spawn(Box::new(move |s| {
            writer(s, i, seed.wrapping_mul(i as u64 + 1) | 1);
            0
        })));
    }
    for i in 0..READERS {
        threads.push(spawn(Box::new(move |s| {
            reader(s, i);
            0
        })));
    }
    let ls = spawn(Box::new(ls_loop));
    let pond_path = pond_dir.path().to_string();
    let verify = spawn(Box::new(move |s| verify_loop(s, &pond_path)));
    let mon = {
        let s = shared.clone();
        std::thread::spawn(move || monitor(&s))
    };

    let run_for = soak::duration(Duration::from_secs(30));
    let deadline = Instant::now() + run_for;
    while Instant::now() < deadline && shared.done.lock().unwrap().errors.is_empty() {
        std::thread::sleep(Duration::from_millis(100));
    }
    shared.stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("worker thread");
    }
    let ls_runs = ls.join().expect("ls thread");
    let verify_runs = verify.join().expect("verify thread");
    let (worst_stat, probes) = mon.join().expect("monitor thread");

    // --follow ends cleanly on SIGTERM.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(follow.0.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let follow_deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = follow.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < follow_deadline, "replicate --follow did not end after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let follow_err = std::fs::read_to_string(pond_dir.dir.path().join("follow.err")).unwrap_or_default();
    m.unmount();

    let done = std::mem::take(&mut *shared.done.lock().unwrap());
    let torn = std::mem::take(&mut *shared.torn.lock().unwrap());
    let reads = shared.reads.load(Ordering::Relaxed);
    eprintln!(
        "concurrency: {:?}, {} writer iterations, {reads} reads, {ls_runs} ls -lR, {verify_runs} verify, {probes} \
         stat probes, longest stat {worst_stat:?}, increments {:?}",
        run_for, done.iterations, done.increments
    );
    assert!(done.errors.is_empty(), "errors while running:\n{}", done.errors.join("\n"));
    assert!(torn.is_empty(), "{} bad reads, first ones:\n{}", torn.len(), torn[..torn.len().min(10)].join("\n"));
    assert!(status.success(), "replicate --follow after SIGTERM: {status}: {follow_err}");

    // Every last version is there: nothing the writers finished was lost.
    let mut lost = Vec::new();
    {
        let fs = open_ro(&pond_dir.root);
        let mut check = |rel: &str, want: Result<(u32, u64), String>| {
            let got = parse(&content(&fs, rel));
            if got != want {
                lost.push(format!("{rel}: {got:?}, want {want:?}"));
            }
        };
        for i in 0..WRITERS {
            check(&own(i), Ok((i as u32, done.own[i])));
        }
        // The last rename onto it wins: some writer's last version.
        match parse(&content(&fs, COMMON)) {
            Ok((w, _)) if (w as usize) < WRITERS => check(COMMON, Ok((w, done.common[w as usize]))),
            other => check(COMMON, Err(format!("some writer's last version, not {other:?}"))),
        }
        for k in 0..COUNTERS {
            let got = parse(&content(&fs, &counter(k))).map(|(_, v)| v);
            if got != Ok(done.increments[k]) {
                lost.push(format!("{}: version {got:?} after {} increments", counter(k), done.increments[k]));
            }
        }
    }
    soak::report("concurrency", done.iterations, 0, lost.len() as u64);
    assert!(lost.is_empty(), "lost updates:\n{}", lost.join("\n"));
    assert!(
        worst_stat < Duration::from_secs(1),
        "a stat on the mount took {worst_stat:?}: the daemon stalled (liveness, not speed)"
    );
    assert!(done.iterations > WRITERS as u64 && reads > 0 && ls_runs > 0 && verify_runs > 0, "everything ran");

    pond_ok(&["verify", pond_dir.path()]);
    pond_ok(&["replicate", pond_dir.path(), remote.to_str().unwrap()]);
    let restored = pond_dir.dir.path().join("restored");
    pond_ok(&["restore", remote.to_str().unwrap(), restored.to_str().unwrap()]);
    assert_same_tree(
        &tree_snapshot(&open_ro(&restored)),
        &tree_snapshot(&open_ro(&pond_dir.root)),
        "the replica restored",
    );
}

/// A directory listing is a snapshot taken at opendir, and the kernel makes a dentry of every entry
/// readdirplus gives it. An entry renamed away between the opendir and the read must not come back
/// as a dentry of its old name: `ls` racing a save-by-rename would make the next create of the temp
/// name open — and truncate — the file it was renamed onto.
#[test]
fn a_listing_read_after_a_rename_does_not_resurrect_the_old_name() {
    let pond_dir = TestPond::new();
    let m = Mounted::new(&pond_dir.root, &pond_dir.dir.path().join("mnt"), &[]);
    std::fs::create_dir(m.path("tmp")).unwrap();
    std::fs::write(m.path("tmp/x"), b"first version").unwrap();
    let dir = std::ffi::CString::new(m.path("tmp").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a valid path; the stream is read to its end and closed below.
    let stream = unsafe { libc::opendir(dir.as_ptr()) };
    assert!(!stream.is_null(), "opendir: {}", io::Error::last_os_error());
    std::fs::rename(m.path("tmp/x"), m.path("final")).unwrap();
    let mut names = Vec::new();
    loop {
        // SAFETY: a stream opendir returned, not closed yet.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            break;
        }
        // SAFETY: readdir returns a valid entry with a NUL-terminated name.
        names.push(unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) }.to_string_lossy().into_owned());
    }
    // SAFETY: closed once.
    unsafe { libc::closedir(stream) };
    assert!(names.contains(&"..".to_string()), "the listing was read: {names:?}");
    std::fs::write(m.path("tmp/x"), b"second").unwrap();
    assert_eq!(std::fs::read(m.path("final")).unwrap(), b"first version", "the renamed file is untouched");
    assert_eq!(std::fs::read(m.path("tmp/x")).unwrap(), b"second");
    m.unmount();
}

/// An open racing a rename that replaces the name gets the old file or the new one, never ENOENT:
/// the kernel may still hold the old inode (its dentry was looked up before the rename), so the
/// daemon keeps an unlinked inode until the kernel forgets it.
#[test]
fn opening_a_name_while_renames_replace_it_never_fails() {
    let pond_dir = TestPond::new();
    let m = Mounted::new(&pond_dir.root, &pond_dir.dir.path().join("mnt"), &[]);
    std::fs::write(m.path("f"), version_bytes(0, 0, 10)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let replacer = {
        let (mnt, stop) = (m.mountpoint.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut v = 0;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                std::fs::write(mnt.join("f.tmp"), version_bytes(0, v, 10)).expect("write the temp file");
                std::fs::rename(mnt.join("f.tmp"), mnt.join("f")).expect("rename onto f");
            }
            v
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (path, stop) = (m.path("f"), stop.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|b| parse(&b)) {
                        Ok(_) => reads += 1,
                        Err(e) => failures.push(e),
                    }
                }
                (reads, failures)
            })
        })
        .collect();
    std::thread::sleep(soak::duration(Duration::from_secs(3)));
    stop.store(true, Ordering::SeqCst);
    let versions = replacer.join().expect("replacer");
    let mut reads = 0;
    for r in readers {
        let (n, failures) = r.join().expect("reader");
        reads += n;
        assert!(failures.is_empty(), "{} of the opens failed, the first: {}", failures.len(), failures[0]);
    }
    eprintln!("{versions} renames, {reads} reads");
    assert!(versions > 10 && reads > 10, "both sides ran ({versions} renames, {reads} reads)");
    m.unmount();
}
