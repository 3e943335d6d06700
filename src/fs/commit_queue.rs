//! The committer: one thread that turns changes in the tree into Delta versions.
//!
//! Changes mark keys dirty in the [`Tree`] and wake the committer; it waits a short batching window
//! (so a burst of releases shares one version), takes a consistent cut of every dirty key, loads any
//! inline bytes the rows need, makes the large objects streamed since the last commit durable
//! (`LargeFileStore::make_durable`), and calls `Oplog::commit_batch`. `fsync` asks for an immediate commit and
//! waits until the generation it saw is committed, or fails with the commit's error. A failed commit
//! puts its keys back and is retried with back-off. `shutdown` drains everything and joins the thread.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::error::FsError;
use super::tree::{Cut, Tree};
use crate::large_files::LargeFileStore;
use crate::oplog::datafile::InlineReader;
use crate::oplog::schema::{Content, OplogRow};
use crate::oplog::{CommitSummary, Oplog};

/// How long the committer waits after the first change before cutting, to group releases.
const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// Run compaction every this many commits.
const MAINTAIN_EVERY: u64 = 8;
/// At shutdown, give up on a commit that keeps failing after this many attempts.
const SHUTDOWN_ATTEMPTS: u32 = 5;

/// Work that needs the pond's writer to itself (prune), run by the committer between two commits.
pub type Job = Box<dyn FnOnce(&mut Oplog, &tokio::runtime::Runtime) + Send>;

#[derive(Default)]
struct State {
    jobs: std::collections::VecDeque<Job>,
    committed: u64,
    /// Commit attempts started so far.
    attempts: u64,
    /// The latest failure: the generation it covered, the attempt that failed, and its error.
    failed: Option<Failure>,
    wake: bool,
    urgent: bool,
    stop: bool,
    stopped: bool,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait up to `wait`, or less if an fsync (urgent) or shutdown comes meanwhile.
    fn wait_unless_urgent<'a>(&'a self, mut st: MutexGuard<'a, State>, wait: Duration) -> MutexGuard<'a, State> {
        let deadline = std::time::Instant::now() + wait;
        while !st.urgent && !st.stop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            st = self.cv.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        st
    }
}

struct Failure {
    generation: u64,
    attempt: u64,
    error: FsError,
}

pub struct Committer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<Result<(), FsError>>>>,
}

fn lock_tree(tree: &Mutex<Tree>) -> MutexGuard<'_, Tree> {
    tree.lock().unwrap_or_else(|p| p.into_inner())
}

fn clone_err(e: &FsError) -> FsError {
    match e {
        FsError::NoSpace => FsError::NoSpace,
        other => FsError::Io(other.to_string()),
    }
}

impl Committer {
    pub fn start(
        oplog: Oplog,
        tree: Arc<Mutex<Tree>>,
        inline: Arc<InlineReader>,
        store: LargeFileStore,
        rt: Arc<tokio::runtime::Runtime>,
    ) -> Committer {
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), cv: Condvar::new() });
        let worker_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("pond-committer".into())
            .spawn(move || run(oplog, tree, inline, store, rt, worker_shared))
            .ok();
        Committer { shared, thread: Mutex::new(thread) }
    }

    /// Something changed: commit it soon.
    pub fn notify(&self) {
        let mut st = self.shared.lock();
        if !st.wake {
            st.wake = true;
            self.shared.cv.notify_all();
        }
    }

    /// Commit now and wait until everything up to `generation` is committed, or fail with the
    /// error of an attempt made after this call (an older failure may be out of date: the disk
    /// that was full may have room again).
    pub fn wait_for(&self, generation: u64) -> Result<(), FsError> {
        let mut st = self.shared.lock();
        st.wake = true;
        st.urgent = true;
        let attempts_before = st.attempts;
        self.shared.cv.notify_all();
        loop {
            if st.committed >= generation {
                return Ok(());
            }
            if let Some(f) = &st.failed
                && f.generation >= generation
                && f.attempt > attempts_before
            {
                return Err(clone_err(&f.error));
            }
            if st.stopped {
                return Err(FsError::Io("the committer has stopped".into()));
            }
            st = self.shared.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Runs `job` in the committer thread, after committing what is pending and before the next
    /// commit, and waits for its result. Fails when the committer has stopped.
    pub fn run_exclusive<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Oplog, &tokio::runtime::Runtime) -> R + Send + 'static,
    ) -> Result<R, FsError> {
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let mut st = self.shared.lock();
            if st.stopped || st.stop {
                return Err(FsError::Io("the committer has stopped".into()));
            }
            st.jobs.push_back(Box::new(move |oplog, rt| {
                let _ = tx.send(job(oplog, rt));
            }));
            st.wake = true;
            st.urgent = true;
            self.shared.cv.notify_all();
        }
        // The job is dropped unrun if the thread ends first: the channel then says so.
        rx.recv().map_err(|_| FsError::Io("the committer stopped before running the job".into()))
    }

    /// Commit everything and stop the thread. Idempotent.
    pub fn shutdown(&self) -> Result<(), FsError> {
        {
            let mut st = self.shared.lock();
            st.stop = true;
            st.wake = true;
            self.shared.cv.notify_all();
        }
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        match handle {
            Some(h) => h.join().map_err(|_| FsError::Io("the committer panicked".into()))?,
            None => Ok(()),
        }
    }
}

fn run(
    mut oplog: Oplog,
    tree: Arc<Mutex<Tree>>,
    inline: Arc<InlineReader>,
    store: LargeFileStore,
    rt: Arc<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
) -> Result<(), FsError> {
    // However the thread ends (a panic included), waiters learn it has stopped.
    struct MarkStopped(Arc<Shared>);
    impl Drop for MarkStopped {
        fn drop(&mut self) {
            let mut st = self.0.lock();
            st.stopped = true;
            self.0.cv.notify_all();
        }
    }
    let _stopped = MarkStopped(shared.clone());
    let mut commits = 0u64;
    let mut failures = 0u32;
    loop {
        let stop = {
            let mut st = shared.lock();
            while !st.wake && !st.stop {
                st = shared.cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            // Gather releases for the batching window, but cut at once when an fsync (urgent) or
            // shutdown arrives meanwhile.
            st = shared.wait_unless_urgent(st, BATCH_WINDOW);
            st.wake = false;
            st.urgent = false;
            st.stop
        };
        let cut = lock_tree(&tree).take_cut();
        if cut.rows.is_empty() {
            let jobs = {
                let mut st = shared.lock();
                st.committed = st.committed.max(cut.generation);
                shared.cv.notify_all();
                std::mem::take(&mut st.jobs)
            };
            // Exclusive work runs once everything released so far is committed.
            for job in jobs {
                job(&mut oplog, &rt);
            }
            if stop {
                return Ok(());
            }
            continue;
        }
        let generation = cut.generation;
        let attempt = {
            let mut st = shared.lock();
            st.attempts += 1;
            st.attempts
        };
        match commit_cut(&mut oplog, &inline, &store, &rt, cut) {
            Ok((file, rows)) => {
                failures = 0;
                lock_tree(&tree).release_committed_bytes(&file, &rows);
                let mut st = shared.lock();
                st.committed = st.committed.max(generation);
                shared.cv.notify_all();
                let jobs = std::mem::take(&mut st.jobs);
                drop(st);
                // Exclusive work runs once everything released so far is committed.
                for job in jobs {
                    job(&mut oplog, &rt);
                }
                commits += 1;
                if commits.is_multiple_of(MAINTAIN_EVERY)
                    && let Err(e) = rt.block_on(oplog.maintain())
                {
                    tracing::warn!("compaction failed (the pond stays correct, only slower): {e}");
                }
            }
            Err((e, rows)) => {
                failures += 1;
                tracing::error!("commit failed (attempt {failures}), will retry: {e}");
                lock_tree(&tree).requeue(&rows);
                let mut st = shared.lock();
                st.failed = Some(Failure { generation, attempt, error: e });
                st.wake = true;
                shared.cv.notify_all();
                if stop && failures >= SHUTDOWN_ATTEMPTS {
                    return Err(FsError::Io(format!(
                        "giving up after {failures} failed commits; uncommitted changes are lost"
                    )));
                }
                // Back off, but an fsync (urgent) cuts the wait short: it wants a fresh attempt.
                drop(shared.wait_unless_urgent(st, Duration::from_millis(100 * u64::from(failures.min(10)))));
            }
        }
    }
}

type CommitFailure = (FsError, Vec<OplogRow>);

fn commit_cut(
    oplog: &mut Oplog,
    inline: &InlineReader,
    store: &LargeFileStore,
    rt: &tokio::runtime::Runtime,
    cut: Cut,
) -> Result<(Arc<str>, Vec<OplogRow>), CommitFailure> {
    let Cut { mut rows, files_changed, bytes, .. } = cut;
    // Objects streamed since the last commit become durable before any row can reference them.
    if let Err(e) = store.make_durable() {
        return Err((FsError::from(e), rows));
    }
    // Rows for inline files whose attributes changed need their bytes, read back from the old row.
    for row in rows.iter_mut() {
        if let OplogRow::Node { data: Some(d), .. } = row
            && let Some(Content::Inline { bytes: b @ None, loc: Some(loc), .. }) = &mut d.content
        {
            match inline.read(loc) {
                Ok(v) => *b = Some(v),
                Err(e) => return Err((FsError::from_commit(&e), rows)),
            }
        }
    }
    let summary = CommitSummary { operation: "write", files_changed, bytes };
    match rt.block_on(oplog.commit_batch(rows.clone(), summary)) {
        Ok(c) => Ok((c.file, rows)),
        Err(e) => Err((FsError::from_commit(&e), rows)),
    }
}
