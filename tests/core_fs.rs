//! The filesystem core without FUSE: write path, storage choice at the threshold, POSIX namespace
//! rules, persistence across reopen, commit grouping.

use pond::fs::{Caller, FsError, NodeKind, PondFs, RenameMode, SetAttr, XattrSet};
use pond::oplog::schema::{Content, OplogRow};
use pond::oplog::{Oplog, ROOT_INO};

use crate::common::sizes::{C, INTERESTING, T};
use crate::common::{TestPond, assert_same_bytes, pattern, read_file, runtime, write_file};

const ME: Caller = Caller { uid: 1000, gid: 1000 };

/// The committed row of `ino` at the pond's latest version.
fn committed_content(pond: &TestPond, ino: u64) -> Content {
    let mut oplog = runtime().block_on(Oplog::open(&pond.root, None)).expect("open oplog");
    let rows = oplog.load().expect("load").rows;
    rows.into_iter()
        .find_map(|r| match r {
            OplogRow::Node { ino: i, data: Some(d), .. } if i == ino => d.content,
            _ => None,
        })
        .expect("file row")
}

#[test]
fn content_round_trips_at_every_interesting_size_across_reopen() {
    let pond = TestPond::new();
    let mut inos = Vec::new();
    {
        let fs = pond.open();
        for (i, (size, what)) in INTERESTING.iter().enumerate() {
            let data = pattern(*size, i as u64);
            let ino = write_file(&fs, ROOT_INO, &format!("f{i}"), &data);
            assert_same_bytes(&read_file(&fs, ino), &data, &format!("{what}, before commit"));
            inos.push(ino);
        }
        fs.shutdown().expect("shutdown commits");
    }
    let fs = pond.open();
    for (i, (size, what)) in INTERESTING.iter().enumerate() {
        assert_eq!(
            fs.lookup(ROOT_INO, format!("f{i}").as_bytes()).expect("lookup").ino,
            inos[i],
            "inode numbers are stable"
        );
        assert_same_bytes(&read_file(&fs, inos[i]), &pattern(*size, i as u64), &format!("{what}, after reopen"));
    }
}

#[test]
fn threshold_is_inclusive_inline_at_t_and_large_at_t_plus_one() {
    let pond = TestPond::new();
    let fs = pond.open();
    let below = write_file(&fs, ROOT_INO, "below", &pattern(T - 1, 1));
    let at = write_file(&fs, ROOT_INO, "at", &pattern(T, 2));
    let above = write_file(&fs, ROOT_INO, "above", &pattern(T + 1, 3));
    fs.shutdown().expect("shutdown");
    assert!(matches!(committed_content(&pond, below), Content::Inline { .. }), "T-1 is inline");
    assert!(matches!(committed_content(&pond, at), Content::Inline { .. }), "T is inline");
    match committed_content(&pond, above) {
        Content::Large { hash, .. } => {
            assert_eq!(
                hash.to_hex(),
                blake3::hash(&pattern(T + 1, 3)).to_hex().to_string(),
                "object named by b3sum of content"
            );
            assert!(pond.root.join("_large_files").join(format!("{}.parquet", hash.to_hex())).exists());
        }
        other => panic!("T+1 must be large, got {other:?}"),
    }
}

#[test]
fn identical_large_content_is_stored_once() {
    let pond = TestPond::new();
    let fs = pond.open();
    let data = pattern(3 * C, 9);
    write_file(&fs, ROOT_INO, "a", &data);
    write_file(&fs, ROOT_INO, "b", &data);
    fs.shutdown().expect("shutdown");
    let objects = std::fs::read_dir(pond.root.join("_large_files"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".parquet"))
        .count();
    assert_eq!(objects, 1, "two files with identical content share one object");
}

#[test]
fn overwrite_in_the_middle_truncate_append_and_sparse_match_a_reference() {
    let pond = TestPond::new();
    let fs = pond.open();
    for (start, what) in [(T / 2, "starting inline"), (3 * C + 5, "starting large")] {
        let name = format!("f{start}");
        let mut model = pattern(start, 4);
        let ino = write_file(&fs, ROOT_INO, &name, &model);
        let fh = fs.open_file(ino, libc::O_RDWR).unwrap();
        // overwrite in the middle
        let patch = pattern(100, 5);
        let mid = start / 2;
        fs.write(fh, mid as u64, &patch).unwrap();
        model[mid..mid + 100].copy_from_slice(&patch);
        // sparse extension past the end
        let far = start + C + 3;
        fs.write(fh, far as u64, b"tail").unwrap();
        model.resize(far, 0);
        model.extend_from_slice(b"tail");
        assert_same_bytes(
            &fs.read(fh, 0, model.len() as u32 + 10).unwrap(),
            &model,
            &format!("{what}: read through the open session"),
        );
        fs.release(fh).unwrap();
        // truncate without a handle
        fs.setattr(ino, SetAttr { size: Some((start / 3) as u64), ..Default::default() }).unwrap();
        model.truncate(start / 3);
        // append
        let fh = fs.open_file(ino, libc::O_WRONLY | libc::O_APPEND).unwrap();
        fs.write(fh, 0, b"appended").unwrap();
        model.extend_from_slice(b"appended");
        fs.release(fh).unwrap();
        assert_same_bytes(&read_file(&fs, ino), &model, what);
        assert_eq!(fs.getattr(ino).unwrap().size, model.len() as u64, "{what}: size");
    }
    fs.shutdown().unwrap();
    let fs = pond.open();
    assert!(fs.lookup(ROOT_INO, format!("f{}", T / 2).as_bytes()).is_ok());
}

#[test]
fn open_with_o_trunc_empties_the_file() {
    let pond = TestPond::new();
    let fs = pond.open();
    let ino = write_file(&fs, ROOT_INO, "f", &pattern(T + 1, 1));
    let fh = fs.open_file(ino, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    fs.write(fh, 0, b"new").unwrap();
    fs.release(fh).unwrap();
    assert_same_bytes(&read_file(&fs, ino), b"new", "after O_TRUNC");
}

#[test]
fn rename_replaces_exchanges_and_refuses_as_posix_says() {
    let pond = TestPond::new();
    let fs = pond.open();
    let a = write_file(&fs, ROOT_INO, "a", b"A");
    let b = write_file(&fs, ROOT_INO, "b", b"B");
    assert!(matches!(fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RenameMode::NoReplace), Err(FsError::Exists)));
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RenameMode::Exchange).unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"a").unwrap().ino, b);
    assert_eq!(fs.lookup(ROOT_INO, b"b").unwrap().ino, a);
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RenameMode::Replace).unwrap();
    assert!(matches!(fs.lookup(ROOT_INO, b"a"), Err(FsError::NotFound)));
    assert_same_bytes(&read_file(&fs, fs.lookup(ROOT_INO, b"b").unwrap().ino), b"B", "replaced target");

    let d = fs.mkdir(ROOT_INO, b"d", 0o755, ME).unwrap().ino;
    let sub = fs.mkdir(d, b"sub", 0o755, ME).unwrap().ino;
    assert!(
        matches!(fs.rename(ROOT_INO, b"d", sub, b"x", RenameMode::Replace), Err(FsError::Invalid(_))),
        "dir into itself"
    );
    write_file(&fs, sub, "inner", b"i");
    let e = fs.mkdir(ROOT_INO, b"e", 0o755, ME).unwrap().ino;
    assert!(matches!(fs.rename(ROOT_INO, b"e", d, b"sub", RenameMode::Replace), Err(FsError::NotEmpty)));
    assert!(matches!(fs.rename(ROOT_INO, b"b", ROOT_INO, b"e", RenameMode::Replace), Err(FsError::IsDir)));
    assert!(matches!(fs.rename(ROOT_INO, b"e", ROOT_INO, b"b", RenameMode::Replace), Err(FsError::NotDir)));
    fs.rename(ROOT_INO, b"e", d, b"moved", RenameMode::Replace).unwrap();
    assert_eq!(fs.getattr(d).unwrap().nlink, 4, "d holds sub and moved: 2 + 2");
    assert!(matches!(fs.rmdir(ROOT_INO, b"d"), Err(FsError::NotEmpty)));
    assert!(matches!(fs.mkdir(ROOT_INO, &[b'n'; 256], 0o755, ME), Err(FsError::NameTooLong)));
    assert!(matches!(fs.unlink(ROOT_INO, b"d"), Err(FsError::IsDir)));
    assert!(matches!(fs.rmdir(ROOT_INO, b"b"), Err(FsError::NotDir)));
    fs.shutdown().unwrap();
    let fs = pond.open();
    assert_eq!(fs.lookup(d, b"moved").unwrap().ino, e, "rename persisted");
    assert_eq!(fs.lookup(e, b"..").unwrap().ino, d, "moved directory's parent persisted");
}

#[test]
fn hard_links_share_content_and_count_links() {
    let pond = TestPond::new();
    let fs = pond.open();
    let ino = write_file(&fs, ROOT_INO, "one", b"shared");
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, ME).unwrap().ino;
    assert_eq!(fs.link(ino, d, b"two").unwrap().nlink, 2);
    assert!(matches!(fs.link(d, ROOT_INO, b"dirlink"), Err(FsError::NotPermitted)));
    fs.unlink(ROOT_INO, b"one").unwrap();
    assert_eq!(fs.getattr(ino).unwrap().nlink, 1);
    fs.shutdown().unwrap();
    let fs = pond.open();
    let attr = fs.lookup(d, b"two").unwrap();
    assert_eq!((attr.ino, attr.nlink), (ino, 1));
    assert_same_bytes(&read_file(&fs, ino), b"shared", "content via the remaining link");
}

#[test]
fn an_unlinked_open_file_stays_readable_until_released() {
    let pond = TestPond::new();
    let fs = pond.open();
    let data = pattern(T + 1, 7);
    let ino = write_file(&fs, ROOT_INO, "f", &data);
    let fh = fs.open_file(ino, libc::O_RDONLY).unwrap();
    fs.unlink(ROOT_INO, b"f").unwrap();
    assert_same_bytes(&fs.read(fh, 0, data.len() as u32).unwrap(), &data, "read after unlink");
    fs.release(fh).unwrap();
    assert!(matches!(fs.getattr(ino), Err(FsError::NotFound)));
}

#[test]
fn symlinks_special_files_modes_times_and_xattrs_persist() {
    let pond = TestPond::new();
    let fs = pond.open();
    let l = fs.symlink(ROOT_INO, b"link", b"../target with space", ME).unwrap().ino;
    let p = fs.mknod(ROOT_INO, b"fifo", NodeKind::Fifo, 0o600, 0, ME).unwrap().ino;
    let f = write_file(&fs, ROOT_INO, "f", b"x");
    fs.setattr(
        f,
        SetAttr {
            mode: Some(0o4750),
            uid: Some(12),
            gid: Some(34),
            mtime: Some(pond::fs::TimeSet::At(1_234_567_890_123_456_789)),
            ..Default::default()
        },
    )
    .unwrap();
    fs.setxattr(f, b"user.k", b"v\0binary", XattrSet::Create).unwrap();
    assert!(matches!(fs.setxattr(f, b"user.k", b"v", XattrSet::Create), Err(FsError::Exists)));
    assert!(matches!(fs.setxattr(f, b"user.none", b"v", XattrSet::Replace), Err(FsError::NoXattr)));
    fs.setxattr(f, b"user.gone", b"", XattrSet::Any).unwrap();
    fs.removexattr(f, b"user.gone").unwrap();
    fs.shutdown().unwrap();

    let fs = pond.open();
    assert_eq!(fs.readlink(l).unwrap(), b"../target with space");
    assert_eq!(fs.getattr(p).unwrap().kind, NodeKind::Fifo);
    let a = fs.getattr(f).unwrap();
    assert_eq!((a.perm, a.uid, a.gid, a.mtime_ns), (0o4750, 12, 34, 1_234_567_890_123_456_789));
    assert_eq!(fs.getxattr(f, b"user.k").unwrap(), b"v\0binary");
    assert_eq!(fs.listxattr(f).unwrap(), b"user.k\0");
}

#[test]
fn releases_that_arrive_together_share_a_delta_version() {
    let pond = TestPond::new();
    let fs = pond.open();
    let before = fs.opened_version();
    for i in 0..200 {
        write_file(&fs, ROOT_INO, &format!("f{i}"), &pattern(100, i));
    }
    fs.shutdown().unwrap();
    let after = runtime().block_on(Oplog::open(&pond.root, None)).unwrap().version();
    assert!(after > before, "the writes were committed");
    assert!(after - before < 100, "200 releases took {} versions: they must be grouped", after - before);
}

#[test]
fn fsync_returns_only_once_the_file_is_committed() {
    let pond = TestPond::new();
    let fs = pond.open();
    let (attr, fh) = fs.create(ROOT_INO, b"f", 0o644, libc::O_WRONLY, ME).unwrap();
    fs.write(fh, 0, b"durable").unwrap();
    fs.fsync(fh, false).unwrap();
    // Another reader of the table (as `pond cat` would be) sees it while the handle is still open.
    let reader = pond.open_at(runtime().block_on(Oplog::open(&pond.root, None)).unwrap().version());
    assert_same_bytes(&read_file(&reader, attr.ino), b"durable", "committed content seen by a table reader");
    fs.release(fh).unwrap();
}

#[test]
fn a_second_writer_is_refused_at_once_but_readers_work() {
    let pond = TestPond::new();
    let _fs = pond.open();
    match PondFs::open(&pond.root, Default::default()) {
        Err(FsError::Busy(_)) => {}
        Err(e) => panic!("expected Busy, got {e}"),
        Ok(_) => panic!("a second writer must be refused"),
    }
    let reader = PondFs::open(&pond.root, pond::fs::FsOptions { read_only: true, ..Default::default() })
        .expect("read-only open while a writer holds the pond");
    assert!(matches!(reader.mkdir(ROOT_INO, b"x", 0o755, ME), Err(FsError::ReadOnly)));
}

#[test]
fn an_old_version_shows_the_tree_as_it_was() {
    let pond = TestPond::new();
    let fs = pond.open();
    let ino = write_file(&fs, ROOT_INO, "f", b"first");
    fs.sync_all().unwrap();
    let v1 = runtime().block_on(Oplog::open(&pond.root, None)).unwrap().version();
    let fh = fs.open_file(ino, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    fs.write(fh, 0, b"second").unwrap();
    fs.release(fh).unwrap();
    fs.unlink(ROOT_INO, b"f").unwrap();
    fs.shutdown().unwrap();
    let old = pond.open_at(v1);
    assert_same_bytes(&read_file(&old, old.lookup(ROOT_INO, b"f").unwrap().ino), b"first", "version v1");
    assert!(matches!(pond.open().lookup(ROOT_INO, b"f"), Err(FsError::NotFound)));
}

#[test]
fn many_files_in_one_directory_in_batches_stay_correct() {
    let pond = TestPond::new();
    let n = 5_000;
    {
        let fs = pond.open();
        let d = fs.mkdir(ROOT_INO, b"big", 0o755, ME).unwrap().ino;
        for batch in 0..5 {
            for i in 0..n / 5 {
                write_file(&fs, d, &format!("file-{batch}-{i:05}"), b"");
            }
            fs.sync_all().unwrap();
        }
        fs.shutdown().unwrap();
    }
    let fs = pond.open();
    let d = fs.lookup(ROOT_INO, b"big").unwrap().ino;
    assert!(fs.lookup(d, b"file-3-00777").is_ok());
    let fh = fs.opendir(d).unwrap();
    assert_eq!(fs.readdir(fh, 0).unwrap().len(), n + 2);
}
