//! Prune racing everything else (the fault suite's prune part): on a live read-write mount, a
//! seeded writer replaces, appends to and patches files and fsyncs them, while `pond prune` runs
//! again and again with seeded rules (through the mount's daemon), `pond replicate --follow` ships
//! to a directory remote which `pond prune URL` prunes now and then (the remote's lock keeps the
//! two apart), and a reader reads the files all along (a read never fails: prune must
//! not take what a file being read needs). Nothing a kept
//! version or an in-flight commit needs may go: at the end every file holds what was last fsynced,
//! `pond verify` of the pond and of the remote are clean, and the remote restores equal to the pond.
//!
//! `POND_FAULT_SEED` replays one schedule; `POND_SOAK_SCALE` (scripts/soak.sh) runs it longer.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::rng::Rng;
use crate::common::sizes::{C, T};
use crate::common::{ChildGuard, Mounted, TestPond, assert_same_bytes, pattern, pond, pond_bin, pond_ok, soak};

const FILES: usize = 5;

fn seed() -> u64 {
    std::env::var("POND_FAULT_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        })
}

/// What the writer did to a file: its whole content after the last fsync.
type Model = Arc<Mutex<BTreeMap<String, Vec<u8>>>>;

fn write_and_fsync(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    crate::common::close(f)
}

/// One seeded change to `name` (replace, append or patch), fsynced; returns the new content.
fn change(rng: &mut Rng, dir: &Path, name: &str, old: &[u8]) -> std::io::Result<Vec<u8>> {
    let path = dir.join(name);
    match rng.below(3) {
        0 => {
            let sizes = [T / 4, T + 1, 3 * C + 17, 12 * C];
            let new = pattern(*rng.one_of(&sizes), rng.next());
            write_and_fsync(&path, &new)?;
            Ok(new)
        }
        1 => {
            let tail = pattern(rng.between(1, 2 * C), rng.next());
            let mut f = OpenOptions::new().append(true).open(&path)?;
            f.write_all(&tail)?;
            f.sync_all()?;
            crate::common::close(f)?;
            Ok([old, &tail].concat())
        }
        _ => {
            let mut new = old.to_vec();
            let at = rng.below(new.len().max(1));
            let patch = pattern(rng.between(1, C / 2), rng.next());
            let f = OpenOptions::new().write(true).open(&path)?;
            f.write_all_at(&patch, at as u64)?;
            f.sync_all()?;
            crate::common::close(f)?;
            new.resize(new.len().max(at + patch.len()), 0);
            new[at..at + patch.len()].copy_from_slice(&patch);
            Ok(new)
        }
    }
}

#[test]
fn prune_racing_commits_readers_and_a_replicate_loses_nothing() {
    let seed = seed();
    eprintln!("prune race: POND_FAULT_SEED={seed:#x}");
    let p = TestPond::new();
    let mnt = p.scratch("mnt");
    let remote = p.scratch("remote");
    let m = Mounted::new(&p.root, &mnt, &[]);
    let model: Model = Arc::default();
    for i in 0..FILES {
        let name = format!("f{i}");
        let data = pattern(3 * C + i, seed ^ i as u64);
        write_and_fsync(&mnt.join(&name), &data).expect("first version");
        model.lock().unwrap().insert(name, data);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let failed_reads = Arc::new(AtomicU64::new(0));
    let follow = ChildGuard(
        Command::new(pond_bin())
            .args(["replicate", p.path(), remote.to_str().unwrap(), "--follow"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("replicate --follow"),
    );
    let deadline = Instant::now() + soak::duration(Duration::from_secs(20));

    let writer = {
        let (model, stop, mnt) = (model.clone(), stop.clone(), mnt.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(seed);
            let mut changes = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let name = format!("f{}", rng.below(FILES));
                let old = model.lock().unwrap()[&name].clone();
                let new = change(&mut rng, &mnt, &name, &old).unwrap_or_else(|e| panic!("changing {name}: {e}"));
                model.lock().unwrap().insert(name, new);
                changes += 1;
            }
            changes
        })
    };
    let reader = {
        let (stop, mnt, failed) = (stop.clone(), mnt.clone(), failed_reads.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(seed ^ 0xabcd);
            while !stop.load(Ordering::SeqCst) {
                // The writer changes files in place, so what a read sees may be mid-change; but a
                // read must never fail: prune must not take chunks a file being read needs.
                let name = format!("f{}", rng.below(FILES));
                if let Err(e) = std::fs::read(mnt.join(&name)) {
                    failed.fetch_add(1, Ordering::SeqCst);
                    eprintln!("reading {name}: {e}");
                }
            }
        })
    };

    // The pruner: seeded rules, again and again, through the mount's daemon.
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut prunes = 0u64;
    let mut remote_prunes = 0u64;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(rng.between(100, 600) as u64));
        let keep = rng.between(1, 4).to_string();
        let mut args = vec!["prune", p.path(), "--keep-last", keep.as_str()];
        if rng.chance(20) {
            args.push("--dry-run");
        }
        let out = pond(&args);
        assert!(out.status.success(), "prune {args:?} (seed {seed:#x}): {}", crate::common::describe(&out));
        prunes += 1;
        // The replica too, where it lies, between (and waiting for) replicate's passes.
        if rng.chance(35) && remote.join("_delta_log").exists() {
            let url = format!("file://{}", remote.to_str().unwrap());
            let keep = rng.between(1, 4).to_string();
            let args = ["prune", url.as_str(), "--keep-last", keep.as_str()];
            let out = pond(&args);
            assert!(out.status.success(), "prune {args:?} (seed {seed:#x}): {}", crate::common::describe(&out));
            remote_prunes += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let changes = writer.join().expect("writer");
    reader.join().expect("reader");
    assert_eq!(failed_reads.load(Ordering::SeqCst), 0, "failed reads (seed {seed:#x})");

    // What was last fsynced is there, through the mount and after it.
    let model = model.lock().unwrap().clone();
    for (name, want) in &model {
        assert_same_bytes(
            &std::fs::read(mnt.join(name)).unwrap(),
            want,
            &format!("{name} on the mount (seed {seed:#x})"),
        );
    }
    m.unmount();
    let mut lost = 0;
    for (name, want) in &model {
        let got = pond(&["cat", p.path(), name]).stdout;
        if &got != want {
            lost += 1;
        }
        assert_same_bytes(&got, want, &format!("{name} after unmount (seed {seed:#x})"));
    }
    let v = pond_ok(&["verify", p.path()]);
    assert!(v.lines().last().is_some_and(|l| l.starts_with("clean")), "verify of the pond (seed {seed:#x}): {v}");

    // The replica caught up, verifies and restores to what the pond holds.
    let shipped = wait_for_remote(&p.root, &remote, Duration::from_secs(30));
    drop(follow);
    assert!(shipped, "replicate --follow caught up with the pond (seed {seed:#x})");
    let rv = pond_ok(&["verify", remote.to_str().unwrap()]);
    assert!(rv.lines().last().is_some_and(|l| l.starts_with("clean")), "verify of the remote (seed {seed:#x}): {rv}");
    let restored = p.dir.path().join("restored");
    pond_ok(&["restore", remote.to_str().unwrap(), restored.to_str().unwrap()]);
    for (name, want) in &model {
        assert_same_bytes(&pond(&["cat", restored.to_str().unwrap(), name]).stdout, want, &format!("{name} restored"));
    }
    eprintln!("prune race: {remote_prunes} prunes of the replica");
    soak::report("prune_race", changes, prunes + remote_prunes, lost);
}

/// Waits until the remote holds the pond's latest log entry; false if it did not within `limit`.
fn wait_for_remote(root: &Path, remote: &Path, limit: Duration) -> bool {
    let latest = crate::common::latest_version(root);
    let entry = remote.join(format!("_delta_log/{latest:020}.json"));
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if entry.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
