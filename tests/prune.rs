//! `pond prune`: the versions no rule keeps go, with everything only they need; every kept version
//! still reads (through pond, delta-rs and Python's deltalake); chunks a kept version shares stay.

use std::collections::BTreeSet;
use std::path::Path;

use pond::oplog::Oplog;

use crate::common::sizes::C;
use crate::common::store::{objects, store_files};
use crate::common::{
    TestPond, assert_same_bytes, cat_at, latest_version, pattern, pond, pond_ok, runtime, write_version,
};

/// Bytes under the pond, its private `_pond/` aside.
fn pond_bytes(root: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        let m = e.metadata().expect("stat");
                        if m.is_dir() { walk(&e.path()) } else { m.len() }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    std::fs::read_dir(root)
        .expect("pond")
        .flatten()
        .filter(|e| e.file_name() != "_pond")
        .map(|e| if e.path().is_dir() { walk(&e.path()) } else { e.metadata().expect("stat").len() })
        .sum()
}

/// Every file under the pond (but `_pond/`), for "nothing changed" checks.
fn listing(root: &Path) -> BTreeSet<String> {
    let out = std::process::Command::new("find").arg(root).args(["-type", "f", "-not", "-path", "*/_pond/*"]).output();
    String::from_utf8_lossy(&out.expect("find").stdout).lines().map(str::to_string).collect()
}

#[test]
fn keep_last_one_gives_back_what_only_old_versions_need() {
    let p = TestPond::new();
    let old = pattern(40 * C, 1);
    write_version(&p, "big", &old);
    write_version(&p, "small", b"small");
    let new = pattern(40 * C, 2);
    let latest = write_version(&p, "big", &new);
    let before = pond_bytes(&p.root);
    let out = pond_ok(&["prune", p.path(), "--keep-last", "1"]);
    assert!(out.contains("pruned:") && out.contains("freed"), "{out}");
    let after = pond_bytes(&p.root);
    // The old content's object and pack are gone: about one copy of the content is left.
    assert!(before - after >= 40 * C as u64, "freed only {} bytes: {out}", before - after);
    assert!(after < 41 * C as u64 + 200_000, "left {after} bytes for {} bytes of content", new.len());
    assert_eq!(objects(&p.root), vec![blake3::hash(&new).into()], "only the kept content's object is left");
    assert_same_bytes(&pond(&["cat", p.path(), "big"]).stdout, &new, "big after prune");
    assert_eq!(pond(&["cat", p.path(), "small"]).stdout, b"small");
    let log = pond_ok(&["log", p.path()]);
    assert_eq!(log.lines().count(), 1, "one version left: {log}");
    assert!(cat_at(&p.root, "big", latest - 1).status.code() == Some(2), "a dropped version is gone");
    let v = pond_ok(&["verify", p.path()]);
    assert!(v.starts_with("clean: 1 versions") && !v.contains("unreferenced"), "{v}");
}

#[test]
fn every_kept_version_reads_back_in_pond_delta_rs_and_python() {
    let p = TestPond::new();
    let mut contents = Vec::new();
    let mut versions = Vec::new();
    for i in 0..6u64 {
        let data = pattern(3 * C + i as usize * 1000, 10 + i);
        versions.push(write_version(&p, "f", &data));
        contents.push(data);
    }
    // Keep the second version, and the newest two.
    let keep = versions[1];
    let out = pond_ok(&["prune", p.path(), "--keep-version", &keep.to_string(), "--keep-last", "2"]);
    let latest = latest_version(&p.root);
    assert!(latest > versions[5], "the latest version is the compaction prune made first: {out}");
    let log = pond_ok(&["log", p.path()]);
    let kept: Vec<u64> = log.lines().map(|l| l.split_whitespace().next().unwrap().parse().unwrap()).collect();
    assert_eq!(kept, vec![keep, latest - 1, latest], "{log}");
    assert_same_bytes(&cat_at(&p.root, "f", keep).stdout, &contents[1], "the kept old version");
    assert_same_bytes(&cat_at(&p.root, "f", latest - 1).stdout, &contents[5], "the version before the compaction");
    assert_same_bytes(&cat_at(&p.root, "f", latest).stdout, &contents[5], "the latest");
    for dropped in [versions[0], versions[2], versions[4]] {
        assert_eq!(cat_at(&p.root, "f", dropped).status.code(), Some(2), "version {dropped} was dropped");
    }
    // delta-rs opens every kept version ...
    for v in &kept {
        let oplog =
            runtime().block_on(Oplog::open(&p.root, Some(*v))).unwrap_or_else(|e| panic!("delta-rs at {v}: {e}"));
        assert_eq!(oplog.version(), *v);
    }
    // ... and so does Python's deltalake.
    let script = format!(
        "import deltalake\nfor v in {kept:?}:\n    t = deltalake.DeltaTable({:?}, version=v)\n    assert t.version() == v\n    t.to_pyarrow_table()\nprint('ok')",
        p.path()
    );
    let py = crate::common::python_deltalake(&script, &[]);
    assert!(py.status.success(), "python deltalake: {}", String::from_utf8_lossy(&py.stderr));
    let v = pond_ok(&["verify", p.path()]);
    assert!(v.starts_with("clean: 3 versions"), "{v}");
}

#[test]
fn chunks_a_kept_version_shares_stay_when_the_version_that_wrote_them_goes() {
    let p = TestPond::new();
    let base = pattern(30 * C, 20);
    write_version(&p, "log", &base);
    let grown = [base.clone(), pattern(5 * C, 21)].concat();
    write_version(&p, "log", &grown);
    pond_ok(&["prune", p.path(), "--keep-last", "1"]);
    assert_same_bytes(&pond(&["cat", p.path(), "log"]).stdout, &grown, "the appended file after prune");
    assert_eq!(objects(&p.root).len(), 1, "the first version's manifest went");
    let packs = store_files(&p.root).len() - 1;
    assert_eq!(packs, 2, "both packs stay: the first holds the chunks the kept version shares");
    assert!(pond_ok(&["verify", p.path()]).starts_with("clean"));
}

#[test]
fn a_dry_run_prints_what_it_would_remove_and_removes_nothing() {
    let p = TestPond::new();
    write_version(&p, "a", &pattern(3 * C, 30));
    write_version(&p, "a", &pattern(3 * C, 31));
    let files = listing(&p.root);
    let out = pond_ok(&["prune", p.path(), "--keep-last", "1", "--dry-run"]);
    assert!(out.contains("would remove _delta_log/") && out.contains("would remove _large_files/"), "{out}");
    assert!(out.contains("would free"), "{out}");
    assert_eq!(listing(&p.root), files, "a dry run changes nothing");
}

#[test]
fn prune_without_a_rule_or_with_an_unknown_version_is_refused() {
    let p = TestPond::new();
    write_version(&p, "a", b"x");
    let files = listing(&p.root);
    let none = pond(&["prune", p.path()]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("--keep-last"), "{}", String::from_utf8_lossy(&none.stderr));
    let unknown = pond(&["prune", p.path(), "--keep-version", "999"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("version 999 is not in the pond"));
    let bad = pond(&["prune", p.path(), "--keep-within", "3 days"]);
    assert_eq!(bad.status.code(), Some(2), "a duration needs a unit it knows");
    assert_eq!(listing(&p.root), files, "a refused prune changes nothing");
}

#[test]
fn keep_within_keeps_the_recent_versions() {
    let p = TestPond::new();
    let first = write_version(&p, "a", &pattern(2 * C, 40));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    write_version(&p, "a", &pattern(2 * C, 41));
    let latest = write_version(&p, "a", &pattern(2 * C, 42));
    pond_ok(&["prune", p.path(), "--keep-within", "2s"]);
    let log = pond_ok(&["log", p.path()]);
    let kept: Vec<u64> = log.lines().map(|l| l.split_whitespace().next().unwrap().parse().unwrap()).collect();
    assert!(!kept.contains(&first), "the version older than 2 s went: {log}");
    assert!(kept.contains(&latest) && kept.len() >= 3, "the recent versions and the compaction stay: {log}");
    assert!(pond_ok(&["verify", p.path()]).starts_with("clean"));
}

#[test]
fn gc_and_a_second_prune_find_nothing_left_to_remove() {
    let p = TestPond::new();
    for i in 0..4 {
        write_version(&p, "a", &pattern(3 * C, 50 + i));
    }
    pond_ok(&["prune", p.path(), "--keep-last", "2"]);
    let files = listing(&p.root);
    let gc = pond_ok(&["gc", p.path()]);
    assert!(gc.contains("removed 0 objects and packs, 0 data files"), "{gc}");
    let again = pond_ok(&["prune", p.path(), "--keep-last", "2"]);
    assert!(again.contains("0 versions dropped"), "{again}");
    assert_eq!(listing(&p.root), files);
}

#[test]
fn prune_beside_a_live_mount_goes_through_its_daemon_and_keeps_what_open_files_use() {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::FileExt;
    let p = TestPond::new();
    let m = crate::common::Mounted::new(&p.root, &p.scratch("mnt"), &[]);
    // Versions of a file that keeps changing.
    for i in 0..4u64 {
        std::fs::write(m.path("churn"), pattern(6 * C, 60 + i)).expect("write");
        let f = std::fs::File::open(m.path("churn")).expect("open");
        f.sync_all().expect("fsync");
    }
    // A file only an open descriptor still reaches: its content belongs to a version prune drops.
    let gone = pattern(5 * C + 3, 70);
    std::fs::write(m.path("gone"), &gone).expect("write");
    std::fs::File::open(m.path("gone")).unwrap().sync_all().unwrap();
    let mut reader = std::fs::File::open(m.path("gone")).expect("open for reading");
    std::fs::remove_file(m.path("gone")).expect("unlink");
    // A file being appended to, its new chunks not committed.
    let base = pattern(8 * C, 71);
    std::fs::write(m.path("growing"), &base).expect("write");
    std::fs::File::open(m.path("growing")).unwrap().sync_all().unwrap();
    let mut writer = std::fs::OpenOptions::new().append(true).open(m.path("growing")).expect("open for append");
    let tail = pattern(3 * C + 9, 72);
    writer.write_all(&tail).expect("append");

    let out = pond(&["prune", p.path(), "--keep-last", "1"]);
    assert!(out.status.success(), "prune beside the mount: {}", crate::common::describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("pruned:") && text.contains("freed"), "{text}");

    // The open reader still reads the unlinked file whole, and the writer goes on.
    let mut got = Vec::new();
    reader.seek(SeekFrom::Start(0)).unwrap();
    reader.read_to_end(&mut got).expect("read the unlinked file after prune");
    assert_same_bytes(&got, &gone, "an unlinked file open for reading");
    let more = pattern(C, 73);
    writer.write_all(&more).expect("append after prune");
    crate::common::close(writer).expect("close the appended file");
    let want = [base, tail, more].concat();
    let mut buf = vec![0u8; want.len()];
    std::fs::File::open(m.path("growing")).unwrap().read_exact_at(&mut buf, 0).expect("read back");
    assert_same_bytes(&buf, &want, "the file appended to across the prune");
    drop(reader);
    m.unmount();
    assert_same_bytes(&pond(&["cat", p.path(), "growing"]).stdout, &want, "growing after unmount");
    assert_same_bytes(&pond(&["cat", p.path(), "churn"]).stdout, &pattern(6 * C, 63), "churn after unmount");
    let v = pond_ok(&["verify", p.path()]);
    assert!(v.lines().last().is_some_and(|l| l.starts_with("clean")), "{v}");
    // What the unlinked file's reader kept is garbage now that it is closed.
    assert!(v.contains("unreferenced"), "the unlinked file's object outlived the prune for its reader: {v}");
    pond_ok(&["gc", p.path()]);
    assert!(!pond_ok(&["verify", p.path()]).contains("unreferenced"));
}
