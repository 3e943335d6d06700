//! Crashes and damage (the SIGKILL loop is in crash_loop.rs): objects orphaned between write and
//! commit, a corrupt chunk (EIO, never wrong bytes; named by verify), bad input on the command line,
//! what a power cut leaves of a checkpoint (opens fall back to the JSON log; fsync order), and an
//! object a killed writer left unsynced, reused by the next (fsynced before the commit naming it).

use std::path::Path;

use pond::large_files::LargeFileStore;
use pond::oplog::ROOT_INO;

use crate::common::sizes::{C, T};
use crate::common::{Mounted, TestPond, assert_same_bytes, pattern, pond_ok, write_file};

#[test]
fn an_object_written_before_a_crash_is_unreferenced_and_gc_removes_it() {
    let pond = TestPond::new();
    {
        let fs = pond.open();
        write_file(&fs, ROOT_INO, "kept", &pattern(T + 1, 1));
        fs.shutdown().unwrap();
    }
    // What a process killed between the object's fsync and its commit leaves behind.
    let orphan = LargeFileStore::new(&pond.root).put_bytes(&pattern(2 * C, 2)).unwrap();
    std::fs::write(pond.root.join("part-00000000000000000099-orphan.parquet"), b"half written").unwrap();
    let v = pond_ok(&["verify", pond.path()]);
    assert!(v.starts_with("clean") || v.contains("\nclean"), "an orphan is not damage: {v}");
    assert!(v.contains(&format!("unreferenced _large_files/{}.parquet", orphan.hash)), "{v}");
    assert!(v.contains("unreferenced _large_files/packs/"), "the orphan's pack is unreferenced too: {v}");
    let dry = pond_ok(&["gc", pond.path(), "--dry-run"]);
    assert!(
        dry.contains(&orphan.hash.to_hex()) && LargeFileStore::new(&pond.root).contains(&orphan.hash),
        "dry run removes nothing: {dry}"
    );
    let out = pond_ok(&["gc", pond.path()]);
    assert!(out.contains("removed 2 objects and packs, 1 data files"), "{out}");
    assert!(!LargeFileStore::new(&pond.root).contains(&orphan.hash));
    assert_eq!(crate::common::pond(&["cat", pond.path(), "kept"]).stdout.len(), T + 1, "referenced content untouched");
    assert!(pond_ok(&["verify", pond.path()]).contains("clean"));
}

#[test]
fn gc_refuses_while_a_writer_holds_the_pond() {
    let pond = TestPond::new();
    let _fs = pond.open();
    let out = crate::common::pond(&["gc", pond.path()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mounted read-write"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_corrupt_chunk_reads_as_eio_other_chunks_read_and_verify_names_it() {
    let pond = TestPond::new();
    let data = pattern(4 * C, 3);
    {
        let fs = pond.open();
        write_file(&fs, ROOT_INO, "big", &data);
        write_file(&fs, ROOT_INO, "other", &pattern(T + 1, 4));
        fs.shutdown().unwrap();
    }
    let hash = blake3::hash(&data).to_hex().to_string();
    crate::common::store::corrupt_stored_chunk(&pond.root, &data, 2);

    let v = crate::common::pond(&["verify", pond.path()]);
    let text = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(1), "verify exits 1 on damage: {text}");
    assert!(text.contains(&hash) && text.contains("chunk 2"), "verify names the object and chunk: {text}");

    let m = Mounted::new(&pond.root, &pond.scratch("mnt"), &["ro"]);
    let f = std::fs::File::open(m.path("big")).unwrap();
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    let err = f.read_exact_at(&mut buf, (2 * C + 4096) as u64).expect_err("corrupt chunk must not read");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    f.read_exact_at(&mut buf, (3 * C) as u64).expect("the next chunk still reads");
    assert_same_bytes(&buf, &data[3 * C..3 * C + 4096], "chunk 3");
    f.read_exact_at(&mut buf, 0).expect("the first chunk still reads");
    assert_eq!(std::fs::read(m.path("other")).unwrap().len(), T + 1, "other files still read");
}

#[test]
fn bad_input_gets_a_one_line_error_and_exit_2_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("x"), b"x").unwrap();
    let pond = TestPond::new();
    {
        let fs = pond.open();
        write_file(&fs, ROOT_INO, "f", b"hello");
        fs.shutdown().unwrap();
    }
    let check = |args: &[&str], expect: &str| {
        let out = crate::common::pond(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: expected {expect:?} in {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
    };
    let m = missing.to_str().unwrap();
    let p = plain.to_str().unwrap();
    check(&["ls", m], "does not exist");
    check(&["ls", p], "is not a pond");
    check(&["init", p], "not empty");
    check(&["mount", p, dir.path().to_str().unwrap()], "is not a pond");
    check(&["cat", pond.path(), "nope"], "nope");
    check(&["ls", pond.path(), "--version", "999"], "version 999 does not exist");
    check(&["mount", pond.path(), m], "mountpoint");
    check(&["mount", pond.path(), dir.path().to_str().unwrap(), "-o", "treshold=5"], "unknown mount option");

    // A truncated data file and a corrupt log entry: refused with a message naming them.
    let data_file = std::fs::read_dir(&pond.root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    let bytes = std::fs::read(&data_file).unwrap();
    std::fs::write(&data_file, &bytes[..bytes.len() / 2]).unwrap();
    check(&["ls", pond.path()], data_file.file_name().unwrap().to_str().unwrap());
    std::fs::write(&data_file, &bytes).unwrap();
    let log = pond.root.join("_delta_log").join(format!("{:020}.json", 2));
    std::fs::write(&log, b"{ not json").unwrap();
    let out = crate::common::pond(&["ls", pond.path()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    let v = crate::common::pond(&["verify", pond.path()]);
    assert_eq!(v.status.code(), Some(1), "verify reports a corrupt log entry as damage");
}

/// A pond with files `f0..f54`, one commit each: past its first checkpoint (version 49), with a
/// `_last_checkpoint` naming it.
fn pond_past_a_checkpoint() -> TestPond {
    let pond = TestPond::new();
    let fs = pond.open();
    for i in 0..55 {
        write_file(&fs, ROOT_INO, &format!("f{i}"), &pattern(100 + i, i as u64));
        fs.sync_all().unwrap();
    }
    fs.shutdown().unwrap();
    assert!(pond.root.join("_delta_log/00000000000000000049.checkpoint.parquet").exists());
    assert!(pond.root.join("_delta_log/_last_checkpoint").exists());
    pond
}

fn names_listed(out: &std::process::Output) -> usize {
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(" f")).count()
}

#[test]
fn a_torn_checkpoint_or_hint_falls_back_to_the_json_log_and_every_open_works() {
    let base = pond_past_a_checkpoint();
    let checkpoint = "_delta_log/00000000000000000049.checkpoint.parquet";
    let hint = "_delta_log/_last_checkpoint";
    let full = std::fs::read(base.root.join(checkpoint)).unwrap();
    // What a power cut leaves of a file written without fsync: nothing, or a part.
    let damages: [(&str, &str, Option<Vec<u8>>); 5] = [
        ("an empty checkpoint", checkpoint, Some(Vec::new())),
        ("a checkpoint cut in half", checkpoint, Some(full[..full.len() / 2].to_vec())),
        ("a hint naming a checkpoint that never landed", checkpoint, None),
        ("an empty hint", hint, Some(Vec::new())),
        ("a hint cut short", hint, Some(b"{\"version\":4".to_vec())),
    ];
    let at_50 = names_listed(&crate::common::pond(&["ls", base.path(), "--version", "50"]));
    for (what, file, bytes) in damages {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pond");
        let copied = std::process::Command::new("cp").arg("-a").arg(&base.root).arg(&root).status().unwrap();
        assert!(copied.success());
        match bytes {
            Some(b) => std::fs::write(root.join(file), b).unwrap(),
            None => std::fs::remove_file(root.join(file)).unwrap(),
        }
        let p = root.to_str().unwrap();
        let ls = crate::common::pond(&["ls", p]);
        assert!(ls.status.success(), "{what}: pond ls opens: {}", crate::common::describe(&ls));
        assert_eq!(names_listed(&ls), 55, "{what}: every file listed");
        let old = crate::common::pond(&["ls", p, "--version", "50"]);
        assert!(old.status.success(), "{what}: an older version opens: {}", crate::common::describe(&old));
        assert_eq!(names_listed(&old), at_50, "{what}: version 50 as it was");
        {
            let m = Mounted::new(&root, &dir.path().join("mnt"), &["ro"]);
            assert_eq!(std::fs::read_dir(m.path("")).unwrap().count(), 55, "{what}: a read-only mount lists");
            assert_eq!(std::fs::read(m.path("f7")).unwrap(), pattern(107, 7), "{what}: and reads");
        }
        let verify = crate::common::pond(&["verify", p]);
        if file == checkpoint && root.join(checkpoint).exists() {
            assert_eq!(
                verify.status.code(),
                Some(1),
                "{what}: verify reports it: {}",
                crate::common::describe(&verify)
            );
            assert!(String::from_utf8_lossy(&verify.stdout).contains(checkpoint.trim_start_matches("_delta_log/")));
        }
        // A replica leaves out what does not read, and restores.
        let remote = dir.path().join("remote");
        let replicated = crate::common::pond(&["replicate", p, remote.to_str().unwrap()]);
        assert!(replicated.status.success(), "{what}: replicate: {}", crate::common::describe(&replicated));
        let restored = dir.path().join("restored");
        let restore = crate::common::pond(&["restore", remote.to_str().unwrap(), restored.to_str().unwrap()]);
        assert!(restore.status.success(), "{what}: restore: {}", crate::common::describe(&restore));
        assert_eq!(names_listed(&crate::common::pond(&["ls", restored.to_str().unwrap()])), 55, "{what}: restored");
        // A writer opens too, commits, and checkpoints again at once, so later opens need not replay.
        let fs = pond::fs::PondFs::open(&root, pond::fs::FsOptions::default()).expect("a writer opens");
        write_file(&fs, ROOT_INO, "after", b"written after the power cut");
        fs.shutdown().unwrap();
        let newest = pond::oplog::history::checkpoint_versions(&root).unwrap().last().copied();
        assert!(newest > Some(49), "{what}: a fresh checkpoint after the first commit ({newest:?})");
        let cat = crate::common::pond(&["cat", p, "after"]);
        assert_eq!(cat.stdout, b"written after the power cut", "{what}: {}", crate::common::describe(&cat));
    }
}

/// Set in the child run of a strace test: the directory its parent prepared.
const STRACE_CHILD: &str = "POND_TEST_STRACE_CHILD";

/// In the child run of a strace test (see [`strace_test`]), the directory its parent prepared.
fn strace_child() -> Option<std::path::PathBuf> {
    std::env::var_os(STRACE_CHILD).map(std::path::PathBuf::from)
}

/// Runs the test `name` again, under `strace -f -y` with [`STRACE_CHILD`] naming `dir`, and returns
/// the fsync, rename and link calls it logged (each line a call, descriptors with their paths).
fn strace_test(name: &str, dir: &Path) -> Vec<String> {
    let trace = dir.join("trace");
    let out = std::process::Command::new("strace")
        .args(["-f", "-qq", "-y", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat", "-o"])
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1"])
        .env(STRACE_CHILD, dir)
        .output()
        .expect("strace (apt-get install strace)");
    assert!(out.status.success(), "the traced child: {}", crate::common::describe(&out));
    std::fs::read_to_string(&trace).unwrap().lines().map(str::to_string).collect()
}

/// The fsync, rename and link calls of a pond made and committed past its first checkpoint, through the
/// library, as `strace -f -y` logs them: the test `name` runs itself again under strace; `None` in
/// that run (which has made the pond, and has no trace).
fn traced_commits(name: &str) -> Option<Vec<String>> {
    if let Some(dir) = strace_child() {
        let root = dir.join("pond");
        let rt = crate::common::runtime();
        rt.block_on(async {
            let mut oplog = pond::oplog::Oplog::create(&root, pond::config::Threshold::default()).await.unwrap();
            for i in 0..50u64 {
                let row = pond::oplog::schema::OplogRow::Dirent {
                    parent: ROOT_INO,
                    name: format!("n{i}").into_bytes(),
                    seq: 100 + i,
                    child: None,
                };
                let summary = pond::oplog::CommitSummary { operation: "test", files_changed: 0, bytes: 0 };
                oplog.commit_batch(vec![row], summary).await.unwrap();
            }
        });
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    Some(strace_test(name, dir.path()))
}

#[test]
fn the_first_log_entry_of_a_new_pond_is_fsynced_with_its_directory() {
    let Some(lines) = traced_commits("crash::the_first_log_entry_of_a_new_pond_is_fsynced_with_its_directory") else {
        return;
    };
    let first = lines.iter().position(|l| l.contains("fsync(") && l.contains("/00000000000000000000.json>"));
    // Log entries land by a hard link (a rename that never replaces).
    let second = lines.iter().position(|l| l.contains("link") && l.contains("/00000000000000000001.json\""));
    assert!(first.is_some_and(|f| second.is_some_and(|s| f < s)), "version 0 fsynced before version 1 lands");
    let dir = lines.iter().position(|l| l.contains("fsync(") && l.ends_with("/_delta_log>) = 0"));
    assert!(dir.is_some_and(|d| second.is_some_and(|s| d < s)), "and its directory");
}

#[test]
fn a_checkpoint_and_its_hint_are_each_fsynced_with_their_directory_before_the_next_is_written() {
    let name = "crash::a_checkpoint_and_its_hint_are_each_fsynced_with_their_directory_before_the_next_is_written";
    let Some(lines) = traced_commits(name) else { return };
    let first = |what: &str, test: &dyn Fn(&str) -> bool| {
        lines.iter().position(|l| test(l)).unwrap_or_else(|| panic!("no {what} in the trace"))
    };
    let checkpoint = "00000000000000000049.checkpoint.parquet";
    let renamed = |name: &'static str| move |l: &str| l.contains("rename") && l.contains(&format!("/{name}\""));
    let synced = |name: &'static str| move |l: &str| l.contains("fsync(") && l.contains(&format!("/{name}>"));
    let landed = first("rename of the checkpoint into place", &renamed(checkpoint));
    let durable = first("fsync of the checkpoint", &synced(checkpoint));
    let hint_landed = first("rename of _last_checkpoint into place", &renamed("_last_checkpoint"));
    let hint_durable = first("fsync of _last_checkpoint", &synced("_last_checkpoint"));
    let dir_synced = |after: usize| lines[after..].iter().position(|l| synced("_delta_log")(l)).map(|i| i + after);
    assert!(landed < durable, "the checkpoint is fsynced after it lands");
    assert!(dir_synced(durable).is_some_and(|d| d < hint_landed), "then its directory, before the hint is written");
    assert!(hint_landed < hint_durable && dir_synced(hint_durable).is_some(), "then the hint and the directory again");
}

#[test]
fn an_object_left_unsynced_by_a_killed_writer_is_fsynced_with_its_pack_before_the_commit_that_reuses_it() {
    // A writer killed (-9) after publishing an object and its pack but before the commit that
    // would have fsynced them leaves both whole in the page cache, not on disk. Storing the same
    // content again finds the object intact and reuses it: unless the reuse makes it durable, a
    // power cut after that commit leaves a committed file whose object is torn or gone.
    let name =
        "crash::an_object_left_unsynced_by_a_killed_writer_is_fsynced_with_its_pack_before_the_commit_that_reuses_it";
    let data = pattern(2 * C + 7, 12);
    if let Some(dir) = strace_child() {
        let fs = pond::fs::PondFs::open(&dir.join("pond"), pond::fs::FsOptions::default()).unwrap();
        write_file(&fs, ROOT_INO, "again", &data);
        fs.shutdown().unwrap();
        return;
    }
    let pond = TestPond::new();
    // What the killed writer left: the object and its pack under their names, nothing committed
    // (put_bytes fsyncs them here, but the traced run cannot tell: to it they are files on disk).
    let left = LargeFileStore::new(&pond.root).put_bytes(&data).unwrap();
    let packs: Vec<String> = std::fs::read_dir(pond.root.join("_large_files/packs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(packs.len(), 1, "one pack holds the content's chunks: {packs:?}");
    let lines = strace_test(name, pond.dir.path());

    let synced = |file: &str| {
        lines
            .iter()
            .position(|l| l.contains("fsync(") && l.contains(&format!("/{file}>")))
            .unwrap_or_else(|| panic!("{file} was never fsynced in the run that reused it:\n{}", lines.join("\n")))
    };
    let object = synced(&format!("_large_files/{}.parquet", left.hash));
    let pack = synced(&format!("_large_files/packs/{}", packs[0]));
    // The version that first holds the content (an earlier commit may hold the file still empty).
    let latest = crate::common::latest_version(&pond.root);
    let version = (1..=latest)
        .find(|v| crate::common::pond(&["cat", pond.path(), "again", "--version", &v.to_string()]).stdout == data)
        .unwrap_or_else(|| panic!("no version up to {latest} holds the content"));
    let entry = format!("/_delta_log/{version:020}.json");
    let committed = lines
        .iter()
        .position(|l| l.contains("link") && l.contains(&entry))
        .unwrap_or_else(|| panic!("the log entry of version {version} never landed:\n{}", lines.join("\n")));
    assert!(object < committed, "the reused object is fsynced before the log entry naming it lands");
    assert!(pack < committed, "and so is its pack");
    // The content was reused (no second object or pack), and the committed file reads.
    assert_eq!(LargeFileStore::new(&pond.root).list().unwrap().len(), 2, "one object and one pack");
    assert_same_bytes(&crate::common::pond(&["cat", pond.path(), "again"]).stdout, &data, "the file");
}
