//! [`RemoteBlobs`]: the large-file store's [`BlobSource`] for a replica — byte ranges of its objects
//! and packs, fetched on first read and kept in the [`ChunkCache`]. It only moves bytes: which
//! ranges hold a chunk, and whether they are right, is decided by the store's `ObjectReader`, which
//! drops a cached range that fails its hash ([`Blob::forget_range`]) and reads it again.
//!
//! Round trips: opening an object fetches its end ([`OBJECT_END`], a whole manifest for files up to
//! about 1.5 GiB) in one request, or the whole object in one more when it is small enough
//! ([`WHOLE_OBJECT`]); a pack is opened without a request; a chunk read is one ranged GET of the
//! chunk's bytes. So a 4 KiB read of a file never read costs two round trips.
//!
//! Read-ahead: the reader announces the chunks a sequential read will want ([`Blob::prefetch`]);
//! those neither cached nor already coming are fetched together, neighbours in one request of up
//! to [`SPAN`] bytes, at most [`SPANS_IN_FLIGHT`] at once. A read of a chunk on its way waits for
//! it rather than asking again; a chunk that arrived before its read is handed over from memory
//! (kept until read), and written to the cache off the request threads (with `O_DIRECT`, from the
//! page-aligned buffer the request's body was read into: `span_buf`). The buffers alive, whatever
//! keeps them, are [`READ_AHEAD_MEMORY`] bytes at most.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, Semaphore};

use super::cache::{ChunkCache, FileKey};
use super::error::FetchError;
use super::fetch::Fetcher;
use super::span_buf::{Holds, SEGMENT, Span};
use crate::large_files::{Blob, BlobSource, StoreError};
use crate::layout::PondFile;

/// Bytes fetched from the end of an object when it is opened: a manifest holds about 40 bytes per
/// 64 KiB chunk, so this is all of it for files up to about 1.5 GiB, and the footer otherwise.
pub const OBJECT_END: u64 = 1 << 20;
/// An object at most this long is kept whole once opened (one more request past [`OBJECT_END`]).
pub const WHOLE_OBJECT: u64 = 16 << 20;
/// The most one read-ahead request asks for: wide enough that a request's fixed cost (a round trip,
/// the server's own overhead per request: 1.6 ms of the local S3 server's CPU) is small beside its
/// transfer. A reader's top-up of a quarter window (24 MiB) comes as two requests of 12 MiB.
pub const SPAN: u64 = 16 << 20;
/// Read-ahead requests in flight at once, per mount: what overlaps the round trips (with [`SPAN`],
/// 64 MiB at most, part of [`READ_AHEAD_MEMORY`]). Three spans of 8 MiB on the way (what a 48 MiB
/// window left) held a cold read through 20 ms a request to 3 × 8 MiB per 30 ms round: the
/// daemon's log showed every span waiting for a place.
pub const SPANS_IN_FLIGHT: usize = 4;
/// Read-ahead writes to the disk cache queued at once (each holds its request's bytes).
const WRITES_QUEUED: usize = 1;
/// Read-ahead bytes a mount holds in memory, whatever the number of readers: the buffers of its
/// requests, from when a request is made until the last slice of a buffer is gone (its chunks all
/// read or dropped, its bytes written to the disk cache; [`Room`]). A request's body lands in a
/// buffer per segment of about 2 MiB (`span_buf::SEGMENT`), so its room comes back a segment at a
/// time as its chunks are read. A request with no room waits while reads take what came before
/// it; only when none does ([`ROOM_WAIT`]) are the oldest chunks dropped (left to the disk cache,
/// and read from there). So one sequential reader loses nothing it asked for: the part of its
/// window (`large_files::reader`, 96 MiB) past this bound waits to be requested.
///
/// Measured on one rig (scripts/s3_bench_server.py, and scripts/s3_delay_proxy.py at 20 ms; peak
/// RSS and throughput of four 1 GiB files read at once, and one reader's cold 1 GiB at 20 ms), 3-4
/// rounds alternated each:
/// - The bound once counted a request's bytes until they arrived, then only its chunks not yet
///   read: a 12 MiB buffer that one unread chunk (or a pending cache write) kept alive counted as
///   64 KiB. Buffers alive reached 144 MiB under a bound of 80; with huge pages peak RSS was
///   169-201 MiB (four readers at 941-1,086 MiB/s; one at 793-920).
/// - Counting whole 12 MiB buffers: RSS 150-169 MiB, but four readers at 470-723 MiB/s.
/// - Counting 2 MiB segments: at 80 MiB, RSS 143-153 MiB, four readers at 792-1,028 MiB/s, one at
///   790-873; at 96 MiB, RSS 153-157, four readers at 968-1,045, one at 808-872.
pub const READ_AHEAD_MEMORY: u64 = 96 << 20;
/// How long a read-ahead request with no room in [`READ_AHEAD_MEMORY`] waits for a read to take a
/// chunk (or a buffer to be freed); each that does restarts the wait (a slow reader is waited
/// for), and when none does, the oldest chunks are dropped for it (a reader that stopped, or whose
/// file was closed).
const ROOM_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
/// The longest a read-ahead request waits for room however reads progress: the room others' reads
/// free may keep going to other requests, and a reader waiting for this one must not wait for
/// its `timeout`. (A reader slower than a request per second loses nothing that matters by it.)
const ROOM_WAIT_MOST: std::time::Duration = std::time::Duration::from_secs(1);
/// Neighbouring chunks this close are fetched in one request: between two chunks of a pack lie a
/// page header, and between two row groups the other columns of the next (about 3 KiB); a few KiB
/// more in a request costs far less than another request.
const GAP: u64 = 64 << 10;

/// An object's end as cached: `[total length: u64 LE][start: u64 LE][BLAKE3 of bytes][bytes]`. The
/// hash is the entry's own check: a manifest's chunk hashes are authenticated by the object's name,
/// but not where it says the chunks are, and a damaged entry must be fetched again, not believed.
const END_HEADER: usize = 48;

/// A range on its way from the remote (read-ahead), waited for by reads that want it.
#[derive(Default)]
struct Coming {
    done: Mutex<Option<Result<Bytes, FetchError>>>,
    ready: Condvar,
}

impl Coming {
    fn finish(&self, result: Result<Bytes, FetchError>) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
        self.ready.notify_all();
    }

    /// The range, once here; `None` when `deadline` passes first.
    fn wait(&self, deadline: Instant) -> Option<Result<Bytes, FetchError>> {
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(result) = done.as_ref() {
                return Some(result.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            done = self.ready.wait_timeout(done, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

type ComingKey = (PondFile, u64, u64);

/// Read-ahead in memory: chunks that arrived before their reads (oldest first), and the bytes of
/// the requests whose buffers are alive: on their way, arrived and not all read, held by a read,
/// or being written to the disk cache (a chunk is a slice of its request's buffer, so the buffer
/// lives as long as any of those). Together at most `limit` bytes ([`READ_AHEAD_MEMORY`]; tests
/// pass less).
struct Ready {
    chunks: HashMap<ComingKey, Bytes>,
    order: std::collections::VecDeque<ComingKey>,
    held: u64,
    limit: u64,
}

impl Default for Ready {
    fn default() -> Ready {
        Ready::with_limit(READ_AHEAD_MEMORY)
    }
}

impl Ready {
    fn with_limit(limit: u64) -> Ready {
        Ready { chunks: HashMap::new(), order: Default::default(), held: 0, limit }
    }

    fn take(&mut self, key: &ComingKey) -> Option<Bytes> {
        self.chunks.remove(key)
    }

    /// Counts a request of `bytes` as held if it fits beside what is (or nothing is).
    fn try_start(&mut self, bytes: u64) -> bool {
        let fits = self.held + bytes <= self.limit || self.held == 0;
        if fits {
            self.held += bytes;
        }
        fits
    }

    /// Keeps `bytes` until read; gives back what was kept under the same key (to be dropped once
    /// the lock is let go: dropping a buffer's last slice gives its [`Room`] back).
    #[must_use]
    fn keep(&mut self, key: ComingKey, bytes: Bytes) -> Option<Bytes> {
        let old = self.chunks.insert(key.clone(), bytes);
        self.order.push_back(key);
        // Keys of chunks taken stay in `order` until they reach the front: bound them.
        if self.order.len() > 4 * self.chunks.len() + 1024 {
            self.order.retain(|k| self.chunks.contains_key(k));
        }
        old
    }

    /// The oldest chunk kept, no longer kept (to be dropped once the lock is let go).
    fn take_oldest(&mut self) -> Option<Bytes> {
        while let Some(oldest) = self.order.pop_front() {
            if let Some(bytes) = self.chunks.remove(&oldest) {
                return Some(bytes);
            }
        }
        None
    }
}

/// What read-ahead holds in memory ([`Ready`]), shared by the requests that fill it and the reads
/// that empty it.
#[derive(Default)]
struct ReadAheadMemory {
    ready: Mutex<Ready>,
    /// Told when a read takes a chunk, or a request's buffer is freed.
    progress: Notify,
}

/// A read-ahead request's claim on [`READ_AHEAD_MEMORY`], given back when dropped: it goes with
/// the request's buffer, and so lasts until the last slice of it is gone. (Weak: the memory keeps
/// chunks, which keep their buffer's claim.)
struct Room {
    memory: Weak<ReadAheadMemory>,
    bytes: u64,
}

impl Room {
    /// This claim as one claim per part (of `parts` bytes each; what they leave is given back).
    fn split(mut self, parts: impl IntoIterator<Item = u64>) -> Vec<Room> {
        let rooms: Vec<Room> = parts.into_iter().map(|bytes| Room { memory: self.memory.clone(), bytes }).collect();
        self.bytes = self.bytes.saturating_sub(rooms.iter().map(|r| r.bytes).sum());
        rooms
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        let Some(memory) = self.memory.upgrade() else { return };
        let mut ready = memory.ready();
        ready.held = ready.held.saturating_sub(self.bytes);
        drop(ready);
        memory.progress.notify_waiters();
    }
}

impl ReadAheadMemory {
    #[cfg(test)]
    fn with_limit(limit: u64) -> ReadAheadMemory {
        ReadAheadMemory { ready: Mutex::new(Ready::with_limit(limit)), progress: Notify::new() }
    }

    fn ready(&self) -> MutexGuard<'_, Ready> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A chunk that arrived ahead, handed to its read.
    fn take(&self, key: &ComingKey) -> Option<Bytes> {
        let taken = self.ready().take(key);
        if taken.is_some() {
            self.progress.notify_waiters();
        }
        taken
    }

    /// Keeps a chunk that arrived ahead until its read takes it.
    fn keep(&self, key: ComingKey, bytes: Bytes) {
        let replaced = self.ready().keep(key, bytes);
        drop(replaced);
    }

    /// Room for a read-ahead request of `bytes`. Waits while reads take what arrived before it
    /// and buffers are freed; once neither has happened for [`ROOM_WAIT`], drops the oldest
    /// chunks kept until there is room (a reader that stopped, or whose file was closed, leaves
    /// them to the disk cache); after [`ROOM_WAIT_MOST`], takes it anyway.
    async fn make_room(self: &Arc<Self>, bytes: u64) -> Room {
        let last = tokio::time::Instant::now() + ROOM_WAIT_MOST;
        let room = || Room { memory: Arc::downgrade(self), bytes };
        loop {
            let progress = self.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if self.ready().try_start(bytes) {
                return room();
            }
            let until = (tokio::time::Instant::now() + ROOM_WAIT).min(last);
            if tokio::time::timeout_at(until, progress).await.is_ok() {
                continue;
            }
            if tokio::time::Instant::now() >= last {
                self.ready().held += bytes;
                return room();
            }
            loop {
                let oldest = self.ready().take_oldest();
                let Some(oldest) = oldest else { break };
                drop(oldest);
                if self.ready().try_start(bytes) {
                    return room();
                }
            }
        }
    }
}

struct Shared {
    fetcher: Arc<Fetcher>,
    cache: Arc<ChunkCache>,
    coming: Mutex<HashMap<ComingKey, Arc<Coming>>>,
    memory: Arc<ReadAheadMemory>,
    spans: Arc<Semaphore>,
    /// Read-ahead writes to the cache queued or under way.
    writes: Arc<Semaphore>,
    /// Chunk-range requests made for reads (not read-ahead), for tests and the benchmark.
    demand_fetches: AtomicU64,
}

impl Shared {
    fn coming(&self) -> MutexGuard<'_, HashMap<ComingKey, Arc<Coming>>> {
        self.coming.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The objects and packs of one replica, read lazily through a disk cache.
#[derive(Clone)]
pub struct RemoteBlobs {
    shared: Arc<Shared>,
}

impl RemoteBlobs {
    pub fn new(fetcher: Arc<Fetcher>, cache: Arc<ChunkCache>) -> RemoteBlobs {
        RemoteBlobs {
            shared: Arc::new(Shared {
                fetcher,
                cache,
                coming: Mutex::default(),
                memory: Arc::default(),
                spans: Arc::new(Semaphore::new(SPANS_IN_FLIGHT)),
                writes: Arc::new(Semaphore::new(WRITES_QUEUED)),
                demand_fetches: AtomicU64::new(0),
            }),
        }
    }

    /// Waits, `limit` at most, until no read-ahead is in flight and every range it fetched is
    /// written to the disk cache: a reader about to exit (`pond cat URL`, a daemon unmounted) keeps
    /// in the cache what it read, so a later mount has it without the remote. (A read-ahead span
    /// hands its bytes to the waiting read before it queues their write.)
    pub fn settle(&self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        let idle = |s: &Semaphore, all: usize| s.available_permits() >= all;
        while !(idle(&self.shared.spans, SPANS_IN_FLIGHT) && idle(&self.shared.writes, WRITES_QUEUED)) {
            if std::time::Instant::now() >= deadline {
                tracing::debug!("read-ahead still under way at exit; what it fetched is not all cached");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Chunk ranges fetched because a read wanted them now (read-ahead not counted).
    pub fn demand_fetches(&self) -> u64 {
        self.shared.demand_fetches.load(Ordering::Relaxed)
    }

    fn describe_name(&self, file: &PondFile) -> String {
        format!("{}/{}", self.shared.fetcher.url(), file.name())
    }

    /// The end of object `file`: from the cache, or fetched (whole when small).
    fn object_end(&self, file: &PondFile) -> Result<End, StoreError> {
        let key = FileKey::of(file).ok_or_else(|| StoreError::InvalidInput(format!("{file} is not an object")))?;
        if let Some(cached) = self.shared.cache.end(&key) {
            match End::decode(cached) {
                Some(end) => return Ok(end),
                None => tracing::warn!(object = %file, "a cached manifest is damaged; fetching it again"),
            }
        }
        let fetcher = &self.shared.fetcher;
        let deadline = fetcher.deadline();
        let fail = |e: FetchError| match e {
            FetchError::NotFound => StoreError::Missing(file.clone()),
            e => StoreError::io(self.describe_name(file), e.into_io("fetching the end of an object")),
        };
        let suffix = fetcher.block_on(fetcher.get_suffix(file, OBJECT_END, deadline)).map_err(fail)?;
        let mut end = End {
            total: suffix.total,
            start: suffix.total.saturating_sub(suffix.bytes.len() as u64),
            bytes: suffix.bytes,
        };
        if end.start > 0 && end.total <= WHOLE_OBJECT {
            let front = fetcher.block_on(fetcher.get_range(file, 0..end.start, deadline)).map_err(fail)?;
            let mut whole = BytesMut::with_capacity(end.total as usize);
            whole.extend_from_slice(&front);
            whole.extend_from_slice(&end.bytes);
            end = End { total: end.total, start: 0, bytes: whole.freeze() };
        }
        if end.start + end.bytes.len() as u64 != end.total {
            return Err(StoreError::io(
                self.describe_name(file),
                io::Error::new(io::ErrorKind::UnexpectedEof, "the remote returned a short end of the object"),
            ));
        }
        self.shared.cache.put_end(&key, &end.encode());
        Ok(end)
    }
}

/// The last bytes of an object (all of them when `start` is 0) and its length.
#[derive(Clone, Debug)]
struct End {
    total: u64,
    start: u64,
    bytes: Bytes,
}

impl End {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(END_HEADER + self.bytes.len());
        out.extend_from_slice(&self.total.to_le_bytes());
        out.extend_from_slice(&self.start.to_le_bytes());
        out.extend_from_slice(blake3::hash(&self.bytes).as_bytes());
        out.extend_from_slice(&self.bytes);
        out
    }

    /// A cached end, if it is one and whole (a damaged entry is fetched again).
    fn decode(cached: Bytes) -> Option<End> {
        let total = u64::from_le_bytes(cached.get(0..8)?.try_into().ok()?);
        let start = u64::from_le_bytes(cached.get(8..16)?.try_into().ok()?);
        let hash = cached.get(16..END_HEADER)?;
        let bytes = cached.slice(END_HEADER..);
        let whole = start.checked_add(bytes.len() as u64) == Some(total) && blake3::hash(&bytes).as_bytes() == hash;
        whole.then_some(End { total, start, bytes })
    }

    /// The range, when it lies inside these bytes.
    fn slice(&self, offset: u64, len: u64) -> Option<Bytes> {
        let from = offset.checked_sub(self.start)?;
        let to = from.checked_add(len)?;
        (to <= self.bytes.len() as u64).then(|| self.bytes.slice(from as usize..to as usize))
    }
}

impl BlobSource for RemoteBlobs {
    fn open(&self, file: &PondFile) -> Result<Arc<dyn Blob>, StoreError> {
        let end = match file {
            PondFile::Object(_) => Some(self.object_end(file)?),
            PondFile::Pack(_) => None,
            other => return Err(StoreError::InvalidInput(format!("{other} is not part of the large-file store"))),
        };
        let len = OnceLock::new();
        if let Some(end) = &end {
            let _ = len.set(end.total);
        }
        Ok(Arc::new(RemoteBlob {
            file: file.clone(),
            key: FileKey::of(file),
            blobs: self.clone(),
            len,
            end: Mutex::new(end),
        }))
    }

    fn describe(&self, file: &PondFile) -> PathBuf {
        PathBuf::from(self.describe_name(file))
    }

    fn forget(&self, file: &PondFile) -> bool {
        FileKey::of(file).is_some_and(|key| self.shared.cache.forget_end(&key))
    }

    fn reads_ahead(&self) -> bool {
        true
    }
}

/// One object or pack of the replica.
struct RemoteBlob {
    file: PondFile,
    /// The cache's name for it (`None` cannot happen for an object or a pack).
    key: Option<FileKey>,
    blobs: RemoteBlobs,
    /// Known at open for an object; asked of the remote for a pack only if someone wants it.
    len: OnceLock<u64>,
    /// An object's end, fetched at open (`None` for a pack, or once forgotten).
    end: Mutex<Option<End>>,
}

impl RemoteBlob {
    fn shared(&self) -> &Shared {
        &self.blobs.shared
    }

    fn io(&self, e: FetchError) -> io::Error {
        e.into_io(&self.blobs.describe_name(&self.file))
    }
}

impl Blob for RemoteBlob {
    fn len(&self) -> u64 {
        *self.len.get_or_init(|| {
            let fetcher = &self.shared().fetcher;
            match fetcher.block_on(fetcher.get_suffix(&self.file, 1, fetcher.deadline())) {
                Ok(s) => s.total,
                Err(e) => {
                    tracing::warn!(file = %self.file, "could not learn the length of a remote file: {e}");
                    0
                }
            }
        })
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Bytes> {
        if let Some(bytes) =
            self.end.lock().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(|e| e.slice(offset, len))
        {
            return Ok(bytes);
        }
        let shared = self.shared();
        let deadline = shared.fetcher.deadline();
        let wanted = (self.file.clone(), offset, len);
        if let Some(bytes) = shared.memory.take(&wanted) {
            return Ok(bytes);
        }
        let coming = shared.coming().get(&wanted).cloned();
        if let Some(coming) = coming
            && let Some(Ok(bytes)) = coming.wait(deadline)
        {
            // Read now: no need to keep it for later.
            shared.memory.take(&wanted);
            return Ok(bytes);
        }
        if let Some(bytes) = self.key.as_ref().and_then(|k| shared.cache.range(k, offset, len)) {
            return Ok(bytes);
        }
        shared.demand_fetches.fetch_add(1, Ordering::Relaxed);
        let fetcher = &shared.fetcher;
        let bytes = fetcher
            .block_on(fetcher.get_range(&self.file, offset..offset.saturating_add(len), deadline))
            .map_err(|e| self.io(e))?;
        if let Some(key) = &self.key {
            shared.cache.put(key, offset, &bytes, &[(offset, len)]);
        }
        Ok(bytes)
    }

    fn forget_range(&self, offset: u64, len: u64) -> bool {
        let in_memory = self.shared().memory.take(&(self.file.clone(), offset, len));
        let mut end = self.end.lock().unwrap_or_else(|p| p.into_inner());
        if end.as_ref().is_some_and(|e| e.slice(offset, len).is_some()) {
            *end = None;
            self.blobs.forget(&self.file);
            return true;
        }
        drop(end);
        let on_disk = self.key.as_ref().is_some_and(|k| self.shared().cache.forget_range(k, offset, len));
        in_memory.is_some() || on_disk
    }

    fn prefetch(&self, ranges: &[(u64, u64)]) {
        let shared = self.blobs.shared.clone();
        // What is neither in the object's end, cached, nor on its way: claimed as coming.
        let mut wanted: Vec<(u64, u64, Arc<Coming>)> = Vec::new();
        {
            let end = self.end.lock().unwrap_or_else(|p| p.into_inner());
            let mut coming = shared.coming();
            for &(offset, len) in ranges {
                let in_end = end.as_ref().is_some_and(|e| e.slice(offset, len).is_some());
                let cached = self.key.as_ref().is_some_and(|k| shared.cache.contains(k, offset, len));
                let key = (self.file.clone(), offset, len);
                if in_end || cached || coming.contains_key(&key) {
                    continue;
                }
                let c = Arc::new(Coming::default());
                coming.insert(key, c.clone());
                wanted.push((offset, len, c));
            }
        }
        for span in spans(wanted) {
            let (shared, file, key) = (shared.clone(), self.file.clone(), self.key.clone());
            shared.fetcher.clone().spawn(async move { fetch_span(shared, file, key, span).await });
        }
    }
}

type Wanted = (u64, u64, Arc<Coming>);

/// Ranges (ascending) grouped into requests: runs of neighbours at most [`GAP`] apart, each run cut
/// into the fewest requests of at most [`SPAN`] bytes, of about equal size (never a wide request
/// followed by a one-chunk one).
fn spans(ranges: Vec<Wanted>) -> Vec<Vec<Wanted>> {
    let mut runs: Vec<Vec<Wanted>> = Vec::new();
    for r in ranges {
        let joins = runs.last().is_some_and(|run| {
            let end = run[run.len() - 1].0 + run[run.len() - 1].1;
            r.0 >= end && r.0 - end <= GAP
        });
        match runs.last_mut() {
            Some(run) if joins => run.push(r),
            _ => runs.push(vec![r]),
        }
    }
    let mut out = Vec::new();
    for run in runs {
        let bytes = run[run.len() - 1].0 + run[run.len() - 1].1 - run[0].0;
        let parts = bytes.div_ceil(SPAN).max(1) as usize;
        let per = run.len().div_ceil(parts);
        let mut run = run.into_iter().peekable();
        while run.peek().is_some() {
            out.push(run.by_ref().take(per).collect());
        }
    }
    out
}

/// A request's ranges (ascending) cut into segments of whole ranges, each from its first range's
/// start to its last one's end and at most [`SEGMENT`] bytes (unless a range alone is longer):
/// their bytes, and the ranges in each.
fn segments(ranges: &[(u64, u64)]) -> Vec<(std::ops::Range<u64>, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let Some(&(mut from, len)) = ranges.first() else { return out };
    let (mut first, mut to) = (0, from + len);
    for (i, &(offset, len)) in ranges.iter().enumerate().skip(1) {
        if offset + len - from > SEGMENT {
            out.push((from..to, first..i));
            (from, first) = (offset, i);
        }
        to = offset + len;
    }
    out.push((from..to, first..ranges.len()));
    out
}

/// Fetches one span (in one request, its bytes landing in a buffer per segment), hands each range
/// of it to the reads waiting for it, and caches them.
async fn fetch_span(shared: Arc<Shared>, file: PondFile, key: Option<FileKey>, span: Vec<Wanted>) {
    let permit = shared.spans.clone().acquire_owned().await;
    let ranges: Vec<(u64, u64)> = span.iter().map(|(o, l, _)| (*o, *l)).collect();
    let segments = segments(&ranges);
    let (start, end) = (segments[0].0.start, segments[segments.len() - 1].0.end);
    let room = shared.memory.make_room(end - start).await;
    let rooms = room.split(segments.iter().map(|(bytes, _)| bytes.end - bytes.start));
    let plan: Vec<(std::ops::Range<u64>, Holds)> =
        segments.iter().zip(rooms).map(|((bytes, _), room)| (bytes.clone(), Arc::new(room) as Holds)).collect();
    let began = std::time::Instant::now();
    let fetched = shared.fetcher.get_span(&file, &plan, shared.fetcher.deadline()).await;
    drop(plan);
    tracing::debug!(%file, start, bytes = end - start, ms = began.elapsed().as_millis() as u64, "read ahead");
    if let Err(e) = &fetched {
        tracing::debug!(%file, start, end, "read-ahead failed (the read fetches it itself): {e}");
    }
    for ((_, in_segment), i) in segments.iter().zip(0..) {
        for (offset, len, coming) in &span[in_segment.clone()] {
            let result = fetched.as_ref().map_err(Clone::clone).map(|spans: &Vec<Span>| {
                let from = (offset - spans[i].start) as usize;
                spans[i].data.slice(from..from + *len as usize)
            });
            if let Ok(bytes) = &result {
                shared.memory.keep((file.clone(), *offset, *len), bytes.clone());
            }
            shared.coming().remove(&(file.clone(), *offset, *len));
            coming.finish(result);
        }
    }
    drop(span);
    // To the disk cache off the runtime's threads (writes there wait for writeback now and then),
    // each segment let go of once written. The request's place is given up only once its write is
    // queued, and at most [`WRITES_QUEUED`] are: when the disk is slower than the link,
    // read-ahead slows down rather than piling spans up in memory.
    if let (Ok(spans), Some(key)) = (fetched, key) {
        let cache = shared.cache.clone();
        if let Ok(writing) = shared.writes.clone().acquire_owned().await {
            drop(tokio::task::spawn_blocking(move || {
                for (written, (_, in_segment)) in spans.into_iter().zip(segments) {
                    cache.put_span(&key, written.start, &written, &ranges[in_segment]);
                }
                drop(writing);
            }));
        }
    }
    drop(permit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_ranges_share_a_request_and_distant_ones_do_not() {
        let c = || Arc::new(Coming::default());
        let ranges = vec![(100, 50, c()), (160, 50, c()), (10_000_000, 50, c())];
        let got: Vec<Vec<u64>> = spans(ranges).iter().map(|s| s.iter().map(|r| r.0).collect()).collect();
        assert_eq!(got, vec![vec![100, 160], vec![10_000_000]]);
        // 130 chunks in a row, a little over two spans: three requests of 44, 44 and 42 chunks.
        let chunk = SPAN / 64;
        let run: Vec<Wanted> = (0..130).map(|i| (i * (chunk + 20), chunk, c())).collect();
        let sizes: Vec<usize> = spans(run).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![44, 44, 42]);
    }

    #[test]
    fn a_request_is_cut_into_segments_of_whole_chunks_no_longer_than_a_segment() {
        // 100 chunks of 65,600 bytes, 100 bytes apart (a pack's page headers).
        let ranges: Vec<(u64, u64)> = (0..100).map(|i| (5_000 + i * 65_700, 65_600)).collect();
        let cut = segments(&ranges);
        let mut next = 0;
        for (bytes, chunks) in &cut {
            assert_eq!(chunks.start, next, "each chunk in one segment, in order");
            let (last, last_len) = ranges[chunks.end - 1];
            assert_eq!(bytes.clone(), ranges[chunks.start].0..last + last_len, "first chunk's start to last's end");
            assert!(bytes.end - bytes.start <= SEGMENT, "{bytes:?} is longer than a segment");
            next = chunks.end;
        }
        assert_eq!(next, ranges.len());
        let sizes: Vec<usize> = cut.iter().map(|(_, chunks)| chunks.len()).collect();
        assert_eq!(sizes, [31, 31, 31, 7], "31 such chunks fill a segment");
        assert_eq!(segments(&[(7, 3 * SEGMENT)]), [(7..7 + 3 * SEGMENT, 0..1)], "a range longer than a segment");
    }

    fn chunk_key(at: u64) -> ComingKey {
        (PondFile::Pack(crate::large_files::Blake3Hash([1; 32])), at, 10)
    }

    /// Room for a request of `bytes`, if there is some now.
    fn claim(memory: &Arc<ReadAheadMemory>, bytes: u64) -> Option<Arc<Room>> {
        memory.ready().try_start(bytes).then(|| Arc::new(Room { memory: Arc::downgrade(memory), bytes }))
    }

    /// A chunk: 10 bytes of the buffer that `room` goes with.
    struct Slice {
        _buffer: Arc<Room>,
    }

    impl AsRef<[u8]> for Slice {
        fn as_ref(&self) -> &[u8] {
            &[0; 10]
        }
    }

    /// Read-ahead memory of `limit` bytes holding requests of 20 bytes, each arrived as chunks
    /// at `ats`, all kept for their reads.
    fn holding(limit: u64, spans: &[&[u64]]) -> Arc<ReadAheadMemory> {
        let memory = Arc::new(ReadAheadMemory::with_limit(limit));
        for ats in spans {
            let room = claim(&memory, 20).expect("the requests held fit the limit");
            for &at in *ats {
                memory.keep(chunk_key(at), Bytes::from_owner(Slice { _buffer: room.clone() }));
            }
        }
        memory
    }

    /// A read taking the chunk at `at`, and done with it.
    fn read(memory: &ReadAheadMemory, at: u64) -> bool {
        memory.take(&chunk_key(at)).is_some()
    }

    #[test]
    fn a_request_holds_its_room_until_the_last_chunk_of_it_is_read() {
        let memory = holding(40, &[&[0, 10]]);
        assert!(claim(&memory, 20).is_some_and(|r| r.bytes == 20), "20 held and 20 more fit");
        let held = claim(&memory, 30);
        assert!(held.is_none(), "20 held and 30 more do not");
        assert!(read(&memory, 0));
        assert!(claim(&memory, 30).is_none(), "the chunk at 10 still holds its request's buffer");
        assert!(read(&memory, 10));
        assert!(claim(&memory, 30).is_some(), "both chunks read: the buffer and its room are free");
        let empty = Arc::new(ReadAheadMemory::with_limit(5));
        assert!(claim(&empty, 10).is_some(), "a request larger than the limit still goes when nothing is held");
    }

    #[test]
    fn a_claim_split_into_segments_comes_back_a_segment_at_a_time() {
        let memory = Arc::new(ReadAheadMemory::with_limit(40));
        assert!(memory.ready().try_start(40));
        let room = Room { memory: Arc::downgrade(&memory), bytes: 40 };
        let mut parts = room.split([10, 20]).into_iter();
        assert_eq!(memory.ready().held, 30, "what the parts leave comes back at once");
        drop(parts.next());
        assert_eq!(memory.ready().held, 20);
        drop(parts);
        assert_eq!(memory.ready().held, 0);
    }

    fn make_room_later(memory: &Arc<ReadAheadMemory>, bytes: u64) -> tokio::task::JoinHandle<()> {
        let memory = memory.clone();
        tokio::spawn(async move { drop(memory.make_room(bytes).await) })
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_without_room_waits_for_a_slow_reader_past_room_wait_and_nothing_is_dropped() {
        let memory = holding(40, &[&[0, 10], &[20, 30]]);
        let waiting = make_room_later(&memory, 20);
        for at in [0, 10] {
            tokio::time::sleep(ROOM_WAIT * 3 / 4).await;
            assert!(!waiting.is_finished(), "no room until both chunks of a request are read");
            assert!(read(&memory, at), "the chunk at {at} was kept for its read");
        }
        waiting.await.unwrap();
        assert!(read(&memory, 20) && read(&memory, 30), "a read made room: nothing was dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn reads_that_never_free_a_buffer_hold_a_request_back_room_wait_most_at_most() {
        let ats: Vec<u64> = (0..40).map(|i| i * 10).collect();
        let memory = holding(20, &[&ats]);
        let began = tokio::time::Instant::now();
        let waiting = make_room_later(&memory, 10);
        let mut next = ats.iter();
        while !waiting.is_finished() {
            tokio::time::sleep(ROOM_WAIT / 2).await;
            assert!(read(&memory, *next.next().unwrap()));
        }
        assert!(began.elapsed() >= ROOM_WAIT_MOST && began.elapsed() < ROOM_WAIT_MOST + ROOM_WAIT);
        assert!(next.all(|&at| read(&memory, at)), "the chunks not read yet are all still kept");
    }

    #[tokio::test(start_paused = true)]
    async fn when_nobody_reads_the_oldest_chunks_go_after_room_wait_until_a_buffer_is_freed() {
        let memory = holding(40, &[&[40, 50], &[60, 70]]);
        let began = tokio::time::Instant::now();
        drop(memory.make_room(10).await);
        assert!(began.elapsed() >= ROOM_WAIT);
        assert!(!read(&memory, 40) && !read(&memory, 50), "the oldest request's chunks were dropped");
        assert!(read(&memory, 60) && read(&memory, 70), "the next request's chunks were kept");
    }

    #[test]
    fn an_object_end_survives_the_cache_round_trip_and_a_damaged_one_is_refused() {
        let end = End { total: 10, start: 6, bytes: Bytes::from_static(b"wxyz") };
        let back = End::decode(Bytes::from(end.encode())).unwrap();
        assert_eq!(back.slice(7, 2).as_deref(), Some(&b"xy"[..]));
        assert_eq!(back.slice(5, 2), None, "before the end's start");
        assert_eq!(back.slice(8, 3), None, "past the object's end");
        for at in [0, END_HEADER + 1] {
            let mut bad = end.encode();
            bad[at] ^= 1;
            assert!(End::decode(Bytes::from(bad)).is_none(), "a flipped byte at {at} is noticed");
        }
    }
}
