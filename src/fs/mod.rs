//! The filesystem core: POSIX semantics over the oplog and the large-file store, with no FUSE types.
//!
//! `PondFs` owns the in-memory [`tree::Tree`] (one mutex: inodes, directories, what changed), the
//! handle table, per-inode open-file sessions ([`handles::OpenFile`], each with its own mutex, so data
//! reads and writes never hold the tree lock), and the [`commit_queue::Committer`]. Lock order:
//! a session's mutex may be held while taking the tree's, never the reverse.
//!
//! Write path: the first write or truncate of an open file starts a [`hybrid_writer::HybridWriter`]
//! from its current content; `flush` (every close), `fsync` and the last `release` finalize it (hash,
//! and for large content a durable object in `_large_files/`), which makes the content part of the node
//! and marks it for the next commit. `fsync` then waits for that commit.

pub mod attr;
pub mod commit_queue;
pub mod error;
pub mod handles;
pub mod hybrid_writer;
mod kernel_pages;
mod ops;
pub mod tree;
mod view;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::config::Threshold;
use crate::large_files::hash::Blake3Hash;
use crate::large_files::{BlobSource, LargeFileStore};
use crate::layout::WORK_DIR;
use crate::oplog::datafile::InlineReader;
use crate::oplog::schema::Content;
use crate::oplog::{Oplog, check_is_pond};
use crate::private_fs::{FileAccess, PrivateDir};
pub use attr::*;
use commit_queue::Committer;
pub use error::FsError;
use handles::{ContentReader, HandleTable, OpenFile, Session};
use hybrid_writer::{Finished, HybridWriter};
use kernel_pages::KernelPages;
pub use kernel_pages::PageCache;
use tree::Tree;
pub use view::Changes;

/// The content of an empty file.
pub fn empty_content() -> Content {
    Content::Inline {
        bytes: Some(Bytes::new()),
        loc: None,
        hash: Blake3Hash(*blake3::hash(b"").as_bytes()),
        sha256: None,
    }
}

/// Hold the pond's single-writer lock (`_pond/lock`, flock) for as long as this lives.
pub struct WriterLock {
    _lock: nix::fcntl::Flock<File>,
}

impl WriterLock {
    /// Take the lock, failing at once with [`FsError::Busy`] if another writer holds it. The writer
    /// keeps the pond private: the root loses group and other bits (a pond made by an older pond,
    /// 0755), and `_pond/` and the lock are opened without following links (see [`private_fs`]).
    ///
    /// [`private_fs`]: crate::private_fs
    pub fn acquire(root: &Path) -> Result<WriterLock, FsError> {
        match crate::private_fs::make_root_private(root) {
            Ok(Some(was)) => tracing::info!(
                "{} was mode {was:o}: made it 0700 (a pond holds every file's bytes, names and owners)",
                root.display()
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!("could not make {} private (0700): {e}", root.display()),
        }
        let work = PrivateDir::ensure(root, WORK_DIR)?;
        let file = work.open_file(crate::layout::WORK_LOCK, FileAccess::Lock)?;
        let path = work.path().join(crate::layout::WORK_LOCK);
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(WriterLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(FsError::Busy(path.display().to_string())),
            Err((_, e)) => Err(FsError::Io(format!("{}: {e}", path.display()))),
        }
    }
}

/// The runtime the Delta library runs on. Its blocking pool (local file I/O goes through it) keeps
/// its threads instead of letting idle ones go after 10 s, and one is started here: tokio panics
/// when it must start a blocking thread and has none, but queues the work for an existing one
/// when the OS refuses a new thread for now (EAGAIN: a thread or pid limit). A committer that met
/// a thread limit after a quiet spell would otherwise fail every commit until the limit lifts.
fn runtime() -> Result<tokio::runtime::Runtime, FsError> {
    // tokio panics, rather than failing, when the OS refuses its worker thread (at build) or a
    // blocking thread (at the first spawn_blocking): both are caught here.
    let started = std::panic::catch_unwind(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(BLOCKING_THREADS)
            .thread_keep_alive(std::time::Duration::from_secs(365 * 24 * 3600))
            .thread_name("pond-io")
            .enable_all()
            .build()?;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| start_blocking_threads(&rt))) {
            Ok(true) => Ok(rt),
            _ => Err(std::io::Error::other("not every blocking thread started")),
        }
    });
    match started {
        Ok(Ok(rt)) => Ok(rt),
        _ => Err(FsError::Io("cannot start a thread for the pond's file I/O (a thread or process limit?)".into())),
    }
}

/// The most blocking threads the runtime keeps (they stay once started, see [`runtime`]).
const BLOCKING_THREADS: usize = 16;

/// How long starting the blocking threads may take before a thread limit is assumed (generous: a
/// loaded machine may be slow to run a new thread, and only a refused open waits it out).
const BLOCKING_THREADS_START: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts all [`BLOCKING_THREADS`] of `rt` now; false when they did not all start in
/// [`BLOCKING_THREADS_START`]. A pool that could start only some threads deadlocks later rather
/// than failing: tokio queues a blocking task it has no thread for behind the running ones, and the
/// Delta library runs blocking tasks that wait for other blocking tasks (an open under a thread
/// limit hung so). Each task waits until all have started, so each runs on a thread of its own.
fn start_blocking_threads(rt: &tokio::runtime::Runtime) -> bool {
    use std::sync::Condvar;
    let started = Arc::new((Mutex::new(0usize), Condvar::new()));
    let deadline = std::time::Instant::now() + BLOCKING_THREADS_START;
    let wait_all = move |(count, cv): &(Mutex<usize>, Condvar), arrive: bool| {
        let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
        // Only arrivals in time count: once the others gave up, one thread may run every task
        // left in the queue.
        if arrive && std::time::Instant::now() < deadline {
            *n += 1;
            cv.notify_all();
        }
        while *n < BLOCKING_THREADS {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            n = cv.wait_timeout(n, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        *n == BLOCKING_THREADS
    };
    for _ in 0..BLOCKING_THREADS {
        let started = started.clone();
        drop(rt.spawn_blocking(move || wait_all(&started, true)));
    }
    wait_all(&started, false)
}

pub struct PondFs {
    root: PathBuf,
    tree: Arc<Mutex<Tree>>,
    handles: HandleTable,
    store: LargeFileStore,
    inline: Arc<InlineReader>,
    threshold: Threshold,
    committer: Option<Committer>,
    /// The Delta version served (it moves only in a view, see [`PondFs::advance_to`]).
    version: std::sync::atomic::AtomicU64,
    /// Bumped each time a view moves: an open file remembers the one it was opened in.
    view: std::sync::atomic::AtomicU64,
    /// For a view that moves: what the kernel's page cache holds (see [`kernel_pages`]).
    pages: Option<Mutex<KernelPages>>,
    /// Held from open until `shutdown` has committed everything (umount waits on it).
    lock: Mutex<Option<WriterLock>>,
    shut_down: std::sync::atomic::AtomicBool,
    /// Count the kernel's references to inodes (set when served through FUSE).
    kernel_lookups: std::sync::atomic::AtomicBool,
    _rt: Arc<tokio::runtime::Runtime>,
}

impl PondFs {
    /// Open the pond at `root`. Read-write unless `opts` say otherwise; read-write takes the
    /// single-writer lock and fails at once with [`FsError::Busy`] if another writer holds it.
    pub fn open(root: &Path, opts: FsOptions) -> Result<PondFs, FsError> {
        Self::open_with(root, opts, None)
    }

    /// A read-only *view* of a replica: the table mirrored at `root` (log and data files), opened
    /// at `version`, its large files read from `source`. The view moves to later versions with
    /// [`PondFs::advance_to`]; each open file keeps reading the version it was opened at.
    pub fn open_view(root: &Path, version: u64, source: Arc<dyn BlobSource>) -> Result<PondFs, FsError> {
        let opts = FsOptions { read_only: true, version: Some(version), threshold: None };
        let mut fs = Self::open_with(root, opts, Some(source))?;
        fs.pages = Some(Mutex::default());
        Ok(fs)
    }

    fn open_with(root: &Path, opts: FsOptions, source: Option<Arc<dyn BlobSource>>) -> Result<PondFs, FsError> {
        check_is_pond(root)?;
        let read_only = opts.read_only || opts.version.is_some();
        let lock = if read_only { None } else { Some(WriterLock::acquire(root)?) };
        let rt = Arc::new(runtime()?);
        let mut oplog = rt.block_on(Oplog::open(root, opts.version))?;
        let threshold = opts.threshold.map(Threshold).unwrap_or_else(|| oplog.threshold());
        let version = oplog.version();
        let loaded = oplog.load()?;
        let tree = Arc::new(Mutex::new(Tree::from_rows(loaded)?));
        let store = match source {
            Some(source) => LargeFileStore::with_source(root, source),
            None => LargeFileStore::new(root),
        };
        let inline = Arc::new(InlineReader::new(root));
        let committer = if read_only {
            None
        } else {
            store.create_dirs()?;
            store.clear_tmp()?;
            Some(Committer::start(oplog, tree.clone(), inline.clone(), store.clone(), rt.clone())?)
        };
        Ok(PondFs {
            root: root.to_path_buf(),
            tree,
            handles: HandleTable::default(),
            store,
            inline,
            threshold,
            committer,
            version: version.into(),
            view: 0.into(),
            pages: None,
            lock: Mutex::new(lock),
            shut_down: std::sync::atomic::AtomicBool::new(false),
            kernel_lookups: std::sync::atomic::AtomicBool::new(false),
            _rt: rt,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The Delta version this filesystem was opened at.
    pub fn opened_version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn threshold(&self) -> Threshold {
        self.threshold
    }

    pub fn is_read_only(&self) -> bool {
        self.committer.is_none()
    }

    /// Commit everything released (and every metadata change), then stop committing. Idempotent.
    /// Releases the single-writer lock once done, and refuses changes from then on.
    pub fn shutdown(&self) -> Result<(), FsError> {
        self.shut_down.store(true, std::sync::atomic::Ordering::SeqCst);
        let result = match &self.committer {
            Some(c) => c.shutdown(),
            None => Ok(()),
        };
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
        result
    }

    /// Wait until every change made so far is committed.
    pub fn sync_all(&self) -> Result<(), FsError> {
        let generation = self.lock_tree().generation;
        match &self.committer {
            Some(c) => c.wait_for(generation),
            None => Ok(()),
        }
    }

    /// Serve the kernel's FUSE contract for inode lifetimes: every entry given out (`lookup`,
    /// `create`, `mkdir`, `mknod`, `symlink`, `link`, each `readdirplus` entry but `.` and `..`)
    /// counts as a reference until [`PondFs::forget`] drops it, and an unlinked inode stays — open,
    /// readable, its attributes answered — while referenced. Without this, an open that looked the
    /// name up before a rename replaced it (or an unlink removed it) reached a forgotten inode and
    /// failed with ENOENT, where a local filesystem opens the old file. Off for direct library use,
    /// where nothing would ever forget.
    pub fn count_kernel_lookups(&self) {
        self.kernel_lookups.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The kernel dropped `n` references to `ino` (FUSE forget); an unlinked inode no longer
    /// referenced or open is forgotten.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut t = self.lock_tree();
        if let Ok(node) = t.node_mut(ino) {
            node.lookups = node.lookups.saturating_sub(n);
        }
        t.forget_if_unreferenced(ino);
    }

    /// Count one more kernel reference to `ino` (when counting, see [`PondFs::count_kernel_lookups`]).
    fn remember(&self, t: &mut Tree, ino: u64) {
        if self.kernel_lookups.load(std::sync::atomic::Ordering::Relaxed)
            && let Ok(node) = t.node_mut(ino)
        {
            node.lookups += 1;
        }
    }

    /// `attr` as the kernel may cache it: volatile while files of its inode are open at a version
    /// the view has moved past (see [`kernel_pages`]).
    fn for_kernel(&self, mut attr: Attr) -> Attr {
        if let Some(pages) = &self.pages {
            attr.volatile = pages.lock().unwrap_or_else(|p| p.into_inner()).superseded(attr.ino);
        }
        attr
    }

    fn lock_tree(&self) -> MutexGuard<'_, Tree> {
        self.tree.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writable(&self) -> Result<&Committer, FsError> {
        if self.shut_down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(FsError::ReadOnly);
        }
        let committer = self.committer.as_ref().ok_or(FsError::ReadOnly)?;
        // A change accepted now would never be committed: refuse it, loudly.
        if committer.is_stopped() {
            return Err(FsError::Io(
                "the committer has stopped, so changes cannot be saved; unmount and mount again".into(),
            ));
        }
        Ok(committer)
    }

    /// Call `done` once every change made so far is committed (at once when read-only), without
    /// holding this thread meanwhile (see [`Committer::when_committed`]).
    fn when_synced(&self, done: commit_queue::Done) {
        let generation = self.lock_tree().generation;
        match &self.committer {
            Some(c) => c.when_committed(generation, done),
            None => done(Ok(())),
        }
    }

    fn changed(&self) {
        if let Some(c) = &self.committer {
            c.notify();
        }
    }

    /// A reader of `ino`'s committed content. Its length must be the size the node records: the
    /// kernel reads up to that size, so a damaged size would show a cut or zero-padded file.
    fn content_reader(&self, ino: u64) -> Result<ContentReader, FsError> {
        let (content, size) = {
            let t = self.lock_tree();
            let data = &t.node(ino)?.data;
            (data.content.clone().ok_or(FsError::IsDir)?, data.size)
        };
        self.reader_of(ino, content, size)
    }

    /// A reader of `content` (`size` bytes), `ino`'s content in some version.
    fn reader_of(&self, ino: u64, content: Content, size: u64) -> Result<ContentReader, FsError> {
        let (reader, len) = match content {
            Content::Inline { bytes: Some(b), .. } => (ContentReader::Inline(b.clone()), b.len() as u64),
            Content::Inline { loc: Some(loc), .. } => {
                let b = self.inline.read(&loc)?;
                (ContentReader::Inline(b.clone()), b.len() as u64)
            }
            Content::Inline { .. } => {
                return Err(FsError::Corrupt(format!("inode {ino}: inline content has neither bytes nor a location")));
            }
            Content::Large { hash, .. } => {
                let r = self.store.open(&hash)?;
                // Committed content: new versions may point at its chunks (nothing is written
                // read-only: no need to learn them).
                if self.committer.is_some() {
                    self.store.remember(&r);
                }
                let len = r.size();
                (ContentReader::Large(Arc::new(r)), len)
            }
        };
        if len != size {
            return Err(FsError::Corrupt(format!("inode {ino}: {len} bytes of content, but its size is {size}")));
        }
        Ok(reader)
    }

    /// Make sure the session has a writer, starting from the committed content.
    fn ensure_writer<'a>(&self, ino: u64, s: &'a mut Session) -> Result<&'a mut HybridWriter, FsError> {
        if s.writer.is_none() {
            let reader = match s.reader.take() {
                Some(r) => r,
                None => self.content_reader(ino)?,
            };
            let w = match &reader {
                ContentReader::Inline(b) => HybridWriter::from_bytes(self.threshold, self.store.clone(), b)?,
                ContentReader::Large(r) => HybridWriter::from_large(self.threshold, self.store.clone(), r.clone()),
            };
            s.writer = Some(w);
        }
        s.writer.as_mut().ok_or(FsError::Io("writer vanished".into()))
    }

    /// Record a write session's new size and times in the tree.
    fn set_live(&self, ino: u64, size: u64) {
        let now = crate::oplog::now_ns();
        if let Ok(node) = self.lock_tree().node_mut(ino) {
            node.live = Some(tree::Live { size, mtime_ns: now, ctime_ns: now });
        }
    }

    /// Turn a dirty session's content into the node's content (durable object first for large
    /// content) and mark the node for commit.
    fn finalize(&self, ino: u64, s: &mut Session) -> Result<(), FsError> {
        if !s.dirty {
            return Ok(());
        }
        let unlinked = self.lock_tree().node(ino).map(|n| n.data.nlink == 0).unwrap_or(true);
        let Some(w) = s.writer.as_mut() else {
            s.dirty = false;
            return Ok(());
        };
        if unlinked {
            s.dirty = false;
            return Ok(());
        }
        let size = w.len();
        let finished = match w.finish() {
            Ok(f) => f,
            Err(e) if w.is_lost() => {
                // An earlier write lost the unsaved changes (it ran out of space in the middle of
                // the object): the error is reported here, at close, and the file goes back to
                // its committed content for every handle, never a mix of the two.
                s.writer = None;
                s.dirty = false;
                if let Ok(node) = self.lock_tree().node_mut(ino) {
                    node.live = None;
                }
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        let content = match finished {
            Finished::Inline { bytes, hash } => {
                Content::Inline { bytes: Some(Bytes::from(bytes)), loc: None, hash, sha256: None }
            }
            Finished::Large(put) => Content::Large { hash: put.hash, sha256: None },
        };
        {
            let mut t = self.lock_tree();
            let node = t.node_mut(ino)?;
            node.data.content = Some(content);
            node.data.size = size;
            if let Some(l) = node.live {
                node.data.mtime_ns = l.mtime_ns;
                node.data.ctime_ns = l.ctime_ns;
            }
            t.touch_content(ino);
        }
        s.dirty = false;
        self.changed();
        Ok(())
    }

    /// Attach a new handle to `ino`'s open-file state (creating it), returning the shared state.
    fn attach(&self, t: &mut Tree, ino: u64) -> Result<Arc<OpenFile>, FsError> {
        let node = t.node_mut(ino)?;
        let file = node.open.get_or_insert_with(|| Arc::new(OpenFile::default())).clone();
        node.open_count += 1;
        Ok(file)
    }

    /// Drop a handle's hold on `ino` (through `file`); the last one drops the open-file state. A
    /// handle opened before a view moved holds an open-file state the new tree does not know: it
    /// leaves the new tree's count alone.
    fn detach(&self, ino: u64, file: &Arc<OpenFile>) {
        let mut t = self.lock_tree();
        if let Ok(node) = t.node_mut(ino)
            && node.open.as_ref().is_some_and(|open| Arc::ptr_eq(open, file))
        {
            node.open_count = node.open_count.saturating_sub(1);
            if node.open_count == 0 {
                node.open = None;
                node.live = None;
            }
        }
        t.forget_if_unreferenced(ino);
    }

    /// Apply `f` to a session of `ino` that exists for the duration of the call (for truncate
    /// without an open handle), then finalize it.
    fn with_transient_session<R>(
        &self,
        ino: u64,
        f: impl FnOnce(&Self, &mut Session) -> Result<R, FsError>,
    ) -> Result<R, FsError> {
        let file = {
            let mut t = self.lock_tree();
            self.attach(&mut t, ino)?
        };
        let result = {
            let mut s = file.lock();
            let r = f(self, &mut s);
            let fin = self.finalize(ino, &mut s);
            r.and_then(|r| fin.map(|_| r))
        };
        self.detach(ino, &file);
        result
    }
}

/// What a live mount holds besides the log, for a prune its committer runs (see
/// [`crate::audit::prune::MountState`]): inline content the tree reads lazily, and the objects and
/// packs that open files and uncommitted versions use.
struct MountedPond {
    tree: Arc<Mutex<Tree>>,
    store: LargeFileStore,
}

impl crate::audit::prune::MountState for MountedPond {
    fn relocate(&self, root: &Path, file: &str) -> Result<(), crate::oplog::OplogError> {
        let rows = crate::oplog::datafile::read_rows(root, &Arc::from(file), false)?;
        self.tree.lock().unwrap_or_else(|p| p.into_inner()).relocate_inline(&rows);
        Ok(())
    }

    fn in_use(
        &self,
        candidates: &std::collections::BTreeSet<crate::layout::PondFile>,
    ) -> std::collections::BTreeSet<crate::layout::PondFile> {
        use crate::layout::PondFile;
        let (objects, open) = {
            let t = self.tree.lock().unwrap_or_else(|p| p.into_inner());
            let objects: Vec<Blake3Hash> = t
                .nodes
                .values()
                .filter_map(|n| match &n.data.content {
                    Some(Content::Large { hash, .. }) => Some(*hash),
                    _ => None,
                })
                .collect();
            let open: Vec<Arc<OpenFile>> = t.nodes.values().filter_map(|n| n.open.clone()).collect();
            (objects, open)
        };
        let mut used = std::collections::BTreeSet::new();
        // Current content (committed or not): an object about to go is in use, and so are its packs.
        for hash in objects {
            if candidates.contains(&PondFile::Object(hash)) {
                used.insert(PondFile::Object(hash));
                if let Ok(r) = self.store.open(&hash) {
                    used.extend(r.data_files());
                }
            }
        }
        // Open files: what their readers read and their writers build on (a session's lock is
        // taken with the tree's released: the lock order of `PondFs`).
        for file in open {
            let s = file.lock();
            if let Some(ContentReader::Large(r)) = &s.reader {
                used.insert(PondFile::Object(r.hash()));
                used.extend(r.data_files());
            }
            if let Some(w) = &s.writer {
                used.extend(w.files_in_use());
            }
        }
        used.retain(|f| candidates.contains(f));
        used
    }
}

impl PondFs {
    /// Prunes the pond this filesystem writes, in the committer between two commits (so nothing a
    /// commit in flight needs can go), keeping what open files and uncommitted versions use.
    pub fn prune(
        &self,
        rules: crate::audit::prune::Rules,
        dry_run: bool,
    ) -> Result<crate::audit::prune::PruneReport, crate::audit::prune::PruneError> {
        let committer = self.writable()?;
        let mount = MountedPond { tree: self.tree.clone(), store: self.store.clone() };
        let store = self.store.clone();
        committer.run_exclusive(move |oplog, rt| {
            crate::audit::prune::prune_with(oplog, rt, &rules, dry_run, &store, &mount)
        })?
    }
}
