//! Mounting a replica straight from object storage (issue 14): `pond mount URL` over S3 (the local
//! server) and a directory replica, read-only, fetched as it is read; new versions through
//! `refresh=` while files opened before keep their bytes; a tampered chunk, a damaged cache entry,
//! a server that stops; `pond ls/cat/log URL`; the round trips a cold read costs.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pond::oplog::ROOT_INO;
use pond::remote_mount::{Replica, ReplicaConfig};

use crate::common::proxy::TcpProxy;
use crate::common::s3::{pond_env, s3};
use crate::common::sizes::C;
use crate::common::store::{chunk_place, corrupt_stored_chunk};
use crate::common::{
    ChildGuard, Mounted, TestPond, alive, assert_same_bytes, daemons, describe, is_mounted, latest_version, pattern,
    pond, pond_bin, read_file, require_fuse, runtime, tree_snapshot, wait_for_exit,
};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn pond_env_ok(args: &[&str], env: &[(String, String)]) -> String {
    let out = pond_env(args, env);
    assert!(out.status.success(), "pond {args:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `pond replicate POND URL` (once).
fn replicate(pond: &TestPond, url: &str, env: &[(String, String)]) {
    pond_env_ok(&["replicate", pond.path(), url], env);
}

/// A replica mounted with `pond mount URL`; unmounted on every path, its daemon gone after.
struct ReplicaMount {
    mountpoint: PathBuf,
    url: String,
}

impl ReplicaMount {
    fn new(url: &str, mountpoint: &Path, options: &[String], env: &[(String, String)]) -> ReplicaMount {
        require_fuse();
        std::fs::create_dir_all(mountpoint).expect("mount point");
        let mountpoint = std::fs::canonicalize(mountpoint).expect("canonical mount point");
        let guard = ReplicaMount { mountpoint, url: url.to_string() };
        let joined = options.join(",");
        let mut args = vec!["mount", url, s(&guard.mountpoint)];
        if !options.is_empty() {
            args.extend(["-o", &joined]);
        }
        pond_env_ok(&args, env);
        assert!(is_mounted(&guard.mountpoint), "pond mount returned but {} is not mounted", guard.mountpoint.display());
        guard
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }
}

impl Drop for ReplicaMount {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) {
            let _ = pond(&["umount", s(&self.mountpoint)]);
        }
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
        }
        for pid in daemons(Path::new(&self.url), Some(&self.mountpoint)) {
            if !wait_for_exit(pid, Duration::from_secs(10)) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                wait_for_exit(pid, Duration::from_secs(5));
            }
        }
    }
}

/// Mount options for a test: its own cache and log under `dir`, plus `extra`.
fn options(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut o = vec![format!("cache={}", s(&dir.join("cache"))), format!("log={}", s(&dir.join("mount.log")))];
    o.extend(extra.iter().map(|e| e.to_string()));
    o
}

fn log_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("mount.log")).unwrap_or_default()
}

/// A pond holding a small file, a file of several chunks and one in a directory.
fn sample_pond() -> (TestPond, Vec<u8>) {
    let pond = TestPond::new();
    let big = pattern(40 * C + 123, 1);
    let fs = pond.open();
    crate::common::write_file(&fs, ROOT_INO, "small", b"small file\n");
    crate::common::write_file(&fs, ROOT_INO, "big", &big);
    let dir = fs.mkdir(ROOT_INO, b"dir", 0o755, crate::common::ME).unwrap().ino;
    crate::common::write_file(&fs, dir, "inner", &pattern(3 * C + 7, 2));
    fs.shutdown().unwrap();
    (pond, big)
}

/// A library-level replica (no FUSE) over `url`, its cache under `dir`.
fn open_replica(url: &str, dir: &Path, env: &[(String, String)]) -> Replica {
    Replica::open(&ReplicaConfig {
        url: url.to_string(),
        aws: env.to_vec(),
        cache_root: dir.join("lib-cache"),
        cache_size: 1 << 30,
        timeout: Duration::from_secs(10),
    })
    .expect("open the replica")
}

/// `pond` replicated to a directory (returned), opened as a library-level replica (its cache in
/// the pond's scratch space) and viewed at its newest version.
fn directory_replica(pond: &TestPond) -> (PathBuf, Replica, pond::fs::PondFs) {
    let remote = pond.scratch("remote");
    replicate(pond, s(&remote), &[]);
    let view = open_replica(&file_url(&remote), &pond.scratch("work"), &[]);
    let fs = view.open_view(view.sync(None).unwrap()).unwrap();
    (remote, view, fs)
}

fn file_url(dir: &Path) -> String {
    format!("file://{}", s(dir))
}

#[test]
fn a_replica_on_s3_reads_exactly_as_the_pond_and_stays_read_only() {
    let s3 = s3();
    let (src, big) = sample_pond();
    let url = s3.url();
    replicate(&src, &url, &s3.env());
    let work = src.scratch("work");
    let view = open_replica(&url, &work, &s3.env());
    let v = view.sync(None).expect("mirror the newest version");
    assert_eq!(v, latest_version(&src.root));
    let fs = view.open_view(v).expect("open the view");
    crate::common::assert_same_tree(&tree_snapshot(&fs), &tree_snapshot(&src.open_at(v)), "the replica, read lazily");

    let mnt = ReplicaMount::new(&url, &work.join("mnt"), &options(&work, &[]), &s3.env());
    assert_same_bytes(&std::fs::read(mnt.path("big")).unwrap(), &big, "big through the mount");
    assert_eq!(std::fs::read(mnt.path("small")).unwrap(), b"small file\n");
    let err = std::fs::write(mnt.path("small"), b"x").expect_err("a replica is read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = std::fs::create_dir(mnt.path("new")).expect_err("a replica is read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
}

#[test]
fn a_sequential_read_wider_than_a_request_is_exact_and_leaves_every_chunk_cached() {
    // 300 chunks: more than one read-ahead request (16 MiB at most), each landing in buffers of
    // about 2 MiB, filled from S3's stream.
    let s3 = s3();
    let src = TestPond::new();
    let big = pattern(300 * C + 5, 7);
    let fs = src.open();
    crate::common::write_file(&fs, ROOT_INO, "big", &big);
    fs.shutdown().unwrap();
    let url = s3.url();
    replicate(&src, &url, &s3.env());
    let work = src.scratch("work");
    let newest = |view: &Replica| view.open_view(view.sync(None).unwrap()).unwrap();
    let read_big = |fs: &pond::fs::PondFs| read_file(fs, fs.lookup(ROOT_INO, b"big").unwrap().ino);
    {
        let view = open_replica(&url, &work, &s3.env());
        assert_same_bytes(&read_big(&newest(&view)), &big, "big, read ahead from S3");
        let demand = view.demand_fetches();
        assert!(demand <= 2, "{demand} chunk requests for reads: read-ahead should have fetched the rest");
    }
    let view = open_replica(&url, &work, &s3.env());
    let fs = newest(&view);
    let before = view.requests();
    assert_same_bytes(&read_big(&fs), &big, "big, read again from the cache");
    assert_eq!(view.requests(), before, "every chunk, of every segment, came from the cache");
}

#[test]
fn rw_and_unknown_options_are_refused_with_the_reason() {
    let (src, _) = sample_pond();
    let remote = src.scratch("remote");
    replicate(&src, s(&remote), &[]);
    let mnt = src.scratch("mnt");
    let url = file_url(&remote);
    // A failed mount still logs, into the cache: the test's, not the user's.
    let env = [("XDG_CACHE_HOME".to_string(), s(&src.scratch("cache")).to_string())];
    for (opt, says) in [
        ("rw", "always mounted read-only"),
        ("threshold=4096", "read-only"),
        ("version=1,refresh=2", "give one of them"),
        ("aws_secret_access_key=x", "unknown mount option"),
    ] {
        let out = pond_env(&["mount", &url, s(&mnt), "-o", opt], &env);
        assert_eq!(out.status.code(), Some(2), "-o {opt}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "-o {opt} should say {says:?}: {}",
            describe(&out)
        );
        assert!(!is_mounted(&mnt));
    }
    let out = pond_env(&["mount", &file_url(&src.dir.path().join("nothing-here")), s(&mnt)], &env);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(!is_mounted(&mnt));
}

#[test]
fn a_cold_4k_random_read_costs_two_round_trips_and_a_warm_one_none() {
    let (src, big) = sample_pond();
    let (_remote, view, fs) = directory_replica(&src);
    let ino = fs.lookup(ROOT_INO, b"big").unwrap().ino;
    let fh = fs.open_file(ino, libc::O_RDONLY).unwrap();
    let before = view.requests();
    let at = 17 * C as u64 + 1000;
    let got = fs.read(fh, at, 4096).unwrap();
    assert_same_bytes(&got, &big[at as usize..at as usize + 4096], "a random 4 KiB read");
    assert_eq!(view.requests() - before, 2, "the object's manifest, then the chunk's bytes");
    assert_eq!(view.demand_fetches(), 1);
    fs.read(fh, at + 8192, 4096).unwrap();
    assert_eq!(view.demand_fetches(), 1, "the same chunk again: not fetched again");
    fs.release(fh).unwrap();
    let again = view.requests();
    // Another open of the file reads the cached manifest and chunk from disk.
    let fh = fs.open_file(ino, libc::O_RDONLY).unwrap();
    fs.read(fh, at, 4096).unwrap();
    assert_eq!(view.requests(), again, "reopened: the manifest and the chunk come from the cache");
}

#[test]
fn a_tampered_chunk_reads_as_eio_and_is_named_in_the_log() {
    let (src, big) = sample_pond();
    let remote = src.scratch("remote");
    replicate(&src, s(&remote), &[]);
    let tampered = corrupt_stored_chunk(&remote, &big, 5);
    let work = src.scratch("work");
    let mnt = ReplicaMount::new(&file_url(&remote), &work.join("mnt"), &options(&work, &[]), &[]);
    let f = std::fs::File::open(mnt.path("big")).unwrap();
    let mut buf = vec![0u8; C];
    f.read_exact_at(&mut buf, 0).expect("chunk 0 is intact");
    assert_same_bytes(&buf, &big[..C], "chunk 0");
    f.read_exact_at(&mut buf, 9 * C as u64).expect("chunk 9 is intact");
    assert_same_bytes(&buf, &big[9 * C..10 * C], "chunk 9");
    let err = f.read_exact_at(&mut buf, 5 * C as u64).expect_err("the tampered chunk must not read");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let err = std::fs::read(mnt.path("big")).expect_err("nor the whole file");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let object = blake3::hash(&big).to_hex().to_string();
    let log = log_text(&work);
    let line = log
        .lines()
        .find(|l| l.contains("does not match its hash") && l.contains(&object) && l.contains("chunk=5"))
        .unwrap_or_else(|| panic!("the log names the object and the chunk:\n{log}"));
    let pack = tampered.file_name().unwrap().to_string_lossy().into_owned();
    assert!(line.contains(&pack), "the log names the file holding the chunk ({pack}): {line}");
}

#[test]
fn a_directory_replica_s_links_are_refused_not_followed() {
    // A pack moved out of the replica and linked back holds exactly the right bytes: a mount that
    // followed the link would serve them. It must refuse to read through it instead (EIO), as
    // replicate and restore refuse a directory remote holding a link.
    let (src, big) = sample_pond();
    let remote = src.scratch("remote");
    replicate(&src, s(&remote), &[]);
    let outside = src.scratch("outside");
    let packs = remote.join("_large_files/packs");
    for entry in std::fs::read_dir(&packs).unwrap() {
        let pack = entry.unwrap().path();
        let moved = outside.join(pack.file_name().unwrap());
        std::fs::rename(&pack, &moved).unwrap();
        std::os::unix::fs::symlink(&moved, &pack).unwrap();
    }
    let work = src.scratch("work");
    let mnt = ReplicaMount::new(&file_url(&remote), &work.join("mnt"), &options(&work, &["timeout=5"]), &[]);
    assert_eq!(std::fs::read(mnt.path("small")).unwrap(), b"small file\n", "inline content needs no pack");
    let started = Instant::now();
    let err = std::fs::read(mnt.path("big")).expect_err("a chunk behind a link must not be read");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(started.elapsed() < Duration::from_secs(4), "refused at once, not retried: {:?}", started.elapsed());
    drop(mnt);
    assert_ne!(big.len(), 0);
}

/// The sample pond replicated to a directory: the pond (its scratch space), big's bytes, the
/// remote, a work directory (mount logs, the cache) and the remote's URL.
fn sample_directory_replica() -> (TestPond, Vec<u8>, PathBuf, PathBuf, String) {
    let (src, big) = sample_pond();
    let remote = src.scratch("remote");
    replicate(&src, s(&remote), &[]);
    let work = src.scratch("work");
    let url = file_url(&remote);
    (src, big, remote, work, url)
}

/// Where a mount's disk cache under `work` keeps chunk `chunk` of `big`: the cache's file, the
/// remote's pack it mirrors, and the chunk's offset (the same in both).
fn cached_chunk_place(work: &Path, url: &str, remote: &Path, big: &[u8], chunk: usize) -> (PathBuf, PathBuf, u64) {
    let (pack, offset) = chunk_place(remote, big, chunk);
    let name = pack.file_name().unwrap().to_string_lossy().trim_end_matches(".parquet").to_string();
    let blobs = pond::remote_mount::cache_dir(&work.join("cache"), url).join("blobs");
    (blobs.join(&name[..2]).join(format!("p{name}")), pack, offset)
}

#[test]
fn a_corrupted_cache_entry_is_fetched_again_not_served() {
    let (_src, big, remote, work, url) = sample_directory_replica();
    {
        let mnt = ReplicaMount::new(&url, &work.join("mnt"), &options(&work, &[]), &[]);
        assert_same_bytes(&std::fs::read(mnt.path("big")).unwrap(), &big, "first read");
    }
    // Damage the cache: a byte inside every chunk (the cache keeps each pack's bytes where they
    // lie in the pack), and the object's manifest.
    let blobs = pond::remote_mount::cache_dir(&work.join("cache"), &url).join("blobs");
    let mut flipped = Vec::new();
    for chunk in 0..big.len().div_ceil(C) {
        let (cached, pack, offset) = cached_chunk_place(&work, &url, &remote, &big, chunk);
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&cached).expect("the chunk's pack is cached");
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, offset + 10).unwrap();
        f.write_all_at(&[byte[0] ^ 0x40], offset + 10).unwrap();
        flipped.push((cached, pack, offset + 10));
    }
    let manifest = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .find(|e| e.file_name().to_string_lossy().ends_with(".end"))
        .expect("the manifest is cached")
        .path();
    let mut bytes = std::fs::read(&manifest).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&manifest, &bytes).unwrap();

    let mnt = ReplicaMount::new(&url, &work.join("mnt"), &options(&work, &[]), &[]);
    assert_same_bytes(&std::fs::read(mnt.path("big")).unwrap(), &big, "read back over a damaged cache");
    let log = log_text(&work);
    assert!(log.contains("reading it again"), "the log says a kept copy of a chunk was read again:\n{log}");
    assert!(log.contains("cached manifest is damaged"), "and that the manifest was fetched again:\n{log}");
    for (cached, original, at) in &flipped {
        let (mut got, mut want) = ([0u8], [0u8]);
        std::fs::File::open(cached).unwrap().read_exact_at(&mut got, *at).unwrap();
        std::fs::File::open(original).unwrap().read_exact_at(&mut want, *at).unwrap();
        assert_eq!(got, want, "{} at {at}: the damaged byte was fetched again and put back", cached.display());
    }
    assert_ne!(std::fs::read(&manifest).unwrap(), bytes, "the damaged manifest was replaced");
}

#[test]
fn a_damaged_piece_of_a_cached_chunk_is_fetched_again_on_a_small_read() {
    use std::os::unix::fs::OpenOptionsExt;
    let (_src, big, remote, work, url) = sample_directory_replica();
    let mnt = ReplicaMount::new(&url, &work.join("mnt"), &options(&work, &[]), &[]);
    // O_DIRECT: every 4 KiB read reaches the daemon (the kernel's page cache would answer re-reads).
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(mnt.path("big")).unwrap();
    let mut buf = AlignedPage::default();
    let chunk = 7;
    let at = |piece: usize| (chunk * C + piece * 4096) as u64;
    // The chunk's first small read fetches it whole and learns its 4 KiB pieces' hashes; the next
    // reads piece 3 alone, from the cache.
    f.read_exact_at(&mut buf.0, at(0)).unwrap();
    assert_same_bytes(&buf.0, &big[at(0) as usize..at(1) as usize], "first small read");
    let (cached, _, offset) = cached_chunk_place(&work, &url, &remote, &big, chunk);
    let cached = std::fs::OpenOptions::new().read(true).write(true).open(cached).expect("the chunk's pack is cached");
    let mut byte = [0u8];
    cached.read_exact_at(&mut byte, offset + 3 * 4096 + 10).unwrap();
    cached.write_all_at(&[byte[0] ^ 0x40], offset + 3 * 4096 + 10).unwrap();

    f.read_exact_at(&mut buf.0, at(3)).unwrap();
    assert_same_bytes(&buf.0, &big[at(3) as usize..at(4) as usize], "a small read over a damaged piece");
    let log = log_text(&work);
    assert!(log.contains("reading it again"), "the log says the kept copy was read again:\n{log}");
    cached.read_exact_at(&mut byte, offset + 3 * 4096 + 10).unwrap();
    assert_eq!(byte[0], big[at(3) as usize + 10], "the damaged byte was fetched again and put back");
}

/// One page, aligned as `O_DIRECT` wants its buffers.
#[repr(C, align(4096))]
struct AlignedPage([u8; 4096]);

impl Default for AlignedPage {
    fn default() -> Self {
        AlignedPage([0; 4096])
    }
}

#[test]
fn the_chunk_cache_stays_within_cache_size() {
    let (src, big) = sample_pond();
    let remote = src.scratch("remote");
    replicate(&src, s(&remote), &[]);
    let work = src.scratch("work");
    let url = file_url(&remote);
    let bound = 12 * C as u64;
    let mnt = ReplicaMount::new(&url, &work.join("mnt"), &options(&work, &[&format!("cache_size={bound}")]), &[]);
    assert_same_bytes(&std::fs::read(mnt.path("big")).unwrap(), &big, "read through a small cache");
    drop(mnt); // read-ahead is written to the cache behind the reads: count once the daemon is done
    let blobs = pond::remote_mount::cache_dir(&work.join("cache"), &url).join("blobs");
    let held: u64 = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().len() == 2)
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|e| std::os::unix::fs::MetadataExt::blocks(&e.metadata().unwrap()) * 512)
        .sum();
    // What the cache counts is chunk bytes; the disk also holds the blocks around each kept run
    // and the bytes between chunks (a few KiB each).
    assert!(held <= bound + bound / 8, "the cache holds {held} bytes on disk, more than cache_size={bound} allows");
    assert!(held > 0, "the cache holds what was read last");
}

#[test]
fn ls_cat_and_log_take_a_url() {
    let s3 = s3();
    let (src, big) = sample_pond();
    let url = s3.url();
    replicate(&src, &url, &s3.env());
    let work = src.scratch("work");
    let mut env = s3.env();
    env.push(("XDG_CACHE_HOME".into(), s(&work).to_string()));
    for args in [vec!["ls"], vec!["ls", "dir"], vec!["log"]] {
        let mut local = vec![args[0], src.path()];
        local.extend(&args[1..]);
        let mut remote = vec![args[0], url.as_str()];
        remote.extend(&args[1..]);
        assert_eq!(pond_env_ok(&remote, &env), pond_env_ok(&local, &env), "pond {args:?} of the replica and the pond");
    }
    let out = pond_env(&["cat", &url, "big"], &env);
    assert!(out.status.success(), "{}", describe(&out));
    assert_same_bytes(&out.stdout, &big, "pond cat URL big");
    let out = pond_env(&["cat", &url, "big", "--version", "1"], &env);
    assert!(!out.status.success(), "big did not exist at version 1 (the empty pond)");
}

#[test]
fn a_pinned_version_serves_that_version() {
    let (src, big) = sample_pond();
    let v1 = latest_version(&src.root);
    {
        let fs = src.open();
        let ino = fs.lookup(ROOT_INO, b"small").unwrap().ino;
        let fh = fs.open_file(ino, libc::O_WRONLY | libc::O_TRUNC).unwrap();
        fs.write(fh, 0, b"changed\n").unwrap();
        fs.release(fh).unwrap();
        fs.shutdown().unwrap();
    }
    let remote = src.scratch("remote");
    replicate(&src, s(&remote), &[]);
    let work = src.scratch("work");
    let mnt =
        ReplicaMount::new(&file_url(&remote), &work.join("mnt"), &options(&work, &[&format!("version={v1}")]), &[]);
    assert_eq!(std::fs::read(mnt.path("small")).unwrap(), b"small file\n");
    assert_same_bytes(&std::fs::read(mnt.path("big")).unwrap(), &big, "big at the pinned version");
    let other = src.scratch("other");
    let out = pond(&["mount", &file_url(&remote), s(&other), "-o", &options(&work, &["version=999"]).join(",")]);
    assert!(!is_mounted(&other));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot serve version 999"), "{}", describe(&out));
}

/// Waits until the remote at `url` holds log entry `version` (replicated there).
fn wait_until_remote_has(url: &str, env: &[(String, String)], version: u64, limit: Duration) -> Instant {
    let remote = pond::replica::Remote::open(url, env, false).expect("open the remote");
    let store = remote.store();
    let name = object_store::path::Path::from(format!("_delta_log/{version:020}.json"));
    let rt = runtime();
    let deadline = Instant::now() + limit;
    loop {
        if rt.block_on(object_store::ObjectStoreExt::head(&*store, &name)).is_ok() {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "version {version} did not reach {url} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn three_mounts_follow_a_writer_within_refresh_plus_a_second_and_open_files_keep_their_bytes() {
    let s3 = s3();
    let (src, old_big) = sample_pond();
    let url = s3.url();
    let env = s3.env();
    let writer = Mounted::new(&src.root, &src.scratch("writer"), &[]);
    let follow = Command::new(pond_bin())
        .args(["replicate", src.path(), &url, "--follow"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pond replicate --follow");
    let _follow = ChildGuard(follow);
    wait_until_remote_has(&url, &env, latest_version(&src.root), Duration::from_secs(30));

    // Two mounts share a cache; the third has its own.
    let work = src.scratch("work");
    let shared = options(&work, &["refresh=1"]);
    let own_dir = src.scratch("own");
    let mounts = [
        ReplicaMount::new(&url, &work.join("m1"), &shared, &env),
        ReplicaMount::new(&url, &work.join("m2"), &shared, &env),
        ReplicaMount::new(&url, &work.join("m3"), &options(&own_dir, &["refresh=1"]), &env),
    ];
    // Opened before the new version, one chunk read.
    let held: Vec<std::fs::File> = mounts
        .iter()
        .map(|m| {
            let f = std::fs::File::open(m.path("big")).unwrap();
            let mut first = vec![0u8; 4096];
            f.read_exact_at(&mut first, 0).unwrap();
            f
        })
        .collect();

    let new_big = pattern(7 * C + 5, 3);
    std::fs::write(writer.path("big"), &new_big).unwrap();
    std::fs::write(writer.path("appeared"), b"new in this version\n").unwrap();
    std::fs::File::open(writer.path("appeared")).unwrap().sync_all().unwrap();
    std::fs::File::open(writer.path("big")).unwrap().sync_all().unwrap();
    let version = latest_version(&src.root);
    let landed = wait_until_remote_has(&url, &env, version, Duration::from_secs(30));

    let new_len = new_big.len() as u64;
    let seen: Vec<Duration> = std::thread::scope(|scope| {
        let watchers: Vec<_> = mounts
            .iter()
            .map(|m| {
                scope.spawn(move || {
                    loop {
                        let here = m.path("appeared").exists()
                            && std::fs::metadata(m.path("big")).is_ok_and(|md| md.len() == new_len);
                        if here {
                            return landed.elapsed();
                        }
                        assert!(landed.elapsed() < Duration::from_secs(20), "{} never saw the new version", m.url);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
            })
            .collect();
        watchers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    eprintln!("version {version} seen by the three mounts {seen:?} after it reached the remote");
    for (i, took) in seen.iter().enumerate() {
        assert!(
            *took <= Duration::from_secs(2),
            "mount {} saw version {version} {took:?} after it reached the remote: more than refresh (1 s) + 1 s",
            i + 1
        );
    }
    for (m, f) in mounts.iter().zip(&held) {
        let mut old = vec![0u8; old_big.len()];
        f.read_exact_at(&mut old, 0).expect("the file opened before reads on");
        assert_same_bytes(&old, &old_big, "a file opened before the new version");
        let mut past = [0u8; 1];
        assert_eq!(f.read_at(&mut past, old_big.len() as u64).unwrap(), 0, "and ends where it ended");
        assert_same_bytes(&std::fs::read(m.path("big")).unwrap(), &new_big, "a new open reads the new version");
        assert_eq!(std::fs::read(m.path("appeared")).unwrap(), b"new in this version\n");
    }
    drop(held);
    for m in &mounts {
        assert_same_bytes(&std::fs::read(m.path("big")).unwrap(), &new_big, "once the old handle is closed");
    }
    drop(mounts);
    writer.unmount();
}

#[test]
fn the_server_stopped_mid_read_gives_eio_within_the_timeout_and_the_mount_recovers() {
    let s3 = s3();
    let (src, big) = sample_pond();
    let url = s3.url();
    replicate(&src, &url, &s3.env());
    let upstream = s3.endpoint.trim_start_matches("http://").trim_end_matches('/').to_string();
    let proxy = TcpProxy::start(&upstream);
    let work = src.scratch("work");
    let mut env = s3.env_via(&proxy.endpoint());
    env.push(("XDG_CACHE_HOME".into(), s(&work).to_string()));
    // `inner` cached beforehand (pond cat reads through the same cache as the mount), never opened
    // through the mount: during the outage the daemon serves it from its cache.
    let out = pond_env(&["cat", &url, "dir/inner"], &env);
    assert!(out.status.success(), "{}", describe(&out));
    let timeout = Duration::from_secs(2);
    let opts = vec![format!("log={}", s(&work.join("mount.log"))), "timeout=2".to_string()];
    let mnt = ReplicaMount::new(&url, &work.join("mnt"), &opts, &env);
    let f = std::fs::File::open(mnt.path("big")).unwrap();
    let mut buf = vec![0u8; C];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_same_bytes(&buf, &big[..C], "before the outage");

    proxy.set_up(false);
    let far = 33 * C as u64;
    let started = Instant::now();
    let err = f.read_exact_at(&mut buf, far).expect_err("nothing to read from while the server is down");
    let took = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(took <= timeout + Duration::from_secs(2), "EIO after {took:?}, more than the timeout ({timeout:?}) allows");
    // The mount keeps serving: listing, attributes, and what is cached.
    assert!(std::fs::read_dir(mnt.mountpoint.join("dir")).unwrap().count() == 1);
    let started = Instant::now();
    let inner = std::fs::read(mnt.path("dir/inner")).unwrap_or_else(|e| panic!("{e}; log:\n{}", log_text(&work)));
    assert_same_bytes(&inner, &pattern(3 * C + 7, 2), "cached, server down");
    assert!(started.elapsed() < Duration::from_secs(1), "a cached file waits for no remote");

    proxy.set_up(true);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match f.read_exact_at(&mut buf, far) {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "the mount did not recover once the server was back: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_same_bytes(&buf, &big[far as usize..far as usize + C], "after the server came back");
    assert_same_bytes(&std::fs::read(mnt.path("big")).unwrap(), &big, "the whole file, after");
    drop(f);
    drop(mnt);
    assert!(daemons(Path::new(&url), None).iter().all(|p| !alive(*p)), "no daemon left");
}

#[test]
fn a_pond_read_lazily_matches_its_file_when_opened_through_the_library() {
    // read_file over a view: the same helper the core tests use, over every interesting size.
    let pond = TestPond::new();
    let fs = pond.open();
    let mut files = Vec::new();
    for (i, (size, _)) in crate::common::sizes::INTERESTING.iter().enumerate() {
        let data = pattern(*size, 10 + i as u64);
        let ino = crate::common::write_file(&fs, ROOT_INO, &format!("f{i}"), &data);
        files.push((ino, data));
    }
    fs.shutdown().unwrap();
    let (_remote, _view, lazy) = directory_replica(&pond);
    for (ino, data) in &files {
        assert_same_bytes(&read_file(&lazy, *ino), data, &format!("inode {ino} of {} bytes", data.len()));
    }
}

#[test]
fn a_view_moves_to_a_new_version_and_says_what_changed_while_open_files_keep_theirs() {
    use pond::fs::PageCache;
    let (src, big) = sample_pond();
    let (remote, view, fs) = directory_replica(&src);
    let big_ino = fs.lookup(ROOT_INO, b"big").unwrap().ino;
    let small_ino = fs.lookup(ROOT_INO, b"small").unwrap().ino;
    let old = fs.open_file(big_ino, libc::O_RDONLY).unwrap();
    assert_eq!(fs.page_cache(old), PageCache::Keep);

    // The writer replaces big (another size), removes small, adds a file; replicates again.
    let new_big = pattern(3 * C + 1, 77);
    {
        let w = src.open();
        let fh = w.open_file(big_ino, libc::O_WRONLY | libc::O_TRUNC).unwrap();
        w.write(fh, 0, &new_big).unwrap();
        w.release(fh).unwrap();
        w.unlink(ROOT_INO, b"small").unwrap();
        crate::common::write_file(&w, ROOT_INO, "added", b"added");
        w.shutdown().unwrap();
    }
    replicate(&src, s(&remote), &[]);
    let newer = view.sync_newer(fs.opened_version()).unwrap().expect("a newer version is there");
    let changes = fs.advance_to(newer).unwrap();
    assert_eq!(fs.opened_version(), newer);
    assert!(changes.entries.contains(&(ROOT_INO, b"small".to_vec())), "a removed name: {changes:?}");
    // The kernel caches missing names: one looked up before the move would hide the new file.
    assert!(changes.entries.contains(&(ROOT_INO, b"added".to_vec())), "an added name: {changes:?}");
    assert!(changes.inodes.contains(&(small_ino, true)), "a removed inode: {changes:?}");
    assert!(
        changes.inodes.contains(&(big_ino, false)),
        "big changed while open through the cache: its attributes go, its pages stay for the old reader: {changes:?}"
    );
    assert_eq!(view.sync_newer(newer).unwrap(), None, "nothing newer yet");

    // The file opened before reads the old version, size and bytes.
    assert_eq!(fs.getattr_via(big_ino, Some(old)).unwrap().size, big.len() as u64);
    assert!(fs.getattr_via(big_ino, Some(old)).unwrap().volatile, "the kernel must not cache either size");
    let mut got = Vec::new();
    while let Ok(piece) = fs.read(old, got.len() as u64, 1 << 20) {
        if piece.is_empty() {
            break;
        }
        got.extend_from_slice(&piece);
    }
    assert_same_bytes(&got, &big, "the file opened before the move");
    // A new open reads the new version, around the old version's pages while the old handle lives.
    assert_eq!(fs.getattr(big_ino).unwrap().size, new_big.len() as u64);
    let new = fs.open_file(big_ino, libc::O_RDONLY).unwrap();
    assert_eq!(fs.page_cache(new), PageCache::Bypass);
    assert_same_bytes(&fs.read(new, 0, 1 << 20).unwrap(), &new_big, "a new open after the move");
    fs.release(old).unwrap();
    fs.release(new).unwrap();
    let again = fs.open_file(big_ino, libc::O_RDONLY).unwrap();
    assert_eq!(fs.page_cache(again), PageCache::Refill, "the old pages must go before the new ones are cached");
    assert!(fs.lookup(ROOT_INO, b"small").is_err());
    assert_eq!(read_file(&fs, fs.lookup(ROOT_INO, b"added").unwrap().ino), b"added");
}
