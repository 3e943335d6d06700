//! Chunk-level storage (issue 15) end to end: through real mounts and the `pond` binary, a change
//! to a large file stores the chunks it touched (an append, a pwrite, an rsync of a changed copy),
//! a chunk files share is one place whose damage reads as EIO in each and `pond verify` names with
//! each object and file using it, a missing pack is named with every object that needs it, a version mount reads a file spread over several packs as each
//! version had it, and a restore at an old version fetches only what that version needs.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pond::large_files::{Blake3Hash, LargeFileStore};
use pond::layout::PondFile;
use pond::oplog::ROOT_INO;

use crate::common::sizes::C;
use crate::common::store::{chunk_place, corrupt_stored_chunk, large_files_bytes, store_files};
use crate::common::{
    Mounted, TestPond, assert_same_bytes, close, describe, latest_version, pattern, pond, pond_ok, run_ok, write_file,
    write_version,
};

/// What storing `stored` new chunks for an object of `rows` chunks may cost beyond the chunks'
/// bytes: the manifest (about 40 bytes a row), the new pack's page headers, page index and hash
/// column (200 bytes a chunk, generously), and a footer with its metadata for each of the two
/// files (8 KiB each). Well under one chunk for the small changes below, so one chunk stored more
/// than needed fails the bound.
fn overhead(stored: usize, rows: usize) -> u64 {
    (stored * 200 + rows * 40 + 2 * 8192) as u64
}

/// Wait (up to 20 s) until the pond's committed `path` holds `want`: a close on the mount commits
/// a moment after it returns.
fn wait_committed(root: &Path, path: &str, want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = pond(&["cat", root.to_str().expect("utf-8 path"), path]);
        if out.status.success() && out.stdout == want {
            return;
        }
        if Instant::now() > deadline {
            assert!(out.status.success(), "pond cat {path}: {}", describe(&out));
            assert_same_bytes(&out.stdout, want, &format!("committed {path}, 20 s after it was closed"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hash_of(data: &[u8]) -> Blake3Hash {
    Blake3Hash::from(blake3::hash(data))
}

/// The `DAMAGED` lines of a `pond verify` that must have failed (exit 1).
fn damage_lines(root: &Path) -> Vec<String> {
    let out = pond(&["verify", root.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1), "verify must report damage: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("DAMAGED ")).map(str::to_string).collect()
}

/// Whether a `pond verify` line names inode `ino` (`inode 2 in part-...`, `..., inode 2`).
fn names_inode(line: &str, ino: u64) -> bool {
    line.split("inode ").skip(1).any(|rest| rest.split(|c: char| !c.is_ascii_digit()).next() == Some(&ino.to_string()))
}

/// The name `pond verify` gives a store file: `_large_files/...parquet`.
fn store_name(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).expect("under the pond").to_string_lossy().into_owned()
}

#[test]
fn an_append_and_a_pwrite_through_a_mount_store_only_the_chunks_they_change() {
    let p = TestPond::new();
    let m = Mounted::new(&p.root, &p.scratch("mnt"), &[]);
    let mut want = pattern(64 * C, 1);

    let before = large_files_bytes(&p.root);
    std::fs::write(m.path("big"), &want).expect("write 64 chunks");
    wait_committed(&p.root, "big", &want);
    let grew = large_files_bytes(&p.root) - before;
    let limit = (64 * C) as u64 + overhead(64, 64);
    assert!(
        grew >= (64 * C) as u64 && grew <= limit,
        "a new file of 64 chunks ({} bytes) grew _large_files by {grew} bytes (want {}..={limit}: stored once)",
        64 * C,
        64 * C
    );

    // (a) An append of two chunks in its own open/write/close: the 64 chunks stay where they are.
    let tail = pattern(2 * C, 2);
    let before = large_files_bytes(&p.root);
    let mut f = OpenOptions::new().append(true).open(m.path("big")).expect("open O_APPEND");
    f.write_all(&tail).expect("append");
    close(f).expect("close");
    want.extend_from_slice(&tail);
    wait_committed(&p.root, "big", &want);
    let grew = large_files_bytes(&p.root) - before;
    let limit = (2 * C) as u64 + overhead(2, 66);
    assert!(
        grew <= limit,
        "appending 2 chunks ({} bytes) to 64 grew _large_files by {grew} bytes (limit {limit})",
        2 * C
    );

    // (b) 4 KiB overwritten inside chunk 33 with open/pwrite/close: one chunk and a manifest.
    let patch = pattern(4096, 3);
    let at = 33 * C + 1000;
    let before = large_files_bytes(&p.root);
    let f = OpenOptions::new().write(true).open(m.path("big")).expect("open for writing");
    f.write_all_at(&patch, at as u64).expect("pwrite");
    close(f).expect("close");
    want[at..at + patch.len()].copy_from_slice(&patch);
    wait_committed(&p.root, "big", &want);
    let grew = large_files_bytes(&p.root) - before;
    let limit = C as u64 + overhead(1, 66);
    assert!(grew <= limit, "a 4 KiB pwrite in one chunk of 66 grew _large_files by {grew} bytes (limit {limit})");

    assert_same_bytes(&std::fs::read(m.path("big")).expect("read"), &want, "big through the mount");
    m.unmount();
    let m = Mounted::new(&p.root, &p.scratch("mnt"), &["ro"]);
    assert_same_bytes(&std::fs::read(m.path("big")).expect("read"), &want, "big after a remount");
}

#[test]
fn rsync_a_of_a_copy_changed_in_the_middle_over_a_large_file_stores_about_the_change() {
    let p = TestPond::new();
    let src = p.scratch("src");
    let mut data = pattern(48 * C, 4);
    std::fs::write(src.join("big"), &data).expect("write the source");
    let mnt = p.scratch("mnt");
    {
        let m = Mounted::new(&p.root, &mnt, &[]);
        run_ok(Command::new("rsync").arg("-a").arg(src.join("big")).arg(m.path("big")));
        m.unmount();
    }

    // Three whole chunks in the middle change; the copy's mtime moves far from the first one's,
    // so rsync's quick check (size and mtime, to the second) cannot take it for unchanged.
    let changed = 3 * C;
    data[20 * C..20 * C + changed].copy_from_slice(&pattern(changed, 5));
    std::fs::write(src.join("big"), &data).expect("change the source");
    run_ok(Command::new("touch").args(["-d", "@1000000000"]).arg(src.join("big")));

    // A later session, as a backup run is: the mount knows the old version only from the pond.
    let m = Mounted::new(&p.root, &mnt, &[]);
    let before = large_files_bytes(&p.root);
    run_ok(Command::new("rsync").arg("-a").arg(src.join("big")).arg(m.path("big")));
    wait_committed(&p.root, "big", &data);
    let grew = large_files_bytes(&p.root) - before;
    let limit = 2 * changed as u64 + overhead(6, 48);
    assert!(
        grew <= limit,
        "rsync -a of a 48-chunk file with {changed} bytes changed grew _large_files by {grew} bytes (limit {limit})"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(m.path("big")).expect("stat").mtime(), 1_000_000_000, "rsync -a set the mtime");
    assert_same_bytes(&std::fs::read(m.path("big")).expect("read"), &data, "big after rsync");
}

#[test]
fn a_chunk_shared_by_several_files_reads_as_eio_in_each_and_verify_names_each_file_and_object() {
    let p = TestPond::new();
    // b is a copy of a with its tail changed: a different object sharing a's first six chunks in
    // place; c is a plain copy of a: the same object.
    let a = pattern(8 * C + 100, 6);
    let mut b = a.clone();
    b[6 * C..].copy_from_slice(&pattern(2 * C + 100, 7));
    let files = [("a", &a), ("b", &b), ("c", &a)];
    let inodes = {
        let m = Mounted::new(&p.root, &p.scratch("mnt"), &[]);
        std::fs::write(m.path("a"), &a).expect("write a");
        run_ok(Command::new("cp").arg(m.path("a")).arg(m.path("b")));
        let f = OpenOptions::new().write(true).open(m.path("b")).expect("open b");
        f.write_all_at(&b[6 * C..], (6 * C) as u64).expect("change b's tail");
        close(f).expect("close");
        run_ok(Command::new("cp").arg(m.path("a")).arg(m.path("c")));
        for (name, data) in files {
            wait_committed(&p.root, name, data);
        }
        use std::os::unix::fs::MetadataExt;
        let inodes = files.map(|(name, _)| std::fs::metadata(m.path(name)).expect("stat").ino());
        m.unmount();
        inodes
    };
    let (pack, offset) = chunk_place(&p.root, &a, 3);
    assert_eq!(chunk_place(&p.root, &b, 3), (pack.clone(), offset), "chunk 3 is one place both objects point to");
    assert_ne!(chunk_place(&p.root, &b, 7), chunk_place(&p.root, &a, 7), "the tails are stored apart");
    assert_eq!(corrupt_stored_chunk(&p.root, &a, 3), pack);

    let lines = damage_lines(&p.root);
    let pack_name = store_name(&p.root, &pack);
    for ((name, data), ino) in files.into_iter().zip(inodes) {
        let hex = hash_of(data).to_hex();
        assert!(
            lines.iter().any(|l| l.contains(&format!("object {hex}"))
                && names_inode(l, ino)
                && l.contains("chunk 3")
                && l.contains(&pack_name)),
            "verify names {name} (inode {ino}), its object {hex}, chunk 3 and the pack {pack_name}: {lines:#?}"
        );
    }

    let m = Mounted::new(&p.root, &p.scratch("mnt"), &["ro"]);
    let mut buf = vec![0u8; 4096];
    for (name, data) in files {
        let f = std::fs::File::open(m.path(name)).expect("open");
        let err = f.read_exact_at(&mut buf, (3 * C + 100) as u64).expect_err("the shared chunk must not read");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{name}, chunk 3: {err}");
        for at in [2 * C, 4 * C, 7 * C] {
            f.read_exact_at(&mut buf, at as u64).unwrap_or_else(|e| panic!("{name} at {at} still reads: {e}"));
            assert_same_bytes(&buf, &data[at..at + 4096], &format!("{name} at {at}"));
        }
    }
}

#[test]
fn verify_names_a_missing_pack_and_every_object_that_needs_it() {
    let p = TestPond::new();
    let a = pattern(6 * C + 10, 8);
    let b = [&a[..4 * C], &pattern(3 * C, 9)[..]].concat();
    // One session writes both: b's first chunks are a's, found in the store's index.
    let inodes = {
        let fs = p.open();
        let inodes = [write_file(&fs, ROOT_INO, "a", &a), write_file(&fs, ROOT_INO, "b", &b)];
        fs.shutdown().expect("commit");
        inodes
    };
    let (pack, _) = chunk_place(&p.root, &a, 0);
    assert_eq!(chunk_place(&p.root, &b, 0).0, pack, "b points into a's pack for the chunks they share");
    assert_ne!(chunk_place(&p.root, &b, 5).0, pack, "b's own chunks are in a pack of their own");
    std::fs::remove_file(&pack).expect("remove the pack");

    let lines = damage_lines(&p.root);
    let pack_name = store_name(&p.root, &pack);
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("DAMAGED pack {pack_name}")) && l.contains("missing")),
        "verify names the missing pack {pack_name}: {lines:#?}"
    );
    for ((name, data), ino) in [("a", &a), ("b", &b)].into_iter().zip(inodes) {
        let hex = hash_of(data).to_hex();
        assert!(
            lines.iter().any(|l| l.contains(&format!("object {hex}"))
                && names_inode(l, ino)
                && l.contains(&pack_name)
                && l.contains("missing")),
            "verify names {name} (inode {ino}) and its object {hex} as needing the missing {pack_name}: {lines:#?}"
        );
    }
}

#[test]
fn version_mounts_read_a_file_spread_over_several_packs_as_each_version_had_it() {
    let p = TestPond::new();
    let mnt = p.scratch("mnt");
    let mut contents = Vec::new();
    let mut versions = Vec::new();
    let mut data = pattern(24 * C + 500, 10);
    {
        let m = Mounted::new(&p.root, &mnt, &[]);
        std::fs::write(m.path("f"), &data).expect("write f");
        m.unmount();
    }
    versions.push(latest_version(&p.root));
    contents.push(data.clone());
    // Two later sessions each change a few chunks in place, so the latest version points into the
    // first session's pack for most chunks and into each later one's for what it changed.
    for (at, len, seed) in [(5 * C + 10, 2 * C, 11), (15 * C + 3000, C + 500, 12)] {
        let m = Mounted::new(&p.root, &mnt, &[]);
        let patch = pattern(len, seed);
        let f = OpenOptions::new().write(true).open(m.path("f")).expect("open f");
        f.write_all_at(&patch, at as u64).expect("pwrite");
        close(f).expect("close");
        m.unmount();
        data[at..at + len].copy_from_slice(&patch);
        versions.push(latest_version(&p.root));
        contents.push(data.clone());
    }
    let store = LargeFileStore::new(&p.root);
    let packs = |data: &[u8]| -> BTreeSet<PondFile> {
        store.open(&hash_of(data)).expect("open the object").data_files().into_iter().collect()
    };
    assert_eq!(packs(&contents[0]).len(), 1, "the first version is in one pack");
    assert_eq!(packs(&contents[1]).len(), 2, "the second version points into two packs");
    assert_eq!(packs(&contents[2]).len(), 3, "the latest version points into three packs");

    for (i, (version, want)) in versions.iter().zip(&contents).enumerate() {
        let m = Mounted::new(&p.root, &p.scratch(&format!("mnt-v{version}")), &[&format!("version={version}")]);
        let got = std::fs::read(m.path("f")).expect("read f");
        assert_same_bytes(&got, want, &format!("f at version {version} (the {}th of the three)", i + 1));
        // A read across the border of chunks from different packs.
        let f = std::fs::File::open(m.path("f")).expect("open");
        let mut buf = vec![0u8; 2 * C];
        f.read_exact_at(&mut buf, (5 * C - C / 2) as u64).expect("read across packs");
        assert_same_bytes(&buf, &want[5 * C - C / 2..7 * C - C / 2], &format!("across chunks at version {version}"));
    }
}

#[test]
fn restore_at_an_earlier_version_fetches_only_the_objects_and_packs_that_version_needs() {
    let p = TestPond::new();
    let old = pattern(10 * C + 5, 13);
    let other = pattern(6 * C, 14);
    write_version(&p, "a", &old);
    let early = write_version(&p, "b", &other);
    let store = LargeFileStore::new(&p.root);
    let mut needed = BTreeSet::new();
    for data in [&old, &other] {
        needed.insert(PondFile::Object(hash_of(data)));
        needed.extend(store.open(&hash_of(data)).expect("open").data_files());
    }
    let new = pattern(10 * C + 5, 15);
    write_version(&p, "a", &new);
    let all: BTreeSet<PondFile> = store_files(&p.root).into_iter().collect();
    let later: BTreeSet<_> = all.difference(&needed).cloned().collect();
    assert!(
        later.contains(&PondFile::Object(hash_of(&new))) && later.iter().any(|f| matches!(f, PondFile::Pack(_))),
        "the rewrite stored a new object and pack: {later:?}"
    );

    let remote = p.scratch("remote");
    let target = p.dir.path().join("restored");
    let (pond_path, remote_path, target_path) =
        (p.path(), remote.to_str().expect("utf-8"), target.to_str().expect("utf-8"));
    pond_ok(&["replicate", pond_path, remote_path]);
    pond_ok(&["restore", remote_path, target_path, "--version", &early.to_string()]);
    assert_eq!(latest_version(&target), early, "restored at the version asked for");

    let restored: BTreeSet<PondFile> = store_files(&target).into_iter().collect();
    let extra: Vec<_> = restored.difference(&needed).collect();
    let missing: Vec<_> = needed.difference(&restored).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "restored _large_files holds {extra:?} beyond version {early}'s objects and packs, and lacks {missing:?}"
    );
    assert_eq!(
        large_files_bytes(&target),
        needed.iter().map(|f| std::fs::metadata(store.path_of(f)).expect("stat").len()).sum::<u64>(),
        "nothing else under the restored _large_files/"
    );
    let v = pond_ok(&["verify", target_path]);
    assert!(v.starts_with("clean") && !v.contains("unreferenced"), "{v}");
    for (name, want) in [("a", &old), ("b", &other)] {
        let out = pond(&["cat", target_path, name]);
        assert!(out.status.success(), "pond cat {name}: {}", describe(&out));
        assert_same_bytes(&out.stdout, want, &format!("restored {name} at version {early}"));
    }
}
