//! Issue 7.3, a failing remote: `pond replicate` through an object store that refuses puts, breaks
//! multipart uploads midway, stores part of a body while reporting success (a lying remote), loses
//! the acknowledgement of a stored put, and delays one upload while the next ones go on. After every
//! faulty run the remote holds no version whose files are missing or of the wrong size (checked again
//! at the moment each log entry is put); a later run completes, the remote verifies, and a restore of
//! it equals the pond byte for byte; nothing that had arrived whole is put again.
//!
//! The faults sit in [`FaultyStore`], an `ObjectStore` over object_store's `LocalFileSystem` (a
//! directory) handed to `Remote::from_store`: replicate then takes the object-store path that S3
//! takes (one put up to `PART_SIZE`, a multipart upload above), not the directory remote's
//! copy_file_range path. The directory lets the tests see exactly what landed.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, UploadPart,
};

use pond::audit::verify_pond;
use pond::fs::{FsOptions, PondFs, RenameMode};
use pond::oplog::{ROOT_INO, datafile, history};
use pond::replica::remote::PART_SIZE;
use pond::replica::{self, PondFile, Quiet, Remote, ReplicaError, ReplicateReport};

use crate::common::rng::Rng;
use crate::common::sizes::{C, T};
use crate::common::{TestPond, assert_same_tree, latest_version, pattern, runtime, soak, tree_snapshot, write_file};

/// The name the fault reports go under (`scripts/soak.sh` totals them).
const PART: &str = "replica_faults";

// ---------------------------------------------------------------------------------------------
// The fault-injecting store
// ---------------------------------------------------------------------------------------------

/// What a put is for, from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Object,
    Data,
    Log,
    Checkpoint,
    Hint,
    /// The remote's lease (`_pond.lock`), which replicate takes for each pass.
    Lock,
}

impl Kind {
    fn of(file: &PondFile) -> Kind {
        match file {
            // Packs hold objects' bytes: they travel with the objects.
            PondFile::Object(_) | PondFile::Pack(_) => Kind::Object,
            PondFile::Data(_) => Kind::Data,
            PondFile::Log(_) => Kind::Log,
            PondFile::Checkpoint(_) => Kind::Checkpoint,
            PondFile::LastCheckpoint => Kind::Hint,
            PondFile::RemoteLock => Kind::Lock,
        }
    }
}

/// One upload as the store sees it start.
#[derive(Clone, Debug)]
struct Put {
    file: PondFile,
    kind: Kind,
    /// A multipart upload (a file above `PART_SIZE`).
    multipart: bool,
}

/// What the store does to one upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Refuse it; nothing is stored.
    Fail,
    /// Store it whole, then report an error (the acknowledgement is lost on the way back).
    StoreThenFail,
    /// Store the first half of the body and report success (a lying remote).
    Truncate,
    /// As `Truncate`, and the connection drops right after: the next look at that name fails.
    TruncateThenDrop,
    /// Wait this long, then store it normally; other uploads go on meanwhile.
    Delay(Duration),
    /// Multipart only: the first `n` parts go, every later part fails.
    BreakAfterParts(usize),
    /// Multipart only: every part goes, completing the upload fails.
    FailComplete,
}

/// The fault schedule: asked once per upload, as it starts.
type Plan = Box<dyn FnMut(&Put) -> Option<Fault> + Send>;

fn no_faults() -> Plan {
    Box::new(|_| None)
}

/// Fault the first `times` uploads that `pick` selects.
struct Rule {
    pick: Box<dyn Fn(&Put) -> bool + Send>,
    times: u32,
    fault: Fault,
}

fn once(pick: impl Fn(&Put) -> bool + Send + 'static, fault: Fault) -> Rule {
    Rule { pick: Box::new(pick), times: 1, fault }
}

/// A plan from rules, the first matching rule with uses left wins.
fn rules(mut rules: Vec<Rule>) -> Plan {
    Box::new(move |put| {
        let rule = rules.iter_mut().find(|r| r.times > 0 && (r.pick)(put))?;
        rule.times -= 1;
        Some(rule.fault)
    })
}

/// What the store saw, over every run of one test.
#[derive(Clone, Debug, Default)]
struct Tally {
    /// Uploads started, per name.
    puts: BTreeMap<String, u64>,
    /// Uploads of a name the remote already held whole (equal to the pond's file) when they started.
    resent_whole: Vec<String>,
    /// Every fault injected, in order.
    injected: Vec<(String, Fault)>,
    /// Broken promises seen when they happened: a log entry or checkpoint put while something it
    /// needs was not whole on the remote.
    premature: Vec<String>,
    /// Multipart uploads dropped without being completed or aborted (on S3 their parts would stay,
    /// unseen and billed).
    abandoned: Vec<String>,
    /// Uploads whose name is not part of a pond's layout.
    foreign: Vec<String>,
}

impl Tally {
    fn puts_of(&self, name: &str) -> u64 {
        self.puts.get(name).copied().unwrap_or(0)
    }
}

struct State {
    plan: Plan,
    tally: Tally,
    /// Names whose next `head` fails (the connection dropped after a truncated put).
    fail_head: BTreeSet<String>,
    /// Names whose reads do not end where the listing says: the file's bytes go on with this many
    /// more (a remote that lies, or a body that never ends).
    run_on: BTreeMap<String, u64>,
    /// Bytes served by reads of `run_on` names.
    served: u64,
}

/// An `ObjectStore` over another (a directory through object_store's `LocalFileSystem`, or an S3
/// server) that injects the faults its plan picks. Over a directory it also checks, at each log
/// entry or checkpoint put, that what it refers to is whole, and notes puts of what was whole.
struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    /// The directory the inner store writes, when it is one.
    dir: Option<PathBuf>,
    label: String,
    /// The pond being replicated: what "whole" means for each name.
    pond: PathBuf,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyStore({})", self.label)
    }
}

impl std::fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyStore({})", self.label)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn injected(what: &str, name: &str) -> object_store::Error {
    object_store::Error::Generic { store: "FaultyStore", source: format!("injected fault: {what} ({name})").into() }
}

fn file_len(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

/// `a`'s bytes are a prefix of `b`'s (both exist).
fn is_prefix(a: &Path, b: &Path) -> bool {
    match (std::fs::read(a), std::fs::read(b)) {
        (Ok(x), Ok(y)) => y.starts_with(&x),
        _ => false,
    }
}

/// Both files exist with the same bytes.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::read(a), std::fs::read(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

impl FaultyStore {
    /// Over the directory `dir`, through object_store's `LocalFileSystem`.
    fn new(dir: &Path, pond: &Path) -> FaultyStore {
        let local = LocalFileSystem::new_with_prefix(dir).expect("LocalFileSystem over the remote directory");
        let mut store = FaultyStore::over(Arc::new(local), &dir.display().to_string(), pond);
        store.dir = Some(dir.to_path_buf());
        store
    }

    /// Over any store, without the checks that need to see its files.
    fn over(inner: Arc<dyn ObjectStore>, label: &str, pond: &Path) -> FaultyStore {
        FaultyStore {
            inner,
            dir: None,
            label: label.to_string(),
            pond: pond.to_path_buf(),
            state: Arc::new(Mutex::new(State {
                plan: no_faults(),
                tally: Tally::default(),
                fail_head: BTreeSet::new(),
                run_on: BTreeMap::new(),
                served: 0,
            })),
        }
    }

    /// `got` as a stream that goes on past its end with `extra` bytes, in 1 MiB pieces, counting
    /// what is actually taken from it.
    fn running_on(&self, got: GetResult, extra: u64) -> GetResult {
        const PIECE: u64 = 1 << 20;
        let state = self.state.clone();
        let count = move |piece: object_store::Result<Bytes>| {
            if let Ok(b) = &piece {
                lock(&state).served += b.len() as u64;
            }
            piece
        };
        let filler = futures::stream::iter(
            (0..extra.div_ceil(PIECE)).map(move |i| Ok(Bytes::from(vec![b'x'; PIECE.min(extra - i * PIECE) as usize]))),
        );
        let meta = got.meta.clone();
        let (range, attributes) = (got.range.clone(), got.attributes.clone());
        let stream = got.into_stream().chain(filler).map(count).boxed();
        GetResult { payload: object_store::GetResultPayload::Stream(stream), meta, range, attributes }
    }

    fn set_plan(&self, plan: Plan) {
        lock(&self.state).plan = plan;
    }

    fn tally(&self) -> Tally {
        lock(&self.state).tally.clone()
    }

    /// An upload of `name` starts: count it, check what it may rely on, pick its fault.
    fn begin(&self, name: &str, multipart: bool) -> Option<Fault> {
        let file = match PondFile::parse(name) {
            // The remote's lease is not the pond's data: it passes untouched and uncounted (the
            // plans here fault uploads of the pond's files).
            Ok(PondFile::RemoteLock) => return None,
            Ok(f) => f,
            Err(_) => {
                lock(&self.state).tally.foreign.push(name.to_string());
                return None;
            }
        };
        let (whole, unmet) = match &self.dir {
            None => (false, Vec::new()),
            Some(dir) => (
                same_file(&dir.join(name), &self.pond.join(name)),
                match file {
                    PondFile::Log(v) => self.unmet_for_log(dir, v),
                    PondFile::Checkpoint(v)
                        if !same_file(&PondFile::Log(v).local_path(dir), &PondFile::Log(v).local_path(&self.pond)) =>
                    {
                        vec![format!("checkpoint {v} put before log entry {v} was whole on the remote")]
                    }
                    _ => Vec::new(),
                },
            ),
        };
        let mut st = lock(&self.state);
        *st.tally.puts.entry(name.to_string()).or_default() += 1;
        if whole {
            st.tally.resent_whole.push(name.to_string());
        }
        st.tally.premature.extend(unmet);
        let put = Put { kind: Kind::of(&file), file, multipart };
        let fault = (st.plan)(&put);
        if let Some(f) = fault {
            st.tally.injected.push((name.to_string(), f));
            if f == Fault::TruncateThenDrop {
                st.fail_head.insert(name.to_string());
            }
        }
        fault
    }

    /// What log entry `v` needs that the remote does not hold whole: entries `0..v`, the data files
    /// `v` adds, and the objects those reference.
    fn unmet_for_log(&self, dir: &Path, v: u64) -> Vec<String> {
        let mut unmet = Vec::new();
        for u in 0..v {
            let entry = PondFile::Log(u);
            if !same_file(&entry.local_path(dir), &entry.local_path(&self.pond)) {
                unmet.push(format!("log entry {v} put before log entry {u} was whole on the remote"));
            }
        }
        let local = PondFile::Log(v).local_path(&self.pond);
        let actions = std::fs::read_to_string(&local)
            .map_err(|e| e.to_string())
            .and_then(|text| history::parse_log_entry(&text, &local).map_err(|e| e.to_string()));
        let actions = match actions {
            Ok(a) => a,
            Err(e) => return vec![format!("log entry {v} of the pond does not read: {e}")],
        };
        for (data, size) in actions.added {
            let landed = file_len(&dir.join(&data));
            if landed != Some(size) {
                unmet.push(format!("log entry {v} put while its data file {data} holds {landed:?} of {size} bytes"));
                continue;
            }
            match datafile::large_objects(dir, &Arc::from(data.as_str())) {
                Ok(objects) => {
                    for (hash, _, _) in objects {
                        let object = PondFile::Object(hash);
                        let (landed, want) =
                            (file_len(&object.local_path(dir)), file_len(&object.local_path(&self.pond)));
                        if landed != want {
                            unmet.push(format!(
                                "log entry {v} put while {object} (referenced by {data}) holds {landed:?} of {want:?} bytes"
                            ));
                        }
                    }
                }
                Err(e) => unmet.push(format!("log entry {v} put while its data file {data} does not read: {e}")),
            }
        }
        unmet
    }
}

/// Cut `path` to half its length: a multipart upload that "completed" short.
fn cut_in_half(path: &Path) -> object_store::Result<()> {
    let cut = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.metadata().and_then(|m| f.set_len(m.len() / 2)));
    cut.map_err(|e| object_store::Error::Generic { store: "FaultyStore", source: Box::new(e) })
}

type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = object_store::Result<T>> + Send + 'a>>;

// The trait is declared with #[async_trait]; these are its methods written out as that macro
// expands them (the crate does not depend on async-trait itself).
impl ObjectStore for FaultyStore {
    fn put_opts<'life0, 'life1, 'async_trait>(
        &'life0 self,
        location: &'life1 StorePath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> StoreFuture<'async_trait, PutResult>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let name = location.as_ref().to_string();
            match self.begin(&name, false) {
                None => self.inner.put_opts(location, payload, opts).await,
                Some(Fault::Delay(d)) => {
                    tokio::time::sleep(d).await;
                    self.inner.put_opts(location, payload, opts).await
                }
                Some(Fault::StoreThenFail) => {
                    self.inner.put_opts(location, payload, opts).await?;
                    Err(injected("the acknowledgement of a stored put was lost", &name))
                }
                Some(Fault::Truncate | Fault::TruncateThenDrop) => {
                    let body = Bytes::from(payload);
                    self.inner.put_opts(location, body.slice(..body.len() / 2).into(), opts).await
                }
                Some(Fault::Fail | Fault::BreakAfterParts(_) | Fault::FailComplete) => {
                    Err(injected("put refused", &name))
                }
            }
        })
    }

    fn put_multipart_opts<'life0, 'life1, 'async_trait>(
        &'life0 self,
        location: &'life1 StorePath,
        opts: PutMultipartOptions,
    ) -> StoreFuture<'async_trait, Box<dyn MultipartUpload>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let name = location.as_ref().to_string();
            let fault = self.begin(&name, true);
            match fault {
                Some(Fault::Fail) => return Err(injected("multipart upload refused", &name)),
                Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
                _ => {}
            }
            let inner = self.inner.put_multipart_opts(location, opts).await?;
            let upload = FaultyUpload {
                inner,
                path: self.dir.as_ref().map(|d| d.join(&name)),
                name,
                fault,
                parts: 0,
                ended: false,
                state: self.state.clone(),
            };
            Ok(Box::new(upload) as Box<dyn MultipartUpload>)
        })
    }

    fn get_opts<'life0, 'life1, 'async_trait>(
        &'life0 self,
        location: &'life1 StorePath,
        options: GetOptions,
    ) -> StoreFuture<'async_trait, GetResult>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            if options.head && lock(&self.state).fail_head.remove(location.as_ref()) {
                return Err(injected("connection lost", location.as_ref()));
            }
            let extra = lock(&self.state).run_on.get(location.as_ref()).copied();
            match extra {
                Some(extra) if !options.head => {
                    let got = self.inner.get_opts(location, options).await?;
                    Ok(self.running_on(got, extra))
                }
                _ => self.inner.get_opts(location, options).await,
            }
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<StorePath>>,
    ) -> BoxStream<'static, object_store::Result<StorePath>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&StorePath>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_delimiter<'life0, 'life1, 'async_trait>(
        &'life0 self,
        prefix: Option<&'life1 StorePath>,
    ) -> StoreFuture<'async_trait, ListResult>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { self.inner.list_with_delimiter(prefix).await })
    }

    fn copy_opts<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        from: &'life1 StorePath,
        to: &'life2 StorePath,
        options: CopyOptions,
    ) -> StoreFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { self.inner.copy_opts(from, to, options).await })
    }
}

/// A multipart upload with the fault its store picked for it.
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    name: String,
    /// Where the inner store writes it, over a directory.
    path: Option<PathBuf>,
    fault: Option<Fault>,
    parts: usize,
    /// Completed or aborted.
    ended: bool,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FaultyUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyUpload({}, {:?})", self.name, self.fault)
    }
}

impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.parts += 1;
        if let Some(Fault::BreakAfterParts(n)) = self.fault
            && self.parts > n
        {
            let e = injected(&format!("part {} refused", self.parts), &self.name);
            return Box::pin(async move { Err(e) });
        }
        self.inner.put_part(data)
    }

    fn complete<'life0, 'async_trait>(&'life0 mut self) -> StoreFuture<'async_trait, PutResult>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            if self.fault == Some(Fault::FailComplete) {
                return Err(injected("completing the upload failed", &self.name));
            }
            let done = self.inner.complete().await?;
            self.ended = true;
            match self.fault {
                Some(Fault::StoreThenFail) => {
                    Err(injected("the acknowledgement of a completed upload was lost", &self.name))
                }
                Some(Fault::Truncate | Fault::TruncateThenDrop) => {
                    match &self.path {
                        Some(path) => cut_in_half(path)?,
                        None => return Err(injected("cannot cut a completed upload short here", &self.name)),
                    }
                    Ok(done)
                }
                _ => Ok(done),
            }
        })
    }

    fn abort<'life0, 'async_trait>(&'life0 mut self) -> StoreFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.ended = true;
            self.inner.abort().await
        })
    }
}

impl Drop for FaultyUpload {
    fn drop(&mut self) {
        if !self.ended {
            lock(&self.state).tally.abandoned.push(self.name.clone());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ponds, runs and checks
// ---------------------------------------------------------------------------------------------

/// Grow the pond at `root` by one commit per step: large files (above the threshold), inline ones
/// (below and at it), renames and unlinks; with `huge`, first a file past one multipart part.
fn grow(root: &Path, steps: Range<u64>, huge: bool) {
    let fs = PondFs::open(root, FsOptions::default()).expect("open pond");
    if huge {
        let i = steps.start;
        write_file(&fs, ROOT_INO, &format!("huge{i}"), &pattern(PART_SIZE + 5 * C + i as usize, 7000 + i));
        fs.sync_all().expect("commit");
    }
    for i in steps {
        let n = i as usize;
        match i % 6 {
            0 => drop(write_file(&fs, ROOT_INO, &format!("large{i}"), &pattern(2 * C + n, i))),
            1 => drop(write_file(&fs, ROOT_INO, &format!("small{i}"), &pattern(T / 64 + n, i))),
            2 => drop(write_file(&fs, ROOT_INO, &format!("edge{i}"), &pattern(T, i))),
            3 => drop(write_file(&fs, ROOT_INO, &format!("over{i}"), &pattern(T + 1, i))),
            4 => fs
                .rename(
                    ROOT_INO,
                    format!("small{}", i - 3).as_bytes(),
                    ROOT_INO,
                    format!("moved{i}").as_bytes(),
                    RenameMode::Replace,
                )
                .expect("rename"),
            _ => fs.unlink(ROOT_INO, format!("edge{}", i - 3).as_bytes()).expect("unlink"),
        }
        fs.sync_all().expect("commit");
    }
    fs.shutdown().expect("shutdown");
}

/// A pond with more than one checkpoint interval (50 versions) of history, a file past one
/// multipart part, and large and inline files.
fn pond_with_history() -> TestPond {
    let pond = TestPond::new();
    grow(&pond.root, 0..54, true);
    assert!(
        !history::checkpoint_versions(&pond.root).unwrap().is_empty(),
        "the pond has a checkpoint (version {})",
        latest_version(&pond.root)
    );
    pond
}

/// Every file under `dir`, by its `/`-separated name.
fn walk(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, e.path());
            }
        }
    }
    out
}

/// What a test went through, for its fault report.
#[derive(Default)]
struct Outcome {
    runs: u64,
    faults: u64,
    /// What a reader of the remote (or of its restore) would find missing or wrong.
    lost: Vec<String>,
    /// Checks that found a log entry, checkpoint or hint torn by a `TruncateThenDrop` fault (each
    /// then repaired by the next run).
    torn: u64,
}

impl Outcome {
    fn add(&mut self, other: Outcome) {
        self.runs += other.runs;
        self.faults += other.faults;
        self.lost.extend(other.lost);
        self.torn += other.torn;
    }

    /// Print the fault report, then require that nothing was lost.
    fn report(self) {
        eprintln!("{PART}: a torn log entry, checkpoint or hint was left by a dropped connection {} times", self.torn);
        soak::report(PART, self.runs, self.faults, self.lost.len() as u64);
        assert!(
            self.lost.is_empty(),
            "{} problems; the first ones:\n  {}",
            self.lost.len(),
            self.lost[..self.lost.len().min(20)].join("\n  ")
        );
    }
}

/// A pond, a directory remote behind a [`FaultyStore`], and what its runs went through.
struct Rig {
    root: PathBuf,
    dir: PathBuf,
    store: Arc<FaultyStore>,
    remote: Remote,
    outcome: Outcome,
    /// How many of the store's `premature` findings were counted already.
    premature_seen: usize,
    added_cache: BTreeMap<u64, Vec<(String, u64)>>,
    objects_cache: BTreeMap<String, Vec<PondFile>>,
}

impl Rig {
    fn new(pond: &TestPond, name: &str) -> Rig {
        let dir = pond.scratch(name);
        let store = Arc::new(FaultyStore::new(&dir, &pond.root));
        let remote = Remote::from_store(format!("faulty:{}", dir.display()), store.clone());
        Rig {
            root: pond.root.clone(),
            dir,
            store,
            remote,
            outcome: Outcome::default(),
            premature_seen: 0,
            added_cache: BTreeMap::new(),
            objects_cache: BTreeMap::new(),
        }
    }

    /// One `pond replicate` pass under `plan`, then the checks every run must pass.
    fn run(&mut self, plan: Plan) -> Result<ReplicateReport, ReplicaError> {
        self.run_with(plan, false)
    }

    /// [`Rig::run`]; `clean`: the plan injects nothing, so a run that succeeds leaves nothing partial.
    fn run_with(&mut self, plan: Plan, clean: bool) -> Result<ReplicateReport, ReplicaError> {
        self.store.set_plan(plan);
        self.outcome.runs += 1;
        let result = runtime().block_on(replica::replicate(
            &self.root,
            &self.remote,
            Arc::new(Quiet),
            &AtomicBool::new(false),
            false,
        ));
        self.store.set_plan(no_faults());
        let when = format!(
            "after run {} ({})",
            self.outcome.runs,
            result.as_ref().map_or_else(|e| e.to_string(), |_| "ok".into())
        );
        self.check(&when, result.is_ok() && clean);
        result
    }

    /// The remote as a reader finds it now, walked through its log: versions in an unbroken run from
    /// 0, each log entry and checkpoint the pond's own bytes, every data file a version adds present
    /// with its logged size, every object those reference present, `_last_checkpoint` naming a
    /// checkpoint present. What fails counts as lost. Then what is not loss but still wrong: a
    /// visible file that is not whole, an upload's staging file left, a multipart upload abandoned,
    /// a name outside the layout.
    ///
    /// Unless `strict`: a body cut short by a `TruncateThenDrop` fault (the store acknowledged it,
    /// then the connection dropped before replicate's check) cannot be removed by replicate and may
    /// stay, unreferenced; a log entry, checkpoint or hint cut so is itself visible, so it must be a
    /// prefix of the pond's (the next run tells it and sends it again) and no later version may have
    /// gone out. `pond verify` (the full check, every chunk re-hashed) runs in [`Rig::finish`].
    fn check(&mut self, when: &str, strict: bool) {
        let tally = self.store.tally();
        let mut lost: Vec<String> = Vec::new();
        lost.extend(tally.premature[self.premature_seen..].iter().map(|p| format!("{when}: {p}")));
        self.premature_seen = tally.premature.len();
        let dropped: BTreeSet<&String> =
            tally.injected.iter().filter(|(_, f)| *f == Fault::TruncateThenDrop).map(|(n, _)| n).collect();
        let files = walk(&self.dir);
        let mut partial = Vec::new();
        let mut torn = BTreeSet::new();
        for (name, path) in &files {
            if name.contains('#') {
                partial.push(format!("{name}: an upload's staging file was left behind"));
                continue;
            }
            let file = PondFile::parse(name).unwrap_or_else(|e| panic!("{when}: {e}"));
            if file == PondFile::RemoteLock {
                continue; // a lease, not the pond's: a run that failed may leave it (the next breaks it)
            }
            let local = self.root.join(name);
            if same_file(path, &local) {
                continue;
            }
            let cut = !strict && dropped.contains(name);
            match file {
                // The one mutable file: an older hint is fine when it names a checkpoint present (below).
                PondFile::LastCheckpoint if !(cut && is_prefix(path, &local)) => {}
                PondFile::Object(_) | PondFile::Data(_) if cut => {}
                PondFile::Object(_) | PondFile::Data(_) => partial.push(format!(
                    "{name}: visible on the remote with {:?} of {:?} bytes",
                    file_len(path),
                    file_len(&local)
                )),
                _ if cut && is_prefix(path, &local) => {
                    torn.insert(file);
                    self.outcome.torn += 1;
                }
                _ => lost.push(format!("{when}: {name} on the remote is not the pond's")),
            }
        }
        let mut versions: Vec<u64> = files
            .keys()
            .filter_map(|n| match PondFile::parse(n) {
                Ok(PondFile::Log(v)) => Some(v),
                _ => None,
            })
            .collect();
        versions.sort();
        if let Some((gap, _)) = versions.iter().enumerate().find(|(i, v)| *i as u64 != **v) {
            lost.push(format!("{when}: the remote's log skips version {gap}"));
        }
        for &v in &versions {
            if torn.contains(&PondFile::Log(v)) {
                if Some(&v) != versions.last() {
                    lost.push(format!("{when}: versions went out after log entry {v}, which is torn"));
                }
                continue;
            }
            for (data, size) in self.added(v) {
                let held = file_len(&self.dir.join(&data));
                if held != Some(size) {
                    lost.push(format!(
                        "{when}: version {v} adds {data}, which the remote holds with {held:?} of {size} bytes"
                    ));
                    continue;
                }
                for object in self.objects(&data) {
                    if !files.contains_key(&object.name()) {
                        lost.push(format!(
                            "{when}: version {v} needs {object} (through {data}), which the remote lacks"
                        ));
                    }
                }
            }
        }
        for name in files.keys() {
            match PondFile::parse(name) {
                Ok(PondFile::Checkpoint(c)) if !files.contains_key(&PondFile::Log(c).name()) => {
                    lost.push(format!("{when}: checkpoint {c} on the remote without its log entry"))
                }
                Ok(PondFile::LastCheckpoint) if !torn.contains(&PondFile::LastCheckpoint) => {
                    let named = std::fs::read(self.dir.join(name))
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .and_then(|v| v.get("version")?.as_u64());
                    match named.map(PondFile::Checkpoint) {
                        Some(c) if files.contains_key(&c.name()) && !torn.contains(&c) => {}
                        _ => lost.push(format!(
                            "{when}: _last_checkpoint names no checkpoint the remote holds whole ({named:?})"
                        )),
                    }
                }
                _ => {}
            }
        }
        self.outcome.lost.extend(lost);
        assert!(partial.is_empty(), "{when}: the remote holds something partial:\n  {}", partial.join("\n  "));
        assert!(
            tally.abandoned.is_empty(),
            "{when}: multipart uploads neither completed nor aborted: {:?}",
            tally.abandoned
        );
        assert!(tally.foreign.is_empty(), "{when}: uploads outside a pond's layout: {:?}", tally.foreign);
    }

    /// The data files version `v` of the pond adds, with their logged sizes (cached: immutable).
    fn added(&mut self, v: u64) -> Vec<(String, u64)> {
        let root = &self.root;
        self.added_cache
            .entry(v)
            .or_insert_with(|| {
                let path = PondFile::Log(v).local_path(root);
                let text = std::fs::read_to_string(&path).expect("the pond's log entry");
                history::parse_log_entry(&text, &path).expect("the pond's log entry parses").added
            })
            .clone()
    }

    /// The objects the pond's data file `data` references (cached: immutable).
    fn objects(&mut self, data: &str) -> Vec<PondFile> {
        let root = &self.root;
        self.objects_cache
            .entry(data.to_string())
            .or_insert_with(|| {
                let objects = datafile::large_objects(root, &Arc::from(data)).expect("the pond's data file reads");
                objects.into_iter().map(|(h, _, _)| PondFile::Object(h)).collect()
            })
            .clone()
    }

    /// A run without faults completes at the pond's version; `pond verify` of the remote is clean
    /// and a restore of it equals the pond, file for file and byte for byte; no upload in any run
    /// sent something the remote already held whole. Returns the outcome and the store's tally.
    fn finish(mut self, pond: &TestPond) -> (Outcome, Tally) {
        let report = self.run_with(no_faults(), true).expect("a run without faults completes");
        assert_eq!(report.version, Some(latest_version(&self.root)), "the remote is at the pond's version");
        let verify = verify_pond(&self.dir).expect("verify the remote");
        self.outcome.lost.extend(verify.damage.iter().map(|d| format!("final verify: {d}")));

        let target = pond.dir.path().join(format!("restored-{}", self.dir.file_name().unwrap().to_string_lossy()));
        let plain =
            Remote::open(self.dir.to_str().expect("utf-8 path"), &[], false).expect("open the remote directory");
        runtime()
            .block_on(replica::restore(&plain, &target, None, Arc::new(Quiet), &AtomicBool::new(false)))
            .expect("restore the remote");
        let restored = walk(&target);
        for (name, path) in &restored {
            if !same_file(path, &self.root.join(name)) {
                self.outcome.lost.push(format!("restored {name} differs from the pond's"));
            }
        }
        let pond_files = walk(&self.root);
        let referenced = history::referenced_data_files(&self.root).unwrap();
        for name in referenced.iter().chain([PondFile::Log(latest_version(&self.root)).name()].iter()) {
            if pond_files.contains_key(name) && !restored.contains_key(name) {
                self.outcome.lost.push(format!("restore lacks {name}"));
            }
        }
        let ro = |root: &Path| PondFs::open(root, FsOptions { read_only: true, ..Default::default() }).unwrap();
        let (got, want) = (tree_snapshot(&ro(&target)), tree_snapshot(&ro(&self.root)));
        if got != want {
            self.outcome.lost.push("the restored tree differs from the pond's".into());
        }
        assert_same_tree(&got, &want, "restored from the remote");

        let tally = self.store.tally();
        assert!(
            tally.resent_whole.is_empty(),
            "uploads of what the remote already held whole: {:?}",
            tally.resent_whole
        );
        self.outcome.faults = tally.injected.len() as u64;
        (self.outcome, tally)
    }
}

/// A run that met a fault must say so.
fn expect_failed(result: Result<ReplicateReport, ReplicaError>, what: &str) -> ReplicaError {
    match result {
        Ok(report) => panic!("{what}: the run reported success (version {:?}) through a fault", report.version),
        Err(e) => e,
    }
}

fn is_kind(kind: Kind) -> impl Fn(&Put) -> bool + Send + 'static {
    move |p| p.kind == kind
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn failing_puts_at_every_stage_leave_no_broken_version_and_later_runs_send_only_what_is_missing() {
    let pond = pond_with_history();
    let mut rig = Rig::new(&pond, "remote");
    let mut failed = 0;
    for round in 0..60u64 {
        // Nine uploads go, then the next one to three fail.
        let (go, fail) = (9, 1 + round % 3);
        let mut seen = 0;
        let plan: Plan = Box::new(move |_| {
            seen += 1;
            (seen > go && seen <= go + fail).then_some(Fault::Fail)
        });
        match rig.run(plan) {
            Ok(_) => break,
            Err(e) => {
                assert!(e.to_string().contains("injected fault"), "the run fails with the store's error: {e}");
                failed += 1;
            }
        }
    }
    let (outcome, tally) = rig.finish(&pond);
    let kinds: BTreeSet<Kind> = tally.injected.iter().map(|(n, _)| Kind::of(&PondFile::parse(n).unwrap())).collect();
    assert!(
        [Kind::Object, Kind::Data, Kind::Log].iter().all(|k| kinds.contains(k)),
        "faults hit objects, data files and log entries: {kinds:?}"
    );
    assert!(failed >= 10, "the pass took many failing runs ({failed})");
    // Each name is put once, plus once per refusal.
    for (name, puts) in &tally.puts {
        let refused = tally.injected.iter().filter(|(n, _)| n == name).count() as u64;
        assert_eq!(*puts, 1 + refused, "{name}: put once, plus once per refused put");
    }
    outcome.report();
}

#[test]
fn every_fault_at_every_kind_of_file_leaves_no_broken_version_and_the_next_run_repairs_it() {
    let pond = pond_with_history();
    let checkpoint = history::checkpoint_versions(&pond.root).unwrap()[0];
    let mut total = Outcome::default();
    for fault in [Fault::Fail, Fault::StoreThenFail, Fault::Truncate, Fault::TruncateThenDrop] {
        let mut rig = Rig::new(&pond, &format!("remote-{fault:?}"));
        // One run per stage, each faulting the first upload of its kind (objects: a single put and
        // the multipart one); each must fail, and leave the remote whole as far as it goes.
        let stages: Vec<(&str, Vec<Rule>)> = vec![
            ("objects", vec![once(|p| p.kind == Kind::Object && !p.multipart, fault), once(|p| p.multipart, fault)]),
            ("data files", vec![once(is_kind(Kind::Data), fault)]),
            ("log entry 0", vec![once(|p| p.file == PondFile::Log(0), fault)]),
            ("log entry 20", vec![once(|p| p.file == PondFile::Log(20), fault)]),
            ("the checkpoint", vec![once(is_kind(Kind::Checkpoint), fault)]),
            ("_last_checkpoint", vec![once(is_kind(Kind::Hint), fault)]),
        ];
        for (stage, plan) in stages {
            let e = expect_failed(rig.run(rules(plan)), &format!("{fault:?} at {stage}"));
            if fault == Fault::Truncate {
                // Only the check after the upload can tell: the store said it was fine.
                assert!(matches!(e, ReplicaError::NotLanded { .. }), "{stage}: the short copy is named: {e}");
            } else {
                assert!(e.to_string().contains("injected fault"), "{stage}: the store's error is reported: {e}");
            }
        }
        let (outcome, tally) = rig.finish(&pond);
        assert!(tally.injected.iter().any(|(n, _)| *n == PondFile::Checkpoint(checkpoint).name()));
        for (name, f) in &tally.injected {
            // Stored whole (the acknowledgement lost): never put again. Otherwise: put once more.
            let want = if *f == Fault::StoreThenFail { 1 } else { 2 };
            assert_eq!(tally.puts_of(name), want, "{name} after {f:?}");
        }
        total.add(outcome);
    }
    total.report();
}

#[test]
fn a_multipart_upload_broken_midway_is_aborted_and_a_later_run_sends_it_whole() {
    let pond = TestPond::new();
    {
        let fs = pond.open();
        // Three parts.
        write_file(&fs, ROOT_INO, "huge", &pattern(2 * PART_SIZE + 3 * C, 1));
        write_file(&fs, ROOT_INO, "large", &pattern(3 * C, 2));
        write_file(&fs, ROOT_INO, "small", &pattern(T / 2, 3));
        fs.shutdown().unwrap();
    }
    let mut rig = Rig::new(&pond, "remote");
    let multipart = |fault| rules(vec![once(|p: &Put| p.multipart, fault)]);
    for fault in [Fault::BreakAfterParts(1), Fault::BreakAfterParts(0), Fault::FailComplete, Fault::Truncate] {
        expect_failed(rig.run(multipart(fault)), &format!("{fault:?}"));
    }
    let (outcome, tally) = rig.finish(&pond);
    let huge: Vec<&String> = tally.injected.iter().map(|(n, _)| n).collect();
    assert_eq!(huge.len(), 4);
    assert!(huge.iter().all(|n| *n == huge[0]), "every fault hit the one multipart object");
    assert_eq!(tally.puts_of(huge[0]), 5, "four broken uploads, then one whole");
    outcome.report();
}

#[test]
fn a_delayed_upload_holds_back_every_log_entry_and_one_under_way_when_another_fails_still_lands() {
    let pond = TestPond::new();
    grow(&pond.root, 0..12, false);
    let mut rig = Rig::new(&pond, "remote");
    let slow = Fault::Delay(Duration::from_millis(300));
    // The first object and the first data file are slow; everything after them goes at once.
    let report = rig
        .run(rules(vec![once(is_kind(Kind::Object), slow), once(is_kind(Kind::Data), slow)]))
        .expect("delays alone do not fail a run");
    assert_eq!(report.version, Some(latest_version(&pond.root)));

    // Now one object is slow while the next one fails: the slow one, already under way, finishes.
    grow(&pond.root, 12..24, false);
    let mut objects = 0;
    let plan: Plan = Box::new(move |p| {
        if p.kind != Kind::Object {
            return None;
        }
        objects += 1;
        match objects {
            1 => Some(Fault::Delay(Duration::from_millis(400))),
            2 => Some(Fault::Fail),
            _ => None,
        }
    });
    expect_failed(rig.run(plan), "a refused object");
    let tally = rig.store.tally();
    let delayed = &tally.injected.iter().find(|(_, f)| matches!(f, Fault::Delay(d) if d.as_millis() == 400)).unwrap().0;
    assert!(
        same_file(&rig.dir.join(delayed), &pond.root.join(delayed)),
        "the upload under way when another failed landed whole: {delayed}"
    );
    let (outcome, tally) = rig.finish(&pond);
    assert_eq!(tally.puts_of(delayed), 1, "{delayed} arrived whole and was not sent again");
    outcome.report();
}

/// A fault drawn at random for `put`.
fn random_fault(rng: &mut Rng, put: &Put) -> Fault {
    let mut choices = vec![
        Fault::Fail,
        Fault::StoreThenFail,
        Fault::Truncate,
        Fault::TruncateThenDrop,
        Fault::Delay(Duration::from_millis(rng.below(150) as u64)),
    ];
    if put.multipart {
        choices.extend([Fault::BreakAfterParts(rng.below(2)), Fault::FailComplete]);
    }
    choices[rng.below(choices.len())]
}

#[test]
fn random_fault_schedules_never_leave_a_broken_version_nor_resend_what_arrived() {
    let seed: u64 = std::env::var("POND_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x7_3);
    let mut total = Outcome::default();
    // Each epoch: a new pond and remote; ten rounds, each growing the pond by six versions (past a
    // checkpoint, and once by a file past one multipart part) and replicating twice under schedules
    // whose fault rates are drawn too.
    for epoch in 0..soak::rounds(2) {
        let mut rng = Rng::new(seed ^ epoch.wrapping_mul(0xA076_1D64_78BD_642F));
        let pond = TestPond::new();
        let mut rig = Rig::new(&pond, "remote");
        for round in 0..10u64 {
            grow(&pond.root, round * 6..round * 6 + 6, round == 2);
            // Two runs a round, each under its own schedule and fault rate.
            for _ in 0..2 {
                let per_mille = [0, 100, 250, 500][rng.below(4)];
                let mut draw = Rng::new(rng.next());
                let plan: Plan =
                    Box::new(move |put| (draw.below(1000) < per_mille).then(|| random_fault(&mut draw, put)));
                if let Ok(report) = rig.run(plan) {
                    assert_eq!(
                        report.version,
                        Some(latest_version(&pond.root)),
                        "seed {seed} epoch {epoch} round {round}: a run that succeeds ships every version"
                    );
                }
            }
        }
        let (outcome, tally) = rig.finish(&pond);
        eprintln!(
            "seed {seed} epoch {epoch}: {} runs, {} faults, {} uploads",
            outcome.runs,
            tally.injected.len(),
            tally.puts.values().sum::<u64>()
        );
        total.add(outcome);
    }
    total.report();
}

/// Multipart uploads the S3 server holds open under `prefix` (started, neither completed nor
/// aborted: their parts stay stored, and billed, out of sight of a listing).
fn open_uploads(endpoint: &str, bucket: &str, prefix: &str) -> usize {
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("{endpoint}/{bucket}?uploads&prefix={prefix}/")])
        .output()
        .expect("run curl");
    assert!(out.status.success(), "listing multipart uploads: {}", String::from_utf8_lossy(&out.stderr));
    let xml = String::from_utf8_lossy(&out.stdout);
    assert!(xml.contains("ListMultipartUploadsResult"), "{xml}");
    xml.matches("<Upload>").count()
}

#[test]
fn faults_against_an_s3_server_abort_broken_uploads_and_a_later_run_completes() {
    let server = crate::common::s3::s3();
    let (endpoint, bucket, aws) = (server.endpoint.clone(), server.bucket.clone(), server.env());
    let pond = TestPond::new();
    grow(&pond.root, 0..8, true);
    let prefix = format!("{}/pond", uuid::Uuid::new_v4());
    let url = format!("s3://{bucket}/{prefix}");
    let mut builder = AmazonS3Builder::new().with_bucket_name(&bucket);
    for (key, value) in &aws {
        if let Ok(key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            builder = builder.with_config(key, value);
        }
    }
    let s3 = PrefixStore::new(builder.build().expect("S3 store"), StorePath::from(prefix.as_str()));
    let store = Arc::new(FaultyStore::over(Arc::new(s3), &url, &pond.root));
    let remote = Remote::from_store(url.clone(), store.clone());
    let plain = Remote::open(&url, &aws, false).expect("open the S3 remote");
    let run = |plan: Plan| {
        store.set_plan(plan);
        let stop = AtomicBool::new(false);
        let result = runtime().block_on(replica::replicate(&pond.root, &remote, Arc::new(Quiet), &stop, false));
        store.set_plan(no_faults());
        result
    };
    let mut outcome = Outcome::default();
    let stages: Vec<(&str, Plan)> = vec![
        (
            "a multipart upload broken after its first part",
            rules(vec![once(|p| p.multipart, Fault::BreakAfterParts(1))]),
        ),
        ("completing a multipart upload", rules(vec![once(|p| p.multipart, Fault::FailComplete)])),
        ("a data file cut short, acknowledged", rules(vec![once(is_kind(Kind::Data), Fault::Truncate)])),
        ("log entry 3 refused", rules(vec![once(|p| p.file == PondFile::Log(3), Fault::Fail)])),
        ("log entry 5 cut short, acknowledged", rules(vec![once(|p| p.file == PondFile::Log(5), Fault::Truncate)])),
    ];
    for (what, plan) in stages {
        outcome.runs += 1;
        expect_failed(run(plan), what);
        // The remote as a reader lists it: every file the pond's size, versions unbroken from 0,
        // and each version's data files and objects present.
        let listing = runtime().block_on(plain.list()).expect("list the S3 remote");
        for (file, size) in &listing.files {
            if *file != PondFile::LastCheckpoint && file_len(&file.local_path(&pond.root)) != Some(*size) {
                outcome.lost.push(format!("{what}: {file} is on the remote with {size} bytes"));
            }
        }
        for (i, v) in listing.log_versions().into_iter().enumerate() {
            if v != i as u64 {
                outcome.lost.push(format!("{what}: the remote's log skips version {i}"));
                break;
            }
            let path = PondFile::Log(v).local_path(&pond.root);
            let added = history::parse_log_entry(&std::fs::read_to_string(&path).unwrap(), &path).unwrap().added;
            for (data, _) in added {
                let objects = datafile::large_objects(&pond.root, &Arc::from(data.as_str())).unwrap();
                let needs = objects.into_iter().map(|(h, _, _)| PondFile::Object(h)).chain([PondFile::Data(data)]);
                for file in needs {
                    if !listing.files.contains_key(&file) {
                        outcome.lost.push(format!("{what}: version {v} needs {file}, which the remote lacks"));
                    }
                }
            }
        }
        assert_eq!(open_uploads(&endpoint, &bucket, &prefix), 0, "{what}: a multipart upload was left open");
    }
    outcome.runs += 1;
    let report = run(no_faults()).expect("a run without faults completes");
    assert_eq!(report.version, Some(latest_version(&pond.root)));
    let stop = AtomicBool::new(false);
    let verify = runtime().block_on(replica::verify_remote(&plain, Arc::new(Quiet), &stop)).expect("verify");
    outcome.lost.extend(verify.damage.iter().map(|d| format!("verify: {d}")));
    let target = pond.dir.path().join("restored");
    runtime().block_on(replica::restore(&plain, &target, None, Arc::new(Quiet), &stop)).expect("restore from S3");
    let ro = |root: &Path| PondFs::open(root, FsOptions { read_only: true, ..Default::default() }).unwrap();
    let (got, want) = (tree_snapshot(&ro(&target)), tree_snapshot(&ro(&pond.root)));
    if got != want {
        outcome.lost.push("the tree restored from S3 differs from the pond's".into());
    }
    assert_same_tree(&got, &want, "restored from S3");
    assert_eq!(open_uploads(&endpoint, &bucket, &prefix), 0, "no multipart upload left open");
    let tally = store.tally();
    assert!(tally.abandoned.is_empty(), "multipart uploads neither completed nor aborted: {:?}", tally.abandoned);
    for (name, puts) in &tally.puts {
        let faults = tally.injected.iter().filter(|(n, _)| n == name).count() as u64;
        assert_eq!(*puts, 1 + faults, "{name}: put once, plus once per fault (none of which left it whole)");
    }
    outcome.faults = tally.injected.len() as u64;
    outcome.report();
}

#[test]
fn a_remote_that_sends_more_than_it_listed_is_cut_off_at_the_listed_size() {
    // Every read of the remote stops at the size its listing gave: what a read takes beyond that is
    // at most one piece of the stream, however much the remote would send.
    const RUN_ON: u64 = 256 << 20;
    let pond = pond_with_history();
    let dir = pond.dir.path().join("remote");
    let plain = Remote::open(dir.to_str().expect("utf-8 path"), &[], true).expect("open the remote directory");
    let stop = AtomicBool::new(false);
    runtime().block_on(replica::replicate(&pond.root, &plain, Arc::new(Quiet), &stop, false)).expect("replicate");
    let listing = runtime().block_on(plain.list()).expect("list");
    let data = listing.files.keys().find(|f| matches!(f, PondFile::Data(_))).expect("a data file").clone();
    let store = Arc::new(FaultyStore::new(&dir, &pond.root));
    let lying = Remote::from_store(format!("lying {}", dir.display()), store.clone());
    for (file, how) in [
        (PondFile::Log(0), "replicate, comparing the first log entry"),
        (PondFile::LastCheckpoint, "replicate, reading the remote's hint"),
        (data.clone(), "restore, fetching a data file"),
        (PondFile::Log(1), "restore, fetching a log entry"),
    ] {
        {
            let mut st = lock(&store.state);
            st.run_on = BTreeMap::from([(file.name(), RUN_ON)]);
            st.served = 0;
        }
        let result = if how.starts_with("replicate") {
            runtime().block_on(replica::replicate(&pond.root, &lying, Arc::new(Quiet), &stop, false)).map(|_| ())
        } else {
            let target = pond.dir.path().join("restored");
            let restored = runtime().block_on(replica::restore(&lying, &target, None, Arc::new(Quiet), &stop));
            assert!(!target.exists(), "{how}: nothing restored");
            restored.map(|_| ())
        };
        let err = result.expect_err(&format!("{how}: a body longer than listed is refused"));
        assert!(
            matches!(&err, ReplicaError::Tampered { path, expected, .. } if *path == file.name() && expected.contains("as listed")),
            "{how}: {err}"
        );
        let served = lock(&store.state).served;
        assert!(
            served <= listing.files[&file] + (1 << 20),
            "{how}: {served} bytes taken of a {} byte file",
            listing.files[&file]
        );
    }
}
