//! `pond prune URL`: a replica pruned where it lies, on a directory remote and on S3. A dry run
//! changes nothing; a real one leaves a remote that verifies, whose kept versions restore and open
//! in another Delta reader, whose dropped versions are refused with what it holds, whose dropped
//! contents are gone, and which replicate goes on shipping to. The remote's lock (`_pond.lock`):
//! a live holder makes prune and replicate wait, one whose holder is gone is broken.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::s3::{pond_env, s3};
use crate::common::sizes::C;
use crate::common::{
    ChildGuard, TestPond, assert_same_bytes, describe, pattern, pond, pond_bin, pond_ok, python_deltalake,
    write_version,
};

/// Writes in the scenario: enough for one compaction of the pond's small data files.
const WRITES: usize = 2 * pond::oplog::maintenance::FILES_PER_TIER;
/// Writes whose contents only dropped versions need, at least.
const DROPPED_WRITES: usize = pond::oplog::maintenance::FILES_PER_TIER / 2;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A remote to prune: its URL and the environment pond needs to reach it.
struct Target {
    url: String,
    env: Vec<(String, String)>,
}

impl Target {
    fn dir(p: &TestPond) -> Target {
        Target { url: format!("file://{}", s(&p.scratch("remote"))), env: Vec::new() }
    }

    fn s3() -> Target {
        let server = s3();
        Target { url: server.url(), env: server.env() }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        pond_env(args, &self.env)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "pond {args:?}: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The files under a directory remote with their sizes (the lock file aside).
fn files_of(dir: &Path) -> BTreeMap<String, u64> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.insert(
                    path.strip_prefix(base).unwrap().to_string_lossy().into_owned(),
                    entry.metadata().unwrap().len(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out.remove("_pond.lock");
    out
}

/// The number in a line such as "... freed 1.2 MiB (1234567 bytes)" or "... freed 12 bytes".
fn freed_bytes(summary: &str) -> u64 {
    let tail = summary.rsplit("freed ").next().expect("a freed figure");
    let digits: String = match tail.find('(') {
        Some(open) => tail[open + 1..].chars().take_while(char::is_ascii_digit).collect(),
        None => tail.chars().take_while(char::is_ascii_digit).collect(),
    };
    digits.parse().unwrap_or_else(|_| panic!("no byte count in {summary:?}"))
}

/// Writes of `f` enough for the pond's compaction to merge its data files once (each write of 3C
/// and more: large, so each has its own chunks), replicated to `target`, then `pond prune URL
/// --keep-version (the second) --keep-last 2`: checks everything the module doc names. `dir` is
/// the remote's directory when it is one (its files are compared).
///
/// What a kept version needs is what its active data files name: the second write's version
/// keeps the first write's content too (its data file is active there), the newest two keep what
/// the compacted data file and the data files after it name; the writes in between go.
fn prune_a_replica_where_it_lies(p: &TestPond, target: &Target, dir: Option<&Path>) {
    let writes: Vec<(u64, Vec<u8>)> = (0..WRITES as u64)
        .map(|i| {
            let data = pattern(3 * C + i as usize * 1000, 70 + i);
            (write_version(p, "f", &data), data)
        })
        .collect();
    target.ok(&["replicate", p.path(), &target.url]);
    let log = pond_ok(&["log", p.path()]);
    assert!(log.contains("compact"), "the pond compacted its data files once: {log}");
    let newest = crate::common::latest_version(&p.root);
    let rules = ["--keep-version", &writes[1].0.to_string(), "--keep-last", "2"].map(str::to_string);
    let prune = |extra: &[&str]| {
        let mut args = vec!["prune", target.url.as_str()];
        args.extend(rules.iter().map(String::as_str));
        args.extend(extra);
        target.ok(&args)
    };

    // A dry run says what would go and changes nothing.
    let before = dir.map(files_of);
    let dry = prune(&["--dry-run"]);
    assert!(dry.contains("would remove _delta_log/"), "the dry run names log entries: {dry}");
    assert!(dry.contains("would remove _large_files/"), "and stored contents: {dry}");
    if let Some(dir) = dir {
        assert_eq!(before, Some(files_of(dir)), "a dry run changes nothing on the remote");
    }

    // The real run: versions 0 .. newest-2 go but the second write's; nothing is compacted (a
    // new version would be one the pond lacks).
    let out = prune(&[]);
    let kept = [writes[1].0, newest - 1, newest];
    let summary = out.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with(&format!("pruned: {} versions dropped", newest + 1 - 3)),
        "every version but three dropped: {out}"
    );
    assert!(!out.contains("compacted the latest version"), "a remote is never compacted: {out}");
    // The writes merged away before the newest two versions (at least DROPPED_WRITES of them,
    // 3C and more each) are what it freed, at least.
    let dropped_bytes = (DROPPED_WRITES * 3 * C) as u64;
    assert!(freed_bytes(summary) >= dropped_bytes, "the dropped contents were freed: {out}\n{log}");
    if let (Some(dir), Some(before)) = (dir, before) {
        let after = files_of(dir);
        let large = |m: &BTreeMap<String, u64>| -> u64 {
            m.iter().filter(|(k, _)| k.starts_with("_large_files/")).map(|(_, v)| v).sum()
        };
        assert!(
            large(&before) - large(&after) >= dropped_bytes,
            "the remote's stored contents shrank by the dropped ones: {} -> {}",
            large(&before),
            large(&after)
        );
        let entries: Vec<&String> =
            after.keys().filter(|k| k.ends_with(".json") && k.starts_with("_delta_log/0")).collect();
        assert_eq!(entries.len(), 3, "one log entry per kept version: {entries:?}");
    }
    let again = prune(&["--dry-run"]);
    assert!(
        again.contains("0 versions dropped") && again.contains("would remove 0 files"),
        "nothing left to prune: {again}"
    );

    let verify = target.run(&["verify", &target.url]);
    assert!(verify.status.success(), "the pruned remote verifies: {}", describe(&verify));

    // Kept versions restore with their content; a dropped one is refused, saying what is there.
    // What f holds at a version: the last write at or before it (compactions in between).
    let content_at = |v: u64| &writes.iter().rev().find(|(w, _)| *w <= v).expect("a write before").1;
    for version in kept {
        let want = content_at(version);
        let into = p.dir.path().join(format!("restored-{version}"));
        target.ok(&["restore", &target.url, s(&into), "--version", &version.to_string()]);
        assert_same_bytes(&pond(&["cat", s(&into), "f"]).stdout, want, &format!("f restored at version {version}"));
    }
    let into = p.dir.path().join("restored-dropped");
    let out = target.run(&["restore", &target.url, s(&into), "--version", &writes[2].0.to_string()]);
    let holds = format!("it holds versions {} and {} to {}", kept[0], kept[1], kept[2]);
    assert!(
        out.status.code() == Some(2) && String::from_utf8_lossy(&out.stderr).contains(&holds),
        "restore of a dropped version: {}",
        describe(&out)
    );
    assert!(!into.exists(), "nothing restored");

    // Another Delta reader opens each kept version (the checkpoint prune made stands in for the
    // versions before it).
    if let Some(dir) = dir {
        let script = "import sys, deltalake\nfor v in sys.argv[2:]:\n    t = deltalake.DeltaTable(sys.argv[1], version=int(v))\n    assert t.version() == int(v)\n    t.to_pyarrow_table()\nprint('ok')";
        let args: Vec<String> = std::iter::once(s(dir).to_string()).chain(kept.iter().map(u64::to_string)).collect();
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        let py = python_deltalake(script, &args);
        assert!(py.status.success(), "python deltalake on the pruned remote: {}", String::from_utf8_lossy(&py.stderr));
    }

    // Replicate goes on: a new write ships, restores, and the run after sends nothing.
    let newer = pattern(4 * C + 5, 99);
    let latest = write_version(p, "f", &newer);
    let out = target.ok(&["replicate", p.path(), &target.url]);
    assert!(out.contains(&format!("version {latest}")), "the pruned remote takes the new version: {out}");
    let into = p.dir.path().join("restored-latest");
    target.ok(&["restore", &target.url, s(&into)]);
    assert_same_bytes(&pond(&["cat", s(&into), "f"]).stdout, &newer, "f restored after the next replicate");
    let out = target.ok(&["replicate", p.path(), &target.url]);
    assert!(out.contains("sent 0 objects (0 B)"), "and a second run sends nothing: {out}");
    let verify = target.run(&["verify", &target.url]);
    assert!(verify.status.success(), "the remote verifies after: {}", describe(&verify));
}

#[test]
fn prune_of_a_directory_remote_drops_versions_and_what_only_they_need() {
    let p = TestPond::new();
    let target = Target::dir(&p);
    let dir = p.scratch("remote");
    prune_a_replica_where_it_lies(&p, &target, Some(&dir));
    assert!(!dir.join("_pond.lock").exists(), "the lock is given back");
}

#[test]
fn prune_of_an_s3_remote_drops_versions_and_what_only_they_need() {
    let p = TestPond::new();
    prune_a_replica_where_it_lies(&p, &Target::s3(), None);
}

#[test]
fn prune_of_a_url_needs_a_rule_and_a_replica() {
    let p = TestPond::new();
    let empty = p.scratch("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let url = format!("file://{}", s(&empty));
    let out = pond(&["prune", &url]);
    assert!(!out.status.success(), "prune without a rule: {}", describe(&out));
    let out = pond(&["prune", &url, "--keep-last", "1"]);
    assert!(!out.status.success(), "prune of an empty directory: {}", describe(&out));
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "nothing was written there");
}

/// A lease as pond writes it, held by `pid` on the boot `boot`, expiring at `expires_ms`.
fn lease(boot: &str, pid: u32, expires_ms: i64) -> String {
    format!(
        r#"{{"owner":"someone-else","what":"replicate","host":"elsewhere","boot":"{boot}","pid":{pid},"since_ms":0,"expires_ms":{expires_ms}}}"#
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn this_boot() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim().to_string()
}

/// A replicated pond with two versions, and its directory remote.
fn replicated(p: &TestPond) -> std::path::PathBuf {
    write_version(p, "f", &pattern(2 * C, 1));
    write_version(p, "f", &pattern(2 * C, 2));
    let remote = p.scratch("remote");
    pond_ok(&["replicate", p.path(), s(&remote)]);
    remote
}

/// Runs `pond ARGS` in the background and waits until its stderr says it waits for the lock.
fn start_waiting(args: &[&str]) -> (ChildGuard, std::process::ChildStderr) {
    let mut child = ChildGuard(
        Command::new(pond_bin()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run pond"),
    );
    let mut stderr = child.0.stderr.take().unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 256];
    let said = |seen: &[u8]| {
        let text = String::from_utf8_lossy(seen);
        text.find("waiting for the remote's lock").is_some_and(|at| text[at..].contains('\n'))
    };
    while !said(&seen) {
        assert!(Instant::now() < deadline, "pond {args:?} never said it waits: {}", String::from_utf8_lossy(&seen));
        let n = stderr.read(&mut buf).expect("read stderr");
        assert!(n > 0, "pond {args:?} ended without waiting: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&seen).contains("held by pond replicate (pid"),
        "it says who holds it: {}",
        String::from_utf8_lossy(&seen)
    );
    (child, stderr)
}

#[test]
fn a_live_lease_makes_prune_wait_and_an_interrupt_leaves_it_alone() {
    let p = TestPond::new();
    let remote = replicated(&p);
    // Held on another machine, renewed: only its expiry could free it.
    let held = lease("another-boot", 1, now_ms() + 3_600_000);
    std::fs::write(remote.join("_pond.lock"), &held).unwrap();
    let before = files_of(&remote);

    let url = format!("file://{}", s(&remote));
    let (mut child, mut stderr) = start_waiting(&["prune", &url, "--keep-last", "1"]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(child.0.try_wait().unwrap().is_none(), "prune still waits");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.0.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = child.0.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(!status.success() && rest.contains("interrupted"), "an interrupted wait fails: {status} {rest}");
    assert_eq!(std::fs::read_to_string(remote.join("_pond.lock")).unwrap(), held, "the lease is untouched");
    assert_eq!(files_of(&remote), before, "nothing was pruned");
}

#[test]
fn replicate_waits_for_a_held_lease_and_goes_on_once_it_is_given_back() {
    let p = TestPond::new();
    let remote = replicated(&p);
    let latest = write_version(&p, "f", &pattern(3 * C, 3));
    std::fs::write(remote.join("_pond.lock"), lease("another-boot", 1, now_ms() + 3_600_000)).unwrap();

    let (mut child, _stderr) = start_waiting(&["replicate", p.path(), s(&remote)]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(!remote.join(format!("_delta_log/{latest:020}.json")).exists(), "nothing shipped while the lease is held");
    std::fs::remove_file(remote.join("_pond.lock")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "replicate did not go on once the lease was given back");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "replicate ran once the lease was gone: {status}");
    assert!(remote.join(format!("_delta_log/{latest:020}.json")).exists(), "the new version shipped");
    assert!(!remote.join("_pond.lock").exists(), "and replicate gave its own lease back");
}

#[test]
fn a_lease_whose_holder_is_gone_is_broken() {
    let p = TestPond::new();
    let remote = replicated(&p);
    let url = format!("file://{}", s(&remote));
    // A pid that ran on this boot and is gone (a kill -9 of the holder, say).
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let future = now_ms() + 3_600_000;
    for (what, held) in [
        ("a dead holder on this machine", lease(&this_boot(), dead_pid, future)),
        ("an expired lease", lease("another-boot", 1, now_ms() - 1000)),
        ("a file that is no lease", "not json".to_string()),
    ] {
        std::fs::write(remote.join("_pond.lock"), held).unwrap();
        let out = pond(&["prune", &url, "--keep-last", "1"]);
        assert!(out.status.success(), "prune past {what}: {}", describe(&out));
        assert!(!remote.join("_pond.lock").exists(), "{what}: broken, then the prune's own given back");
    }
}
