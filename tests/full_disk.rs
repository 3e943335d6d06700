//! Full disk: a pond on a size-limited tmpfs that the test fills with ballast, leaving a random
//! amount of room each round (so the disk runs out in a different place each time: in a large
//! object, a data file, a log entry, a checkpoint).
//!
//! What must hold: a write that does not fit fails with ENOSPC (from write, close or fsync) and
//! with nothing else; every file an fsync acknowledged stays readable, byte for byte, while the
//! disk is full; the mount keeps answering; truncating to empty works on a full disk; once the
//! ballast goes, writes succeed again, and a file whose write failed holds its older content or
//! the new one, never a mix; every log entry names only data files that exist, and `pond verify`
//! is clean at the end and after a remount. Replay a failure with `POND_FAULT_SEED=<seed>`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::rng::Rng;
use crate::common::sizes::T;
use crate::common::{Mounted, assert_same_bytes, close, describe, pattern, pond, pond_ok, run_ok, soak};

/// Room left per round is drawn from `0..MAX_ROOM`.
const MAX_ROOM: usize = 2 << 20;
/// Files a round tries to write; it stops early after `MAX_FAILURES` of them failed.
const WRITES_PER_ROUND: usize = 24;
const MAX_FAILURES: usize = 3;
/// Bytes of content the large-file writer buffers before its first write to disk: the chunks a
/// draft keeps in memory, then a row group of its pack.
const ROW_GROUP: usize = (pond::large_files::draft::DIRTY_BUDGET + pond::large_files::format::PACK_ROW_GROUP_CHUNKS)
    * pond::config::CHUNK_SIZE as usize;

/// A size-limited tmpfs, mounted for one test and unmounted (lazily) on every path out of it.
struct SmallFs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SmallFs {
    fn new(bytes: u64) -> SmallFs {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("small");
        std::fs::create_dir(&path).expect("small fs mountpoint");
        run_ok(
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "pond-test-full"]).arg(&path),
        );
        SmallFs { _dir: dir, path }
    }

    fn available(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.path).expect("statvfs of the small fs");
        st.blocks_available() as u64 * st.fragment_size() as u64
    }

    /// Write ballast until at most `room` bytes are left; the ballast file's path.
    fn fill(&self, room: u64) -> PathBuf {
        let path = self.path.join("ballast");
        let mut f = File::create(&path).expect("create ballast");
        let block = vec![0xA5u8; 1 << 20];
        loop {
            let avail = self.available();
            if avail <= room {
                break;
            }
            let n = ((avail - room) as usize).min(block.len());
            match f.write(&block[..n]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("writing ballast: {e}"),
            }
        }
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Create or replace `path` with `data` in 128 KiB writes, fsync, close: the first failure and the
/// step it came from.
fn write_fsync_close(path: &Path, data: &[u8]) -> Result<(), (&'static str, io::Error)> {
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(path).map_err(|e| ("open", e))?;
    for piece in data.chunks(128 << 10) {
        if let Err(e) = f.write_all(piece) {
            let _ = close(f);
            return Err(("write", e));
        }
    }
    if let Err(e) = f.sync_all() {
        let _ = close(f);
        return Err(("fsync", e));
    }
    close(f).map_err(|e| ("close", e))
}

/// Every acknowledged file reads back as acknowledged.
fn check_acknowledged(mountpoint: &Path, acked: &BTreeMap<String, Vec<u8>>, when: &str) {
    for (name, want) in acked {
        let got = std::fs::read(mountpoint.join(name)).unwrap_or_else(|e| panic!("{when}: reading {name}: {e}"));
        assert_same_bytes(&got, want, &format!("{when}: {name}"));
    }
}

/// What the mount shows of `name` once everything pending is committed, checked against what
/// the pond holds (`pond cat`): a kernel cache still holding writes the daemon dropped would differ.
fn seen_and_committed(mountpoint: &Path, pond_dir: &Path, name: &str, when: &str) -> Vec<u8> {
    let path = mountpoint.join(name);
    File::open(&path).and_then(|f| f.sync_all()).unwrap_or_else(|e| panic!("{when}: fsync of {name}: {e}"));
    let seen = std::fs::read(&path).unwrap_or_else(|e| panic!("{when}: reading {name}: {e}"));
    let out = pond(&["cat", pond_dir.to_str().unwrap(), name]);
    assert!(out.status.success(), "{when}: pond cat {name}: {}", describe(&out));
    if seen != out.stdout {
        let log = std::fs::read_to_string(pond_dir.join("_pond/mount.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!(
            "{when}: {name}: the mount shows {} bytes, the pond holds {}; pond log:\n{}\ndaemon log (last lines first):\n{}",
            seen.len(),
            out.stdout.len(),
            String::from_utf8_lossy(&pond(&["log", pond_dir.to_str().unwrap()]).stdout),
            tail.join("\n")
        );
    }
    assert_same_bytes(&seen, &out.stdout, &format!("{when}: {name} through the mount vs in the pond"));
    seen
}

/// The mount answers a stat and a listing of its root within a second.
fn assert_serving(mountpoint: &Path, when: &str) {
    let start = Instant::now();
    std::fs::metadata(mountpoint).unwrap_or_else(|e| panic!("{when}: stat of the mount: {e}"));
    std::fs::read_dir(mountpoint).unwrap_or_else(|e| panic!("{when}: listing the mount: {e}")).for_each(drop);
    assert!(start.elapsed() < Duration::from_secs(1), "{when}: the mount took {:?} to answer", start.elapsed());
}

/// Every data file any log entry adds exists: the log never holds a commit whose files are missing.
fn assert_log_names_only_present_files(pond: &Path, when: &str) {
    let log = pond.join("_delta_log");
    for entry in std::fs::read_dir(&log).expect("read _delta_log").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") || name.starts_with('_') || name.starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_else(|e| panic!("{when}: reading {name}: {e}"));
        for line in text.lines() {
            let action: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{when}: {name} holds a torn line ({e})"));
            if let Some(path) = action.get("add").and_then(|a| a.get("path")).and_then(|p| p.as_str()) {
                assert!(pond.join(path).is_file(), "{when}: log entry {name} adds {path}, which is missing");
            }
        }
    }
}

#[test]
fn a_full_disk_fails_writes_with_enospc_keeps_what_was_acknowledged_and_recovers() {
    let seed: u64 = std::env::var("POND_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0xD15C);
    let mut rng = Rng::new(seed);
    let rounds = soak::rounds(4);
    // Room for what the rounds keep (history is never freed by a delete) plus one round's ballast.
    let small = SmallFs::new(24 * (1 << 20) + rounds * (6 << 20));
    let pond_dir = small.path.join("pond");
    pond_ok(&["init", pond_dir.to_str().unwrap()]);
    let scratch = tempfile::tempdir().expect("tempdir");
    let mnt = Mounted::new(&pond_dir, &scratch.path().join("mnt"), &[]);
    let at = |name: &str| mnt.path(name);

    let mut acked: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (name, size) in [("before-inline", T / 2), ("before-large", 3 * T + 5)] {
        let data = pattern(size, rng.next());
        write_fsync_close(&at(name), &data).unwrap_or_else(|(step, e)| panic!("{step} of {name} with room: {e}"));
        acked.insert(name.to_string(), data);
    }

    let mut faults = 0u64;
    let mut failed_at: BTreeMap<&str, u64> = BTreeMap::new();
    let mut serial = 0usize;
    for round in 0..rounds {
        let when = format!("round {round} (seed {seed:#x})");
        let room = rng.below(MAX_ROOM) as u64;
        let ballast = small.fill(room);

        // Past a row group of chunks the object is written while the file is, so a file that
        // big runs out of space in `write` itself (smaller ones do at close or fsync).
        let mut huge = None;
        if rng.chance(50) {
            let name = format!("r{round}-huge");
            let data = pattern(ROW_GROUP + rng.below(4 << 20), rng.next());
            match write_fsync_close(&at(&name), &data) {
                Ok(()) => panic!("{when}: {name} ({} bytes) fit in {room} bytes of room", data.len()),
                Err((step, e)) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{when}: {step} of {name} failed with {e}");
                    faults += 1;
                    *failed_at.entry(step).or_default() += 1;
                }
            }
            huge = Some(name);
        }
        let mut failed: Vec<(String, Vec<u8>)> = Vec::new();
        for _ in 0..WRITES_PER_ROUND {
            serial += 1;
            let name = format!("r{round}-{serial}");
            let size = if rng.chance(50) { rng.between(1, T + 1) } else { rng.between(T + 1, 16 * T) };
            let data = pattern(size, rng.next());
            match write_fsync_close(&at(&name), &data) {
                Ok(()) => {
                    acked.insert(name, data);
                }
                Err((step, e)) => {
                    assert_eq!(
                        e.raw_os_error(),
                        Some(libc::ENOSPC),
                        "{when}: {step} of {name} ({size} bytes, {room} bytes of room) failed with {e}, not ENOSPC"
                    );
                    faults += 1;
                    *failed_at.entry(step).or_default() += 1;
                    failed.push((name, data));
                    if failed.len() >= MAX_FAILURES {
                        break;
                    }
                }
            }
        }

        // Full, the mount still serves, and everything acknowledged is there.
        assert_serving(&mnt.mountpoint, &format!("{when}, disk full"));
        check_acknowledged(&mnt.mountpoint, &acked, &format!("{when}, disk full"));
        // Truncating to empty needs no room (it is how a user makes some).
        let emptied = acked.keys().find(|n| acked[*n].len() > T).cloned();
        if let Some(name) = &emptied {
            let f = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(at(name))
                .unwrap_or_else(|e| panic!("{when}: O_TRUNC of {name} on a full disk: {e}"));
            close(f).unwrap_or_else(|e| panic!("{when}: close after O_TRUNC of {name}: {e}"));
            assert_eq!(std::fs::metadata(at(name)).expect("stat").len(), 0, "{when}: {name} after O_TRUNC");
        }

        std::fs::remove_file(&ballast).expect("remove ballast");

        // With room again: the truncate commits, each failed file holds its older content
        // (nothing, or the whole new content whose commit was only delayed), and every write works.
        if let Some(name) = emptied {
            File::open(at(&name)).and_then(|f| f.sync_all()).unwrap_or_else(|e| panic!("{when}: fsync of {name}: {e}"));
            acked.insert(name, Vec::new());
        }
        if let Some(name) = huge {
            // Not written again (history would keep every copy): it holds what it held before
            // the failed write, nothing, and goes.
            let got = seen_and_committed(&mnt.mountpoint, &pond_dir, &name, &when);
            assert_eq!(got.len(), 0, "{when}: {name} after its write ran out of space");
            std::fs::remove_file(at(&name)).unwrap_or_else(|e| panic!("{when}: rm {name}: {e}"));
        }
        for (name, data) in failed {
            let got = seen_and_committed(&mnt.mountpoint, &pond_dir, &name, &when);
            if got.is_empty() || got.len() == data.len() {
                assert_same_bytes(&got, &data[..got.len()], &format!("{when}: {name} after a failed write"));
            } else {
                panic!("{when}: {name} holds {} of its {} bytes after a failed write", got.len(), data.len());
            }
            write_fsync_close(&at(&name), &data)
                .unwrap_or_else(|(step, e)| panic!("{when}: {step} of {name} once space was freed: {e}"));
            acked.insert(name, data);
        }
        check_acknowledged(&mnt.mountpoint, &acked, &format!("{when}, space freed"));
        assert_log_names_only_present_files(&pond_dir, &when);

        // Keep the mount's working set small: delete about half of what this round wrote.
        let names: Vec<String> = acked.keys().filter(|n| n.starts_with(&format!("r{round}-"))).cloned().collect();
        for name in names {
            if rng.chance(50) {
                std::fs::remove_file(at(&name)).unwrap_or_else(|e| panic!("{when}: rm {name}: {e}"));
                acked.remove(&name);
            }
        }
    }

    mnt.unmount();
    let out = pond(&["verify", pond_dir.to_str().unwrap()]);
    assert!(out.status.success(), "pond verify after the full-disk rounds: {}", describe(&out));
    assert_log_names_only_present_files(&pond_dir, "after unmount");
    let again = Mounted::new(&pond_dir, &scratch.path().join("mnt"), &["ro"]);
    check_acknowledged(&again.mountpoint, &acked, "after remount");
    again.unmount();

    eprintln!("full disk: ENOSPC came from {failed_at:?}");
    soak::report("full-disk", rounds, faults, 0);
    assert!(faults >= rounds, "only {faults} writes ran out of space in {rounds} rounds: the disk never filled");
}
