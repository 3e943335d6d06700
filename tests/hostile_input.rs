//! Hostile input (issue 7.4): seeded corruptions of everything pond reads from disk or from a remote
//! — Delta log entries, checkpoints and `_last_checkpoint`, oplog data files, a large-file object
//! (fuzzed in depth in large_files.rs), a remote replica, mount options, names, row attributes — fed
//! to the commands users run (`verify`, `ls`, `cat`, `log`, `restore`, `verify URL`, `mount -o`, a
//! read-only mount). Every case must end in success with content some version held, or in a clear
//! error (exit 1 for damage, 2 with a one-line `pond: ...` message); never a panic, a signal, a hang
//! (20 s per run), allocation past a 4 GiB address-space limit, or a write outside its target (the
//! pond's tree, the remote and the target's parent are compared before and after).
//!
//! Mutations: bit flips, byte runs, zero fills, truncation, appends, splices and replacement by
//! another file of the pond, empty or deleted files; JSON lines duplicated, removed, swapped, fields
//! set to absurd values (huge, negative, wrong type, 200 KB strings, deep nesting) or removed, and
//! add/remove actions whose path escapes (`../x`, `/etc/passwd`, `%2e%2e/x`, `_large_files/../../x`,
//! NUL, 5000-byte names); parquet values (checkpoint `add.path`, a row's `size`, `record`, names...)
//! rewritten to absurd ones.
//!
//! The readers run as the real binary (that is how users meet this code) under `RLIMIT_AS` and a
//! timeout. The decoders (data files, log entries, checkpoints as `Oplog::open` reads them) are also
//! run in bulk in-process, in a child run of this test binary under the same limits, where every
//! panic counts, caught or not. Names and mount options are property-tested.
//!
//! Cases are seeded. A failure prints the target, the seed and the mutations;
//! `POND_HOSTILE_SEED=0x… cargo test --release --test tests hostile_input::<test>` replays that one case, and
//! `POND_HOSTILE_VERBOSE=1` prints every run. `POND_SOAK_SCALE` multiplies the number of cases.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Int32Array, Int64Array, RecordBatch, Scalar, StringArray, StructArray,
    new_null_array,
};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use proptest::prelude::*;
use serde_json::{Value, json};

use pond::config::Threshold;
use pond::fs::{FsOptions, PondFs, XattrSet};
use pond::layout::PondFile;
use pond::oplog::datafile::{self, InlineReader};
use pond::oplog::schema::{Content, OplogRow};
use pond::oplog::{Oplog, ROOT_INO, history};
use pond::parquet_bounds::check_parquet;

use crate::common::parquet_craft::{Crafted, parquet_file, zstd_zeros};
use crate::common::rng::Rng;
use crate::common::sizes::{C, T};
use crate::common::{ME, pattern, pond_bin, runtime, soak};

/// A reader that has not exited after this long hangs.
const CASE_TIMEOUT: Duration = Duration::from_secs(20);
/// Address-space limit of every child: a reader that tries to allocate past it aborts (a failure).
const ADDRESS_SPACE: u64 = 4 << 30;

/// The seeds of a target's cases: `short` of them, times the soak scale; or only the one
/// `POND_HOSTILE_SEED` names (as a failure prints it), to replay a case.
fn seeds(target: &str, short: u64) -> Vec<u64> {
    match std::env::var("POND_HOSTILE_SEED") {
        Ok(s) => vec![u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("POND_HOSTILE_SEED is hex")],
        Err(_) => (0..soak::rounds(short)).map(|i| case_seed(target, i)).collect(),
    }
}

/// The seed of case `i` of `target`: distinct per target, stable across runs (the long form runs the
/// short form's cases and more).
fn case_seed(target: &str, i: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in target.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

// ---------------------------------------------------------------------------------------------------
// The pond every case starts from

/// A pond with history: inline and large files (sizes relative to T and C), a directory, a symlink,
/// an xattr, overwrites and an unlink, one commit per step so the log passes a checkpoint and
/// compaction (remove actions) — and its replica in a directory.
struct Base {
    pond: PathBuf,
    remote: PathBuf,
    /// BLAKE3 of every content any version held: what a successful `cat` may print.
    written: BTreeSet<[u8; 32]>,
    /// Regular files at the latest version.
    files: Vec<String>,
    latest: u64,
    checkpoint: u64,
}

/// Steps (one commit each) past the first checkpoint (at version 49) with room to spare.
const BASE_STEPS: u64 = 56;

/// Set in a child run of this test binary (see [`in_child`]): the directory of the parent's base.
const BASE_ENV: &str = "POND_HOSTILE_BASE";

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| match std::env::var_os(BASE_ENV) {
        Some(dir) => Base::load(Path::new(&dir)),
        None => build_base(),
    })
}

impl Base {
    fn dir(&self) -> &Path {
        self.pond.parent().expect("the base pond's directory")
    }

    /// Record what a child run needs to use this base (`base.json` beside the pond).
    fn save(&self) {
        let written: Vec<String> = self.written.iter().map(hex::encode).collect();
        let v = json!({"written": written, "files": self.files, "latest": self.latest, "checkpoint": self.checkpoint});
        std::fs::write(self.dir().join("base.json"), v.to_string()).expect("write base.json");
    }

    fn load(dir: &Path) -> Base {
        let text = std::fs::read_to_string(dir.join("base.json")).expect("read base.json");
        let v: Value = serde_json::from_str(&text).expect("base.json");
        let strings = |k: &str| -> Vec<String> {
            v[k].as_array().expect(k).iter().map(|s| s.as_str().expect(k).to_string()).collect()
        };
        let written =
            strings("written").iter().map(|h| hex::decode(h).expect("hex").try_into().expect("32 bytes")).collect();
        Base {
            pond: dir.join("pond"),
            remote: dir.join("remote"),
            written,
            files: strings("files"),
            latest: v["latest"].as_u64().expect("latest"),
            checkpoint: v["checkpoint"].as_u64().expect("checkpoint"),
        }
    }
}

/// Create or overwrite `parent/name` with `data` (truncating) and release it.
fn put(fs: &PondFs, parent: u64, name: &str, data: &[u8]) -> u64 {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
    let (attr, fh) = fs.create(parent, name.as_bytes(), 0o644, flags, ME).expect("create");
    for (i, piece) in data.chunks(128 * 1024).enumerate() {
        fs.write(fh, (i * 128 * 1024) as u64, piece).expect("write");
    }
    fs.release(fh).expect("release");
    attr.ino
}

fn build_base() -> Base {
    // Under the test target's scratch directory, one per test process; earlier runs' are removed.
    let top = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile_input");
    if let Ok(entries) = std::fs::read_dir(&top) {
        for e in entries.flatten() {
            let pid = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok());
            if pid.is_some_and(|p| p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = top.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("base dir");
    let root = dir.join("pond");
    runtime().block_on(Oplog::create(&root, Threshold::default())).expect("create pond");

    let sizes = [0, 1, T / 64, T - 1, T, T + 1, 2 * C + 3, T / 3];
    let mut written = BTreeSet::new();
    let mut latest: BTreeMap<String, u64> = BTreeMap::new();
    {
        let fs = PondFs::open(&root, FsOptions::default()).expect("open pond");
        let d = fs.mkdir(ROOT_INO, b"d", 0o755, ME).expect("mkdir").ino;
        fs.symlink(ROOT_INO, b"link", b"d/inner", ME).expect("symlink");
        let names: [(u64, &str, &str); 5] = [
            (ROOT_INO, "a", "a"),
            (ROOT_INO, "b", "b"),
            (d, "inner", "d/inner"),
            (ROOT_INO, "c", "c"),
            (d, "e", "d/e"),
        ];
        for step in 0..BASE_STEPS {
            let (parent, name, path) = names[step as usize % names.len()];
            let data = pattern(sizes[step as usize % sizes.len()], 7000 + step);
            written.insert(*blake3::hash(&data).as_bytes());
            let ino = put(&fs, parent, name, &data);
            latest.insert(path.to_string(), ino);
            if step == 3 {
                fs.setxattr(ino, b"user.origin", b"hostile_input", XattrSet::Any).expect("setxattr");
            }
            if step == 17 {
                fs.unlink(ROOT_INO, b"c").expect("unlink");
                latest.remove("c");
            }
            fs.sync_all().expect("commit");
        }
        fs.shutdown().expect("shutdown");
    }
    written.insert(*blake3::hash(b"").as_bytes());
    let log = root.join("_delta_log");
    let checkpoint = history::checkpoint_versions(&root).expect("checkpoints").last().copied();
    let checkpoint = checkpoint.expect("the base pond has a checkpoint (CHECKPOINT_INTERVAL is 50)");
    assert!(log.join("_last_checkpoint").exists(), "the base pond has a _last_checkpoint");
    let latest_version = crate::common::latest_version(&root);
    let report = pond::audit::verify_pond(&root).expect("verify the base pond");
    assert!(report.is_clean(), "the base pond verifies clean: {:?}", report.damage);

    let remote = dir.join("remote");
    let out = Command::new(pond_bin()).arg("replicate").arg(&root).arg(&remote).output().expect("replicate");
    assert!(out.status.success(), "replicate the base pond: {}", String::from_utf8_lossy(&out.stderr));
    let base =
        Base { pond: root, remote, written, files: latest.into_keys().collect(), latest: latest_version, checkpoint };
    base.save();
    base
}

// ---------------------------------------------------------------------------------------------------
// Files and trees

/// Copy a directory tree (files, directories, symlinks).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ty = e.file_type().expect("file type");
        if ty.is_dir() {
            copy_tree(&src, &dst);
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).expect("readlink"), &dst).expect("symlink");
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

/// Every entry under `root` (nothing excluded): relative path → kind and content hash or target.
fn tree_digest(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let path = e.path();
            let rel = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &path, out);
            } else if meta.file_type().is_symlink() {
                out.insert(rel, format!("symlink {:?}", std::fs::read_link(&path).ok()));
            } else if !meta.is_file() {
                // A FIFO would block a read.
                out.insert(rel, format!("special {:?}", meta.file_type()));
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                out.insert(rel, format!("{} bytes {}", bytes.len(), blake3::hash(&bytes)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// What differs between two digests, briefly.
fn digest_diff(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> String {
    let mut s = String::new();
    for (k, v) in after {
        if before.get(k) != Some(v) {
            let _ = write!(s, "[{k}: {:?} -> {v}] ", before.get(k));
        }
    }
    for k in before.keys().filter(|k| !after.contains_key(*k)) {
        let _ = write!(s, "[{k} removed] ");
    }
    s
}

/// The files of `root` whose names say they are `kind`.
fn files_of(root: &Path, kind: FileKind) -> Vec<PathBuf> {
    let (dir, test): (PathBuf, fn(&str) -> bool) = match kind {
        FileKind::LogEntry => (root.join("_delta_log"), |n| pond::layout::log_entry_version(n).is_some()),
        FileKind::Checkpoint => (root.join("_delta_log"), |n| pond::layout::checkpoint_version(n).is_some()),
        FileKind::LastCheckpoint => (root.join("_delta_log"), |n| n == "_last_checkpoint"),
        FileKind::Data => (root.to_path_buf(), |n| n.ends_with(".parquet")),
        FileKind::Object => (root.join("_large_files"), |n| n.ends_with(".parquet")),
    };
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().filter(|e| e.file_name().to_str().is_some_and(test)).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------------
// Mutations

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileKind {
    LogEntry,
    Checkpoint,
    LastCheckpoint,
    Data,
    Object,
}

/// One change to one file, printed as is when a case fails.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBits {
        at: usize,
        mask: u8,
    },
    ByteRun {
        at: usize,
        len: usize,
        byte: u8,
    },
    ZeroFill {
        at: usize,
        len: usize,
    },
    Truncate {
        len: usize,
    },
    Append {
        len: usize,
        seed: u64,
    },
    /// Overwrite `len` bytes at `at` with bytes of another file of the pond.
    Splice {
        from: String,
        from_at: usize,
        at: usize,
        len: usize,
    },
    /// The whole file replaced by another file of the pond.
    Replace {
        from: String,
    },
    Empty,
    Delete,
    Json(JsonEdit),
    /// A value of a parquet file replaced (`column` is a dotted path into structs).
    Value {
        row: usize,
        column: String,
        value: Absurd,
    },
    /// A file that is not part of a pond's layout, next to the others (remote only).
    Foreign {
        name: String,
    },
    /// The file copied to the log entry of a far version: versions that do not follow one another.
    FarVersion {
        version: u64,
    },
    /// The file grown, sparse, to `len` bytes: past what a file of its kind may hold.
    Sparse {
        len: u64,
    },
    /// The file replaced by a parquet file that claims too much (see `common::parquet_craft`).
    Crafted(Crafted),
    /// The file (or directory) moved out of the remote, a symbolic link to it left in its place.
    Link,
    /// The file replaced by a FIFO (opening one for reading blocks).
    Fifo,
    /// Directory entries committed into the table that make its directories not a tree.
    NotATree(NotATreeEdit),
}

/// A parquet file no honest writer writes, for a data file or a checkpoint to be replaced by.
fn crafted(rng: &mut Rng) -> Crafted {
    match rng.below(5) {
        // Wider than any pond schema (and nested deeper than parquet's recursion survives).
        0 => Crafted { depth: 100_000 + rng.below(100_000), no_row_group: true, ..Crafted::default() },
        // Nested a little deeper than a pond file's schema may be.
        1 => Crafted { depth: 5 + rng.below(30), ..Crafted::default() },
        2 => {
            Crafted { root_children: Some(i32::MAX - rng.below(1000) as i32), no_row_group: true, ..Crafted::default() }
        }
        3 => Crafted { claim_uncompressed: Some(i32::MAX), zstd_bomb: true, ..Crafted::default() },
        _ => Crafted { claim_uncompressed: Some(i32::MAX - rng.below(1000) as i32), ..Crafted::default() },
    }
}

#[derive(Clone, Debug)]
enum JsonEdit {
    DuplicateLine(usize),
    RemoveLine(usize),
    SwapLines(usize, usize),
    /// The value at a JSON pointer of one line replaced (or removed, for `None`).
    Set {
        line: usize,
        pointer: String,
        value: Option<Value>,
    },
    /// An extra action naming `path`.
    AddAction {
        action: &'static str,
        path: String,
        size: Value,
    },
    GarbageLine(String),
}

/// Names a log entry might give a data file that must never be read or written as such.
const ESCAPING_PATHS: &[&str] = &[
    "../x.parquet",
    "../../../../../../tmp/x.parquet",
    "/etc/passwd",
    "/tmp/x.parquet",
    "%2e%2e/x.parquet",
    "%2e%2e%2fx.parquet",
    "_large_files/../../x.parquet",
    "a/../../x.parquet",
    "_delta_log/00000000000000000001.json",
    "_delta_log/_last_checkpoint",
    "_pond/lock",
    "..",
    ".",
    "",
    "C:\\x.parquet",
    "..\\x.parquet",
    "file:///etc/passwd",
    "s3://bucket/x.parquet",
    "nul\u{0}.parquet",
    "%00.parquet",
    "part-%2F..%2F..%2Fx.parquet",
    "d/../../x.parquet",
];

fn escaping_path(rng: &mut Rng) -> String {
    match rng.below(ESCAPING_PATHS.len() + 2) {
        i if i < ESCAPING_PATHS.len() => ESCAPING_PATHS[i].to_string(),
        i if i == ESCAPING_PATHS.len() => format!("{}.parquet", "x".repeat(300 + rng.below(5000))),
        _ => format!("{}x.parquet", "a/".repeat(1 + rng.below(200))),
    }
}

/// A JSON value no honest writer puts where it goes.
fn absurd_json(rng: &mut Rng) -> Value {
    match rng.below(20) {
        0 => json!(-1),
        1 => json!(i64::MIN),
        2 => json!(i64::MAX),
        3 => json!(u64::MAX),
        4 => json!(1e308),
        5 => json!(-0.5),
        6 => json!(0),
        7 => json!(""),
        8 => json!("x".repeat(1 + rng.below(200_000))),
        9 => Value::Null,
        10 => json!(true),
        11 => json!([]),
        12 => json!({}),
        13 => json!("18446744073709551615"),
        14 => json!("-1"),
        15 => json!("0"),
        16 => json!(escaping_path(rng)),
        17 => (0..100).fold(json!(1), |v, _| json!([v])),
        18 => json!({"version": u64::MAX, "size": -1, "parts": i64::MAX}),
        _ => json!("\u{0}\u{ffff}"),
    }
}

/// Every JSON pointer into `v` (objects and arrays, leaves and inner nodes).
fn pointers(v: &Value, prefix: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{prefix}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let p = format!("{prefix}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

fn json_edit(rng: &mut Rng, text: &str) -> JsonEdit {
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len().max(1);
    match rng.below(10) {
        0 => JsonEdit::DuplicateLine(rng.below(n)),
        1 => JsonEdit::RemoveLine(rng.below(n)),
        2 => JsonEdit::SwapLines(rng.below(n), rng.below(n)),
        3 => JsonEdit::AddAction {
            action: if rng.chance(50) { "add" } else { "remove" },
            path: escaping_path(rng),
            size: if rng.chance(50) { json!(5) } else { absurd_json(rng) },
        },
        4 => JsonEdit::GarbageLine(
            rng.one_of(&["{", "[]", "null", "{\"add\":{}}", "{\"add\":{\"path\":5}}", "\u{0}", "{\"protocol\":7}"])
                .to_string(),
        ),
        _ => {
            let line = rng.below(n);
            let value: Value = lines.get(line).and_then(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
            let mut ps = Vec::new();
            pointers(&value, String::new(), &mut ps);
            // Paths of data files are the most interesting leaves: half the time, aim at one.
            let path_ps: Vec<String> = ps.iter().filter(|p| p.ends_with("/path")).cloned().collect();
            let pointer = if !path_ps.is_empty() && rng.chance(40) {
                rng.one_of(&path_ps).clone()
            } else if ps.is_empty() {
                String::new()
            } else {
                rng.one_of(&ps).clone()
            };
            let value = if pointer.ends_with("/path") && rng.chance(70) {
                Some(json!(escaping_path(rng)))
            } else if rng.chance(15) {
                None
            } else {
                Some(absurd_json(rng))
            };
            JsonEdit::Set { line, pointer, value }
        }
    }
}

fn apply_json(edit: &JsonEdit, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let n = lines.len();
    match edit {
        JsonEdit::DuplicateLine(i) if *i < n => {
            let l = lines[*i].clone();
            lines.insert(*i, l);
        }
        JsonEdit::RemoveLine(i) if *i < n => {
            lines.remove(*i);
        }
        JsonEdit::SwapLines(i, j) if *i < n && *j < n => lines.swap(*i, *j),
        JsonEdit::Set { line, pointer, value } if *line < n => {
            if let Ok(mut v) = serde_json::from_str::<Value>(&lines[*line]) {
                match value {
                    _ if pointer.is_empty() => v = value.clone().unwrap_or(Value::Null),
                    Some(new) => {
                        if let Some(slot) = v.pointer_mut(pointer) {
                            *slot = new.clone();
                        }
                    }
                    None => {
                        let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
                        match v.pointer_mut(parent) {
                            Some(Value::Object(m)) => {
                                m.remove(&key.replace("~1", "/").replace("~0", "~"));
                            }
                            Some(Value::Array(a)) => {
                                if let Ok(i) = key.parse::<usize>()
                                    && i < a.len()
                                {
                                    a.remove(i);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                lines[*line] = v.to_string();
            }
        }
        JsonEdit::AddAction { action, path, size } => {
            let body = json!({"path": path, "size": size, "partitionValues": {}, "modificationTime": 0,
                              "dataChange": true, "deletionTimestamp": 0});
            lines.insert(n.saturating_sub(1), json!({ *action: body }).to_string());
        }
        JsonEdit::GarbageLine(g) => lines.push(g.clone()),
        _ => {}
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// A value of a parquet column no honest writer writes.
#[derive(Clone, Debug)]
enum Absurd {
    Null,
    Int(i64),
    Str(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

fn absurd_value(rng: &mut Rng, ty: &DataType, nullable: bool, hashes: &[String]) -> Absurd {
    if nullable && rng.chance(15) {
        return Absurd::Null;
    }
    match ty {
        DataType::Int64 | DataType::Int32 => Absurd::Int(*rng.one_of(&[
            -1,
            0,
            1,
            2,
            i64::MIN,
            i64::MAX,
            i32::MAX as i64,
            i32::MIN as i64,
            u32::MAX as i64 + 1,
            1 << 40,
        ])),
        DataType::Utf8 => Absurd::Str(match rng.below(6) {
            0 => escaping_path(rng),
            1 => rng.one_of(&["", "node", "dirent", "bogus", "file", "dir", "symlink", "zz", "\u{0}"]).to_string(),
            2 if !hashes.is_empty() => rng.one_of(hashes).clone(),
            3 => "0".repeat(64),
            4 => "x".repeat(1 + rng.below(100_000)),
            _ => json!({"type": "struct", "fields": [{"name": "x", "type": "long", "nullable": true,
                        "metadata": {}}]})
            .to_string(),
        }),
        DataType::Binary => Absurd::Bytes(match rng.below(6) {
            0 => Vec::new(),
            1 => b"..".to_vec(),
            2 => b"a/b".to_vec(),
            3 => vec![b'x'; 256 + rng.below(4000)],
            4 => b"nul\0name".to_vec(),
            _ => pattern(1 + rng.below(64), rng.next()),
        }),
        DataType::Boolean => Absurd::Bool(rng.chance(50)),
        _ => Absurd::Null,
    }
}

/// A one-element array of `ty` holding `value`, or None when the type does not take it.
fn scalar(ty: &DataType, value: &Absurd) -> Option<ArrayRef> {
    Some(match (ty, value) {
        (_, Absurd::Null) => new_null_array(ty, 1),
        (DataType::Int64, Absurd::Int(v)) => Arc::new(Int64Array::from(vec![*v])),
        (DataType::Int32, Absurd::Int(v)) => Arc::new(Int32Array::from(vec![*v as i32])),
        (DataType::Utf8, Absurd::Str(s)) => Arc::new(StringArray::from(vec![s.as_str()])),
        (DataType::Binary, Absurd::Bytes(b)) => Arc::new(BinaryArray::from_vec(vec![b.as_slice()])),
        (DataType::Boolean, Absurd::Bool(b)) => Arc::new(BooleanArray::from(vec![*b])),
        _ => return None,
    })
}

/// Leaves reachable through structs only, as index paths with their dotted names.
fn leaves(fields: &arrow::datatypes::Fields, prefix: (&[usize], &str), out: &mut Vec<(Vec<usize>, String, Field)>) {
    for (i, f) in fields.iter().enumerate() {
        let mut path = prefix.0.to_vec();
        path.push(i);
        let name = if prefix.1.is_empty() { f.name().clone() } else { format!("{}.{}", prefix.1, f.name()) };
        match f.data_type() {
            DataType::Struct(children) => leaves(children, (&path, &name), out),
            DataType::Int64 | DataType::Int32 | DataType::Utf8 | DataType::Binary | DataType::Boolean => {
                out.push((path, name, f.as_ref().clone()))
            }
            _ => {}
        }
    }
}

/// `array` with element `row` of the leaf at `path` (through structs) set to `value`.
fn with_value(array: &ArrayRef, path: &[usize], row: usize, value: &Absurd) -> Option<ArrayRef> {
    if let [first, rest @ ..] = path {
        let s = array.as_any().downcast_ref::<StructArray>()?;
        let mut children: Vec<ArrayRef> = s.columns().to_vec();
        children[*first] = with_value(&children[*first], rest, row, value)?;
        return Some(Arc::new(StructArray::try_new(s.fields().clone(), children, s.nulls().cloned()).ok()?));
    }
    let new = scalar(array.data_type(), value)?;
    let mask = BooleanArray::from((0..array.len()).map(|i| i == row).collect::<Vec<_>>());
    arrow::compute::kernels::zip::zip(&mask, &Scalar::new(new), array).ok()
}

/// Every field nullable, recursively (so a null can go anywhere).
fn nullable(field: &Field) -> Field {
    let ty = match field.data_type() {
        DataType::Struct(children) => {
            DataType::Struct(children.iter().map(|c| Arc::new(nullable(c))).collect::<Vec<_>>().into())
        }
        other => other.clone(),
    };
    field.clone().with_data_type(ty).with_nullable(true)
}

/// `array` with every struct field (recursively) nullable, as [`nullable`] declares it.
fn relax(array: &ArrayRef) -> ArrayRef {
    match array.as_any().downcast_ref::<StructArray>() {
        Some(s) => {
            let children: Vec<ArrayRef> = s.columns().iter().map(relax).collect();
            let fields: Vec<Field> = s.fields().iter().map(|f| nullable(f)).collect();
            Arc::new(StructArray::try_new(fields.into(), children, s.nulls().cloned()).expect("relaxed struct"))
        }
        None => array.clone(),
    }
}

/// Read a parquet file whole (None if it does not read).
fn read_parquet(path: &Path) -> Option<(Vec<RecordBatch>, Option<Vec<parquet::file::metadata::KeyValue>>)> {
    let file = std::fs::File::open(path).ok()?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).ok()?;
    let kv = builder.metadata().file_metadata().key_value_metadata().cloned();
    let batches = builder.build().ok()?.collect::<Result<Vec<_>, _>>().ok()?;
    Some((batches, kv))
}

/// Pick a value mutation of the parquet file at `path`, in a row where the leaf's structs are
/// present (a checkpoint row is one action: an `add.size` edit goes to an `add` row).
fn value_mutation(rng: &mut Rng, path: &Path, hashes: &[String]) -> Option<Mutation> {
    let (batches, _) = read_parquet(path)?;
    let first = batches.first()?;
    let batch = arrow::compute::concat_batches(&first.schema(), &batches).ok()?;
    let mut all = Vec::new();
    leaves(batch.schema().fields(), (&[], ""), &mut all);
    let present = |leaf: &[usize], row: usize| {
        let mut array: ArrayRef = batch.column(leaf[0]).clone();
        for &i in &leaf[1..] {
            if array.is_null(row) {
                return false;
            }
            let Some(s) = array.as_any().downcast_ref::<StructArray>() else { return false };
            array = s.column(i).clone();
        }
        true
    };
    let candidates: Vec<(Vec<usize>, String, Field)> =
        all.into_iter().filter(|(leaf, _, _)| (0..batch.num_rows()).any(|r| present(leaf, r))).collect();
    if candidates.is_empty() {
        return None;
    }
    let (leaf, column, field) = rng.one_of(&candidates).clone();
    let rows: Vec<usize> = (0..batch.num_rows()).filter(|&r| present(&leaf, r)).collect();
    let row = *rng.one_of(&rows);
    let value = absurd_value(rng, field.data_type(), true, hashes);
    Some(Mutation::Value { row, column, value })
}

fn apply_value(path: &Path, row: usize, column: &str, value: &Absurd) {
    let Some((batches, kv)) = read_parquet(path) else { return };
    let Some(first) = batches.first() else { return };
    let batch = arrow::compute::concat_batches(&first.schema(), &batches).expect("concat");
    let mut all = Vec::new();
    leaves(batch.schema().fields(), (&[], ""), &mut all);
    let Some((leaf, _, _)) = all.iter().find(|(_, name, _)| name == column) else { return };
    let mut columns: Vec<ArrayRef> = batch.columns().iter().map(relax).collect();
    let Some(edited) = with_value(&columns[leaf[0]], &leaf[1..], row, value) else { return };
    columns[leaf[0]] = edited;
    let schema = Arc::new(Schema::new(batch.schema().fields().iter().map(|f| nullable(f)).collect::<Vec<_>>()));
    let edited = RecordBatch::try_new(schema.clone(), columns).expect("edited batch");
    let file = std::fs::File::create(path).expect("rewrite parquet");
    let mut w = ArrowWriter::try_new(file, schema, None).expect("writer");
    w.write(&edited).expect("write");
    for kv in kv.into_iter().flatten() {
        w.append_key_value_metadata(kv);
    }
    w.close().expect("close");
}

/// Offsets biased to the end of the file, where parquet keeps its footer.
fn offset(rng: &mut Rng, len: usize) -> usize {
    if len == 0 {
        0
    } else if rng.chance(50) {
        len - 1 - rng.below(len.min(600))
    } else {
        rng.below(len)
    }
}

fn byte_mutation(rng: &mut Rng, len: usize, others: &[String]) -> Mutation {
    match rng.below(if others.is_empty() { 10 } else { 12 }) {
        0..=2 => Mutation::FlipBits { at: offset(rng, len), mask: 1 << rng.below(8) | rng.next() as u8 & 1 },
        3 => Mutation::ByteRun { at: offset(rng, len), len: 1 + rng.below(64), byte: *rng.one_of(&[0xff, 0x80, 0x7f]) },
        4 => Mutation::ZeroFill { at: offset(rng, len), len: 1 + rng.below(256) },
        5 | 6 => Mutation::Truncate { len: offset(rng, len) },
        7 => Mutation::Append { len: 1 + rng.below(4096), seed: rng.next() },
        8 => Mutation::Empty,
        9 => Mutation::Delete,
        10 => Mutation::Splice {
            from: rng.one_of(others).clone(),
            from_at: rng.below(4096),
            at: offset(rng, len),
            len: 1 + rng.below(512),
        },
        _ => Mutation::Replace { from: rng.one_of(others).clone() },
    }
}

/// `m` for a failure message: long values are cut (the seed replays the case exactly).
fn describe(m: &Mutation) -> String {
    let full = format!("{m:?}");
    if full.chars().count() <= 240 {
        return full;
    }
    let head: String = full.chars().take(200).collect();
    format!("{head}… ({} chars)", full.chars().count())
}

/// Apply `m` to `file` (`root` is the pond or remote the file is in; `others` are relative to it).
fn apply(root: &Path, file: &Path, m: &Mutation) {
    let bytes = std::fs::read(file).unwrap_or_default();
    let mut b = bytes.clone();
    let clamp = |at: usize, len: usize| at.min(b.len())..(at + len).min(b.len());
    match m {
        Mutation::FlipBits { at, mask } => {
            if let Some(x) = b.get_mut(*at) {
                *x ^= mask.max(&1);
            }
        }
        Mutation::ByteRun { at, len, byte } => {
            let r = clamp(*at, *len);
            b[r].fill(*byte);
        }
        Mutation::ZeroFill { at, len } => {
            let r = clamp(*at, *len);
            b[r].fill(0);
        }
        Mutation::Truncate { len } => b.truncate(*len),
        Mutation::Append { len, seed } => b.extend(pattern(*len, *seed)),
        Mutation::Splice { from, from_at, at, len } => {
            let src = std::fs::read(root.join(from)).unwrap_or_default();
            let s = (*from_at).min(src.len())..(from_at + len).min(src.len());
            let piece = &src[s];
            let r = clamp(*at, piece.len());
            let n = r.len();
            b[r].copy_from_slice(&piece[..n]);
        }
        Mutation::Replace { from } => b = std::fs::read(root.join(from)).unwrap_or_default(),
        Mutation::Empty => b.clear(),
        Mutation::Delete => {
            let _ = std::fs::remove_file(file);
            return;
        }
        Mutation::Json(edit) => b = apply_json(edit, &String::from_utf8_lossy(&bytes)).into_bytes(),
        Mutation::Value { row, column, value } => return apply_value(file, *row, column, value),
        Mutation::Foreign { name } => {
            let p = root.join(name);
            if let Some(parent) = p.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = std::fs::write(p, b"PAR1 not part of any pond PAR1");
            return;
        }
        Mutation::FarVersion { version } => {
            let _ = std::fs::copy(file, root.join(format!("_delta_log/{version:020}.json")));
            return;
        }
        Mutation::Sparse { len } => {
            let _ = std::fs::OpenOptions::new().write(true).open(file).and_then(|f| f.set_len(*len));
            return;
        }
        Mutation::Crafted(c) => b = parquet_file(c),
        Mutation::Link => {
            // Outside: beside the pond or remote, in `outside/`, under the same relative name.
            let rel = file.strip_prefix(root).expect("under root");
            let away = root.parent().expect("a parent").join("outside").join(rel);
            std::fs::create_dir_all(away.parent().expect("a parent")).expect("outside dir");
            std::fs::rename(file, &away).expect("move out");
            std::os::unix::fs::symlink(&away, file).expect("symlink");
            return;
        }
        Mutation::Fifo => {
            let _ = std::fs::remove_file(file);
            nix::unistd::mkfifo(file, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
            return;
        }
        Mutation::NotATree(edit) => return break_the_tree(root, *edit),
    }
    std::fs::write(file, b).expect("write mutated file");
}

/// Choose and apply 1–3 mutations to files of `kind` under `root`; returns what was done.
fn mutate(rng: &mut Rng, root: &Path, kinds: &[FileKind], checkpoint: u64) -> Vec<String> {
    let mut done = Vec::new();
    let n = 1 + if rng.chance(25) { rng.below(3) } else { 0 };
    for _ in 0..n {
        let kind = *rng.one_of(kinds);
        let mut candidates = files_of(root, kind);
        if kind == FileKind::LogEntry && rng.chance(60) {
            // Entries after the checkpoint are what a reader of the latest version replays.
            candidates.retain(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(pond::layout::log_entry_version)
                    .is_some_and(|v| v > checkpoint)
            });
        }
        if candidates.is_empty() {
            continue;
        }
        let file = rng.one_of(&candidates).clone();
        let rel = |p: &Path| p.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
        let others: Vec<String> = [FileKind::Data, FileKind::Checkpoint, FileKind::Object, FileKind::LogEntry]
            .iter()
            .flat_map(|k| files_of(root, *k))
            .map(|p| rel(&p))
            .collect();
        let len = std::fs::metadata(&file).map(|m| m.len() as usize).unwrap_or(0);
        let hashes: Vec<String> = files_of(root, FileKind::Object)
            .iter()
            .filter_map(|p| p.file_stem()?.to_str().map(str::to_string))
            .collect();
        let m = match kind {
            FileKind::LogEntry | FileKind::LastCheckpoint if rng.chance(75) => {
                Mutation::Json(json_edit(rng, &std::fs::read_to_string(&file).unwrap_or_default()))
            }
            FileKind::Data | FileKind::Checkpoint if rng.chance(10) => Mutation::Crafted(crafted(rng)),
            FileKind::Data | FileKind::Checkpoint if rng.chance(40) => {
                value_mutation(rng, &file, &hashes).unwrap_or(Mutation::FlipBits { at: offset(rng, len), mask: 4 })
            }
            _ => byte_mutation(rng, len, &others),
        };
        apply(root, &file, &m);
        done.push(format!("{} <- {}", rel(&file), describe(&m)));
    }
    done
}

// ---------------------------------------------------------------------------------------------------
// Running the binary and judging what it did

struct Run {
    status: Option<std::process::ExitStatus>,
    stdout: Vec<u8>,
    stderr: String,
}

/// Run `pond args` with stdout and stderr in files under `scratch`, under the address-space limit,
/// killed after [`CASE_TIMEOUT`] (then `status` is None).
fn run_pond(args: &[OsString], scratch: &Path) -> Run {
    run_pond_within(args, scratch, ADDRESS_SPACE)
}

/// [`run_pond`] under an address-space limit of `address_space` bytes.
fn run_pond_within(args: &[OsString], scratch: &Path, address_space: u64) -> Run {
    let (out_path, err_path) = (scratch.join("stdout"), scratch.join("stderr"));
    // Temporary files (verify URL fetches into one) go here, so a leftover is seen.
    let tmp = scratch.join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp dir");
    let mut cmd = Command::new(pond_bin());
    cmd.args(args)
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    // SAFETY: only async-signal-safe calls (setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = |res, value: u64| {
                let lim = libc::rlimit { rlim_cur: value, rlim_max: value };
                if libc::setrlimit(res, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            limit(libc::RLIMIT_AS, address_space)?;
            limit(libc::RLIMIT_CORE, 0)
        });
    }
    let mut child = cmd.spawn().expect("spawn pond");
    let deadline = Instant::now() + CASE_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for pond") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = std::fs::read(&out_path).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&std::fs::read(&err_path).unwrap_or_default()).into_owned();
    Run { status, stdout, stderr }
}

/// How a run ended, when it ended acceptably.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Ok,
    Damage,
    Error,
}

/// A log line of the tracing subscriber (a warning printed before the error, say).
fn is_log_line(line: &str) -> bool {
    let plain: String = line.chars().filter(|c| !c.is_control()).collect();
    ["WARN", "ERROR", "INFO"].iter().any(|l| plain.contains(l)) && plain.starts_with(|c: char| c.is_ascii_digit())
        || line.starts_with('\u{1b}')
}

/// Judge a run: Ok(verdict) when it ended well, Err(why) when it did not.
fn judge(run: &Run, damage_allowed: bool) -> Result<Verdict, String> {
    let first_lines = || run.stderr.lines().take(6).collect::<Vec<_>>().join(" | ");
    let Some(status) = run.status else { return Err(format!("hang: no exit within {CASE_TIMEOUT:?}")) };
    if let Some(sig) = status.signal() {
        let hint = if sig == libc::SIGABRT { " (allocation past the address-space limit?)" } else { "" };
        return Err(format!("killed by signal {sig}{hint}: {}", first_lines()));
    }
    if run.stderr.contains("panicked") || status.code() == Some(101) {
        return Err(format!("panic: {}", first_lines()));
    }
    match status.code() {
        Some(0) => Ok(Verdict::Ok),
        Some(1) if damage_allowed && String::from_utf8_lossy(&run.stdout).contains("DAMAGED") => Ok(Verdict::Damage),
        Some(2) => {
            let lines: Vec<&str> = run.stderr.lines().filter(|l| !l.trim().is_empty() && !is_log_line(l)).collect();
            // One `pond: ...` line; only a failed verification lists what it found, indented.
            let clear = lines.first().is_some_and(|l| l.starts_with("pond: "))
                && lines[1..].iter().all(|l| l.starts_with("  "))
                && (lines.len() == 1 || lines[0].contains("failed verification"));
            if clear { Ok(Verdict::Error) } else { Err(format!("unclear error message: {}", first_lines())) }
        }
        other => Err(format!("exit status {other:?}: {}", first_lines())),
    }
}

/// What one target's cases went through.
#[derive(Default)]
struct Tally {
    cases: u64,
    faults: u64,
    runs: u64,
    /// Successful reads that printed bytes no version ever held.
    lost: u64,
    /// Mutations `pond verify` did not notice (exit 0): a measure, not a failure.
    unnoticed: u64,
    verdicts: BTreeMap<String, u64>,
    failures: Vec<String>,
    /// Content a case wrote itself (beyond the base pond's), which reads may print too.
    also_written: BTreeSet<[u8; 32]>,
}

impl Tally {
    fn note(&mut self, what: &str, verdict: Verdict) {
        *self.verdicts.entry(format!("{what}:{verdict:?}")).or_default() += 1;
    }

    fn finish(self, part: &str) {
        eprintln!(
            "{part}: {} cases, {} mutations, {} reader runs, verify did not notice {}; {:?}",
            self.cases, self.faults, self.runs, self.unnoticed, self.verdicts
        );
        soak::report(part, self.cases, self.faults, self.lost);
        assert!(
            self.failures.is_empty(),
            "{part}: {} failing cases:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
        assert_eq!(self.lost, 0, "{part}: reads returned bytes no version held");
    }
}

fn os(s: impl AsRef<std::ffi::OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

/// Run `args`, judge it, and for a `cat` that succeeded check it printed content some version held.
fn check_run(tally: &mut Tally, case: &str, args: Vec<OsString>, scratch: &Path) -> Option<Verdict> {
    let what = args[0].to_string_lossy().into_owned();
    let run = run_pond(&args, scratch);
    tally.runs += 1;
    if std::env::var_os("POND_HOSTILE_VERBOSE").is_some() {
        let err = run.stderr.lines().next().unwrap_or("").chars().take(200).collect::<String>();
        eprintln!("{case}\n    {what}: {:?} {err}", run.status);
    }
    match judge(&run, what == "verify") {
        Err(why) => {
            tally.failures.push(format!("{case}\n    pond {args:?}: {why}"));
            None
        }
        Ok(v) => {
            tally.note(&what, v);
            let hash = *blake3::hash(&run.stdout).as_bytes();
            if what == "cat"
                && v == Verdict::Ok
                && !base().written.contains(&hash)
                && !tally.also_written.contains(&hash)
            {
                tally.lost += 1;
                tally.failures.push(format!(
                    "{case}\n    pond {args:?}: printed {} bytes that no version held",
                    run.stdout.len()
                ));
            }
            Some(v)
        }
    }
}

/// One case against a local pond: copy the base, mutate files of `kinds`, run the readers, and check
/// each ended well and the pond is byte-identical afterwards.
fn local_case(tally: &mut Tally, target: &str, kinds: &[FileKind], seed: u64) {
    let b = base();
    let dir = tempfile::tempdir().expect("case dir");
    let pond = dir.path().join("pond");
    copy_tree(&b.pond, &pond);
    let mut rng = Rng::new(seed);
    let mut mutations = Vec::new();
    if kinds.contains(&FileKind::Data) && rng.chance(10) {
        // First, while the table still opens: a version whose directories are not a tree.
        let m = Mutation::NotATree(*rng.one_of(&NOT_A_TREE_EDITS));
        apply(&pond, &pond, &m);
        mutations.push(describe(&m));
    }
    mutations.extend(mutate(&mut rng, &pond, kinds, b.checkpoint));
    tally.cases += 1;
    tally.faults += mutations.len() as u64;
    let case = format!("[{target} seed={seed:#x}] {}", mutations.join("; "));
    let before = tree_digest(&pond);
    let p = os(&pond);
    let file = rng.one_of(&b.files).clone();
    let other = rng.one_of(&b.files).clone();
    let version = 1 + rng.below(b.latest as usize) as u64;
    let commands: Vec<Vec<OsString>> = vec![
        vec![os("verify"), p.clone()],
        vec![os("ls"), p.clone()],
        vec![os("ls"), p.clone(), os("d")],
        vec![os("cat"), p.clone(), os(&file)],
        vec![os("cat"), p.clone(), os(&other), os("--version"), os(version.to_string())],
        vec![os("log"), p.clone()],
    ];
    for args in commands {
        let v = check_run(tally, &case, args.clone(), dir.path());
        if args[0] == "verify" && v == Some(Verdict::Ok) {
            tally.unnoticed += 1;
        }
    }
    let after = tree_digest(&pond);
    if before != after {
        tally.failures.push(format!("{case}\n    the readers changed the pond: {}", digest_diff(&before, &after)));
    }
}

fn local_target(part: &str, kinds: &[FileKind], short_cases: u64) {
    let mut tally = Tally::default();
    for seed in seeds(part, short_cases) {
        local_case(&mut tally, part, kinds, seed);
    }
    tally.finish(part);
}

// ---------------------------------------------------------------------------------------------------
// The readers against corrupted files

#[test]
fn corrupt_log_entries_end_in_a_clear_error_never_a_panic_or_a_write() {
    local_target("hostile_input.log_entries", &[FileKind::LogEntry], 10);
}

#[test]
fn corrupt_checkpoints_and_hints_end_in_a_clear_error_never_a_panic_or_a_write() {
    local_target("hostile_input.checkpoints", &[FileKind::Checkpoint, FileKind::LastCheckpoint], 8);
}

#[test]
fn corrupt_data_files_and_objects_end_in_a_clear_error_never_a_panic_or_a_write() {
    // Objects are fuzzed in depth in large_files.rs; here a sample goes through the binary.
    local_target("hostile_input.data_files", &[FileKind::Data, FileKind::Data, FileKind::Data, FileKind::Object], 10);
}

/// One restore from a corrupted copy of the replica: it ends well, writes nothing but the target
/// (the remote and the target's parent are otherwise unchanged), and what it restored reads.
fn restore_case(tally: &mut Tally, seed: u64) {
    let part = "hostile_input.restore";
    let b = base();
    let dir = tempfile::tempdir().expect("case dir");
    let remote = dir.path().join("remote");
    copy_tree(&b.remote, &remote);
    let mut rng = Rng::new(seed);
    let kinds = [
        FileKind::LogEntry,
        FileKind::LogEntry,
        FileKind::Checkpoint,
        FileKind::LastCheckpoint,
        FileKind::Data,
        FileKind::Object,
    ];
    let mut mutations = Vec::new();
    if rng.chance(8) {
        // First, while the table still opens: a version whose directories are not a tree.
        let m = Mutation::NotATree(*rng.one_of(&NOT_A_TREE_EDITS));
        apply(&remote, &remote, &m);
        mutations.push(describe(&m));
    }
    mutations.extend(mutate(&mut rng, &remote, &kinds, b.checkpoint));
    // What a remote may lie about beyond its files' bytes (issue 12): versions that do not follow
    // one another, sizes past a kind's cap, links out of it and FIFOs in it.
    let rel = |p: &Path| p.strip_prefix(&remote).expect("under the remote").to_string_lossy().into_owned();
    if rng.chance(8) {
        let version = *rng.one_of(&[b.latest + 2, 10_000_000_000, u64::MAX]);
        let m = Mutation::FarVersion { version };
        let entry = rng.one_of(&files_of(&remote, FileKind::LogEntry)).clone();
        apply(&remote, &entry, &m);
        mutations.push(format!("{} <- {}", rel(&entry), describe(&m)));
    }
    if rng.chance(8) {
        let (kind, cap) = *rng.one_of(&[
            (FileKind::LogEntry, pond::layout::MAX_LOG_ENTRY_SIZE),
            (FileKind::Checkpoint, pond::layout::MAX_CHECKPOINT_SIZE),
        ]);
        if let Some(file) = rng.pick(&files_of(&remote, kind)).cloned() {
            let m = Mutation::Sparse { len: cap + 1 + rng.below(4096) as u64 };
            apply(&remote, &file, &m);
            mutations.push(format!("{} <- {}", rel(&file), describe(&m)));
        }
    }
    if rng.chance(8) {
        let m = if rng.chance(70) { Mutation::Link } else { Mutation::Fifo };
        let kind = *rng.one_of(&kinds);
        let mut targets: Vec<PathBuf> = files_of(&remote, kind);
        if matches!(m, Mutation::Link) {
            targets.extend([remote.join("_large_files"), remote.join("_delta_log")]);
        }
        if let Some(target) = rng.pick(&targets).cloned().filter(|t| t.exists()) {
            apply(&remote, &target, &m);
            mutations.push(format!("{} <- {}", rel(&target), describe(&m)));
        }
    }
    if rng.chance(5) {
        // A hint the size of a data file: read whole, so refused before it is read.
        let m = Mutation::Append { len: 2 << 20, seed: rng.next() };
        apply(&remote, &remote.join("_delta_log/_last_checkpoint"), &m);
        mutations.push(format!("_delta_log/_last_checkpoint <- {}", describe(&m)));
    }
    if rng.chance(15) {
        let name = rng.one_of(&[
            "notes.txt",
            "sub/x.parquet",
            "_large_files/xyz.parquet",
            "_delta_log/7.json",
            ".hidden.parquet",
        ]);
        let m = Mutation::Foreign { name: name.to_string() };
        apply(&remote, &remote, &m);
        mutations.push(describe(&m));
    }
    tally.cases += 1;
    tally.faults += mutations.len() as u64;
    let case = format!("[{part} seed={seed:#x}] {}", mutations.join("; "));
    let remote_before = tree_digest(&remote);
    let outside = dir.path().join("outside");
    let outside_before = tree_digest(&outside);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("out dir");
    let target = out.join("new");
    let mut args = vec![os("restore"), os(&remote), os(&target)];
    if rng.chance(25) {
        args.extend([os("--version"), os((1 + rng.below(b.latest as usize + 3)).to_string())]);
    }
    let verdict = check_run(tally, &case, args, dir.path());
    if tree_digest(&remote) != remote_before {
        tally.failures.push(format!("{case}\n    restore changed the remote"));
    }
    let left: Vec<String> =
        std::fs::read_dir(&out).expect("out").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let want: Vec<String> = if verdict == Some(Verdict::Ok) { vec!["new".into()] } else { Vec::new() };
    if left != want {
        tally.failures.push(format!("{case}\n    beside the target after {verdict:?}: {left:?}, want {want:?}"));
    }
    // The same remote checked by URL: damage is reported (exit 1) or it is clean.
    let url = format!("file://{}", remote.display());
    check_run(tally, &case, vec![os("verify"), os(&url)], dir.path());
    if tree_digest(&remote) != remote_before {
        tally.failures.push(format!("{case}\n    verify URL changed the remote"));
    }
    let mut top: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    top.retain(|n| n != "outside");
    if tree_digest(&outside) != outside_before {
        tally.failures.push(format!("{case}\n    written through a link, outside the remote"));
    }
    let tmp_left = std::fs::read_dir(dir.path().join("tmp")).map(|d| d.count()).unwrap_or(0);
    if top != ["out", "remote", "stderr", "stdout", "tmp"] || tmp_left != 0 {
        tally.failures.push(format!("{case}\n    written beside the target: {top:?}, {tmp_left} entries in TMPDIR"));
    }
    if verdict == Some(Verdict::Ok) {
        // What restore verified must read: content some version held, or a clear error.
        let t = os(&target);
        let file = rng.one_of(&b.files).clone();
        check_run(tally, &case, vec![os("ls"), t.clone()], dir.path());
        check_run(tally, &case, vec![os("cat"), t, os(file)], dir.path());
    }
}

#[test]
fn restore_from_a_corrupt_remote_is_refused_or_whole_and_never_writes_outside_its_target() {
    let part = "hostile_input.restore";
    let mut tally = Tally::default();
    for seed in seeds(part, 10) {
        restore_case(&mut tally, seed);
    }
    tally.finish(part);
}

// ---------------------------------------------------------------------------------------------------
// Decoders in-process, many cases, in a child run of this test binary (limits and a timeout apply)

/// Set in a child run: do the work instead of spawning.
const CHILD_ENV: &str = "POND_HOSTILE_CHILD";
/// Set in a child run: a file the child writes each case's description to before running it, so a
/// child that dies or hangs is reported with the case that did it.
const CURRENT_ENV: &str = "POND_HOSTILE_CURRENT";

/// Run `work` in a child process running only test `name` of this binary, under the address-space
/// limit and a timeout; fail with the case in progress if the child panics, dies or hangs.
fn in_child(name: &str, work: impl FnOnce(&Path)) {
    if std::env::var_os(CHILD_ENV).is_some() {
        let current = PathBuf::from(std::env::var_os(CURRENT_ENV).expect("POND_HOSTILE_CURRENT"));
        // This process runs only this test: count every panic, caught ones included.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).push(info.to_string());
            previous(info)
        }));
        return work(&current);
    }
    let b = base();
    let scratch = tempfile::tempdir().expect("scratch");
    let current = scratch.path().join("current");
    let (out, err) = (scratch.path().join("stdout"), scratch.path().join("stderr"));
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env(BASE_ENV, b.dir())
        .env(CURRENT_ENV, &current)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout"))
        .stderr(std::fs::File::create(&err).expect("stderr"));
    // SAFETY: only async-signal-safe calls (setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: ADDRESS_SPACE, rlim_max: ADDRESS_SPACE };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = crate::common::ChildGuard(cmd.spawn().expect("spawn the test binary"));
    let limit = soak::duration(Duration::from_secs(240));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = String::from_utf8_lossy(&std::fs::read(&err).unwrap_or_default()).into_owned();
    for line in stderr.lines().filter(|l| l.starts_with("FAULT-REPORT") || l.starts_with("hostile_input")) {
        eprintln!("{line}");
    }
    let case = std::fs::read_to_string(&current).unwrap_or_default();
    let tail: Vec<&str> = stderr.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
    match status {
        None => panic!("{name}: hang: the child ran past {limit:?}; case in progress: {case}"),
        Some(s) if !s.success() => panic!(
            "{name}: the child failed ({s}); case in progress: {case}\n{}\nstdout: {}",
            tail.join("\n"),
            String::from_utf8_lossy(&std::fs::read(&out).unwrap_or_default())
        ),
        Some(_) => {}
    }
}

/// Panics in a child run, caught ones included (a library may catch a panic and return an error,
/// but a panic on input is still a bug to fix at the right layer).
static PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static LAST_PANIC: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Run one case of a child run: Err(the panic) if anything panicked while it ran, caught or not.
fn without_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let before = PANICS.load(std::sync::atomic::Ordering::SeqCst);
    LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    // The first panic is the cause (a library's own threads may panic after it).
    let last = || LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).join(" | then: ");
    match out {
        Err(_) => Err(last()),
        Ok(_) if PANICS.load(std::sync::atomic::Ordering::SeqCst) != before => Err(format!("caught: {}", last())),
        Ok(v) => Ok(v),
    }
}

/// Decode data file `rel` every way a reader does; the number of inline contents that read back as
/// bytes no version held (must be 0).
fn decode_data_file(root: &Path, rel: &Arc<str>) -> u64 {
    let _ = datafile::read_rows(root, rel, true);
    let _ = datafile::large_objects(root, rel);
    let Ok(rows) = datafile::read_rows(root, rel, false) else { return 0 };
    let reader = InlineReader::new(root);
    let mut wrong = 0;
    for row in rows {
        if let OplogRow::Node { data: Some(d), .. } = row
            && let Some(Content::Inline { loc: Some(loc), .. }) = d.content
            && let Ok(bytes) = reader.read(&loc)
            && !base().written.contains(blake3::hash(&bytes).as_bytes())
        {
            wrong += 1;
        }
    }
    wrong
}

#[test]
fn data_files_decode_or_fail_cleanly_under_many_corruptions() {
    let name = "hostile_input::data_files_decode_or_fail_cleanly_under_many_corruptions";
    in_child(name, |current| {
        let part = "hostile_input.decode_data_files";
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path().join("pond");
        copy_tree(&base().pond, &root);
        let files = files_of(&root, FileKind::Data);
        let others: Vec<String> = [FileKind::Data, FileKind::Checkpoint, FileKind::Object]
            .iter()
            .flat_map(|k| files_of(&root, *k))
            .map(|p| p.strip_prefix(&root).expect("under root").to_string_lossy().into_owned())
            .collect();
        let mut tally = Tally::default();
        for seed in seeds(part, 150) {
            let mut rng = Rng::new(seed);
            let file = rng.one_of(&files).clone();
            let original = std::fs::read(&file).expect("read data file");
            let len = original.len();
            let m = if rng.chance(35) {
                value_mutation(&mut rng, &file, &[]).unwrap_or(Mutation::FlipBits { at: len / 2, mask: 1 })
            } else {
                byte_mutation(&mut rng, len, &others)
            };
            apply(&root, &file, &m);
            let rel: Arc<str> = Arc::from(file.file_name().and_then(|n| n.to_str()).expect("name"));
            let case = format!("[{part} seed={seed:#x}] {rel} <- {}", describe(&m));
            std::fs::write(current, &case).expect("note the case");
            tally.cases += 1;
            tally.faults += 1;
            match without_panic(|| decode_data_file(&root, &rel)) {
                Err(p) => tally.failures.push(format!("{case}\n    panicked: {p}")),
                Ok(0) => {}
                Ok(wrong) => {
                    tally.lost += wrong;
                    tally.failures.push(format!("{case}\n    {wrong} inline contents read as bytes no version held"));
                }
            }
            std::fs::write(&file, &original).expect("restore the data file");
        }
        tally.finish(part);
    });
}

#[test]
fn checkpoints_open_or_fail_cleanly_under_many_corruptions() {
    let name = "hostile_input::checkpoints_open_or_fail_cleanly_under_many_corruptions";
    in_child(name, |current| {
        let part = "hostile_input.open_checkpoints";
        let b = base();
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path().join("pond");
        copy_tree(&b.pond, &root);
        let rt = runtime();
        let mut tally = Tally::default();
        for seed in seeds(part, 40) {
            let mut rng = Rng::new(seed);
            let kind = if rng.chance(80) { FileKind::Checkpoint } else { FileKind::LastCheckpoint };
            let file = rng.one_of(&files_of(&root, kind)).clone();
            let original = std::fs::read(&file).expect("read");
            let m = match kind {
                FileKind::Checkpoint if rng.chance(30) => {
                    value_mutation(&mut rng, &file, &[]).unwrap_or(Mutation::Truncate { len: original.len() / 2 })
                }
                FileKind::LastCheckpoint if rng.chance(70) => {
                    Mutation::Json(json_edit(&mut rng, &String::from_utf8_lossy(&original)))
                }
                _ => byte_mutation(&mut rng, original.len(), &[]),
            };
            apply(&root, &file, &m);
            let version = if rng.chance(30) { Some(b.checkpoint + rng.below(4) as u64) } else { None };
            let rel = file.strip_prefix(&root).expect("under root").to_string_lossy().into_owned();
            let case = format!("[{part} seed={seed:#x}] {rel} <- {}, open at {version:?}", describe(&m));
            std::fs::write(current, &case).expect("note the case");
            tally.cases += 1;
            tally.faults += 1;
            let opened = without_panic(|| {
                rt.block_on(Oplog::open(&root, version)).and_then(|o| o.data_files().map(|f| f.len()))
            });
            match opened {
                Err(p) => tally.failures.push(format!("{case}\n    panicked: {p}")),
                Ok(result) => tally.note("open", if result.is_ok() { Verdict::Ok } else { Verdict::Error }),
            }
            std::fs::write(&file, &original).expect("restore");
        }
        tally.finish(part);
    });
}

/// Every name a log entry gives a data file, as the history readers accept it, stays in the table.
fn accepted_names_stay_inside(root: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let Ok(actions) = history::file_actions(root) else { return bad };
    if let Ok(files) = history::added_files(root, &actions) {
        for name in files.keys() {
            let p = Path::new(name);
            let inside = p.components().all(|c| matches!(c, std::path::Component::Normal(_)))
                && p.components().next().is_some_and(|c| c.as_os_str() != "_delta_log")
                && root.join(p).starts_with(root);
            if !inside {
                bad.push(name.clone());
            }
        }
    }
    let latest = actions.last().map(|(v, _)| *v).unwrap_or(0);
    let _ = history::replay_active_files(&actions, &BTreeSet::from([latest]));
    bad
}

#[test]
fn log_entries_parse_or_fail_cleanly_under_many_corruptions() {
    let name = "hostile_input::log_entries_parse_or_fail_cleanly_under_many_corruptions";
    in_child(name, |current| {
        let part = "hostile_input.decode_log_entries";
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path().join("pond");
        copy_tree(&base().pond.join("_delta_log"), &root.join("_delta_log"));
        let entries = files_of(&root, FileKind::LogEntry);
        let mut tally = Tally::default();
        for seed in seeds(part, 250) {
            let mut rng = Rng::new(seed);
            let file = rng.one_of(&entries).clone();
            let original = std::fs::read(&file).expect("read entry");
            let mut done = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let m = if rng.chance(75) {
                    Mutation::Json(json_edit(&mut rng, &std::fs::read_to_string(&file).unwrap_or_default()))
                } else {
                    byte_mutation(&mut rng, original.len(), &[])
                };
                apply(&root, &file, &m);
                done.push(describe(&m));
            }
            let rel = file.strip_prefix(&root).expect("under root").to_string_lossy().into_owned();
            let case = format!("[{part} seed={seed:#x}] {rel} <- {}", done.join("; "));
            std::fs::write(current, &case).expect("note the case");
            tally.cases += 1;
            tally.faults += done.len() as u64;
            let outcome = without_panic(|| {
                let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap_or_default()).into_owned();
                let _ = history::parse_log_entry(&text, &file);
                let _ = history::read_history(&root);
                accepted_names_stay_inside(&root)
            });
            match outcome {
                Err(p) => tally.failures.push(format!("{case}\n    panicked: {p}")),
                Ok(bad) if !bad.is_empty() => tally.failures.push(format!("{case}\n    names accepted: {bad:?}")),
                Ok(_) => {}
            }
            std::fs::write(&file, &original).expect("restore the entry");
        }
        tally.finish(part);
    });
}

// ---------------------------------------------------------------------------------------------------
// Names: remote names, data-file paths from the log, paths given to ls/cat

/// Strings made of the pieces escapes are made of.
fn hostile_name() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("../".to_string()),
        Just("/".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("_delta_log".to_string()),
        Just("_large_files".to_string()),
        Just("_pond".to_string()),
        Just("%2e".to_string()),
        Just("%2f".to_string()),
        Just("\\".to_string()),
        Just("\0".to_string()),
        Just(".parquet".to_string()),
        Just(".json".to_string()),
        Just(".checkpoint.parquet".to_string()),
        Just("_last_checkpoint".to_string()),
        Just("00000000000000000042".to_string()),
        Just("part-1".to_string()),
        "[0-9a-f]{64}",
        "[ -~]{0,6}",
        "\\PC{0,3}",
        (1usize..400).prop_map(|n| "x".repeat(n)),
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

proptest! {
    // A failure prints the shrunk input; nothing is persisted beside the sources.
    #![proptest_config(ProptestConfig {
        cases: soak::rounds(512) as u32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A name from a remote parses only into the layout: it round-trips, and its local path is one
    /// to three plain components under the target.
    #[test]
    fn remote_names_parse_only_into_the_layout(name in hostile_name()) {
        if let Ok(file) = PondFile::parse(&name) {
            prop_assert_eq!(file.name(), name.clone());
            let target = Path::new("/restore/target");
            let local = file.local_path(target);
            let rest = local.strip_prefix(target).expect("under the target");
            let parts: Vec<_> = rest.components().collect();
            prop_assert!(!parts.is_empty() && parts.len() <= 3, "{name:?} -> {local:?}");
            prop_assert!(parts.iter().all(|c| matches!(c, std::path::Component::Normal(_))), "{name:?} -> {local:?}");
            prop_assert!(!name.contains(['\\', '\0']) && !name.contains("%2"), "{name:?} parsed");
        }
        // The one parser of data-file names (the log's paths, a remote's listing): top level only.
        if PondFile::data(&name).is_ok() {
            prop_assert!(!name.contains(['/', '\\', '\0']), "{name:?} is a data file");
            prop_assert!(name != "_delta_log", "{name:?}");
        }
    }

    /// Looking up any bytes in a pond finds an entry that is listed, or fails with a clear error.
    #[test]
    fn lookups_of_hostile_names_find_listed_entries_or_fail(name in proptest::collection::vec(any::<u8>(), 0..600), dir in 0usize..2) {
        let fs = read_only_base();
        let parent = if dir == 0 { ROOT_INO } else { fs.lookup(ROOT_INO, b"d").expect("d").ino };
        match fs.lookup(parent, &name) {
            Ok(attr) => {
                let fh = fs.opendir(parent).expect("opendir");
                let listed = fs.readdirplus(fh, 0).expect("readdir");
                fs.releasedir(fh).expect("releasedir");
                prop_assert!(
                    name == b"." || name == b".." || listed.iter().any(|(e, _)| e.name == name && e.ino == attr.ino),
                    "{name:?} found but not listed"
                );
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

/// The base pond opened read-only, once.
fn read_only_base() -> &'static PondFs {
    static FS: OnceLock<PondFs> = OnceLock::new();
    FS.get_or_init(|| PondFs::open(&base().pond, FsOptions { read_only: true, ..Default::default() }).expect("open"))
}

#[test]
fn hostile_paths_given_to_ls_and_cat_end_in_a_clear_error_or_a_listed_file() {
    let part = "hostile_input.paths";
    let b = base();
    let dir = tempfile::tempdir().expect("dir");
    let pond = dir.path().join("pond");
    copy_tree(&b.pond, &pond);
    let before = tree_digest(&pond);
    let mut tally = Tally::default();
    let long_component = "n".repeat(300);
    let long_path = "d/".repeat(3000);
    let mut paths: Vec<OsString> = [
        "..",
        "../..",
        "../../../../etc/passwd",
        "/etc/passwd",
        "/",
        "//",
        "./a",
        "d/../a",
        "d/../../..",
        "a/",
        "a/..",
        "link",
        "link/..",
        "%2e%2e/a",
        "_delta_log",
        "_delta_log/00000000000000000000.json",
        "d\\inner",
        " a",
        "\u{202e}a",
        long_component.as_str(),
        long_path.as_str(),
    ]
    .iter()
    .map(os)
    .collect();
    paths.push(OsString::from_vec(vec![0xff, 0xfe, b'a']));
    paths.push(OsString::from_vec(b"d/\xc3\x28".to_vec()));
    for path in paths {
        let case = format!("[{part}] {path:?}");
        tally.cases += 1;
        tally.faults += 1;
        for cmd in ["ls", "cat"] {
            let args = vec![os(cmd), os(&pond), path.clone()];
            let run = run_pond(&args, dir.path());
            tally.runs += 1;
            // Arguments that are not UTF-8 are refused by the argument parser (its own message).
            let not_utf8 = path.to_str().is_none();
            let verdict = match judge(&run, false) {
                Err(_)
                    if not_utf8 && run.status.and_then(|s| s.code()) == Some(2) && run.stderr.starts_with("error:") =>
                {
                    Ok(Verdict::Error)
                }
                v => v,
            };
            match verdict {
                Err(why) => tally.failures.push(format!("{case}\n    pond {cmd}: {why}")),
                Ok(v) => {
                    tally.note(cmd, v);
                    if cmd == "cat" && v == Verdict::Ok && !b.written.contains(blake3::hash(&run.stdout).as_bytes()) {
                        tally.lost += 1;
                        tally.failures.push(format!("{case}\n    cat printed bytes no version held"));
                    }
                }
            }
        }
    }
    let after = tree_digest(&pond);
    assert_eq!(before, after, "ls and cat changed the pond: {}", digest_diff(&before, &after));
    tally.finish(part);
}

// ---------------------------------------------------------------------------------------------------
// Mount options

#[path = "../src/cli/mount_options.rs"]
#[allow(dead_code)]
mod mount_options;

/// Option strings made of real options, near misses, separators and junk.
fn hostile_options() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("ro".to_string()),
        Just("rw".to_string()),
        Just("allow_other".to_string()),
        Just("x-systemd.automount".to_string()),
        Just("_netdev".to_string()),
        Just("comment=x".to_string()),
        Just("treshold=1".to_string()),
        Just("log".to_string()),
        Just("=".to_string()),
        Just("".to_string()),
        Just("threshold=".to_string()),
        (
            "(threshold|version)=",
            prop_oneof![
                Just("-1".to_string()),
                Just("18446744073709551615".to_string()),
                Just("18446744073709551616".to_string()),
                Just("0x10".to_string()),
                Just("1e9".to_string()),
                "[0-9]{1,25}",
                "\\PC{0,4}",
            ]
        )
            .prop_map(|(k, v)| format!("{k}{v}")),
        "[ -~]{0,12}",
        "\\PC{0,6}",
    ];
    proptest::collection::vec(token, 0..6).prop_map(|v| v.join(","))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: soak::rounds(1024) as u32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any option string parses into what it says, or is refused with a one-line message naming it.
    #[test]
    fn mount_option_strings_parse_or_are_refused_with_one_line(opts in hostile_options()) {
        match mount_options::parse(std::slice::from_ref(&opts)) {
            Ok(o) => {
                prop_assert!(o.threshold.is_none_or(|t| t <= pond::oplog::MAX_THRESHOLD));
                for token in opts.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    let key = token.split('=').next().unwrap_or("");
                    prop_assert!(
                        !matches!(key, "threshold" | "version") || token[key.len()..].strip_prefix('=').is_some_and(|v| v.parse::<u64>().is_ok()),
                        "{token:?} accepted"
                    );
                }
            }
            Err(msg) => prop_assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}"),
        }
    }
}

#[test]
fn mount_refuses_bad_options_with_one_line_and_leaves_no_mount() {
    let part = "hostile_input.mount_options";
    crate::common::require_fuse();
    let b = base();
    let dir = tempfile::tempdir().expect("dir");
    let pond = dir.path().join("pond");
    copy_tree(&b.pond, &pond);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let mut tally = Tally::default();
    let huge = format!("bogus{}", "y".repeat(100_000));
    let bad = [
        "treshold=5",
        "threshold=-1",
        "threshold=18446744073709551616",
        "threshold=18446744073709551615",
        "ro,threshold=99999999999999",
        "version=abc",
        "version=",
        "ro,version=18446744073709551615",
        "ro,version=99999",
        "version=99999",
        "log",
        "=",
        ",,,=,,",
        "ro,allow_other,x-systemd.automount,bogus",
        "threshold=1e9",
        "\u{feff}ro",
        huge.as_str(),
    ];
    for opts in bad {
        let case = format!("[{part}] -o {:?}", opts.chars().take(60).collect::<String>());
        tally.cases += 1;
        tally.faults += 1;
        // Refused by the parser in-process too, except what only the pond can refuse.
        let parsed = mount_options::parse(&[opts.to_string()]);
        let args = vec![os("mount"), os(&pond), os(&mnt), os("-o"), os(opts)];
        let run = run_pond(&args, dir.path());
        tally.runs += 1;
        let mounted = crate::common::is_mounted(&mnt);
        if mounted {
            let _ = Command::new(pond_bin()).arg("umount").arg(&mnt).status();
        }
        match judge(&run, false) {
            Ok(Verdict::Error) if !mounted => tally.note("mount", Verdict::Error),
            other => tally.failures.push(format!("{case} (parser: {parsed:?})\n    {other:?}, mounted: {mounted}")),
        }
        // A daemon that reported its error may still be on its way out.
        let left: Vec<i32> = crate::common::daemons(&pond, Some(&mnt))
            .into_iter()
            .filter(|&pid| !crate::common::wait_for_exit(pid, Duration::from_secs(10)))
            .collect();
        if !left.is_empty() {
            tally.failures.push(format!("{case}\n    daemons left: {left:?}"));
            for pid in left {
                // SAFETY: signalling a daemon this test started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
    }
    assert!(!crate::common::is_mounted(&mnt), "nothing mounted at the end");
    // The same bound when a pond is made: refused before anything is created.
    let new = dir.path().join("new");
    let args = vec![os("init"), os("--threshold"), os(u64::MAX.to_string()), os(&new)];
    tally.cases += 1;
    tally.faults += 1;
    if check_run(&mut tally, "[init --threshold u64::MAX]", args, dir.path()) != Some(Verdict::Error) || new.exists() {
        tally.failures.push(format!("init --threshold {} made {}", u64::MAX, new.display()));
    }
    tally.finish(part);
}

// ---------------------------------------------------------------------------------------------------
// A corrupted pond mounted read-only

/// Unmounts on drop, whether or not the case got a mount: `pond umount`, then `umount -l`.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if crate::common::is_mounted(&self.0) {
            let _ = Command::new(pond_bin()).arg("umount").arg(&self.0).output();
        }
        if crate::common::is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Every regular file under `dir` (cycle-safe, bounded) with its bytes or the errno reading it gave.
fn read_tree(dir: &Path) -> Vec<(PathBuf, Result<Vec<u8>, i32>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten().take(1000) {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.is_dir() {
                if seen.insert(meta.ino()) && seen.len() < 1000 {
                    stack.push(path);
                }
            } else if meta.is_file() {
                let read = std::fs::read(&path).map_err(|e| e.raw_os_error().unwrap_or(-1));
                out.push((path, read));
            }
        }
    }
    out
}

#[test]
fn a_corrupt_pond_mounted_read_only_reads_written_bytes_or_errors() {
    let part = "hostile_input.mount_reads";
    crate::common::require_fuse();
    let b = base();
    let mut tally = Tally::default();
    for seed in seeds(part, 3) {
        let dir = tempfile::tempdir().expect("case dir");
        let pond = dir.path().join("pond");
        copy_tree(&b.pond, &pond);
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mountpoint");
        let mut rng = Rng::new(seed);
        let kinds = [FileKind::Data, FileKind::Data, FileKind::Object, FileKind::LogEntry, FileKind::Checkpoint];
        let mutations = mutate(&mut rng, &pond, &kinds, b.checkpoint);
        let case = format!("[{part} seed={seed:#x}] {}", mutations.join("; "));
        tally.cases += 1;
        tally.faults += mutations.len() as u64;
        // `_pond/` is the daemon's working area (its mount lock and log): the only place it writes.
        let digest = |p: &Path| {
            let mut d = tree_digest(p);
            d.retain(|k, _| !k.starts_with("_pond"));
            d
        };
        let before = digest(&pond);
        let _unmount = Unmount(mnt.clone());
        let args = vec![os("mount"), os(&pond), os(&mnt), os("-o"), os("ro")];
        let Some(v) = check_run(&mut tally, &case, args, dir.path()) else { continue };
        if v == Verdict::Ok {
            let (tx, rx) = std::sync::mpsc::channel();
            let root = mnt.clone();
            let reader = std::thread::spawn(move || tx.send(read_tree(&root)));
            let files = match rx.recv_timeout(CASE_TIMEOUT) {
                Ok(files) => files,
                Err(_) => {
                    tally.failures.push(format!("{case}\n    hang: reading the mount took over {CASE_TIMEOUT:?}"));
                    // Unblock the reader: a dead daemon fails its pending requests.
                    for pid in crate::common::daemons(&pond, Some(&mnt)) {
                        // SAFETY: signalling the daemon this case started.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    Vec::new()
                }
            };
            let _ = reader.join();
            tally.runs += 1;
            for (path, read) in files {
                match read {
                    Ok(bytes) if !b.written.contains(blake3::hash(&bytes).as_bytes()) => {
                        tally.lost += 1;
                        tally.failures.push(format!("{case}\n    {} read as bytes no version held", path.display()));
                    }
                    Ok(_) => tally.note("read", Verdict::Ok),
                    Err(errno) => tally.note(&format!("read-errno-{errno}"), Verdict::Error),
                }
            }
            let out = Command::new(pond_bin()).arg("umount").arg(&mnt).output().expect("pond umount");
            if !out.status.success() {
                tally.failures.push(format!("{case}\n    pond umount: {}", String::from_utf8_lossy(&out.stderr)));
            }
        }
        let after = digest(&pond);
        if before != after {
            tally.failures.push(format!("{case}\n    the mount changed the pond: {}", digest_diff(&before, &after)));
        }
    }
    tally.finish(part);
}

#[test]
fn a_damaged_size_reads_as_eio_never_as_cut_or_padded_bytes() {
    crate::common::require_fuse();
    for (what, len) in [("inline", T / 2), ("large", 2 * C + 3)] {
        for delta in [-1i64, 1] {
            let pond = crate::common::TestPond::new();
            let data = pattern(len, 99);
            {
                let fs = pond.open();
                put(&fs, ROOT_INO, "f", &data);
                fs.shutdown().expect("commit");
            }
            // The node row of `f` in the one data file that holds it: its size, off by one.
            let (rel, row) = files_of(&pond.root, FileKind::Data)
                .into_iter()
                .find_map(|p| {
                    let rel: Arc<str> = Arc::from(p.file_name()?.to_str()?);
                    let rows = datafile::read_rows(&pond.root, &rel, false).ok()?;
                    let i = rows
                        .iter()
                        .position(|r| matches!(r, OplogRow::Node { data: Some(d), .. } if d.size == len as u64))?;
                    Some((rel, i))
                })
                .expect("the file's row");
            apply_value(&pond.root.join(&*rel), row, "size", &Absurd::Int(len as i64 + delta));
            let case = format!("{what} file of {len} bytes recorded as {}", len as i64 + delta);
            let cat = Command::new(pond_bin()).args(["cat", pond.path(), "f"]).output().expect("pond cat");
            assert_eq!(cat.status.code(), Some(2), "{case}: pond cat refuses: {}", crate::common::describe(&cat));
            let m = crate::common::Mounted::new(&pond.root, &pond.scratch("mnt"), &["ro"]);
            let err = std::fs::read(m.path("f")).expect_err(&format!("{case}: reading through the mount fails"));
            assert_eq!(err.raw_os_error(), Some(libc::EIO), "{case}");
            drop(m);
            let v = Command::new(pond_bin()).args(["verify", pond.path()]).output().expect("pond verify");
            assert_eq!(v.status.code(), Some(1), "{case}: verify names it: {}", crate::common::describe(&v));
        }
    }
}

#[test]
fn absurd_attributes_show_or_fail_but_never_bring_the_daemon_down() {
    let part = "hostile_input.attributes";
    crate::common::require_fuse();
    let mut tally = Tally::default();
    tally.also_written.insert(*blake3::hash(&pattern(T / 4, 5)).as_bytes());
    let columns = ["mode", "uid", "gid", "nlink", "atime_ns", "mtime_ns", "ctime_ns", "rdev", "ino", "seq"];
    for column in columns {
        for value in [i64::MIN, -1, i64::MAX] {
            let pond = crate::common::TestPond::new();
            {
                let fs = pond.open();
                put(&fs, ROOT_INO, "f", &pattern(T / 4, 5));
                fs.shutdown().expect("commit");
            }
            let (rel, row) = files_of(&pond.root, FileKind::Data)
                .into_iter()
                .find_map(|p| {
                    let rel: Arc<str> = Arc::from(p.file_name()?.to_str()?);
                    let rows = datafile::read_rows(&pond.root, &rel, false).ok()?;
                    let i = rows.iter().position(|r| matches!(r, OplogRow::Node { ino, .. } if *ino != ROOT_INO))?;
                    Some((rel, i))
                })
                .expect("the file's row");
            apply_value(&pond.root.join(&*rel), row, column, &Absurd::Int(value));
            let case = format!("[{part}] {column} = {value}");
            tally.cases += 1;
            tally.faults += 1;
            let scratch = pond.scratch("scratch");
            check_run(&mut tally, &case, vec![os("ls"), os(&pond.root)], &scratch);
            check_run(&mut tally, &case, vec![os("cat"), os(&pond.root), os("f")], &scratch);
            let mnt = pond.scratch("mnt");
            let _unmount = Unmount(mnt.clone());
            let args = vec![os("mount"), os(&pond.root), os(&mnt), os("-o"), os("ro")];
            if check_run(&mut tally, &case, args, &scratch) == Some(Verdict::Ok) {
                let _ = std::fs::metadata(mnt.join("f"));
                let _ = std::fs::read_dir(&mnt).map(|d| d.count());
                if let Ok(bytes) = std::fs::read(mnt.join("f"))
                    && !tally.also_written.contains(blake3::hash(&bytes).as_bytes())
                {
                    tally.lost += 1;
                    tally.failures.push(format!("{case}\n    read bytes that were never written"));
                }
                if crate::common::daemons(&pond.root, Some(&mnt)).is_empty() {
                    tally.failures.push(format!("{case}\n    the daemon died serving the mount"));
                }
                let out = Command::new(pond_bin()).arg("umount").arg(&mnt).output().expect("pond umount");
                if !out.status.success() {
                    tally.failures.push(format!("{case}\n    pond umount: {}", String::from_utf8_lossy(&out.stderr)));
                }
            }
        }
    }
    tally.finish(part);
}

// ---------------------------------------------------------------------------------------------------
// Parquet files that claim more than any pond writes (issue 12, item 3)

/// The active data files of the pond at `root`, relative to it.
fn active_data_files(root: &Path) -> Vec<String> {
    let oplog = runtime().block_on(Oplog::open(root, None)).expect("open the pond");
    oplog.data_files().expect("data files").into_iter().map(|(p, _)| p.to_string()).collect()
}

#[test]
fn a_crafted_parquet_file_within_bounds_passes_the_check_and_decodes() {
    // The crafting is right: what the hostile cases below change is the only thing wrong with them.
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("ok.parquet");
    std::fs::write(&path, parquet_file(&Crafted { depth: 3, ..Crafted::default() })).expect("write");
    let file = std::fs::File::open(&path).expect("open");
    check_parquet(&file, &datafile::DATA_FILE_LIMITS).expect("a small honest file passes");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet reads it").build().expect("reader");
    let rows: usize = reader.map(|b| b.expect("batch").num_rows()).sum();
    assert_eq!(rows, 3);
}

/// Replace the first active data file of a copy of the base pond by `crafted`, then run `ls`, `cat`
/// and `verify` on it under `address_space`: each must end in a clear error naming `expect`.
fn readers_refuse_a_crafted_data_file(crafted: &Crafted, address_space: u64, expect: &str) {
    let b = base();
    let dir = tempfile::tempdir().expect("dir");
    let pond = dir.path().join("pond");
    copy_tree(&b.pond, &pond);
    let victim = active_data_files(&pond).remove(0);
    std::fs::write(pond.join(&victim), parquet_file(crafted)).expect("replace the data file");
    for (args, want) in [
        (vec![os("ls"), os(&pond)], Verdict::Error),
        (vec![os("cat"), os(&pond), os(&b.files[0])], Verdict::Error),
        (vec![os("verify"), os(&pond)], Verdict::Damage),
    ] {
        let run = run_pond_within(&args, dir.path(), address_space);
        let what = format!("pond {:?} with {victim} crafted as {crafted:?}", args[0]);
        assert_eq!(judge(&run, true), Ok(want), "{what}: {}", run.stderr);
        let said = format!("{}{}", run.stderr, String::from_utf8_lossy(&run.stdout));
        assert!(said.contains(expect) && said.contains(&victim), "{what} names the file and why: {said}");
    }
}

#[test]
fn a_schema_nested_a_million_groups_deep_is_refused_before_parquet_builds_it() {
    // parquet builds the schema tree by recursion, one frame per level: this overflows the stack.
    // Refused for its width first (a million elements); within the width, for its depth.
    let deep = Crafted { depth: 1_000_000, no_row_group: true, ..Crafted::default() };
    readers_refuse_a_crafted_data_file(&deep, ADDRESS_SPACE, "its schema has 1000002 elements");
    let deeper_than_pond = Crafted { depth: 50, ..Crafted::default() };
    readers_refuse_a_crafted_data_file(&deeper_than_pond, ADDRESS_SPACE, "its schema nests groups 5 deep");
}

#[test]
fn a_group_claiming_two_billion_children_is_refused_before_parquet_reserves_them() {
    // parquet reserves a slot per claimed child before reading any: 16 GiB here.
    let wide = Crafted { root_children: Some(i32::MAX), no_row_group: true, ..Crafted::default() };
    readers_refuse_a_crafted_data_file(&wide, ADDRESS_SPACE, "a group claims more children than follow it");
}

#[test]
fn a_page_inflating_to_two_gib_is_refused_before_it_is_decoded() {
    // 64 KB of zstd that decodes to 2 GiB of zeros, exactly as its header claims: decoding it would
    // need 2 GiB, so under a 1 GiB address space a reader that tries aborts.
    let bomb = Crafted { claim_uncompressed: Some(i32::MAX), zstd_bomb: true, ..Crafted::default() };
    readers_refuse_a_crafted_data_file(
        &bomb,
        1 << 30,
        &format!("claims {} bytes stored and {} decoded", zstd_zeros(i32::MAX as u64).len(), i32::MAX),
    );
}

#[test]
fn a_large_object_with_a_page_inflating_to_two_gib_is_refused_before_it_is_decoded() {
    // The same bomb in place of every large object: the store checks a file's footer and the pages
    // parquet will decode before it reads an object's chunk hashes.
    let b = base();
    let dir = tempfile::tempdir().expect("dir");
    let pond = dir.path().join("pond");
    copy_tree(&b.pond, &pond);
    let bomb = Crafted { claim_uncompressed: Some(i32::MAX), zstd_bomb: true, ..Crafted::default() };
    let objects: Vec<PathBuf> = std::fs::read_dir(pond.join("_large_files"))
        .expect("the store")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    assert!(!objects.is_empty(), "the base pond has large objects");
    for object in &objects {
        std::fs::write(object, parquet_file(&bomb)).expect("replace the object");
    }
    let expect = format!("claims {} bytes stored and {} decoded", zstd_zeros(i32::MAX as u64).len(), i32::MAX);
    let verify = run_pond_within(&[os("verify"), os(&pond)], dir.path(), 1 << 30);
    assert_eq!(judge(&verify, true), Ok(Verdict::Damage), "verify: {}", verify.stderr);
    assert!(String::from_utf8_lossy(&verify.stdout).contains(&expect), "verify says why: {:?}", verify.stdout);
    let mut refused = 0;
    for file in &b.files {
        let cat = run_pond_within(&[os("cat"), os(&pond), os(file)], dir.path(), 1 << 30);
        match judge(&cat, false) {
            Ok(Verdict::Ok) => {}
            Ok(Verdict::Error) if cat.stderr.contains(&expect) => refused += 1,
            other => panic!("pond cat {file}: {other:?}: {}", cat.stderr),
        }
    }
    assert!(refused > 0, "some file of the base pond is large, and reading it is refused");
}

// ---------------------------------------------------------------------------------------------------
// Directories that do not form a tree (issue 12, item 4)

/// Ways to make a pond's directories not a tree, committed as directory entries straight into its
/// table (what a forged or damaged replica could hold).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NotATreeEdit {
    /// `d` gets an entry naming `d`.
    InsideItself,
    /// A new directory `x` inside `d` gets an entry naming `d`: a mount's rename into `d` walked
    /// `d`, `x`, `d`, ... for ever, holding the tree's lock.
    ThroughAChild,
    /// `d` gets an entry naming the root.
    NamesTheRoot,
    /// `d` leaves the root for a new directory `x` that sits inside `d`: reachable from nowhere.
    Unreachable,
}

const NOT_A_TREE_EDITS: [NotATreeEdit; 4] =
    [NotATreeEdit::InsideItself, NotATreeEdit::ThroughAChild, NotATreeEdit::NamesTheRoot, NotATreeEdit::Unreachable];

/// Apply `edit` to the pond (or directory remote) at `root` as one new version.
fn break_the_tree(root: &Path, edit: NotATreeEdit) {
    use pond::oplog::CommitSummary;
    runtime().block_on(async {
        let mut oplog = Oplog::open(root, None).await.expect("open the table");
        let loaded = oplog.load().expect("load its rows");
        let d = loaded
            .rows
            .iter()
            .find_map(|r| match r {
                OplogRow::Dirent { parent: ROOT_INO, name, child: Some(c), .. } if name == b"d" => Some(*c),
                _ => None,
            })
            .expect("directory d");
        let d_data = loaded
            .rows
            .iter()
            .find_map(|r| match r {
                OplogRow::Node { ino, data: Some(data), .. } if *ino == d => Some(data.clone()),
                _ => None,
            })
            .expect("d's node");
        let mut seq = loaded.max_seq;
        let mut next = || {
            seq += 1;
            seq
        };
        let entry = |parent: u64, name: &str, seq: u64, child: Option<u64>| OplogRow::Dirent {
            parent,
            name: name.as_bytes().to_vec(),
            seq,
            child,
        };
        let rows = match edit {
            NotATreeEdit::InsideItself => vec![entry(d, "itself", next(), Some(d))],
            NotATreeEdit::ThroughAChild => {
                let x = loaded.max_ino + 1;
                vec![
                    OplogRow::Node { ino: x, seq: next(), data: Some(d_data) },
                    entry(d, "x", next(), Some(x)),
                    entry(x, "back", next(), Some(d)),
                ]
            }
            NotATreeEdit::NamesTheRoot => vec![entry(d, "up", next(), Some(ROOT_INO))],
            NotATreeEdit::Unreachable => {
                let x = loaded.max_ino + 1;
                vec![
                    OplogRow::Node { ino: x, seq: next(), data: Some(d_data) },
                    entry(ROOT_INO, "d", next(), None),
                    entry(d, "x", next(), Some(x)),
                    entry(x, "d", next(), Some(d)),
                ]
            }
        };
        let summary = CommitSummary { operation: "hostile", files_changed: 0, bytes: 0 };
        oplog.commit_batch(rows, summary).await.expect("commit the edit");
    });
}

#[test]
fn directories_that_are_not_a_tree_are_refused_by_mount_ls_and_cat_and_named_by_verify() {
    crate::common::require_fuse();
    let b = base();
    for edit in NOT_A_TREE_EDITS {
        let dir = tempfile::tempdir().expect("dir");
        let pond = dir.path().join("pond");
        copy_tree(&b.pond, &pond);
        break_the_tree(&pond, edit);
        let p = os(&pond);
        for args in [vec![os("ls"), p.clone()], vec![os("ls"), p.clone(), os("d")], vec![os("cat"), p.clone(), os("a")]]
        {
            let run = run_pond(&args, dir.path());
            assert_eq!(judge(&run, false), Ok(Verdict::Error), "{edit:?}: pond {:?}: {}", args[0], run.stderr);
            assert!(run.stderr.contains("do not form a tree"), "{edit:?}: says why: {}", run.stderr);
        }
        let run = run_pond(&[os("verify"), p.clone()], dir.path());
        assert_eq!(judge(&run, true), Ok(Verdict::Damage), "{edit:?}: verify: {}", run.stderr);
        assert!(String::from_utf8_lossy(&run.stdout).contains("not a tree"), "{edit:?}: verify names it");
        // A mount is refused at once, read-write or not: nothing for a rename to go round in.
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mountpoint");
        let _unmount = Unmount(mnt.clone());
        for opts in [None, Some("ro")] {
            let mut args = vec![os("mount"), p.clone(), os(&mnt)];
            args.extend(opts.map(|o| [os("-o"), os(o)]).into_iter().flatten());
            let run = run_pond(&args, dir.path());
            assert_eq!(judge(&run, false), Ok(Verdict::Error), "{edit:?}: mount {opts:?}: {}", run.stderr);
            assert!(!crate::common::is_mounted(&mnt), "{edit:?}: nothing mounted");
        }
        // The version before the edit still opens.
        let before = os((b.latest).to_string());
        let run = run_pond(&[os("ls"), p.clone(), os("--version"), before], dir.path());
        assert_eq!(judge(&run, false), Ok(Verdict::Ok), "{edit:?}: the version before: {}", run.stderr);
    }
}
