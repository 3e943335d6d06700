//! A pruned pond replicates and restores: a new remote gets the versions the pond still holds (a
//! run from the checkpoint where its history now starts), a remote that had more keeps them and
//! takes the new ones, every version a remote holds restores, and a pond whose version 0 is gone
//! is still told from another pond.

use std::path::Path;

use crate::common::sizes::C;
use crate::common::{TestPond, assert_same_bytes, cat_at, pattern, pond, pond_ok, python_deltalake, write_version};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A pond whose file `f` was written six times (sizes apart by 1000 bytes); returns each version
/// with the content `f` had at it.
fn six_versions(p: &TestPond) -> Vec<(u64, Vec<u8>)> {
    (0..6u64)
        .map(|i| {
            let data = pattern(3 * C + i as usize * 1000, 40 + i);
            (write_version(p, "f", &data), data)
        })
        .collect()
}

/// The versions `pond log` lists, oldest first.
fn logged_versions(root: &str) -> Vec<u64> {
    let log = pond_ok(&["log", root]);
    let mut v: Vec<u64> =
        log.lines().map(|l| l.split_whitespace().next().expect("a version").parse().expect("a number")).collect();
    v.sort();
    v
}

/// Restore `remote` at `version` into a new directory of `p` and check `f` reads `want` there.
fn assert_restores(p: &TestPond, remote: &Path, version: u64, want: &[u8]) {
    let target = p.dir.path().join(format!("restored-{}-{version}", remote.file_name().unwrap().to_string_lossy()));
    pond_ok(&["restore", s(remote), s(&target), "--version", &version.to_string()]);
    assert_same_bytes(&pond(&["cat", s(&target), "f"]).stdout, want, &format!("f restored at version {version}"));
    let verify = pond_ok(&["verify", s(&target)]);
    assert!(verify.starts_with("clean:"), "the restored pond verifies: {verify}");
}

#[test]
fn a_pruned_pond_replicates_to_a_new_remote_and_every_kept_version_restores() {
    let p = TestPond::new();
    let versions = six_versions(&p);
    pond_ok(&["prune", p.path(), "--keep-version", &versions[1].0.to_string(), "--keep-last", "2"]);
    let kept = logged_versions(p.path());
    assert_eq!(kept.len(), 3, "one old version and the newest two: {kept:?}");
    assert_eq!(kept[0], versions[1].0);

    let remote = p.scratch("remote");
    let out = pond_ok(&["replicate", p.path(), s(&remote)]);
    assert!(out.contains(&format!("version {}", kept[2])), "the remote is at the pond's version: {out}");
    let verify = pond(&["verify", &format!("file://{}", s(&remote))]);
    assert!(verify.status.success(), "the remote verifies: {}", crate::common::describe(&verify));

    // Each kept version restores with its content; the newest two hold the last write (the
    // latest is the compaction prune made first).
    assert_restores(&p, &remote, kept[0], &versions[1].1);
    assert_restores(&p, &remote, kept[1], &versions[5].1);
    assert_restores(&p, &remote, kept[2], &versions[5].1);
    // A pruned version is not there, and the message says what is.
    let target = p.dir.path().join("restored-dropped");
    let out = pond(&["restore", s(&remote), s(&target), "--version", &versions[2].0.to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    let holds = format!("it holds versions {} and {} to {}", kept[0], kept[1], kept[2]);
    assert!(out.status.code() == Some(2) && err.contains(&holds), "restore of a pruned version: {err}");
    assert!(!target.exists(), "nothing restored");

    // Any Delta reader opens the remote at each version it holds.
    let script = "import sys, deltalake\nfor v in sys.argv[2:]:\n    t = deltalake.DeltaTable(sys.argv[1], version=int(v))\n    assert t.version() == int(v)\n    t.to_pyarrow_table()\nprint('ok')";
    let args: Vec<String> = std::iter::once(s(&remote).to_string()).chain(kept.iter().map(u64::to_string)).collect();
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let py = python_deltalake(script, &args);
    assert!(py.status.success(), "python deltalake on the remote: {}", String::from_utf8_lossy(&py.stderr));

    let again = pond_ok(&["replicate", p.path(), s(&remote)]);
    assert!(again.contains("sent 0 objects (0 B)"), "a second run sends nothing: {again}");
}

#[test]
fn a_remote_that_had_every_version_keeps_them_and_takes_the_versions_after_a_prune() {
    let p = TestPond::new();
    let versions = six_versions(&p);
    let remote = p.scratch("remote");
    pond_ok(&["replicate", p.path(), s(&remote)]);

    pond_ok(&["prune", p.path(), "--keep-last", "1"]);
    let newer = pattern(5 * C + 7, 99);
    let latest = write_version(&p, "f", &newer);
    let out = pond_ok(&["replicate", p.path(), s(&remote)]);
    assert!(out.contains(&format!("version {latest}")), "the remote took the new versions: {out}");

    // The versions the pond pruned are still the remote's, and so is the newest.
    assert_restores(&p, &remote, versions[0].0, &versions[0].1);
    assert_restores(&p, &remote, versions[3].0, &versions[3].1);
    assert_restores(&p, &remote, latest, &newer);
    assert_eq!(cat_at(&p.root, "f", versions[3].0).status.code(), Some(2), "but not the pond's");
}

#[test]
fn a_pond_pruned_past_version_0_is_still_told_from_another_ponds_remote() {
    let a = TestPond::new();
    write_version(&a, "f", b"pond a");
    let remote = a.scratch("remote");
    pond_ok(&["replicate", a.path(), s(&remote)]);

    let b = TestPond::new();
    six_versions(&b);
    pond_ok(&["prune", b.path(), "--keep-last", "1"]);
    assert!(!b.root.join("_delta_log/00000000000000000000.json").exists(), "b's version 0 is gone");
    let out = pond(&["replicate", b.path(), s(&remote)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(2) && err.contains("another pond's replica"), "{err}");

    // And the other way round: a's remote after b's versions were refused is still a's.
    let b_remote = b.scratch("remote");
    pond_ok(&["replicate", b.path(), s(&b_remote)]);
    let out = pond(&["replicate", a.path(), s(&b_remote)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(2) && err.contains("another pond's replica"), "{err}");
}
