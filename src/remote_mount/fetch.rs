//! [`Fetcher`]: requests to a replica's object store, each bounded in time. It owns the runtime the
//! requests run on, retries what may pass (a refused connection, a server error, no answer) with
//! backoff until the request's deadline (`-o timeout`), and gives up at once on what cannot
//! (a missing object, a range past the end, refused credentials). One attempt may take a third of
//! the request's time (at least [`MIN_ATTEMPT`]), so an attempt stuck on a dead connection leaves
//! time for another.
//!
//! **A remote that went away.** Once a request has used up its whole deadline, the remote counts as
//! down: later requests make one short attempt ([`DOWN_ATTEMPT`]) instead of waiting out the full
//! timeout again, so reads of what is not cached fail quickly (EIO) and the mount's few request
//! threads stay free for what is. The first request that succeeds brings it back up.
//!
//! Requests are counted ([`Fetcher::requests`]): the benchmark and tests check round trips.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectMeta, ObjectStore};

use super::error::FetchError;
use super::span_buf::{Holds, SegmentedBuf, Span};
use crate::layout::PondFile;

/// The first pause between attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// While the remote is down, the one attempt a request makes is this long at most.
pub const DOWN_ATTEMPT: Duration = Duration::from_secs(1);
/// One attempt gets a third of the request's time, but at least this long (a wide read-ahead
/// request on a slow link takes seconds): so a request stuck on a dead connection is tried again
/// on a new one before the request's time is up.
const MIN_ATTEMPT: Duration = Duration::from_secs(5);
/// Worker threads of the request runtime: requests wait on the network, not the CPU.
const WORKERS: usize = 2;

/// Requests to one remote, in bounded time.
pub struct Fetcher {
    store: Arc<dyn ObjectStore>,
    url: String,
    timeout: Duration,
    /// Always `Some` until dropped (see `Drop`).
    rt: Option<tokio::runtime::Runtime>,
    down: AtomicBool,
    requests: AtomicU64,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("url", &self.url).field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

/// A whole object as fetched: its bytes and what the store says of it.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub bytes: Bytes,
    pub meta: ObjectMeta,
}

/// The end of an object: `bytes` are its last bytes, `total` its length.
#[derive(Clone, Debug)]
pub struct Suffix {
    pub bytes: Bytes,
    pub total: u64,
}

impl Fetcher {
    pub fn new(store: Arc<dyn ObjectStore>, url: &str, timeout: Duration) -> std::io::Result<Fetcher> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("pond-remote")
            .enable_all()
            .build()?;
        Ok(Fetcher {
            store,
            url: url.trim_end_matches('/').to_string(),
            timeout,
            rt: Some(rt),
            down: AtomicBool::new(false),
            requests: AtomicU64::new(0),
        })
    }

    /// The replica's URL (no trailing `/`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How long a request may take, retries included.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Requests sent so far (attempts, retries included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// A deadline for a request starting now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// Runs `fut` on the request runtime and waits for it (from a thread outside the runtime).
    pub fn block_on<T>(&self, fut: impl Future<Output = T>) -> T {
        self.runtime().block_on(fut)
    }

    /// Starts `fut` on the request runtime.
    pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.runtime().spawn(fut);
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("the runtime lives as long as the fetcher")
    }

    fn location(file: &PondFile) -> StorePath {
        // Layout names are plain ASCII without `.`/`..` segments: `from` keeps them as they are.
        StorePath::from(file.name())
    }

    /// `len` bytes of `file` at `range` (exactly: fewer is [`FetchError::PastEnd`]).
    pub async fn get_range(&self, file: &PondFile, range: Range<u64>, deadline: Instant) -> Result<Bytes, FetchError> {
        let location = Self::location(file);
        let want = range.end - range.start;
        let bytes = self
            .retrying(deadline, || {
                let options = GetOptions { range: Some(GetRange::Bounded(range.clone())), ..Default::default() };
                let location = location.clone();
                async move { self.store.get_opts(&location, options).await?.bytes().await }
            })
            .await?;
        if bytes.len() as u64 != want {
            return Err(FetchError::PastEnd);
        }
        Ok(bytes)
    }

    /// The bytes of `segments` of `file` (ranges, ascending), each in a pooled, page-aligned buffer
    /// of its own ([`Span`]) that holds its `Holds`: read-ahead's requests, which the disk cache
    /// writes with `O_DIRECT`. One request from the first one's start to the last one's end (the
    /// bytes between segments are let go; more or fewer bytes than asked is
    /// [`FetchError::PastEnd`]).
    pub async fn get_span(
        &self,
        file: &PondFile,
        segments: &[(Range<u64>, Holds)],
        deadline: Instant,
    ) -> Result<Vec<Span>, FetchError> {
        let location = Self::location(file);
        let (Some(first), Some(last)) = (segments.first(), segments.last()) else { return Ok(Vec::new()) };
        let range = first.0.start..last.0.end;
        let spans = self
            .retrying(deadline, || {
                let options = GetOptions { range: Some(GetRange::Bounded(range.clone())), ..Default::default() };
                let location = location.clone();
                async move {
                    let got = self.store.get_opts(&location, options).await?;
                    let mut buf = SegmentedBuf::new(segments);
                    match got.payload {
                        GetResultPayload::File(file, _) => {
                            let from = got.range.start;
                            let read = tokio::task::spawn_blocking(move || buf.read_from(&file, from).map(|()| buf));
                            buf = read.await.map_err(generic)?.map_err(generic)?;
                        }
                        GetResultPayload::Stream(mut body) => {
                            while let Some(piece) = body.next().await {
                                if !buf.fill(&piece?) {
                                    return Ok(None);
                                }
                            }
                        }
                    }
                    Ok(buf.is_full().then(|| buf.freeze()))
                }
            })
            .await?;
        spans.ok_or(FetchError::PastEnd)
    }

    /// The last `n` bytes of `file` (all of it when shorter) and its length.
    pub async fn get_suffix(&self, file: &PondFile, n: u64, deadline: Instant) -> Result<Suffix, FetchError> {
        let location = Self::location(file);
        self.retrying(deadline, || {
            let options = GetOptions { range: Some(GetRange::Suffix(n)), ..Default::default() };
            let location = location.clone();
            async move {
                let got = self.store.get_opts(&location, options).await?;
                let total = got.meta.size;
                let bytes = got.bytes().await?;
                Ok(Suffix { bytes, total })
            }
        })
        .await
    }

    /// All of `file`, refused past `max` bytes (a table file is small; a remote that claims
    /// otherwise is not believed into memory).
    pub async fn get_whole(&self, file: &PondFile, max: u64, deadline: Instant) -> Result<Fetched, FetchError> {
        let location = Self::location(file);
        self.retrying(deadline, || {
            let location = location.clone();
            async move {
                let got = self.store.get_opts(&location, GetOptions::default()).await?;
                let meta = got.meta.clone();
                if meta.size > max {
                    return Err(object_store::Error::NotSupported {
                        source: format!("{location} is {} bytes, more than the {max} a table file may be", meta.size)
                            .into(),
                    });
                }
                let mut bytes = Vec::with_capacity(meta.size as usize);
                let mut stream = got.into_stream();
                while let Some(piece) = stream.next().await {
                    let piece = piece?;
                    if (bytes.len() + piece.len()) as u64 > max {
                        return Err(object_store::Error::NotSupported {
                            source: format!("{location} is longer than the {max} bytes a table file may be").into(),
                        });
                    }
                    bytes.extend_from_slice(&piece);
                }
                Ok(Fetched { bytes: bytes.into(), meta })
            }
        })
        .await
    }

    /// Downloads `file` into `dest` (created or truncated; at most `max` bytes) and returns what the
    /// store says of it with the BLAKE3 of what was written. A failed attempt starts over.
    pub async fn get_to_file(
        &self,
        file: &PondFile,
        dest: &std::path::Path,
        max: u64,
        deadline: Instant,
    ) -> Result<(ObjectMeta, blake3::Hash), FetchError> {
        use std::io::Write;
        let location = Self::location(file);
        self.retrying(deadline, || {
            let location = location.clone();
            async move {
                let got = self.store.get_opts(&location, GetOptions::default()).await?;
                let meta = got.meta.clone();
                let too_long = || object_store::Error::NotSupported {
                    source: format!("{location} is longer than the {max} bytes a table file may be").into(),
                };
                if meta.size > max {
                    return Err(too_long());
                }
                // A local failure (the cache's disk) is not the remote's: not retried.
                let local = |e: std::io::Error| object_store::Error::NotSupported {
                    source: format!("writing {}: {e}", dest.display()).into(),
                };
                // Readable by its owner only, as a pond's own files are.
                let mut out = std::os::unix::fs::OpenOptionsExt::mode(
                    std::fs::OpenOptions::new().write(true).create(true).truncate(true),
                    0o600,
                )
                .open(dest)
                .map_err(local)?;
                let (mut hasher, mut written) = (blake3::Hasher::new(), 0u64);
                let mut stream = got.into_stream();
                while let Some(piece) = stream.next().await {
                    let piece = piece?;
                    written += piece.len() as u64;
                    if written > max {
                        return Err(too_long());
                    }
                    hasher.update(&piece);
                    out.write_all(&piece).map_err(local)?;
                }
                Ok((meta, hasher.finalize()))
            }
        })
        .await
    }

    /// What the remote holds under `prefix` (a directory name, no trailing `/`) whose name sorts
    /// after `offset` (everything when `None`).
    pub async fn list(
        &self,
        prefix: &str,
        offset: Option<&str>,
        deadline: Instant,
    ) -> Result<Vec<ObjectMeta>, FetchError> {
        let prefix = StorePath::from(prefix);
        let offset = offset.map(StorePath::from);
        self.retrying(deadline, || {
            let (prefix, offset) = (prefix.clone(), offset.clone());
            async move {
                let mut stream = match &offset {
                    Some(offset) => self.store.list_with_offset(Some(&prefix), offset),
                    None => self.store.list(Some(&prefix)),
                };
                let mut out = Vec::new();
                while let Some(meta) = stream.next().await {
                    out.push(meta?);
                }
                Ok(out)
            }
        })
        .await
    }

    /// Runs `op` until it succeeds, fails for good, or `deadline` passes (see the module docs).
    async fn retrying<T, F, Fut>(&self, deadline: Instant, mut op: F) -> Result<T, FetchError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let mut pause = FIRST_BACKOFF;
        let mut last = String::from("none");
        loop {
            let now = Instant::now();
            let was_down = self.down.load(Ordering::Relaxed);
            if now >= deadline {
                self.down.store(true, Ordering::Relaxed);
                return Err(FetchError::TimedOut(self.timeout, last));
            }
            let attempt = if was_down { DOWN_ATTEMPT } else { (self.timeout / 3).max(MIN_ATTEMPT) };
            let attempt_ends = deadline.min(now + attempt);
            self.requests.fetch_add(1, Ordering::Relaxed);
            match tokio::time::timeout_at(attempt_ends.into(), op()).await {
                Ok(Ok(v)) => {
                    if was_down {
                        tracing::info!(url = %self.url, "the remote answers again");
                    }
                    self.down.store(false, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(e)) => {
                    if let Some(done) = permanent(&e) {
                        return Err(done);
                    }
                    last = e.to_string();
                }
                Err(_) => last = "no answer".to_string(),
            }
            if was_down {
                return Err(FetchError::TimedOut(self.timeout, format!("the remote is down: {last}")));
            }
            tracing::debug!(url = %self.url, "request failed, retrying: {last}");
            let wake = (Instant::now() + pause).min(deadline);
            tokio::time::sleep_until(wake.into()).await;
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        // The last holder may be a read-ahead task on the runtime itself, where dropping a runtime
        // (which waits for its tasks) is not allowed: let it wind down in the background instead.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The failure `e` is final (retrying cannot change it): which one.
fn permanent(e: &object_store::Error) -> Option<FetchError> {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => Some(FetchError::NotFound),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } | E::NotSupported { .. } => {
            Some(FetchError::Refused(e.to_string()))
        }
        E::InvalidPath { .. } | E::NotImplemented { .. } | E::UnknownConfigurationKey { .. } => {
            Some(FetchError::Refused(e.to_string()))
        }
        _ if past_end(e) => Some(FetchError::PastEnd),
        _ => None,
    }
}

/// A range past the end of the object: S3's 416, or a local file shorter than the range.
fn past_end(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if text.contains("status code: 416")
            || text.contains("Range Not Satisfiable")
            || text.contains("object was only")
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A local error on the way to a request's bytes (reading a replica directory's file), as the
/// object store's own errors are: retried like them.
fn generic(e: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
    object_store::Error::Generic { store: "replica", source: Box::new(e) }
}
