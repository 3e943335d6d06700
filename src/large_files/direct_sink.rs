//! [`DirectSink`]: where a pack's bytes go while it is written. They are gathered in a
//! page-aligned buffer of [`BUF`] bytes; each full buffer is written with `O_DIRECT` by one of the
//! pack's writer threads ([`IN_FLIGHT`] writes at once) while the next one fills, so the bytes go from pond's memory to the disk
//! without a copy into the page cache, and encoding overlaps the disk's work. The last, partial
//! buffer is written at [`DirectSink::finish`]: its whole pages with `O_DIRECT`, the rest through
//! the page cache. The file is made when the first buffer is full: a pack smaller than one buffer
//! never has one, and [`DirectSink::finish`] hands its bytes back ([`SinkOutput::Memory`]) for the
//! store to hold until the next commit writes them (`LargeFileStore::put_small`).
//!
//! Why: writing a 1 GiB file through the page cache cost the daemon half of its CPU (copying
//! into the page cache 34%, `posix_fadvise` dropping it again 8.5%, `sync_file_range` 6.5%, in
//! a profile of `cp`), and the writer waited on it. Nothing reads a pack before it is finished
//! (`LargeDraft` closes its open pack before reading a chunk back), so nothing can see bytes that
//! are still in the buffer.
//!
//! A filesystem that refuses `O_DIRECT`, or a thread that cannot be started, only costs speed: the
//! bytes then go through the page cache, or are written by the caller. A write that fails (EIO,
//! ENOSPC) is reported by the next call (a write, or `finish`), as the file's own error.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tempfile::NamedTempFile;

use crate::aligned_buf::{AlignedBuf, PAGE, Pool, open_direct};

/// Bytes of a pack gathered before they are written.
pub(crate) const BUF: usize = 2 << 20;
/// Buffers being written at once per pack, each by its own writer thread (one more fills).
const IN_FLIGHT: usize = 2;

/// Buffers of finished packs, for the next: a new one per pack cost `tar -x` of many 200 KiB
/// files 10-20% (a fresh mapping faulted in, then unmapped, per file).
static POOL: Pool = Pool::new(4, BUF);

/// Makes the file a sink writes, when its first buffer is full.
pub(crate) type MakeFile = Box<dyn FnOnce() -> io::Result<NamedTempFile> + Send>;

/// Where a finished sink's bytes are.
pub(crate) enum SinkOutput {
    /// All of them, never written: fewer than a buffer.
    Memory(Bytes),
    /// All of them, in this file.
    File(NamedTempFile),
}

/// A pack's file being written (see the module doc). Cloned handles share it: the parquet writer
/// owns one, the pack writer keeps one to [`finish`](DirectSink::finish).
#[derive(Clone)]
pub(crate) struct DirectSink {
    state: Arc<Mutex<Sink>>,
}

struct Sink {
    /// Makes the file, until it is made.
    make: Option<MakeFile>,
    /// The file, once made, as opened for writing through the page cache.
    tmp: Option<NamedTempFile>,
    file: Option<Arc<File>>,
    /// The file's path, for messages (what it will be called, before it is made).
    path: PathBuf,
    /// The buffer being filled, holding the file's bytes from `start`.
    buf: Option<AlignedBuf>,
    len: usize,
    start: u64,
    /// The other buffer, back from the writer.
    spare: Vec<AlignedBuf>,
    direct: Direct,
    writer: Option<Writer>,
    /// Buffers with the writers.
    in_flight: usize,
    /// Set once a write failed: every later call fails the same way.
    failed: Option<(io::ErrorKind, Option<i32>, String)>,
}

enum Direct {
    /// Not opened yet (a pack smaller than a buffer never opens it).
    Untried,
    Open(Arc<File>),
    /// The filesystem refused it: the page cache it is.
    Refused,
}

struct Writer {
    to: Sender<(AlignedBuf, u64)>,
    back: Receiver<(AlignedBuf, io::Result<()>)>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl DirectSink {
    /// A sink whose file `make` makes (empty, open for writing) once a buffer is full; `path`
    /// names it in messages until then.
    pub(crate) fn new(make: MakeFile, path: PathBuf) -> DirectSink {
        DirectSink {
            state: Arc::new(Mutex::new(Sink {
                make: Some(make),
                tmp: None,
                file: None,
                path,
                buf: None,
                len: 0,
                start: 0,
                spare: Vec::new(),
                direct: Direct::Untried,
                writer: None,
                in_flight: 0,
                failed: None,
            })),
        }
    }

    fn sink(&self) -> MutexGuard<'_, Sink> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes what is still buffered and waits for the writer: once this returns `Ok`, every byte
    /// given is in the file it returns (not yet durable: the store fsyncs packs before a commit
    /// names them), or, fewer than a buffer, in the bytes it returns. Once only.
    pub(crate) fn finish(&self) -> io::Result<SinkOutput> {
        let mut sink = self.sink();
        let result = sink.finish();
        sink.stop_writer();
        sink.return_buffers();
        result
    }
}

impl Write for DirectSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.sink().write_all(data)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Bytes are written a buffer at a time (and at `finish`); nothing to do here.
        self.sink().check()
    }
}

impl Sink {
    fn check(&self) -> io::Result<()> {
        match &self.failed {
            None => Ok(()),
            Some((_, Some(code), _)) => Err(io::Error::from_raw_os_error(*code)),
            Some((kind, None, text)) => Err(io::Error::new(*kind, text.clone())),
        }
    }

    fn fail(&mut self, e: io::Error) -> io::Error {
        self.failed = Some((e.kind(), e.raw_os_error(), e.to_string()));
        e
    }

    fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.check()?;
        while !data.is_empty() {
            let spare = self.spare.pop();
            let buf = self.buf.get_or_insert_with(|| spare.unwrap_or_else(|| POOL.take(BUF)));
            let n = (BUF - self.len).min(data.len());
            buf.as_mut_slice()[self.len..self.len + n].copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
            if self.len == BUF {
                self.submit()?;
            }
        }
        Ok(())
    }

    /// Hands the full buffer to the writer (or writes it here when there is none).
    fn submit(&mut self) -> io::Result<()> {
        if self.in_flight == IN_FLIGHT {
            self.reclaim_one()?;
        }
        self.check()?;
        let file = self.file()?;
        let Some(buf) = self.buf.take() else { return Ok(()) };
        let at = self.start;
        self.start += BUF as u64;
        self.len = 0;
        if let Some(direct) = self.direct_file() {
            if self.writer.is_none() {
                self.writer = spawn_writer(direct.clone(), file.clone());
            }
            let buf = match &self.writer {
                Some(w) => match w.to.send((buf, at)) {
                    Ok(()) => {
                        self.in_flight += 1;
                        return Ok(());
                    }
                    Err(_) => {
                        // The writers are gone (a panic): what they held may not be written.
                        self.stop_writer();
                        return Err(self.fail(io::Error::other("the pack's writer threads stopped")));
                    }
                },
                // No writer (a thread limit): written here, held up by the disk but not wrong.
                None => buf,
            };
            let written = write_direct_or_cached(&direct, &file, buf.as_slice(), at);
            self.spare.push(buf);
            return written.map_err(|e| self.fail(e));
        }
        let written = file.write_all_at(buf.as_slice(), at);
        self.spare.push(buf);
        written.map_err(|e| self.fail(e))
    }

    /// Waits for one buffer with the writers; keeps it as a spare; reports its write's error.
    fn reclaim_one(&mut self) -> io::Result<()> {
        self.in_flight -= 1;
        let back = self.writer.as_ref().map(|w| w.back.recv());
        match back {
            Some(Ok((buf, result))) => {
                self.spare.push(buf);
                result.map_err(|e| self.fail(e))
            }
            _ => Err(self.fail(io::Error::other("the pack's writer thread stopped"))),
        }
    }

    /// Waits for every buffer with the writers; reports the first error.
    fn reclaim(&mut self) -> io::Result<()> {
        let mut first = Ok(());
        while self.in_flight > 0 {
            let result = self.reclaim_one();
            if first.is_ok() {
                first = result;
            }
        }
        first.and_then(|()| self.check())
    }

    /// The file, made on first use.
    fn file(&mut self) -> io::Result<Arc<File>> {
        if let Some(file) = &self.file {
            return Ok(file.clone());
        }
        let Some(make) = self.make.take() else {
            return Err(self.fail(io::Error::other("the pack's file could not be made")));
        };
        let made = make().and_then(|tmp| Ok((tmp.as_file().try_clone()?, tmp)));
        let (file, tmp) = made.map_err(|e| self.fail(e))?;
        self.path = tmp.path().to_path_buf();
        self.tmp = Some(tmp);
        let file = Arc::new(file);
        self.file = Some(file.clone());
        Ok(file)
    }

    /// The `O_DIRECT` descriptor, opened on first use; `None` where the filesystem refuses it.
    fn direct_file(&mut self) -> Option<Arc<File>> {
        if let Direct::Untried = self.direct {
            self.direct = match open_direct(&self.path) {
                Ok(f) => Direct::Open(Arc::new(f)),
                Err(e) => {
                    tracing::debug!(path = %self.path.display(), "O_DIRECT refused ({e}): packs go through the page cache");
                    Direct::Refused
                }
            };
        }
        match &self.direct {
            Direct::Open(f) => Some(f.clone()),
            _ => None,
        }
    }

    fn finish(&mut self) -> io::Result<SinkOutput> {
        self.reclaim()?;
        if self.file.is_none() {
            let bytes = match self.buf.take() {
                Some(buf) => {
                    let bytes = Bytes::copy_from_slice(&buf.as_slice()[..self.len]);
                    self.spare.push(buf);
                    bytes
                }
                None => Bytes::new(),
            };
            self.len = 0;
            // Nothing more may be written: a later write fails instead of making a file.
            self.make = None;
            return Ok(SinkOutput::Memory(bytes));
        }
        let file = self.file()?;
        if let Some(buf) = self.buf.take() {
            let bytes = &buf.as_slice()[..self.len];
            let whole = self.len / PAGE * PAGE;
            let written = match &self.direct {
                // Written through O_DIRECT so far: the partial buffer's whole pages too.
                Direct::Open(direct) if whole > 0 => write_direct_or_cached(direct, &file, &bytes[..whole], self.start)
                    .and_then(|()| file.write_all_at(&bytes[whole..], self.start + whole as u64)),
                _ => file.write_all_at(bytes, self.start),
            };
            self.start += self.len as u64;
            self.len = 0;
            self.spare.push(buf);
            written.map_err(|e| self.fail(e))?;
        }
        let tmp = self.tmp.take().ok_or_else(|| self.fail(io::Error::other("the pack was finished already")))?;
        Ok(SinkOutput::File(tmp))
    }

    /// Gives the buffers back to the pool: a finished pack writes nothing more, and a pack's
    /// [`DirectSink`] lives on with its draft until the commit (a buffer dropped instead came back
    /// from `calloc` as heap memory zeroed by hand: 5% of the daemon's CPU in `tar -x` of 200 KiB
    /// files).
    fn return_buffers(&mut self) {
        for buf in self.buf.take().into_iter().chain(self.spare.drain(..)) {
            POOL.give_back(buf);
        }
    }

    fn stop_writer(&mut self) {
        if let Some(Writer { to, back, threads }) = self.writer.take() {
            drop((to, back));
            for thread in threads {
                let _ = thread.join();
            }
        }
        self.in_flight = 0;
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop_writer();
        self.return_buffers();
    }
}

/// Writes `bytes` (whole pages, page-aligned in memory) at `at` with `O_DIRECT`; through the page
/// cache if the filesystem turns the direct write down after all (EINVAL).
fn write_direct_or_cached(direct: &File, cached: &File, bytes: &[u8], at: u64) -> io::Result<()> {
    match direct.write_all_at(bytes, at) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => cached.write_all_at(bytes, at),
        other => other,
    }
}

/// The writer threads of one pack ([`IN_FLIGHT`]): each writes a full buffer it is given and hands
/// it back with the result. `None` when no thread can be started (the caller then writes itself).
fn spawn_writer(direct: Arc<File>, cached: Arc<File>) -> Option<Writer> {
    let (to, jobs) = channel::<(AlignedBuf, u64)>();
    let jobs = Arc::new(Mutex::new(jobs));
    let (done, back) = channel();
    let mut threads = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (jobs, done, direct, cached) = (jobs.clone(), done.clone(), direct.clone(), cached.clone());
        let spawned = std::thread::Builder::new().name("pond-pack-writer".into()).spawn(move || {
            loop {
                let job = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok((buf, at)) = job else { return };
                let result = write_direct_or_cached(&direct, &cached, buf.as_slice(), at);
                if done.send((buf, result)).is_err() {
                    return;
                }
            }
        });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => tracing::debug!("a writer thread for a pack could not start ({e})"),
        }
    }
    if threads.is_empty() {
        tracing::debug!("no writer thread for a pack: writing it in the caller");
        return None;
    }
    Some(Writer { to, back, threads })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
        got.iter().zip(want).position(|(a, b)| a != b).or((got.len() != want.len()).then(|| got.len().min(want.len())))
    }

    #[test]
    fn fewer_bytes_than_a_buffer_come_back_in_memory_and_more_are_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        for (i, size) in [0, 1, PAGE + 3, BUF - 1, BUF, BUF + PAGE, 3 * BUF + 12_345].into_iter().enumerate() {
            let made = Arc::new(AtomicBool::new(false));
            let (flag, tmp_dir) = (made.clone(), dir.path().to_path_buf());
            let make: MakeFile = Box::new(move || {
                flag.store(true, Ordering::SeqCst);
                tempfile::Builder::new().prefix(&format!("pack-{i}-")).tempfile_in(tmp_dir)
            });
            let mut sink = DirectSink::new(make, dir.path().join(format!("pack-{i}")));
            let data = pattern(size, i as u8);
            // In uneven pieces, as parquet's page writer hands them over.
            for piece in data.chunks(70_001) {
                sink.write_all(piece).unwrap();
                sink.flush().unwrap();
            }
            let back = match sink.finish().unwrap() {
                SinkOutput::Memory(bytes) => {
                    assert!(size < BUF, "{size} bytes, at least a buffer, came back in memory");
                    assert!(!made.load(Ordering::SeqCst), "{size} bytes: a file was made for bytes kept in memory");
                    bytes.to_vec()
                }
                SinkOutput::File(tmp) => {
                    assert!(size >= BUF, "{size} bytes, less than a buffer, were written to a file");
                    std::fs::read(tmp.path()).unwrap()
                }
            };
            if let Some(at) = first_difference(&back, &data) {
                panic!("size {size}: first difference at byte {at} ({} bytes back)", back.len());
            }
        }
    }

    #[test]
    fn a_failed_write_is_reported_and_sticks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pack");
        // Read-only descriptor: every write through it fails with EBADF.
        std::fs::write(&path, b"").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let make: MakeFile =
            Box::new(move || Ok(NamedTempFile::from_parts(file, tempfile::TempPath::try_from_path(path)?)));
        let mut sink = DirectSink::new(make, dir.path().join("pack"));
        let result = sink.write_all(&pattern(BUF + 1, 0)).and_then(|()| sink.finish().map(|_| ()));
        let e = result.expect_err("the write fails");
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
        assert_eq!(sink.finish().err().and_then(|e| e.raw_os_error()), Some(libc::EBADF), "and keeps failing");
    }

    #[test]
    fn a_file_that_cannot_be_made_fails_the_write_that_needed_it() {
        let dir = tempfile::tempdir().unwrap();
        let make: MakeFile = Box::new(|| Err(io::Error::from_raw_os_error(libc::ENOSPC)));
        let mut sink = DirectSink::new(make, dir.path().join("pack"));
        sink.write_all(&pattern(BUF - 1, 0)).expect("less than a buffer needs no file");
        let e = sink.write_all(&pattern(2, 0)).expect_err("a full buffer needs the file");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        assert_eq!(sink.finish().err().and_then(|e| e.raw_os_error()), Some(libc::ENOSPC), "and keeps failing");
    }
}
