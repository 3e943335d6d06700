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
//! (kept until read: with the requests on their way, [`READ_AHEAD_MEMORY`] bytes at most), and
//! written to the cache off the request threads (with `O_DIRECT`, from the page-aligned buffer the
//! request's body was read into: `span_buf`).

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, Semaphore};

use super::cache::{ChunkCache, FileKey};
use super::error::FetchError;
use super::fetch::Fetcher;
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
/// Read-ahead bytes a mount holds in memory, whatever the number of readers: requests on their way
/// and chunks arrived but not yet read. A request with no room waits while reads take what came
/// before it; only when none does ([`ROOM_WAIT`]) are the oldest chunks dropped (left to the disk
/// cache, and read from there). So one sequential reader loses nothing it asked for: the part of
/// its window (`large_files::reader`, 96 MiB) past this bound waits to be requested. Measured with
/// scripts/bench-remote.sh's four readers at once, the daemon's peak RSS was 207-229 MiB while
/// arrived chunks had a bound of their own (96 MiB) besides the requests' (64 MiB); with one
/// bound for both, 153 MiB at 64 MiB, 166-187 at 80 and 174-196 at 96, while one reader's cold
/// read through 20 ms a request ran at 750-846, 805-835 and 852-901 MiB/s.
pub const READ_AHEAD_MEMORY: u64 = 80 << 20;
/// How long a read-ahead request with no room in [`READ_AHEAD_MEMORY`] waits for a read to take a
/// chunk; a read that does restarts the wait (a slow reader is waited for), and when none does,
/// the oldest chunks are dropped for it (a reader that stopped, or whose file was closed).
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
/// requests on their way. Together at most `limit` bytes ([`READ_AHEAD_MEMORY`]; tests pass less).
struct Ready {
    chunks: HashMap<ComingKey, Bytes>,
    order: std::collections::VecDeque<ComingKey>,
    bytes: u64,
    in_flight: u64,
    limit: u64,
}

impl Default for Ready {
    fn default() -> Ready {
        Ready::with_limit(READ_AHEAD_MEMORY)
    }
}

impl Ready {
    fn with_limit(limit: u64) -> Ready {
        Ready { chunks: HashMap::new(), order: Default::default(), bytes: 0, in_flight: 0, limit }
    }

    fn take(&mut self, key: &ComingKey) -> Option<Bytes> {
        let bytes = self.chunks.remove(key)?;
        self.bytes -= bytes.len() as u64;
        Some(bytes)
    }

    /// Counts a request of `bytes` as on its way if it fits beside what is held (or nothing is).
    fn try_start(&mut self, bytes: u64) -> bool {
        let fits = self.bytes + self.in_flight + bytes <= self.limit || self.bytes + self.in_flight == 0;
        if fits {
            self.in_flight += bytes;
        }
        fits
    }

    /// Counts a request of `bytes` as on its way, dropping the oldest chunks kept to make room.
    fn start_anyway(&mut self, bytes: u64) {
        self.in_flight += bytes;
        self.fit();
    }

    /// A request of `bytes` has ended (its chunks are [`Ready::keep`]'s now, if it brought any).
    fn end(&mut self, bytes: u64) {
        self.in_flight = self.in_flight.saturating_sub(bytes);
    }

    /// Keeps `bytes` until read (dropping the oldest kept if, unexpectedly, they do not fit).
    fn keep(&mut self, key: ComingKey, bytes: Bytes) {
        self.bytes += bytes.len() as u64;
        if let Some(old) = self.chunks.insert(key.clone(), bytes) {
            self.bytes -= old.len() as u64;
        }
        self.order.push_back(key);
        self.fit();
    }

    /// Drops the oldest chunks kept until they and the requests on their way fit the limit.
    fn fit(&mut self) {
        while self.bytes + self.in_flight > self.limit {
            let Some(oldest) = self.order.pop_front() else { break };
            self.take(&oldest);
        }
        // Keys of chunks taken stay in `order` until they reach the front: bound them too.
        if self.order.len() > 4 * self.chunks.len() + 1024 {
            self.order.retain(|k| self.chunks.contains_key(k));
        }
    }
}

/// What read-ahead holds in memory ([`Ready`]), shared by the requests that fill it and the reads
/// that empty it.
#[derive(Default)]
struct ReadAheadMemory {
    ready: Mutex<Ready>,
    /// Told when a read takes chunks (room for a request waiting for some).
    taken: Notify,
}

impl ReadAheadMemory {
    #[cfg(test)]
    fn with_limit(limit: u64) -> ReadAheadMemory {
        ReadAheadMemory { ready: Mutex::new(Ready::with_limit(limit)), taken: Notify::new() }
    }

    fn ready(&self) -> MutexGuard<'_, Ready> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A chunk that arrived ahead, handed to its read (and its room to a request waiting for it).
    fn take(&self, key: &ComingKey) -> Option<Bytes> {
        let taken = self.ready().take(key);
        if taken.is_some() {
            self.taken.notify_waiters();
        }
        taken
    }

    /// Room for a read-ahead request of `bytes`: waits while reads take what arrived before it,
    /// and once none has for [`ROOM_WAIT`] (or after [`ROOM_WAIT_MOST`]), drops the oldest chunks.
    async fn make_room(&self, bytes: u64) {
        let last = tokio::time::Instant::now() + ROOM_WAIT_MOST;
        loop {
            let taken = self.taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            if self.ready().try_start(bytes) {
                return;
            }
            let until = (tokio::time::Instant::now() + ROOM_WAIT).min(last);
            if tokio::time::timeout_at(until, taken).await.is_err() {
                self.ready().start_anyway(bytes);
                return;
            }
        }
    }
}

struct Shared {
    fetcher: Arc<Fetcher>,
    cache: Arc<ChunkCache>,
    coming: Mutex<HashMap<ComingKey, Arc<Coming>>>,
    memory: ReadAheadMemory,
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
                memory: ReadAheadMemory::default(),
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

/// Fetches one span, caches each range of it, and hands each to the reads waiting for it.
async fn fetch_span(shared: Arc<Shared>, file: PondFile, key: Option<FileKey>, span: Vec<Wanted>) {
    let permit = shared.spans.clone().acquire_owned().await;
    let (start, end) = (span[0].0, span[span.len() - 1].0 + span[span.len() - 1].1);
    shared.memory.make_room(end - start).await;
    let began = std::time::Instant::now();
    let fetched = shared.fetcher.get_span(&file, start..end, shared.fetcher.deadline()).await;
    shared.memory.ready().end(end - start);
    tracing::debug!(%file, start, bytes = end - start, ms = began.elapsed().as_millis() as u64, "read ahead");
    if let Err(e) = &fetched {
        tracing::debug!(%file, start, end, "read-ahead failed (the read fetches it itself): {e}");
    }
    let ranges: Vec<(u64, u64)> = span.iter().map(|(o, l, _)| (*o, *l)).collect();
    for (offset, len, coming) in span {
        let result = fetched.as_ref().map_err(Clone::clone).map(|all| {
            let from = (offset - start) as usize;
            all.data.slice(from..from + len as usize)
        });
        if let Ok(bytes) = &result {
            shared.memory.ready().keep((file.clone(), offset, len), bytes.clone());
        }
        shared.coming().remove(&(file.clone(), offset, len));
        coming.finish(result);
    }
    // To the disk cache off the runtime's threads (writes there wait for writeback now and then).
    // The request's place is given up only once its write is queued, and at most
    // [`WRITES_QUEUED`] are: when the disk is slower than the link, read-ahead slows down rather
    // than piling spans up in memory.
    if let (Ok(all), Some(key)) = (fetched, key) {
        let cache = shared.cache.clone();
        if let Ok(writing) = shared.writes.clone().acquire_owned().await {
            drop(tokio::task::spawn_blocking(move || {
                cache.put_span(&key, start, &all, &ranges);
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

    fn chunk_key(at: u64) -> ComingKey {
        (PondFile::Pack(crate::large_files::Blake3Hash([1; 32])), at, 10)
    }

    fn chunk() -> Bytes {
        Bytes::from_static(&[0; 10])
    }

    #[test]
    fn read_ahead_memory_counts_requests_on_their_way_and_chunks_not_yet_read() {
        let mut ready = Ready::with_limit(40);
        assert!(ready.try_start(30));
        assert!(!ready.try_start(20), "30 on their way and 20 more: past the limit");
        ready.end(30);
        for at in [0, 10, 20] {
            ready.keep(chunk_key(at), chunk());
        }
        assert!(ready.try_start(10));
        assert!(!ready.try_start(1), "three chunks unread and one request on its way fill it");
        assert!(ready.take(&chunk_key(0)).is_some());
        assert!(ready.try_start(10), "a chunk read gives its room back");
        ready.start_anyway(10);
        assert_eq!(ready.take(&chunk_key(10)), None, "made room by dropping the oldest chunk");
        assert!(ready.take(&chunk_key(20)).is_some());
        let mut empty = Ready::with_limit(5);
        assert!(empty.try_start(10), "a request larger than the limit still goes when nothing is held");
    }

    /// Read-ahead memory of `limit` bytes holding a chunk at each of `ats`.
    fn holding(limit: u64, ats: impl IntoIterator<Item = u64>) -> Arc<ReadAheadMemory> {
        let memory = Arc::new(ReadAheadMemory::with_limit(limit));
        for at in ats {
            memory.ready().keep(chunk_key(at), chunk());
        }
        memory
    }

    fn make_room_later(memory: &Arc<ReadAheadMemory>, bytes: u64) -> tokio::task::JoinHandle<()> {
        let memory = memory.clone();
        tokio::spawn(async move { memory.make_room(bytes).await })
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_without_room_waits_for_a_read_and_nothing_is_dropped() {
        let memory = holding(20, [0, 10]);
        let waiting = make_room_later(&memory, 10);
        tokio::time::sleep(ROOM_WAIT / 2).await;
        assert!(!waiting.is_finished(), "no room yet: the request waits");
        assert!(memory.take(&chunk_key(0)).is_some());
        waiting.await.unwrap();
        assert!(memory.take(&chunk_key(10)).is_some(), "a read made room: nothing was dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_is_waited_for_past_room_wait() {
        let memory = holding(40, [0, 10, 20, 30]);
        let waiting = make_room_later(&memory, 20);
        for at in [0, 10] {
            tokio::time::sleep(ROOM_WAIT * 3 / 4).await;
            assert!(!waiting.is_finished(), "room for 20 bytes only once two chunks are read");
            assert!(memory.take(&chunk_key(at)).is_some(), "the chunk at {at} was kept for its read");
        }
        waiting.await.unwrap();
        assert!(memory.take(&chunk_key(20)).is_some() && memory.take(&chunk_key(30)).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn reads_that_never_make_enough_room_hold_a_request_back_room_wait_most_at_most() {
        let memory = holding(40, [100, 110, 120, 130]);
        let began = tokio::time::Instant::now();
        let waiting = make_room_later(&memory, 10);
        let mut next = 140;
        while !waiting.is_finished() {
            tokio::time::sleep(ROOM_WAIT / 2).await;
            memory.take(&chunk_key(next - 40));
            memory.ready().keep(chunk_key(next), chunk());
            next += 10;
        }
        assert!(began.elapsed() >= ROOM_WAIT_MOST && began.elapsed() < ROOM_WAIT_MOST + ROOM_WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn when_nobody_reads_the_oldest_chunk_is_dropped_after_room_wait_and_only_it() {
        let memory = holding(40, [40, 50, 60, 70]);
        let began = tokio::time::Instant::now();
        memory.make_room(10).await;
        assert!(began.elapsed() >= ROOM_WAIT);
        assert_eq!(memory.take(&chunk_key(40)), None);
        assert!(memory.take(&chunk_key(50)).is_some());
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
