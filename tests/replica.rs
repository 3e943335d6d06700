//! Replication (issue #4): `pond replicate` to a directory and to S3, incremental and resumable;
//! `pond restore` at the latest or an earlier version, verified, refusing what a remote lies about
//! and leaving nothing behind; `pond verify URL`; replicating while a mount writes; and the remote
//! read as a Delta table by Python's deltalake.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use pond::fs::{FsOptions, NodeKind, PondFs, SetAttr, TimeSet, XattrSet};
use pond::oplog::{Oplog, ROOT_INO};
use pond::replica::{self, Quiet, Remote, Transfer};

use crate::common::s3::pond_env;
use crate::common::sizes::{C, INTERESTING, T};
use crate::common::{
    ChildGuard, ME, Mounted, TestPond, assert_same_bytes, assert_same_tree, latest_version, pattern, pond, pond_bin,
    pond_ok, read_file, runtime, tree_snapshot, write_file,
};

/// Push `root` to the directory `remote` through the library, for exact counts.
fn push(root: &Path, remote: &Path) -> Transfer {
    let remote = Remote::open(remote.to_str().unwrap(), &[], true).expect("open remote");
    let report = runtime()
        .block_on(replica::replicate(root, &remote, Arc::new(Quiet), &AtomicBool::new(false), false))
        .expect("replicate");
    assert!(!report.interrupted);
    assert_eq!(report.version, Some(latest_version(root)), "the remote is at the pond's version");
    report.transfer
}

/// Files on a directory remote with their sizes; `name#N` (what a killed upload leaves in
/// object_store's local staging) and the remote's lease (`_pond.lock`) excluded.
fn remote_files(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read remote dir") {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if !e.file_name().to_string_lossy().contains('#') && e.file_name() != "_pond.lock" {
                let rel = e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, e.metadata().unwrap().len());
            }
        }
    }
    out
}

fn open_ro(root: &Path) -> PondFs {
    PondFs::open(root, FsOptions { read_only: true, ..Default::default() }).expect("open read-only")
}

fn open_at(root: &Path, version: u64) -> PondFs {
    PondFs::open(root, FsOptions { read_only: true, version: Some(version), ..Default::default() })
        .expect("open at version")
}

/// The one line a command printed on stdout.
fn summary_line(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one summary line on stdout, got {stdout:?} (stderr: {})",
        String::from_utf8_lossy(&out.stderr)
    );
    lines[0].to_string()
}

/// The number after `word` in a summary line (`sent 12 objects` → 12).
fn count_after(line: &str, word: &str) -> u64 {
    let rest = line.split(word).nth(1).unwrap_or_else(|| panic!("{word:?} in {line:?}"));
    rest.split_whitespace()
        .next()
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("a count after {word:?} in {line:?}"))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A pond with everything replication must carry: a file at every interesting size, a multi-chunk
/// file stored once under two names, a hard link, a symlink, a fifo, xattrs, modes, owners and set
/// mtimes.
fn rich_pond() -> TestPond {
    let pond = TestPond::new();
    let fs = pond.open();
    let dir = fs.mkdir(ROOT_INO, b"dir", 0o750, ME).unwrap().ino;
    let sub = fs.mkdir(dir, b"sub", 0o700, ME).unwrap().ino;
    for (i, (size, _)) in INTERESTING.iter().enumerate() {
        write_file(&fs, dir, &format!("f{i}"), &pattern(*size, i as u64));
    }
    let big = write_file(&fs, ROOT_INO, "big", &pattern(5 * C + 123, 99));
    write_file(&fs, sub, "big-copy", &pattern(5 * C + 123, 99));
    fs.link(big, sub, b"big-hardlink").unwrap();
    fs.symlink(ROOT_INO, b"link", b"dir/f3", ME).unwrap();
    fs.mknod(ROOT_INO, b"fifo", NodeKind::Fifo, 0o640, 0, ME).unwrap();
    let f0 = fs.lookup(dir, b"f0").unwrap().ino;
    fs.setxattr(f0, b"user.comment", b"hello", XattrSet::Create).unwrap();
    fs.setxattr(big, b"user.bin", &[0, 1, 2, 255], XattrSet::Create).unwrap();
    fs.setxattr(dir, b"user.dir", b"on a directory", XattrSet::Create).unwrap();
    let f1 = fs.lookup(dir, b"f1").unwrap().ino;
    let when = TimeSet::At(1_600_000_000_123_456_789);
    fs.setattr(
        f1,
        SetAttr { mode: Some(0o600), uid: Some(1234), gid: Some(5678), mtime: Some(when), ..Default::default() },
    )
    .unwrap();
    fs.setattr(big, SetAttr { mtime: Some(TimeSet::At(1_000_000_000)), ..Default::default() }).unwrap();
    fs.shutdown().expect("commit");
    pond
}

/// Nothing named `<target>.restore-tmp-*` beside the target.
fn assert_no_staging_left(target: &Path) {
    let prefix = format!("{}.restore-tmp-", target.file_name().unwrap().to_string_lossy());
    let parent = target.parent().unwrap();
    let left: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "staging directories left behind: {left:?}");
}

/// Restore `url` into `target` and require it to fail with a message containing `expect`, leaving
/// neither a pond nor a staging directory.
fn assert_restore_refused(url: &str, target: &Path, expect: &str) {
    let out = pond(&["restore", url, s(target)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "restore of a lying remote must fail; stderr: {stderr}");
    assert!(stderr.contains(expect), "the error says {expect:?}; stderr: {stderr}");
    assert!(!target.exists(), "no pond is left at {}", target.display());
    assert_no_staging_left(target);
}

fn object_path(remote: &Path, data: &[u8]) -> PathBuf {
    remote.join("_large_files").join(format!("{}.parquet", blake3::hash(data).to_hex()))
}

#[test]
fn round_trip_through_a_directory_remote_keeps_every_byte_and_attribute() {
    let src = rich_pond();
    let remote = src.scratch("remote");
    let out = pond(&["replicate", src.path(), s(&remote)]);
    assert!(out.status.success(), "replicate: {}", String::from_utf8_lossy(&out.stderr));
    let line = summary_line(&out);
    assert!(line.starts_with(&format!("replicated to {}: sent ", s(&remote))), "{line}");
    assert!(count_after(&line, "sent") > 0 && count_after(&line, "skipped") == 0, "{line}");
    assert!(line.contains(&format!("version {}", latest_version(&src.root))), "{line}");
    assert!(!remote.join("_pond").exists(), "the writer's private _pond/ is not replicated");

    let verify = pond_ok(&["verify", &format!("file://{}", s(&remote))]);
    assert!(verify.starts_with("clean:"), "the remote verifies: {verify}");

    let target = src.dir.path().join("restored");
    let out = pond(&["restore", s(&remote), s(&target)]);
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    let line = summary_line(&out);
    assert!(
        line.starts_with(&format!("restored {} to {}: version {}", s(&remote), s(&target), latest_version(&src.root))),
        "{line}"
    );
    assert_no_staging_left(&target);
    assert_same_tree(&tree_snapshot(&open_ro(&target)), &tree_snapshot(&open_ro(&src.root)), "restored pond");
    assert!(pond_ok(&["verify", s(&target)]).starts_with("clean:"));

    // It mounts and serves the same tree to ordinary tools.
    let m = Mounted::new(&target, &src.dir.path().join("mnt"), &["ro"]);
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_same_bytes(&std::fs::read(m.path("big")).unwrap(), &pattern(5 * C + 123, 99), "big through the mount");
    let big = std::fs::metadata(m.path("big")).unwrap();
    let hard = std::fs::metadata(m.path("dir/sub/big-hardlink")).unwrap();
    assert_eq!((big.ino(), big.nlink()), (hard.ino(), 2), "the hard link is the same inode");
    assert_eq!(big.mtime(), 1, "mtime kept");
    assert_eq!(std::fs::read_link(m.path("link")).unwrap(), PathBuf::from("dir/f3"));
    let f1 = std::fs::metadata(m.path("dir/f1")).unwrap();
    assert_eq!((f1.permissions().mode() & 0o7777, f1.uid(), f1.gid()), (0o600, 1234, 5678));
    assert_eq!(getxattr(&m.path("dir/f0"), "user.comment"), b"hello");
    m.unmount();
}

fn getxattr(path: &Path, name: &str) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(len >= 0, "getxattr {name} on {}: {}", path.display(), std::io::Error::last_os_error());
    buf.truncate(len as usize);
    buf
}

#[test]
fn incremental_runs_send_exactly_what_the_remote_lacks() {
    let src = TestPond::new();
    let remote = src.scratch("remote");
    {
        let fs = src.open();
        write_file(&fs, ROOT_INO, "small", b"small");
        write_file(&fs, ROOT_INO, "large", &pattern(3 * C, 1));
        fs.shutdown().unwrap();
    }
    let first = push(&src.root, &remote);
    let files = remote_files(&remote);
    assert_eq!(first.sent_files, files.len() as u64, "the first run sends every file of the layout");
    assert_eq!(first.sent_bytes, files.values().sum::<u64>());
    assert_eq!((first.skipped_files, first.skipped_bytes), (0, 0));

    let again = push(&src.root, &remote);
    assert_eq!((again.sent_files, again.sent_bytes), (0, 0), "a second run with no change sends nothing");
    assert!(again.skipped_files > 0);

    {
        let fs = src.open();
        write_file(&fs, ROOT_INO, "more-large", &pattern(2 * C + 5, 2));
        write_file(&fs, ROOT_INO, "more-small", b"x");
        // The same content as "large": its object is already on the remote.
        write_file(&fs, ROOT_INO, "large-again", &pattern(3 * C, 1));
        fs.shutdown().unwrap();
    }
    let third = push(&src.root, &remote);
    let now = remote_files(&remote);
    let new: Vec<_> = now.iter().filter(|(name, size)| files.get(*name) != Some(size)).collect();
    assert_eq!(
        third.sent_files,
        new.len() as u64,
        "only new (or changed, as _last_checkpoint) files are sent: {new:?}"
    );
    assert_eq!(third.sent_bytes, new.iter().map(|(_, s)| **s).sum::<u64>());
    let store: Vec<_> = new.iter().filter(|(n, _)| n.starts_with("_large_files/")).collect();
    let objects = store.iter().filter(|(n, _)| !n.starts_with("_large_files/packs/")).count();
    assert_eq!(
        (objects, store.len()),
        (1, 2),
        "one new object and its pack; the repeated content is not sent again: {store:?}"
    );
    assert!(pond_ok(&["verify", s(&remote)]).starts_with("clean:"));
}

#[test]
fn a_killed_replicate_resumes_and_sends_only_what_is_missing() {
    let src = TestPond::new();
    {
        let fs = src.open();
        for i in 0..12 {
            write_file(&fs, ROOT_INO, &format!("large{i}"), &pattern(32 * C + i, 100 + i as u64));
        }
        fs.shutdown().unwrap();
    }
    // Kill -9 as soon as the first object has arrived; retry with a fresh remote in the unlikely case
    // the run finished before the kill landed.
    let mut caught = None;
    for attempt in 0..5 {
        let remote = src.scratch(&format!("remote{attempt}"));
        let child = Command::new(pond_bin())
            .args(["replicate", src.path(), s(&remote)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pond replicate");
        let mut child = ChildGuard(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let arrived = remote_files(&remote).keys().any(|n| n.starts_with("_large_files/"));
            if arrived || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        child.0.kill().expect("kill -9");
        let status = child.0.wait().unwrap();
        let at_kill = remote_files(&remote);
        let log_complete = at_kill.contains_key(&format!("_delta_log/{:020}.json", latest_version(&src.root)));
        if !status.success() && !log_complete {
            caught = Some((remote, at_kill));
            break;
        }
    }
    let (remote, at_kill) = caught.expect("replicate was killed mid-run in one of 5 attempts");
    assert!(at_kill.keys().any(|n| n.starts_with("_large_files/")), "an object had arrived");

    let resumed = push(&src.root, &remote);
    let all = remote_files(&remote);
    let missing: Vec<_> = all.keys().filter(|n| !at_kill.contains_key(*n)).collect();
    assert_eq!(
        resumed.sent_files,
        missing.len() as u64,
        "the resumed run sends only what had not arrived: {missing:?}"
    );
    let objects_at_kill = at_kill.keys().filter(|n| n.starts_with("_large_files/")).count() as u64;
    assert!(resumed.skipped_files >= objects_at_kill, "what arrived whole is skipped ({resumed:?})");
    for (name, size) in &at_kill {
        assert_eq!(all.get(name), Some(size), "{name} arrived whole before the kill and is unchanged");
    }
    let verify = pond_ok(&["verify", &format!("file://{}", s(&remote))]);
    assert!(verify.starts_with("clean:"), "{verify}");
    assert_eq!(push(&src.root, &remote).sent_files, 0);
}

#[test]
fn restore_at_a_version_equals_the_source_at_that_version() {
    let src = rich_pond();
    let early = latest_version(&src.root);
    {
        let fs = src.open();
        let dir = fs.lookup(ROOT_INO, b"dir").unwrap().ino;
        write_file(&fs, ROOT_INO, "big", &pattern(2 * T, 7)); // overwrite: a new object
        fs.unlink(dir, b"f2").unwrap();
        fs.rename(ROOT_INO, b"link", dir, b"moved-link", pond::fs::RenameMode::Replace).unwrap();
        fs.shutdown().unwrap();
    }
    let late = latest_version(&src.root);
    assert!(late > early);
    let remote = src.scratch("remote");
    push(&src.root, &remote);

    let at_early = src.dir.path().join("at-early");
    pond_ok(&["restore", s(&remote), s(&at_early), "--version", &early.to_string()]);
    assert_eq!(latest_version(&at_early), early, "the restored pond's latest version is the one asked for");
    assert_same_tree(
        &tree_snapshot(&open_ro(&at_early)),
        &tree_snapshot(&open_at(&src.root, early)),
        "restored at the early version",
    );
    assert!(pond_ok(&["verify", s(&at_early)]).starts_with("clean:"));
    let latest = src.dir.path().join("latest");
    pond_ok(&["restore", s(&remote), s(&latest)]);
    assert_same_tree(
        &tree_snapshot(&open_ro(&latest)),
        &tree_snapshot(&open_ro(&src.root)),
        "restored at the latest version",
    );

    let beyond = src.dir.path().join("beyond");
    let out = pond(&["restore", s(&remote), s(&beyond), "--version", &(late + 1).to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("version {} is not on the remote", late + 1)));
    assert!(!beyond.exists());
    assert_no_staging_left(&beyond);
}

#[test]
fn replicate_while_writing_through_a_mount_never_ships_a_version_with_missing_files() {
    let src = TestPond::new();
    let remote = src.scratch("remote");
    let m = Mounted::new(&src.root, &src.dir.path().join("mnt"), &[]);
    let mnt = m.mountpoint.clone();
    let writer = std::thread::spawn(move || {
        for i in 0..30u64 {
            let size = if i % 3 == 0 { 3 * C + i as usize } else { T / 2 };
            let path = mnt.join(format!("w{i}"));
            std::fs::write(&path, pattern(size, i)).expect("write through the mount");
            if i % 5 == 4 {
                std::fs::OpenOptions::new().write(true).open(&path).and_then(|f| f.sync_all()).expect("fsync");
            }
        }
    });
    let mut runs = 0;
    loop {
        let done = writer.is_finished();
        pond_ok(&["replicate", src.path(), s(&remote)]);
        let verify = pond(&["verify", s(&remote)]);
        assert!(
            verify.status.success(),
            "run {runs}: the remote verifies while the pond is written: {}",
            String::from_utf8_lossy(&verify.stdout)
        );
        runs += 1;
        if done {
            break;
        }
    }
    writer.join().expect("writer");
    m.unmount();
    pond_ok(&["replicate", src.path(), s(&remote)]);
    let target = src.dir.path().join("restored");
    pond_ok(&["restore", s(&remote), s(&target)]);
    assert_same_tree(&tree_snapshot(&open_ro(&target)), &tree_snapshot(&open_ro(&src.root)), "after writing stopped");
    assert!(runs >= 2, "replicate ran while the mount was written ({runs} runs)");
}

#[test]
fn follow_ships_new_versions_until_sigterm() {
    let src = TestPond::new();
    let remote = src.scratch("remote");
    let m = Mounted::new(&src.root, &src.dir.path().join("mnt"), &[]);
    let child = Command::new(pond_bin())
        .args(["replicate", src.path(), s(&remote), "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pond replicate --follow");
    let mut child = ChildGuard(child);
    let wait_for_remote = |version: u64| {
        let entry = remote.join(format!("_delta_log/{version:020}.json"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !entry.exists() {
            assert!(Instant::now() < deadline, "--follow did not ship version {version}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for_remote(latest_version(&src.root));
    for i in 0..3 {
        let path = m.path(&format!("f{i}"));
        std::fs::write(&path, pattern(2 * C + i, i as u64)).unwrap();
        std::fs::File::open(&path).and_then(|f| f.sync_all()).unwrap(); // returns once committed
        wait_for_remote(latest_version(&src.root));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.0.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "--follow did not end after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = Output { status, stdout: Vec::new(), stderr: Vec::new() };
    use std::io::Read;
    child.0.stdout.take().unwrap().read_to_end(&mut out.stdout).unwrap();
    child.0.stderr.take().unwrap().read_to_end(&mut out.stderr).unwrap();
    assert!(out.status.success(), "SIGTERM ends --follow cleanly: {}", String::from_utf8_lossy(&out.stderr));
    let line = summary_line(&out);
    assert!(line.starts_with("replicated to ") && count_after(&line, "sent") > 0, "{line}");
    m.unmount();
    let shipped = count_after(&line, "version");
    let target = src.dir.path().join("restored");
    pond_ok(&["restore", s(&remote), s(&target)]);
    assert_eq!(latest_version(&target), shipped);
    assert_same_tree(
        &tree_snapshot(&open_ro(&target)),
        &tree_snapshot(&open_at(&src.root, shipped)),
        "what --follow shipped",
    );
    assert_same_bytes(
        &read_file(&open_ro(&target), open_ro(&target).lookup(ROOT_INO, b"f2").unwrap().ino),
        &pattern(2 * C + 2, 2),
        "last file",
    );
}

#[test]
fn a_tampered_chunk_fails_restore_and_verify_with_the_object_named() {
    let src = rich_pond();
    let remote = src.scratch("remote");
    push(&src.root, &remote);
    let data = pattern(5 * C + 123, 99);
    // A byte in the middle of chunk 2's bytes, in the pack the object points into.
    let pack = crate::common::store::corrupt_stored_chunk(&remote, &data, 2);
    let hex = blake3::hash(&data).to_hex().to_string();

    assert_restore_refused(s(&remote), &src.dir.path().join("restored"), &hex);
    let out = pond(&["verify", &format!("file://{}", s(&remote))]);
    assert_eq!(out.status.code(), Some(1), "verify URL exits 1 on damage");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pack_name = pack.strip_prefix(&remote).unwrap().to_string_lossy().into_owned();
    assert!(
        stdout.lines().any(|l| l.starts_with("DAMAGED object")
            && l.contains(&hex)
            && l.contains("chunk 2")
            && l.contains(&pack_name)),
        "verify names the object, the chunk and the pack: {stdout}"
    );

    // A byte of the object itself (the manifest) is damage too.
    let fresh = src.scratch("remote2");
    push(&src.root, &fresh);
    let object = object_path(&fresh, &data);
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x55;
    std::fs::write(&object, &bytes).unwrap();
    assert_restore_refused(s(&fresh), &src.dir.path().join("restored2"), &hex);
}

#[test]
fn a_truncated_or_missing_object_or_data_file_fails_restore_and_leaves_nothing() {
    let src = rich_pond();
    let remote = src.scratch("remote");
    push(&src.root, &remote);
    let object = object_path(&remote, &pattern(5 * C + 123, 99));
    let whole = std::fs::read(&object).unwrap();
    let target = src.dir.path().join("restored");

    std::fs::write(&object, &whole[..whole.len() / 2]).unwrap();
    let name = object.strip_prefix(&remote).unwrap().to_string_lossy().into_owned();
    // Named as the remote has it, not as the (removed) staging copy was.
    assert_restore_refused(s(&remote), &target, &format!("{}/{name}: not a parquet file", s(&remote)));

    std::fs::remove_file(&object).unwrap();
    assert_restore_refused(s(&remote), &target, &format!("the remote lacks {name}"));
    std::fs::write(&object, &whole).unwrap();

    let data = remote_files(&remote).into_keys().find(|n| !n.contains('/')).expect("a data file");
    let data_path = remote.join(&data);
    let content = std::fs::read(&data_path).unwrap();
    std::fs::write(&data_path, &content[..content.len() - 10]).unwrap();
    assert_restore_refused(s(&remote), &target, &format!("remote object {data} was altered"));
    std::fs::write(&data_path, &content).unwrap();

    pond_ok(&["restore", s(&remote), s(&target)]);
}

#[test]
fn a_log_entry_naming_a_path_outside_the_remote_is_refused() {
    let src = TestPond::new();
    {
        let fs = src.open();
        write_file(&fs, ROOT_INO, "a", b"a");
        fs.shutdown().unwrap();
    }
    let base = src.scratch("base");
    let remote = base.join("remote");
    push(&src.root, &remote);
    let latest = latest_version(&src.root);
    let entry = remote.join(format!("_delta_log/{latest:020}.json"));
    let original = std::fs::read_to_string(&entry).unwrap();
    let target = base.join("restored");
    // (what the log says, the name as it reads once percent-decoded)
    for (evil, named) in [
        ("../evil.parquet", "../evil.parquet"),
        ("/tmp/pond-evil.parquet", "/tmp/pond-evil.parquet"),
        ("sub/../../evil.parquet", "sub/../../evil.parquet"),
        ("%2e%2e/evil.parquet", "../evil.parquet"),
    ] {
        let mut value: Vec<serde_json::Value> = original.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        for v in &mut value {
            if let Some(add) = v.get_mut("add") {
                add["path"] = serde_json::json!(evil);
            }
        }
        let edited: Vec<String> = value.iter().map(|v| v.to_string()).collect();
        std::fs::write(&entry, edited.join("\n") + "\n").unwrap();
        // A file the forged path could reach, as if a previous attacker had planted it.
        std::fs::write(base.join("evil.parquet"), b"planted").unwrap();

        assert_restore_refused(s(&remote), &target, &format!("refusing remote name {named:?}"));
        assert_eq!(std::fs::read(base.join("evil.parquet")).unwrap(), b"planted", "nothing written outside the target");
        assert!(!Path::new("/tmp/pond-evil.parquet").exists());
        let out = pond(&["verify", &format!("file://{}", s(&remote))]);
        assert_eq!(out.status.code(), Some(1), "verify URL reports the forged path");
        assert!(String::from_utf8_lossy(&out.stdout).contains(named), "{}", String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn restore_refuses_a_non_empty_target_and_replicate_refuses_another_ponds_remote() {
    let a = rich_pond();
    let remote = a.scratch("remote");
    push(&a.root, &remote);
    let target = a.scratch("occupied");
    std::fs::write(target.join("keep.txt"), b"mine").unwrap();
    let out = pond(&["restore", s(&remote), s(&target)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"));
    assert_eq!(std::fs::read(target.join("keep.txt")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 1);
    assert_no_staging_left(&target);
    // An empty directory is a fine target; what a killed restore to it left (its process is gone) goes.
    let empty = a.scratch("empty");
    let stale = a.dir.path().join("empty.restore-tmp-999999999");
    std::fs::create_dir_all(stale.join("_delta_log")).unwrap();
    pond_ok(&["restore", s(&remote), s(&empty)]);
    assert!(!stale.exists(), "a dead restore's staging directory is removed");
    assert_no_staging_left(&empty);

    let inside = pond(&["replicate", a.path(), s(&a.root.join("backup"))]);
    assert!(
        String::from_utf8_lossy(&inside.stderr).contains("contain one another"),
        "a remote inside the pond is refused"
    );
    assert!(!a.root.join("backup").join("_delta_log").exists());

    let b = TestPond::new();
    let before = remote_files(&remote);
    let out = pond(&["replicate", b.path(), s(&remote)]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another pond's replica"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(remote_files(&remote), before, "nothing sent to another pond's remote");
}

#[test]
fn replicates_to_and_restores_from_s3() {
    let server = crate::common::s3::s3();
    let env = server.env();
    let src = rich_pond();
    {
        // Past one multipart part (8 MiB): a streamed multipart upload.
        let fs = src.open();
        write_file(&fs, ROOT_INO, "huge", &pattern((9 << 20) + 17, 5));
        fs.shutdown().unwrap();
    }
    let url = server.url();
    let out = pond_env(&["replicate", src.path(), &url], &env);
    assert!(out.status.success(), "replicate to S3: {}", String::from_utf8_lossy(&out.stderr));
    assert!(count_after(&summary_line(&out), "sent") > 0);
    let out = pond_env(&["replicate", src.path(), &url], &env);
    let line = summary_line(&out);
    assert_eq!(count_after(&line, "sent"), 0, "{line}");

    let out = pond_env(&["verify", &url], &env);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("clean:"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let target = src.dir.path().join("restored");
    let out = pond_env(&["restore", &url, s(&target)], &env);
    assert!(out.status.success(), "restore from S3: {}", String::from_utf8_lossy(&out.stderr));
    assert_same_tree(&tree_snapshot(&open_ro(&target)), &tree_snapshot(&open_ro(&src.root)), "restored from S3");
}

#[test]
fn the_remote_opens_with_python_deltalake() {
    let src = rich_pond();
    let remote = src.scratch("remote");
    push(&src.root, &remote);
    let script = r#"
import json, os, sys
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1])
files = sorted(os.path.basename(u) for u in t.file_uris())
print(json.dumps({"version": t.version(), "files": files, "rows": t.to_pyarrow_table().num_rows}))
"#;
    let out = crate::common::python_deltalake(script, &[remote.as_os_str()]);
    assert!(out.status.success(), "python deltalake: {}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json from python");

    let oplog = runtime().block_on(Oplog::open(&src.root, None)).unwrap();
    let mut files: Vec<String> = oplog.data_files().unwrap().into_iter().map(|(f, _)| f.to_string()).collect();
    files.sort();
    let rows: usize = files
        .iter()
        .map(|f| pond::oplog::datafile::read_rows(&src.root, &Arc::from(f.as_str()), false).unwrap().len())
        .sum();
    assert_eq!(got["version"], serde_json::json!(oplog.version()));
    assert_eq!(got["files"], serde_json::json!(files));
    assert_eq!(got["rows"], serde_json::json!(rows));
}

// ---------------------------------------------------------------------------------------------------
// A remote that lies, and copies that stay private (issue 12)

/// A small pond replicated to `remote`; returns its latest version.
fn pushed_pond(remote: &Path) -> (TestPond, u64) {
    let src = TestPond::new();
    {
        let fs = src.open();
        write_file(&fs, ROOT_INO, "small", b"small");
        write_file(&fs, ROOT_INO, "large", &pattern(2 * C + 5, 8));
        fs.shutdown().unwrap();
    }
    push(&src.root, remote);
    let latest = latest_version(&src.root);
    (src, latest)
}

#[test]
fn restore_refuses_a_log_with_a_gap_before_allocating() {
    let base = tempfile::tempdir().unwrap();
    let remote = base.path().join("remote");
    let (_src, latest) = pushed_pond(&remote);
    let first = remote.join("_delta_log/00000000000000000000.json");
    let target = base.path().join("restored");
    // Two tiny files that once made restore allocate ~400 GB (and u64::MAX overflow): refused from
    // the listing, before anything is fetched or allocated per version.
    for far in [10_000_000_000u64, u64::MAX] {
        let planted = remote.join(format!("_delta_log/{far:020}.json"));
        std::fs::copy(&first, &planted).unwrap();
        assert_restore_refused(s(&remote), &target, &format!("jumps from version {latest} to version {far}"));
        let out = pond(&["verify", &format!("file://{}", s(&remote))]);
        assert_eq!(out.status.code(), Some(2), "verify URL refuses it too: {}", crate::common::describe(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("version {far}")));
        std::fs::remove_file(&planted).unwrap();
    }
    // A gap inside the log, and a log that starts after version 0 with no checkpoint there.
    let second = remote.join("_delta_log/00000000000000000001.json");
    let kept = std::fs::read(&second).unwrap();
    std::fs::remove_file(&second).unwrap();
    assert_restore_refused(s(&remote), &target, "jumps from version 0 to version 2");
    std::fs::remove_file(&first).unwrap();
    assert_restore_refused(s(&remote), &target, "starts at version 2, which is neither version 0 nor a checkpoint's");
    std::fs::write(&second, kept).unwrap();
}

#[test]
fn a_log_may_start_at_a_checkpoint_but_nowhere_else() {
    // A pruned pond's replica starts at a checkpoint, and starts a run again at one after a gap.
    let mut listing = replica::Listing::default();
    for v in 50..=60 {
        listing.files.insert(replica::PondFile::Log(v), 10);
    }
    assert!(matches!(listing.readable(), Err(replica::ReplicaError::LogStart(50))));
    listing.files.insert(replica::PondFile::Checkpoint(49), 10);
    let versions = |l: &replica::Listing| l.readable().unwrap().into_iter().map(|(v, _)| v).collect::<Vec<_>>();
    assert_eq!(versions(&listing), (49..=60).collect::<Vec<_>>(), "the entries right after a checkpoint");
    listing.files.insert(replica::PondFile::Checkpoint(50), 10);
    listing.files.insert(replica::PondFile::Log(62), 10);
    assert!(matches!(listing.readable(), Err(replica::ReplicaError::LogGap { before: 60, after: 62 })));
    listing.files.insert(replica::PondFile::Checkpoint(62), 10);
    let runs: Vec<u64> = (49..=60).chain([62]).collect();
    assert_eq!(versions(&listing), runs, "a run again from a checkpoint after the gap");
    assert!(replica::Listing::default().readable().unwrap().is_empty());
}

#[test]
fn a_log_entry_or_hint_listed_past_its_kind_s_cap_is_never_fetched() {
    let base = tempfile::tempdir().unwrap();
    let remote = base.path().join("remote");
    let (_src, latest) = pushed_pond(&remote);
    let target = base.path().join("restored");
    // Sparse: the remote lists them huge, and a reader that fetched them would read it all.
    for (file, cap) in [
        (format!("_delta_log/{latest:020}.json"), pond::layout::MAX_LOG_ENTRY_SIZE),
        ("_delta_log/_last_checkpoint".to_string(), pond::layout::MAX_LAST_CHECKPOINT_SIZE),
    ] {
        let path = remote.join(&file);
        let kept = std::fs::read(&path).ok();
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cap + 1)
            .unwrap();
        assert_restore_refused(
            s(&remote),
            &target,
            &format!("the remote lists {file} at {} bytes, more than the {cap}", cap + 1),
        );
        let out = pond(&["verify", &format!("file://{}", s(&remote))]);
        assert_eq!(out.status.code(), Some(1), "verify URL reports it: {}", crate::common::describe(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&file), "{}", crate::common::describe(&out));
        match kept {
            Some(bytes) => std::fs::write(&path, bytes).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
    }
}

#[test]
fn a_directory_remote_holding_a_link_is_refused_and_nothing_is_read_or_written_through_it() {
    let base = tempfile::tempdir().unwrap();
    let remote = base.path().join("remote");
    let (src, _) = pushed_pond(&remote);
    let target = base.path().join("restored");
    let object = object_path(&remote, &pattern(2 * C + 5, 8));
    let outside = base.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    // The link leads to the very bytes the remote should hold: followed, the restore would verify
    // and succeed, having read a file outside the remote.
    let elsewhere = outside.join("object.parquet");
    std::fs::rename(&object, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &object).unwrap();
    let name = object.strip_prefix(&remote).unwrap().to_str().unwrap().to_string();
    assert_restore_refused(s(&remote), &target, &format!("the remote holds {name}, a symbolic link"));
    std::fs::remove_file(&object).unwrap();
    std::fs::rename(&elsewhere, &object).unwrap();

    // A linked directory: nothing read through it, and replicate writes nothing through it.
    let large = remote.join("_large_files");
    std::fs::rename(&large, outside.join("_large_files")).unwrap();
    std::os::unix::fs::symlink(outside.join("_large_files"), &large).unwrap();
    assert_restore_refused(s(&remote), &target, "the remote holds _large_files, a symbolic link");
    let before = std::fs::read_dir(outside.join("_large_files")).unwrap().count();
    {
        let fs = src.open();
        write_file(&fs, ROOT_INO, "more", &pattern(3 * C, 9));
        fs.shutdown().unwrap();
    }
    let out = pond(&["replicate", src.path(), s(&remote)]);
    assert_eq!(out.status.code(), Some(2), "replicate refuses it: {}", crate::common::describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a symbolic link"), "{}", crate::common::describe(&out));
    assert_eq!(std::fs::read_dir(outside.join("_large_files")).unwrap().count(), before, "nothing written through it");

    // A FIFO where a file should be: refused by name, never opened (opening one would block).
    std::fs::remove_file(&large).unwrap();
    std::fs::rename(outside.join("_large_files"), &large).unwrap();
    let entry = remote.join("_delta_log/00000000000000000001.json");
    std::fs::remove_file(&entry).unwrap();
    nix::unistd::mkfifo(&entry, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert_restore_refused(s(&remote), &target, "the remote holds _delta_log/00000000000000000001.json, a FIFO");
}

/// What `strace -f -e trace=rename,renameat,renameat2,syncfs` logged of `pond args`, run with umask
/// 022: each line the syscall and its arguments.
fn traced_pond(args: &[&str], dir: &Path) -> Vec<String> {
    let trace = dir.join("trace");
    let out = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=rename,renameat,renameat2,syncfs", "-o"])
        .arg(&trace)
        .arg(pond_bin())
        .args(args)
        .output()
        .expect("strace (apt-get install strace)");
    assert!(out.status.success(), "pond {args:?} under strace: {}", crate::common::describe(&out));
    std::fs::read_to_string(&trace).unwrap().lines().map(str::to_string).collect()
}

#[test]
fn replicate_makes_objects_then_data_files_then_log_entries_durable_before_the_next_and_the_hint_last() {
    // A power cut of a directory remote must never leave a data file whose objects are torn, nor a
    // log entry whose data files are, nor a hint whose checkpoint is.
    let src = TestPond::new();
    {
        let fs = src.open();
        for i in 0..52 {
            write_file(&fs, ROOT_INO, &format!("f{i}"), &pattern(if i % 10 == 0 { T + 1 + i } else { 10 }, i as u64));
            fs.sync_all().unwrap();
        }
        fs.shutdown().unwrap();
    }
    let remote = src.dir.path().join("remote");
    let trace = traced_pond(&["replicate", src.path(), s(&remote)], src.dir.path());
    // Each rename into place (within its directory), by the kind of file it lands; syncfs as `sync`.
    let mut steps: Vec<&str> = Vec::new();
    for line in &trace {
        let step = if line.contains("syncfs(") {
            "sync"
        } else if let Some(to) = line.rsplit(", \"").next().and_then(|t| t.split('"').next()) {
            let name = to.rsplit('/').next().unwrap_or(to);
            let stem = name.strip_suffix(".parquet").unwrap_or("");
            if name == "_last_checkpoint" {
                "hint"
            } else if name.ends_with(".json") || name.contains(".checkpoint.") {
                "log"
            } else if stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit()) {
                "object"
            } else if name.starts_with("part-") {
                "data"
            } else {
                continue;
            }
        } else {
            continue;
        };
        if steps.last() != Some(&step) {
            steps.push(step);
        }
    }
    assert_eq!(steps, ["object", "sync", "data", "sync", "log", "sync", "hint", "sync"], "{}", trace.join("\n"));
}

/// Every directory under `root` (itself included) 0700 and every file 0600, or the first that is not.
fn assert_private(root: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![root.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{what}: directory {} is {mode:o}", d.display());
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                let mode = meta.permissions().mode() & 0o7777;
                assert_eq!(mode, 0o600, "{what}: file {} is {mode:o}", e.path().display());
            }
        }
    }
    assert!(files > 3, "{what}: there were files to check");
}

/// `pond args` run with umask 022 (what most shells have), as root.
fn pond_with_umask_022(args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(pond_bin());
    cmd.args(args);
    // SAFETY: umask is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    cmd.output().expect("run pond")
}

#[test]
fn a_directory_remote_and_a_restored_pond_are_private_whatever_the_umask() {
    let src = rich_pond();
    {
        // Past the first checkpoint, so the remote holds one and `_last_checkpoint` too.
        let fs = src.open();
        for i in 0..50 {
            write_file(&fs, ROOT_INO, &format!("n{i}"), b"n");
            fs.sync_all().unwrap();
        }
        fs.shutdown().unwrap();
    }
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let remote = base.path().join("remote");
    let out = pond_with_umask_022(&["replicate", src.path(), s(&remote)]);
    assert!(out.status.success(), "{}", crate::common::describe(&out));
    assert!(remote.join("_delta_log/_last_checkpoint").exists(), "the hint was replicated");
    assert_private(&remote, "the remote");
    // A fresh target, and a user's empty 0700 one (never swapped for a wider one).
    let fresh = base.path().join("fresh");
    let existing = base.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::set_permissions(&existing, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    for target in [&fresh, &existing] {
        let out = pond_with_umask_022(&["restore", s(&remote), s(target)]);
        assert!(out.status.success(), "{}", crate::common::describe(&out));
        assert_private(target, &format!("the pond restored to {}", target.display()));
    }
    // Another user reads none of it, though it can reach the directory they are in.
    for file in [object_path(&remote, &pattern(5 * C + 123, 99)), object_path(&fresh, &pattern(5 * C + 123, 99))] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(&file)
            .output()
            .expect("setpriv");
        assert!(!out.status.success() && out.stdout.is_empty(), "uid 65534 read {}", file.display());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}",
            crate::common::describe(&out)
        );
    }
}
