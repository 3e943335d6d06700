//! The committer: one thread that turns changes in the tree into Delta versions.
//!
//! Changes mark keys dirty in the [`Tree`] and wake the committer; it waits a short batching window
//! (so a burst of releases shares one version), takes a consistent cut of every dirty key, loads any
//! inline bytes the rows need, makes the large objects streamed since the last commit durable
//! (`LargeFileStore::make_durable`), and calls `Oplog::commit_batch`. `fsync` asks for an immediate commit and
//! waits until the generation it saw is committed, or fails with the commit's error. A failed commit
//! puts its keys back and is retried with back-off. `shutdown` drains everything and joins the thread.
//!
//! A waiter need not hold a thread: [`Committer::when_committed`] takes a callback that the
//! committer calls once the generation is committed (or its commit failed, or the committer
//! stopped), so a thousand concurrent fsyncs are a thousand entries in a list, not a thousand
//! blocked threads. A commit attempt that panics (tokio panics when it cannot start a thread) is a
//! failed attempt like any other: retried, never a dead committer behind a mount that keeps
//! accepting writes.

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
/// Compaction falls due every this many commits ...
const MAINTAIN_EVERY: u64 = 8;
/// ... and runs once no change has come for this long (compaction holds the committer, and a
/// writer that fsyncs often should not wait behind it) ...
const IDLE_BEFORE_MAINTENANCE: Duration = Duration::from_millis(50);
/// ... or, under changes that never pause, after this many more commits (small files must not
/// pile up without bound).
const MAINTENANCE_DEFERRED_AT_MOST: u64 = 8 * MAINTAIN_EVERY;
/// At shutdown, give up on a commit that keeps failing after this many attempts.
const SHUTDOWN_ATTEMPTS: u32 = 5;

/// Work that needs the pond's writer to itself (prune), run by the committer between two commits.
pub type Job = Box<dyn FnOnce(&mut Oplog, &tokio::runtime::Runtime) + Send>;

/// Called once with the outcome of the commit it waits for.
pub type Done = Box<dyn FnOnce(Result<(), FsError>) + Send>;

/// A callback waiting for a generation to be committed.
struct Waiter {
    generation: u64,
    /// Attempts started before it came: only a later attempt's failure is its answer.
    attempts_before: u64,
    done: Done,
}

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
    waiters: Vec<Waiter>,
}

impl State {
    /// The answer for a wait for `generation` that began after `attempts_before` attempts, once
    /// there is one.
    fn outcome(&self, generation: u64, attempts_before: u64) -> Option<Result<(), FsError>> {
        if self.committed >= generation {
            return Some(Ok(()));
        }
        if let Some(f) = &self.failed
            && f.generation >= generation
            && f.attempt > attempts_before
        {
            return Some(Err(clone_err(&f.error)));
        }
        if self.stopped {
            return Some(Err(FsError::Io("the committer has stopped".into())));
        }
        None
    }
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wake the blocked and call the callbacks whose answer is known (outside the lock: a
    /// callback replies to the kernel).
    fn settle(&self, mut st: MutexGuard<'_, State>) {
        self.cv.notify_all();
        let mut ready = Vec::new();
        let mut i = 0;
        while i < st.waiters.len() {
            let w = &st.waiters[i];
            match st.outcome(w.generation, w.attempts_before) {
                Some(result) => ready.push((st.waiters.swap_remove(i).done, result)),
                None => i += 1,
            }
        }
        drop(st);
        for (done, result) in ready {
            done(result);
        }
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
    /// Start the committer thread; failing to start it fails here, never later as an fsync that
    /// waits forever.
    pub fn start(
        oplog: Oplog,
        tree: Arc<Mutex<Tree>>,
        inline: Arc<InlineReader>,
        store: LargeFileStore,
        rt: Arc<tokio::runtime::Runtime>,
    ) -> Result<Committer, FsError> {
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), cv: Condvar::new() });
        let worker_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("pond-committer".into())
            .spawn(move || run(oplog, tree, inline, store, rt, worker_shared))
            .map_err(|e| FsError::Io(format!("cannot start the committer thread: {e}")))?;
        Ok(Committer { shared, thread: Mutex::new(Some(thread)) })
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
        let (tx, rx) = std::sync::mpsc::channel();
        self.when_committed(
            generation,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        rx.recv().unwrap_or_else(|_| Err(FsError::Io("the committer has stopped".into())))
    }

    /// Commit now, and call `done` once everything up to `generation` is committed, or with the
    /// error of an attempt made after this call, or when the committer has stopped. `done` runs
    /// here when the answer is known already, else on the committer's thread: it must not block.
    pub fn when_committed(&self, generation: u64, done: Done) {
        let mut st = self.shared.lock();
        st.wake = true;
        st.urgent = true;
        let attempts_before = st.attempts;
        if let Some(result) = st.outcome(generation, attempts_before) {
            drop(st);
            done(result);
            return;
        }
        st.waiters.push(Waiter { generation, attempts_before, done });
        self.shared.cv.notify_all();
    }

    /// True once the committer thread has ended (after shutdown, or a panic outside a commit):
    /// nothing changed from then on would ever be committed.
    pub fn is_stopped(&self) -> bool {
        self.shared.lock().stopped
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
            self.0.settle(st);
        }
    }
    let _stopped = MarkStopped(shared.clone());
    let mut commits = 0u64;
    let mut failures = 0u32;
    // The commit count at which compaction fell due, if it has and has not run yet.
    let mut maintenance_due: Option<u64> = None;
    let maintain = |oplog: &mut Oplog| {
        let maintained = unwind_to_error(|| rt.block_on(oplog.maintain())).and_then(|r| r.map_err(FsError::from));
        if let Err(e) = maintained {
            tracing::warn!("compaction failed (the pond stays correct, only slower): {e}");
        }
    };
    loop {
        let stop = {
            let mut st = shared.lock();
            while !st.wake && !st.stop {
                if maintenance_due.is_some() {
                    let (guard, idle) =
                        shared.cv.wait_timeout(st, IDLE_BEFORE_MAINTENANCE).unwrap_or_else(|p| p.into_inner());
                    st = guard;
                    if idle.timed_out() && !st.wake && !st.stop {
                        drop(st);
                        maintain(&mut oplog);
                        maintenance_due = None;
                        st = shared.lock();
                    }
                } else {
                    st = shared.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                }
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
                let jobs = std::mem::take(&mut st.jobs);
                shared.settle(st);
                jobs
            };
            run_jobs(jobs, &mut oplog, &rt);
            if stop {
                // A tier that filled up over short sessions (each too brief to fall due) is
                // merged now; a no-op when no tier is full.
                maintain(&mut oplog);
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
                let jobs = std::mem::take(&mut st.jobs);
                shared.settle(st);
                run_jobs(jobs, &mut oplog, &rt);
                commits += 1;
                if commits.is_multiple_of(MAINTAIN_EVERY) && maintenance_due.is_none() {
                    maintenance_due = Some(commits);
                }
                if maintenance_due.is_some_and(|due| commits >= due + MAINTENANCE_DEFERRED_AT_MOST) {
                    maintain(&mut oplog);
                    maintenance_due = None;
                }
            }
            Err((e, rows)) => {
                failures += 1;
                tracing::error!("commit failed (attempt {failures}), will retry: {e}");
                lock_tree(&tree).requeue(&rows);
                let mut st = shared.lock();
                st.failed = Some(Failure { generation, attempt, error: e });
                st.wake = true;
                shared.settle(st);
                let st = shared.lock();
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

/// One commit attempt; a panic in it (tokio's when it cannot start a thread, a library's on
/// damaged bytes) is a failed attempt whose rows go back in the queue. Should the panic strike
/// after the log entry landed, the retry commits the same rows again: the same keys at the same
/// seq, which every reader takes as one.
fn commit_cut(
    oplog: &mut Oplog,
    inline: &InlineReader,
    store: &LargeFileStore,
    rt: &tokio::runtime::Runtime,
    cut: Cut,
) -> Result<(Arc<str>, Vec<OplogRow>), CommitFailure> {
    let Cut { mut rows, files_changed, bytes, .. } = cut;
    let summary = CommitSummary { operation: "write", files_changed, bytes };
    match unwind_to_error(|| try_commit(oplog, inline, store, rt, &mut rows, summary)) {
        Ok(Ok(file)) => Ok((file, rows)),
        Ok(Err(e)) | Err(e) => Err((e, rows)),
    }
}

/// Exclusive work runs once everything released so far is committed. A job that panics (it may
/// meet the same thread limit a commit does) is logged; the committer goes on.
fn run_jobs(jobs: std::collections::VecDeque<Job>, oplog: &mut Oplog, rt: &tokio::runtime::Runtime) {
    for job in jobs {
        if let Err(e) = unwind_to_error(|| job(oplog, rt)) {
            tracing::error!("exclusive work on the pond failed: {e}");
        }
    }
}

/// Run `f`; a panic becomes an error naming it (the panic hook has printed it already).
fn unwind_to_error<T>(f: impl FnOnce() -> T) -> Result<T, FsError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let what = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        FsError::Io(format!("interrupted by a panic: {what}"))
    })
}

fn try_commit(
    oplog: &mut Oplog,
    inline: &InlineReader,
    store: &LargeFileStore,
    rt: &tokio::runtime::Runtime,
    rows: &mut [OplogRow],
    summary: CommitSummary,
) -> Result<Arc<str>, FsError> {
    // Objects streamed since the last commit become durable before any row can reference them.
    store.make_durable()?;
    // Rows for inline files whose attributes changed need their bytes, read back from the old row.
    for row in rows.iter_mut() {
        if let OplogRow::Node { data: Some(d), .. } = row
            && let Some(Content::Inline { bytes: b @ None, loc: Some(loc), .. }) = &mut d.content
        {
            *b = Some(inline.read(loc).map_err(|e| FsError::from_commit(&e))?);
        }
    }
    match rt.block_on(oplog.commit_batch(rows.to_vec(), summary)) {
        Ok(c) => Ok(c.file),
        Err(e) => Err(FsError::from_commit(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_commit_attempt_is_a_failed_attempt() {
        let e = unwind_to_error(|| -> u8 { panic!("OS can't spawn worker thread: Resource temporarily unavailable") });
        assert!(matches!(&e, Err(FsError::Io(m)) if m.contains("OS can't spawn worker thread")), "{e:?}");
        assert!(matches!(unwind_to_error(|| 7), Ok(7)));
    }
}
