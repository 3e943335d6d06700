//! Real mounts driven by the tools people use: cp -a, rsync -aH (twice), tar, git, an editor's
//! save by rename; a remount keeps everything.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::common::tree::{assert_same_tree, make_mixed_tree, snapshot};
use crate::common::{Mounted, TestPond, assert_same_bytes, pattern, pond_ok, run_ok};

/// Run a command, require success, return its stdout.
fn run(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run_ok(cmd).stdout).into_owned()
}

fn mount(pond: &TestPond) -> Mounted {
    Mounted::new(&pond.root, &pond.scratch("mnt"), &[])
}

#[test]
fn cp_a_of_a_mixed_tree_is_identical_and_survives_a_remount() {
    let pond = TestPond::new();
    let src = pond.scratch("src");
    make_mixed_tree(&src);
    let m = mount(&pond);
    run(Command::new("cp").arg("-a").arg(&src).arg(m.path("copy")));
    assert_same_tree(&m.path("copy"), &src);
    let inodes_before = snapshot_inodes(&m.path("copy"));
    m.unmount();
    let m = mount(&pond);
    assert_same_tree(&m.path("copy"), &src);
    assert_eq!(snapshot_inodes(&m.path("copy")), inodes_before, "inode numbers are stable across mounts");
    m.unmount();
    let out = pond_ok(&["verify", pond.path()]);
    assert!(out.contains("clean"), "{out}");
}

fn snapshot_inodes(root: &Path) -> Vec<(String, u64)> {
    snapshot(root).keys().map(|k| (k.clone(), std::fs::symlink_metadata(root.join(k)).unwrap().ino())).collect()
}

#[test]
fn rsync_second_run_copies_nothing() {
    let pond = TestPond::new();
    let src = pond.scratch("src");
    make_mixed_tree(&src);
    let m = mount(&pond);
    let dst = m.path("dst");
    let src_arg = format!("{}/", src.display());
    run(Command::new("rsync").args(["-aHX"]).arg(&src_arg).arg(&dst));
    assert_same_tree(&dst, &src);
    let second = run(Command::new("rsync").args(["-aHX", "--itemize-changes"]).arg(&src_arg).arg(&dst));
    assert!(second.trim().is_empty(), "second rsync -aH changed things:\n{second}");
    let check = run(Command::new("rsync")
        .args(["-aHX", "--checksum", "--dry-run", "--itemize-changes"])
        .arg(&src_arg)
        .arg(&dst));
    assert!(check.trim().is_empty(), "rsync --checksum found differences:\n{check}");
}

#[test]
fn tar_round_trip_through_the_mount() {
    let pond = TestPond::new();
    let src = pond.scratch("src");
    make_mixed_tree(&src);
    let archive = pond.dir.path().join("a.tar");
    run(Command::new("tar").arg("-cf").arg(&archive).arg("-C").arg(&src).arg("."));
    let m = mount(&pond);
    std::fs::create_dir(m.path("x")).unwrap();
    run(Command::new("tar").arg("--xattrs").arg("-xpf").arg(&archive).arg("-C").arg(m.path("x")));
    let back = pond.dir.path().join("back.tar");
    run(Command::new("tar").arg("-cf").arg(&back).arg("-C").arg(m.path("x")).arg("."));
    let out = pond.scratch("out");
    run(Command::new("tar").arg("-xpf").arg(&back).arg("-C").arg(&out));
    let (a, b) = (snapshot(&out), snapshot(&src));
    for (path, e) in &b {
        let g = &a[path];
        assert_eq!(
            (g.kind, g.mode, g.size, g.mtime.0, &g.link_target),
            (e.kind, e.mode, e.size, e.mtime.0, &e.link_target),
            "{path}"
        );
        if e.kind == "file" {
            assert_same_bytes(&std::fs::read(out.join(path)).unwrap(), &std::fs::read(src.join(path)).unwrap(), path);
        }
    }
}

#[test]
fn git_init_add_commit_gc_and_fsck_inside_the_mount() {
    let pond = TestPond::new();
    let m = mount(&pond);
    let repo = m.path("repo");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        run(Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
            .args(args))
    };
    git(&["init", "-q"]);
    for i in 0..20 {
        std::fs::write(repo.join(format!("f{i}.txt")), pattern(i * 997, i as u64)).unwrap();
    }
    std::fs::write(repo.join("big.bin"), pattern(crate::common::sizes::T * 3, 1)).unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-qm", "first"]);
    std::fs::write(repo.join("f1.txt"), b"changed").unwrap();
    git(&["commit", "-qam", "second"]);
    git(&["gc", "-q"]);
    git(&["fsck", "--strict"]);
    let log = git(&["log", "--oneline"]);
    assert_eq!(log.lines().count(), 2, "{log}");
    m.unmount();
    let m = mount(&pond);
    let out = run(Command::new("git").arg("-C").arg(m.path("repo")).args(["status", "--porcelain"]));
    assert!(out.trim().is_empty(), "worktree clean after remount: {out}");
    run(Command::new("git").arg("-C").arg(m.path("repo")).args(["fsck", "--strict"]));
}

#[test]
fn editor_save_by_rename_replaces_content_atomically() {
    let pond = TestPond::new();
    let m = mount(&pond);
    let file = m.path("doc.txt");
    std::fs::write(&file, b"version one\n").unwrap();
    // What vim/emacs/sed -i do: write a temp file, fsync it, rename it over the original.
    run(Command::new("sed").arg("-i").arg("s/one/two/").arg(&file));
    assert_same_bytes(&std::fs::read(&file).unwrap(), b"version two\n", "after sed -i");
    let tmp = m.path(".doc.txt.swp");
    let f = std::fs::File::create(&tmp).unwrap();
    std::io::Write::write_all(&mut &f, b"version three\n").unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::rename(&tmp, &file).unwrap();
    m.unmount();
    let out = pond_ok(&["cat", pond.path(), "doc.txt"]);
    assert_eq!(out, "version three\n");
    let listing = pond_ok(&["ls", pond.path()]);
    assert!(!listing.contains(".swp"), "temp file gone: {listing}");
}
