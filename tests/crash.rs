//! Crashes and damage (the SIGKILL loop is in crash_loop.rs): objects orphaned between write and
//! commit, a corrupt chunk (EIO, never wrong bytes; named by verify), and bad input on the command line.

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
