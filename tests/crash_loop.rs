//! Crash loop (issue 7.1): a seeded writer does random operations on a mount (create, write at
//! offsets, rewrite, truncate by path and by handle, fsync of files and directories, rename of files
//! and directories, unlink, mkdir, rmdir, link, symlink) while the daemon is killed with SIGKILL at
//! random moments — after a random sleep, in the middle of a write larger than the threshold, during
//! a burst of renames, while an fsync waits for its commit — and the pond is remounted after each kill.
//!
//! The contract held, as the code makes it (src/fs): every operation changes the in-memory tree
//! under one mutex, and a file's content joins the tree only at a *finalize point*: its close (FUSE
//! flush), its fsync, or a truncate by path with no handle open; writes in between live only in the
//! open file's session. The committer cuts *every* dirty key at one instant under that mutex, so each
//! Delta version is the whole tree as it was at one instant. `fsync` of a file — or of a directory —
//! finalizes that file and waits until a cut taken after it is committed. So when an fsync returns,
//! every operation that completed before it is durable: namespace changes anywhere and the content
//! of every file closed before, not only the fsynced file. After a kill, the remounted tree must
//! therefore equal the writer's model at exactly one finalize point at or after the last
//! acknowledged fsync (the operation in flight when the daemon died included): everything
//! acknowledged is there, and nothing is torn — no file holds a mix of two versions, no size
//! disagrees with the bytes, no namespace change shows without those before it. `pond verify` is
//! clean after every kill, and the writer carries on from the recovered tree.
//!
//! `POND_CRASH_SEED` replays an operation sequence (the kill moments stay random); the seed is printed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::rng::Rng;
use crate::common::sizes::{C, T};
use crate::common::{
    Mounted, TestPond, close, daemons, describe, is_mounted, pattern, pond, pond_ok, soak, wait_for_exit,
};

/// One entry of the writer's model of the tree.
#[derive(Clone, Debug, PartialEq)]
enum Node {
    Dir,
    /// `id` names the inode: hard links share it (and the content).
    File {
        id: u64,
        content: Arc<Vec<u8>>,
    },
    Symlink(String),
}

/// Path below the mountpoint (`a`, `d1/b`) to node.
type State = BTreeMap<String, Node>;

/// What the writer is doing, so the killer can aim at it.
const PHASE_OTHER: u8 = 0;
const PHASE_LARGE_WRITE: u8 = 1;
const PHASE_RENAMES: u8 = 2;
const PHASE_FSYNC: u8 = 3;

/// The finalize points of one round, in order, and how far fsync acknowledged them.
struct Log {
    /// `states[0]` is the tree the round started from (recovered, hence durable).
    states: Vec<State>,
    /// Index of the last state an fsync acknowledged.
    acked: usize,
    /// Fsyncs (of files and directories) that returned.
    fsyncs: u64,
    /// BLAKE3 of every content the model ever finalized (to tell a torn file from a stale one).
    known: HashSet<[u8; 32]>,
}

/// A failed step: what it was, and the error.
#[derive(Debug)]
struct StepError {
    what: String,
    err: io::Error,
}

trait Context<X> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<X, StepError>;
}

impl<X> Context<X> for io::Result<X> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<X, StepError> {
        self.map_err(|err| StepError { what: what(), err })
    }
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() { name.to_string() } else { format!("{parent}/{name}") }
}

fn depth(path: &str) -> usize {
    if path.is_empty() { 0 } else { path.matches('/').count() + 1 }
}

/// Names the writer uses: few, so renames replace and creates collide.
const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];

/// File sizes around the threshold and chunk borders, and one well above them.
const SIZES: &[usize] = &[0, 1, T / 64, T - 1, T, T + 1, 2 * C, 3 * C + 7, 8 * C + 3];

struct Writer {
    mnt: PathBuf,
    cur: State,
    rng: Rng,
    next_id: u64,
    next_seed: u64,
    log: Arc<Mutex<Log>>,
    phase: Arc<AtomicU8>,
    /// A phase the killer asks for: the writer's next operation enters it.
    request: Arc<AtomicU8>,
    ops: Arc<AtomicU64>,
}

impl Writer {
    fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    fn lock_log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record `next` as a state the tree may reach from here (before the step that reaches it, so a
    /// step whose reply the kill swallowed still counts).
    fn expect(&self, next: &State) {
        let mut log = self.lock_log();
        for (path, node) in next {
            let Node::File { content, .. } = node else { continue };
            // Hash only what changed (unchanged content is the same Arc).
            if !matches!(self.cur.get(path), Some(Node::File { content: c, .. }) if Arc::ptr_eq(c, content)) {
                log.known.insert(*blake3::hash(content).as_bytes());
            }
        }
        log.states.push(next.clone());
    }

    /// An fsync returned: the current state is acknowledged.
    fn ack(&self) {
        let mut log = self.lock_log();
        log.acked = log.states.len() - 1;
        log.fsyncs += 1;
        debug_assert!(log.states[log.acked] == self.cur);
    }

    fn set_phase(&self, p: u8) {
        self.phase.store(p, Ordering::SeqCst);
    }

    fn paths(&self, keep: impl Fn(&Node) -> bool) -> Vec<String> {
        self.cur.iter().filter(|(_, n)| keep(n)).map(|(p, _)| p.clone()).collect()
    }

    fn files(&self) -> Vec<String> {
        self.paths(|n| matches!(n, Node::File { .. }))
    }

    /// Directories, the root ("") included.
    fn dirs(&self) -> Vec<String> {
        let mut d = vec![String::new()];
        d.extend(self.paths(|n| *n == Node::Dir));
        d
    }

    fn is_empty_dir(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        !self.cur.keys().any(|p| p.starts_with(&prefix))
    }

    /// A name not yet used in `parent`.
    fn fresh_name(&mut self, parent: &str) -> Option<String> {
        let free: Vec<&str> = NAMES.iter().copied().filter(|n| !self.cur.contains_key(&join(parent, n))).collect();
        self.rng.pick(&free).map(|n| join(parent, n))
    }

    fn content_of(&self, path: &str) -> Arc<Vec<u8>> {
        match self.cur.get(path) {
            Some(Node::File { content, .. }) => content.clone(),
            _ => Arc::new(Vec::new()),
        }
    }

    /// `state` with every name of file `path`'s inode holding `content`.
    fn with_content(state: &State, path: &str, content: Arc<Vec<u8>>) -> State {
        let mut next = state.clone();
        let Some(Node::File { id, .. }) = state.get(path) else { return next };
        for node in next.values_mut() {
            if let Node::File { id: i, content: c } = node
                && i == id
            {
                *c = content.clone();
            }
        }
        next
    }

    /// `state` with `from` (and everything below it) moved to `to`, replacing what `to` named.
    fn moved(state: &State, from: &str, to: &str) -> State {
        let mut next = state.clone();
        if let (Some(Node::File { id: a, .. }), Some(Node::File { id: b, .. })) = (state.get(from), state.get(to))
            && a == b
        {
            return next; // two names of one inode: rename does nothing
        }
        next.remove(to);
        let prefix = format!("{from}/");
        let keys: Vec<String> = state.keys().filter(|k| *k == from || k.starts_with(&prefix)).cloned().collect();
        for k in keys {
            let node = next.remove(&k).expect("key listed");
            next.insert(format!("{to}{}", &k[from.len()..]), node);
        }
        next
    }

    fn new_content(&mut self, size: usize) -> Vec<u8> {
        self.next_seed += 1;
        pattern(size, self.next_seed)
    }

    /// Write `data` at `at` of `rel` (whose content was `base`) in pieces of a random size, with an
    /// fsync part-way with probability `fsync_pct` (which finalizes, and acknowledges, what is written).
    fn write_pieces(
        &mut self,
        f: &File,
        rel: &str,
        base: &[u8],
        at: usize,
        data: &[u8],
        fsync_pct: usize,
    ) -> Result<(), StepError> {
        let piece = *self.rng.pick(&[4096usize, 64 * 1024, 128 * 1024, data.len().max(1)]).expect("sizes");
        let fsync_after = self.rng.chance(fsync_pct as u64).then(|| self.rng.below(data.len().max(1)));
        if data.len() > T {
            self.set_phase(PHASE_LARGE_WRITE);
        }
        let mut done = 0;
        while done < data.len() {
            let n = piece.min(data.len() - done);
            f.write_all_at(&data[done..done + n], (at + done) as u64)
                .ctx(|| format!("write {n} bytes at {} of {rel}", at + done))?;
            done += n;
            if fsync_after.is_some_and(|x| done > x && done - n <= x) {
                // The fsync finalizes what is written so far.
                let mut partial = base.to_vec();
                if partial.len() < at + done {
                    partial.resize(at + done, 0);
                }
                partial[at..at + done].copy_from_slice(&data[..done]);
                let next = Self::with_content(&self.cur, rel, Arc::new(partial));
                self.expect(&next);
                self.set_phase(PHASE_FSYNC);
                f.sync_all().ctx(|| format!("fsync {rel} mid-write"))?;
                self.cur = next;
                self.ack();
                self.set_phase(if data.len() > T { PHASE_LARGE_WRITE } else { PHASE_OTHER });
            }
        }
        self.set_phase(PHASE_OTHER);
        Ok(())
    }

    /// Close `f`, which finalizes `rel` as `content`.
    fn close_as(&mut self, f: File, rel: &str, content: Vec<u8>) -> Result<(), StepError> {
        let next = Self::with_content(&self.cur, rel, Arc::new(content));
        self.expect(&next);
        close(f).ctx(|| format!("close {rel}"))?;
        self.cur = next;
        Ok(())
    }

    fn create(&mut self, large: bool) -> Result<bool, StepError> {
        let dirs = self.dirs();
        let parent = self.rng.pick(&dirs).cloned().unwrap_or_default();
        let Some(rel) = self.fresh_name(&parent) else { return Ok(false) };
        let size = if large { 16 * C + self.rng.below(C) } else { *self.rng.pick(SIZES).expect("sizes") };
        let data = self.new_content(size);
        self.next_id += 1;
        let mut next = self.cur.clone();
        next.insert(rel.clone(), Node::File { id: self.next_id, content: Arc::new(Vec::new()) });
        self.expect(&next);
        let f =
            OpenOptions::new().write(true).create_new(true).open(self.path(&rel)).ctx(|| format!("create {rel}"))?;
        self.cur = next;
        self.write_pieces(&f, &rel, &[], 0, &data, 30)?;
        self.close_as(f, &rel, data)?;
        Ok(true)
    }

    /// Replace a file's content through open(O_TRUNC): never visible half-way.
    fn rewrite(&mut self, large: bool) -> Result<bool, StepError> {
        let Some(rel) = self.rng.pick(&self.files()).cloned() else { return Ok(false) };
        let size = if large { 16 * C + self.rng.below(C) } else { *self.rng.pick(SIZES).expect("sizes") };
        let data = self.new_content(size);
        let f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.path(&rel))
            .ctx(|| format!("open {rel} O_TRUNC"))?;
        self.write_pieces(&f, &rel, &[], 0, &data, 20)?;
        self.close_as(f, &rel, data)?;
        Ok(true)
    }

    fn write_at(&mut self, rel: Option<String>) -> Result<bool, StepError> {
        let Some(rel) = rel.or_else(|| self.rng.pick(&self.files()).cloned()) else { return Ok(false) };
        let old = self.content_of(&rel);
        let at = self.rng.below(old.len() + T);
        let most = *self.rng.pick(&[64usize, T + 64, 3 * C]).expect("lens");
        let len = 1 + self.rng.below(most);
        let data = self.new_content(len);
        let f = OpenOptions::new().write(true).open(self.path(&rel)).ctx(|| format!("open {rel}"))?;
        self.write_pieces(&f, &rel, &old, at, &data, 20)?;
        let mut content = old.to_vec();
        if content.len() < at + len {
            content.resize(at + len, 0);
        }
        content[at..at + len].copy_from_slice(&data);
        self.close_as(f, &rel, content)?;
        Ok(true)
    }

    fn truncate(&mut self) -> Result<bool, StepError> {
        let Some(rel) = self.rng.pick(&self.files()).cloned() else { return Ok(false) };
        let old = self.content_of(&rel);
        let len = match self.rng.below(4) {
            0 => 0,
            1 => old.len() / 2,
            2 => T - 1 + self.rng.below(3),
            _ => old.len() + 1 + self.rng.below(2 * C),
        };
        let mut content = old.to_vec();
        content.resize(len, 0);
        if self.rng.chance(50) {
            // By path, no handle open: finalized at once.
            let next = Self::with_content(&self.cur, &rel, Arc::new(content));
            self.expect(&next);
            let c = std::ffi::CString::new(self.path(&rel).as_os_str().as_bytes()).expect("no NUL");
            // SAFETY: a valid C string.
            let r = unsafe { libc::truncate(c.as_ptr(), len as libc::off_t) };
            if r != 0 {
                return Err(io::Error::last_os_error()).ctx(|| format!("truncate {rel} to {len}"));
            }
            self.cur = next;
        } else {
            // Through a handle: finalized at its close.
            let f = OpenOptions::new().write(true).open(self.path(&rel)).ctx(|| format!("open {rel}"))?;
            f.set_len(len as u64).ctx(|| format!("ftruncate {rel} to {len}"))?;
            self.close_as(f, &rel, content)?;
        }
        Ok(true)
    }

    fn fsync_file(&mut self) -> Result<bool, StepError> {
        let Some(rel) = self.rng.pick(&self.files()).cloned() else { return Ok(false) };
        let f = File::open(self.path(&rel)).ctx(|| format!("open {rel} to fsync"))?;
        self.set_phase(PHASE_FSYNC);
        f.sync_all().ctx(|| format!("fsync {rel}"))?;
        self.ack();
        self.set_phase(PHASE_OTHER);
        close(f).ctx(|| format!("close {rel}"))?;
        Ok(true)
    }

    fn fsync_dir(&mut self) -> Result<bool, StepError> {
        let dir = self.rng.pick(&self.dirs()).cloned().unwrap_or_default();
        let f = File::open(self.path(&dir)).ctx(|| format!("open directory {dir:?}"))?;
        self.set_phase(PHASE_FSYNC);
        f.sync_all().ctx(|| format!("fsync directory {dir:?}"))?;
        self.ack();
        self.set_phase(PHASE_OTHER);
        drop(f); // closing a directory has no flush
        Ok(true)
    }

    fn step_to(&mut self, next: State, what: String, op: impl FnOnce() -> io::Result<()>) -> Result<bool, StepError> {
        self.expect(&next);
        op().ctx(|| what)?;
        self.cur = next;
        Ok(true)
    }

    /// Rename a file or symlink to a fresh name or onto another file.
    fn rename_file(&mut self) -> Result<bool, StepError> {
        let srcs = self.paths(|n| !matches!(n, Node::Dir));
        let Some(from) = self.rng.pick(&srcs).cloned() else { return Ok(false) };
        let to = if self.rng.chance(40) {
            match self.rng.pick(&srcs).cloned() {
                Some(to) if to != from => to,
                _ => return Ok(false),
            }
        } else {
            let dirs = self.dirs();
            let parent = self.rng.pick(&dirs).cloned().unwrap_or_default();
            match self.fresh_name(&parent) {
                Some(to) => to,
                None => return Ok(false),
            }
        };
        let next = Self::moved(&self.cur, &from, &to);
        let (a, b) = (self.path(&from), self.path(&to));
        self.step_to(next, format!("rename {from} to {to}"), || std::fs::rename(a, b))
    }

    /// Rename a directory: within its parent, or a leaf directory between the root and a top-level
    /// directory (never into itself), sometimes onto an empty directory.
    fn rename_dir(&mut self) -> Result<bool, StepError> {
        let dirs = self.paths(|n| *n == Node::Dir);
        let Some(from) = self.rng.pick(&dirs).cloned() else { return Ok(false) };
        let has_subdir = self.cur.iter().any(|(p, n)| *n == Node::Dir && p.starts_with(&format!("{from}/")));
        let mut parents: Vec<String> = vec![parent_of(&from).to_string()];
        if !has_subdir {
            parents.push(String::new());
            parents.extend(dirs.iter().filter(|d| depth(d) == 1 && **d != from).cloned());
        }
        let parent = self.rng.pick(&parents).cloned().unwrap_or_default();
        let onto_empty: Vec<String> = dirs
            .iter()
            .filter(|d| {
                parent_of(d) == parent && **d != from && self.is_empty_dir(d) && !d.starts_with(&format!("{from}/"))
            })
            .cloned()
            .collect();
        let to = match self.rng.chance(30).then(|| self.rng.pick(&onto_empty).cloned()).flatten() {
            Some(to) => to,
            None => match self.fresh_name(&parent) {
                Some(to) => to,
                None => return Ok(false),
            },
        };
        let next = Self::moved(&self.cur, &from, &to);
        let (a, b) = (self.path(&from), self.path(&to));
        self.step_to(next, format!("rename directory {from} to {to}"), || std::fs::rename(a, b))
    }

    fn rename_burst(&mut self) -> Result<bool, StepError> {
        self.set_phase(PHASE_RENAMES);
        for _ in 0..3 + self.rng.below(6) {
            self.rename_file()?;
        }
        self.set_phase(PHASE_OTHER);
        Ok(true)
    }

    fn unlink(&mut self) -> Result<bool, StepError> {
        let Some(rel) = self.rng.pick(&self.paths(|n| !matches!(n, Node::Dir))).cloned() else { return Ok(false) };
        let mut next = self.cur.clone();
        next.remove(&rel);
        let p = self.path(&rel);
        self.step_to(next, format!("unlink {rel}"), || std::fs::remove_file(p))
    }

    fn mkdir(&mut self) -> Result<bool, StepError> {
        let parents: Vec<String> = self.dirs().into_iter().filter(|d| depth(d) < 2).collect();
        let parent = self.rng.pick(&parents).cloned().unwrap_or_default();
        let Some(rel) = self.fresh_name(&parent) else { return Ok(false) };
        let mut next = self.cur.clone();
        next.insert(rel.clone(), Node::Dir);
        let p = self.path(&rel);
        self.step_to(next, format!("mkdir {rel}"), || std::fs::create_dir(p))
    }

    fn rmdir(&mut self) -> Result<bool, StepError> {
        let empty: Vec<String> = self.paths(|n| *n == Node::Dir).into_iter().filter(|d| self.is_empty_dir(d)).collect();
        let Some(rel) = self.rng.pick(&empty).cloned() else { return Ok(false) };
        let mut next = self.cur.clone();
        next.remove(&rel);
        let p = self.path(&rel);
        self.step_to(next, format!("rmdir {rel}"), || std::fs::remove_dir(p))
    }

    fn link(&mut self) -> Result<bool, StepError> {
        let Some(from) = self.rng.pick(&self.files()).cloned() else { return Ok(false) };
        let dirs = self.dirs();
        let parent = self.rng.pick(&dirs).cloned().unwrap_or_default();
        let Some(to) = self.fresh_name(&parent) else { return Ok(false) };
        let mut next = self.cur.clone();
        next.insert(to.clone(), self.cur[&from].clone());
        let (a, b) = (self.path(&from), self.path(&to));
        self.step_to(next, format!("link {from} to {to}"), || std::fs::hard_link(a, b))
    }

    fn symlink(&mut self) -> Result<bool, StepError> {
        let dirs = self.dirs();
        let parent = self.rng.pick(&dirs).cloned().unwrap_or_default();
        let Some(rel) = self.fresh_name(&parent) else { return Ok(false) };
        let target = format!("target-{}", self.rng.below(1000));
        let mut next = self.cur.clone();
        next.insert(rel.clone(), Node::Symlink(target.clone()));
        let p = self.path(&rel);
        self.step_to(next, format!("symlink {rel}"), || std::os::unix::fs::symlink(target, p))
    }

    /// One random operation (or none, when the tree offers no target for the one drawn).
    fn step(&mut self) -> Result<bool, StepError> {
        match self.request.swap(PHASE_OTHER, Ordering::SeqCst) {
            // Each request is met (a create needs a free name, an fsync of a file a file).
            PHASE_LARGE_WRITE => return Ok(self.create(true)? || self.rewrite(true)?),
            PHASE_RENAMES => return self.rename_burst(),
            PHASE_FSYNC if self.rng.chance(50) => return self.fsync_dir(),
            PHASE_FSYNC => return Ok(self.fsync_file()? || self.fsync_dir()?),
            _ => {}
        }
        let crowded = self.cur.len() > 30;
        let weights: &[(usize, u8)] = &[
            (if crowded { 4 } else { 14 }, 0),
            (8, 1),
            (10, 2),
            (5, 3),
            (6, 4),
            (3, 5),
            (8, 6),
            (3, 7),
            (if crowded { 20 } else { 6 }, 8),
            (5, 9),
            (if crowded { 6 } else { 2 }, 10),
            (4, 11),
            (2, 12),
            (3, 13),
        ];
        let total: usize = weights.iter().map(|(w, _)| w).sum();
        let mut draw = self.rng.below(total);
        let mut op = 0;
        for (w, o) in weights {
            if draw < *w {
                op = *o;
                break;
            }
            draw -= w;
        }
        match op {
            0 => self.create(false),
            1 => self.rewrite(false),
            2 => self.write_at(None),
            3 => self.truncate(),
            4 => self.fsync_file(),
            5 => self.fsync_dir(),
            6 => self.rename_file(),
            7 => self.rename_dir(),
            8 => self.unlink(),
            9 => self.mkdir(),
            10 => self.rmdir(),
            11 => self.link(),
            12 => self.symlink(),
            _ => self.rename_burst(),
        }
    }

    /// Operate until a step fails; `Err` if it failed for another reason than the daemon's death.
    fn run(&mut self, killed: &AtomicBool) -> Result<(), String> {
        loop {
            match self.step() {
                Ok(true) => {
                    self.ops.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(e) => {
                    // A request in flight at the kill ends with ECONNABORTED, or EIO when the dying
                    // daemon was reading it (the kernel's copy into a process with SIGKILL pending
                    // fails); later ones with ENOTCONN.
                    let dead = matches!(e.err.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED | libc::EIO));
                    return match (killed.load(Ordering::SeqCst), dead) {
                        (true, true) => Ok(()),
                        (true, false) => {
                            Err(format!("{} failed after the kill with {}, not the dead mount's errno", e.what, e.err))
                        }
                        (false, _) => Err(format!("{} failed with the daemon alive: {}", e.what, e.err)),
                    };
                }
            }
        }
    }
}

/// What the mount shows for one path.
#[derive(Debug)]
enum Seen {
    Dir,
    File { ino: u64, nlink: u64, size: u64, content: Vec<u8> },
    Symlink(String),
}

impl Seen {
    fn kind(&self) -> &'static str {
        match self {
            Seen::Dir => "directory",
            Seen::File { .. } => "file",
            Seen::Symlink(_) => "symlink",
        }
    }
}

fn observe(root: &Path, rel: &str, out: &mut BTreeMap<String, Seen>) {
    let dir = root.join(rel);
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())) {
        let entry = entry.unwrap_or_else(|e| panic!("list {}: {e}", dir.display()));
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = join(rel, &name);
        let full = root.join(&path);
        let m = std::fs::symlink_metadata(&full).unwrap_or_else(|e| panic!("stat {path}: {e}"));
        if m.is_dir() {
            out.insert(path.clone(), Seen::Dir);
            observe(root, &path, out);
        } else if m.file_type().is_symlink() {
            let target = std::fs::read_link(&full).unwrap_or_else(|e| panic!("readlink {path}: {e}"));
            out.insert(path, Seen::Symlink(target.to_string_lossy().into_owned()));
        } else {
            let content = std::fs::read(&full).unwrap_or_else(|e| panic!("read {path}: {e}"));
            out.insert(path, Seen::File { ino: m.ino(), nlink: m.nlink(), size: m.len(), content });
        }
    }
}

/// Whether the mount shows exactly `state` (hard links as links, sizes matching the bytes).
fn shows(seen: &BTreeMap<String, Seen>, state: &State) -> bool {
    if !seen.keys().eq(state.keys()) {
        return false;
    }
    let mut links: HashMap<u64, usize> = HashMap::new();
    for node in state.values() {
        if let Node::File { id, .. } = node {
            *links.entry(*id).or_default() += 1;
        }
    }
    let (mut ino_of, mut id_of) = (HashMap::new(), HashMap::new());
    state.iter().all(|(path, node)| match (node, &seen[path]) {
        (Node::Dir, Seen::Dir) => true,
        (Node::Symlink(a), Seen::Symlink(b)) => a == b,
        (Node::File { id, content }, Seen::File { ino, nlink, size, content: got }) => {
            *size == content.len() as u64
                && **content == *got
                && *nlink == links[id] as u64
                && *ino_of.entry(*id).or_insert(*ino) == *ino
                && *id_of.entry(*ino).or_insert(*id) == *id
        }
        _ => false,
    })
}

/// How the mount differs from `state`, path by path (never dumping content), and how many of
/// `state`'s entries are missing or wrong (the data lost when `state` was acknowledged).
fn differences(seen: &BTreeMap<String, Seen>, state: &State, known: &HashSet<[u8; 32]>) -> (Vec<String>, u64) {
    let mut out = Vec::new();
    let mut lost = 0;
    for (path, node) in state {
        let problem = match (node, seen.get(path)) {
            (_, None) => Some("missing".to_string()),
            (Node::Dir, Some(Seen::Dir)) => None,
            (Node::Symlink(a), Some(Seen::Symlink(b))) => (a != b).then(|| format!("symlink to {b}, want {a}")),
            (Node::File { content, .. }, Some(Seen::File { size, content: got, .. })) => {
                if **content == *got && *size == got.len() as u64 {
                    None
                } else if known.contains(blake3::hash(got).as_bytes()) {
                    Some(format!("holds another version ({} bytes, size {size}; want {})", got.len(), content.len()))
                } else {
                    Some(format!("TORN: {} bytes (size {size}) that no version had; want {}", got.len(), content.len()))
                }
            }
            (_, Some(other)) => Some(format!("is a {}", other.kind())),
        };
        if let Some(p) = problem {
            lost += 1;
            out.push(format!("{path}: {p}"));
        }
    }
    for path in seen.keys().filter(|p| !state.contains_key(*p)) {
        out.push(format!("{path}: present but not in the acknowledged state"));
    }
    (out, lost)
}

/// How the killer picks its moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum KillAt {
    RandomSleep,
    MidLargeWrite,
    MidRenames,
    MidFsync,
}

/// Wait (spinning, for precision) until the writer enters `phase`, at most `limit`.
fn wait_for_phase(phase: &AtomicU8, want: u8, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if phase.load(Ordering::SeqCst) == want {
            return true;
        }
        std::thread::yield_now();
    }
    false
}

fn the_daemon(m: &Mounted) -> i32 {
    let pids = daemons(&m.pond, Some(&m.mountpoint));
    assert_eq!(pids.len(), 1, "one daemon serves {}: {pids:?}", m.mountpoint.display());
    pids[0]
}

fn verify_clean(pond_path: &str, when: &str) {
    let out = pond(&["verify", pond_path]);
    assert!(out.status.success(), "pond verify {when}: {}", describe(&out));
}

fn seed() -> u64 {
    std::env::var("POND_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    }) | 1
}

/// What the loop went through, for the report.
#[derive(Default)]
struct Tally {
    kills: u64,
    ops: u64,
    fsyncs: u64,
    by_moment: BTreeMap<KillAt, u64>,
}

/// Find the state the mount shows among those the round may have left, or fail naming the damage.
fn recover(m: &Mounted, log: &Log, what: &str, tally: &Tally) -> State {
    let mut seen = BTreeMap::new();
    observe(&m.mountpoint, "", &mut seen);
    if let Some(k) = (log.acked..log.states.len()).rev().find(|&k| shows(&seen, &log.states[k])) {
        return log.states[k].clone();
    }
    let (diff, lost) = differences(&seen, &log.states[log.acked], &log.known);
    soak::report("crash-loop", tally.kills, tally.kills, lost.max(1));
    panic!(
        "{what}: the mount shows none of the {} states from the last acknowledged fsync on; against the \
         acknowledged one:\n{}",
        log.states.len() - log.acked,
        diff.join("\n")
    );
}

/// Kills per pond: the loop starts a fresh pond after this many, so `pond verify` (which reads every
/// version) costs the same in the hundredth kill as in the first.
const KILLS_PER_POND: u64 = 16;

/// One pond through `KILLS_PER_POND` kills, then a clean unmount, gc and a last check.
fn crash_pond(seed: u64, tally: &mut Tally) {
    let pond_dir = TestPond::new();
    let mnt = pond_dir.scratch("mnt");
    let ops = Arc::new(AtomicU64::new(0));
    let phase = Arc::new(AtomicU8::new(PHASE_OTHER));
    let request = Arc::new(AtomicU8::new(PHASE_OTHER));
    let mut killer = Rng::new(seed.rotate_left(17));
    let mut writer = Writer {
        mnt: mnt.clone(),
        cur: State::new(),
        rng: Rng::new(seed),
        next_id: 0,
        next_seed: seed % 1_000_000,
        log: Arc::new(Mutex::new(Log { states: vec![State::new()], acked: 0, fsyncs: 0, known: HashSet::new() })),
        phase: phase.clone(),
        request: request.clone(),
        ops: ops.clone(),
    };
    for round in 0..KILLS_PER_POND {
        let m = Mounted::new(&pond_dir.root, &mnt, &[]);
        {
            let mut log = writer.log.lock().unwrap();
            if round > 0 {
                writer.cur = recover(&m, &log, &format!("seed {seed}, after kill {round}"), tally);
            }
            let known = std::mem::take(&mut log.known);
            *log = Log { states: vec![writer.cur.clone()], acked: 0, fsyncs: 0, known };
        }
        let pid = the_daemon(&m);
        let killed = Arc::new(AtomicBool::new(false));
        phase.store(PHASE_OTHER, Ordering::SeqCst);
        request.store(PHASE_OTHER, Ordering::SeqCst);
        let k = killed.clone();
        let running = std::thread::spawn(move || {
            let result = writer.run(&k);
            (writer, result)
        });
        let moment = *killer
            .pick(&[
                KillAt::RandomSleep,
                KillAt::RandomSleep,
                KillAt::MidLargeWrite,
                KillAt::MidRenames,
                KillAt::MidFsync,
            ])
            .expect("moments");
        // Let the writer get some way first, at a random pace.
        std::thread::sleep(Duration::from_millis(30 + killer.below(500) as u64));
        let aim = |want: u8| {
            request.store(want, Ordering::SeqCst);
            wait_for_phase(&phase, want, Duration::from_secs(5))
        };
        let aimed = match moment {
            KillAt::RandomSleep => {
                std::thread::sleep(Duration::from_millis(killer.below(300) as u64));
                true
            }
            KillAt::MidLargeWrite => {
                let hit = aim(PHASE_LARGE_WRITE);
                std::thread::sleep(Duration::from_micros(killer.below(5000) as u64));
                hit
            }
            KillAt::MidRenames => aim(PHASE_RENAMES),
            KillAt::MidFsync => aim(PHASE_FSYNC),
        };
        killed.store(true, Ordering::SeqCst);
        // SAFETY: signalling the daemon found for this mount.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        assert!(wait_for_exit(pid, Duration::from_secs(10)), "the killed daemon exited");
        *tally.by_moment.entry(if aimed { moment } else { KillAt::RandomSleep }).or_default() += 1;
        tally.kills += 1;
        // Every call on the dead mount fails now; the writer stops before the mount is cleared
        // (after that its paths would reach the empty directory below).
        let (w, result) = running.join().expect("the writer thread");
        writer = w;
        if let Err(e) = result {
            let log = std::fs::read_to_string(pond_dir.root.join("_pond/mount.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!("seed {seed}, round {round}: {e}\nthe daemon's log ends:\n{}", tail.join("\n"));
        }
        tally.fsyncs += writer.log.lock().unwrap().fsyncs;
        let _ = std::process::Command::new("umount").arg("-l").arg(&mnt).status();
        assert!(!is_mounted(&mnt), "dead mount cleared");
        drop(m);
        verify_clean(pond_dir.path(), &format!("seed {seed}, after kill {round}"));
    }
    // The last kill's state, then a clean unmount, gc, and the same state again.
    let m = Mounted::new(&pond_dir.root, &mnt, &[]);
    let state = recover(&m, &writer.log.lock().unwrap(), &format!("seed {seed}, after the last kill"), tally);
    m.unmount();
    pond_ok(&["gc", pond_dir.path()]);
    verify_clean(pond_dir.path(), &format!("seed {seed}, after gc"));
    let m = Mounted::new(&pond_dir.root, &mnt, &[]);
    let log = Log { states: vec![state], acked: 0, fsyncs: 0, known: HashSet::new() };
    recover(&m, &log, &format!("seed {seed}, after gc and a remount"), tally);
    m.unmount();
    tally.ops += ops.load(Ordering::Relaxed);
}

#[test]
fn sigkill_at_random_moments_keeps_every_fsynced_state_whole_and_verify_clean() {
    let ponds = soak::rounds(1);
    let seed = seed();
    eprintln!(
        "crash loop: {} kills on {ponds} pond(s), seed {seed} (POND_CRASH_SEED replays the operations)",
        ponds * KILLS_PER_POND
    );
    let mut tally = Tally::default();
    for i in 0..ponds {
        crash_pond(seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1, &mut tally);
    }
    eprintln!(
        "crash loop: {} kills, {} operations, {} fsyncs acknowledged, kills by moment {:?}",
        tally.kills, tally.ops, tally.fsyncs, tally.by_moment
    );
    assert!(tally.ops >= tally.kills, "the writer got operations through ({})", tally.ops);
    assert!(tally.fsyncs > 0, "some fsyncs were acknowledged before kills");
    soak::report("crash-loop", tally.kills, tally.kills, 0);
}
