//! [`DirectSink`]: where a pack's bytes go while it is written. They are gathered in a
//! page-aligned buffer of [`BUF`] bytes; each full buffer is written with `O_DIRECT` by one of the
//! pack's writer threads ([`IN_FLIGHT`] writes at once) while the next one fills, so the bytes go from pond's memory to the disk
//! without a copy into the page cache, and encoding overlaps the disk's work. The last, partial
//! buffer is written at [`DirectSink::finish`]: its whole pages with `O_DIRECT`, the rest through
//! the page cache. A pack smaller than one buffer is written once, through the page cache.
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

use crate::aligned_buf::{AlignedBuf, PAGE, Pool, open_direct};

/// Bytes of a pack gathered before they are written.
pub(crate) const BUF: usize = 2 << 20;
/// Buffers being written at once per pack, each by its own writer thread (one more fills).
const IN_FLIGHT: usize = 2;

/// Buffers of finished packs, for the next: a new one per pack cost `tar -x` of many 200 KiB
/// files 10-20% (a fresh mapping faulted in, then unmapped, per file).
static POOL: Pool = Pool::new(4, BUF);

/// A pack's file being written (see the module doc). Cloned handles share it: the parquet writer
/// owns one, the pack writer keeps one to [`finish`](DirectSink::finish).
#[derive(Clone)]
pub(crate) struct DirectSink {
    state: Arc<Mutex<Sink>>,
}

struct Sink {
    /// The file as opened for writing through the page cache.
    file: Arc<File>,
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
    /// A sink writing `file` (opened for writing, at `path`) from offset 0.
    pub(crate) fn new(file: File, path: PathBuf) -> DirectSink {
        DirectSink {
            state: Arc::new(Mutex::new(Sink {
                file: Arc::new(file),
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
    /// given is in the file (not yet durable: the store fsyncs packs before a commit names them).
    pub(crate) fn finish(&self) -> io::Result<()> {
        let mut sink = self.sink();
        let result = sink.finish();
        sink.stop_writer();
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
        let Some(buf) = self.buf.take() else { return Ok(()) };
        let at = self.start;
        self.start += BUF as u64;
        self.len = 0;
        if let Some(direct) = self.direct_file() {
            if self.writer.is_none() {
                self.writer = spawn_writer(direct.clone(), self.file.clone());
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
            let written = write_direct_or_cached(&direct, &self.file, buf.as_slice(), at);
            self.spare.push(buf);
            return written.map_err(|e| self.fail(e));
        }
        let written = self.file.write_all_at(buf.as_slice(), at);
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

    fn finish(&mut self) -> io::Result<()> {
        self.reclaim()?;
        let Some(buf) = self.buf.take() else { return Ok(()) };
        let bytes = &buf.as_slice()[..self.len];
        let whole = self.len / PAGE * PAGE;
        let written = match &self.direct {
            // Written through O_DIRECT so far: the partial buffer's whole pages too.
            Direct::Open(direct) if whole > 0 => {
                write_direct_or_cached(direct, &self.file, &bytes[..whole], self.start)
                    .and_then(|()| self.file.write_all_at(&bytes[whole..], self.start + whole as u64))
            }
            _ => self.file.write_all_at(bytes, self.start),
        };
        self.start += self.len as u64;
        self.len = 0;
        written.map_err(|e| self.fail(e))
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
        for buf in self.buf.take().into_iter().chain(self.spare.drain(..)) {
            POOL.give_back(buf);
        }
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
    use super::*;

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn what_is_written_is_in_the_file_after_finish_at_any_size() {
        let dir = tempfile::tempdir().unwrap();
        for (i, size) in [0, 1, PAGE + 3, BUF - 1, BUF, BUF + PAGE, 3 * BUF + 12_345].into_iter().enumerate() {
            let path = dir.path().join(format!("pack-{i}"));
            let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&path).unwrap();
            let mut sink = DirectSink::new(file, path.clone());
            let data = pattern(size, i as u8);
            // In uneven pieces, as parquet's page writer hands them over.
            for piece in data.chunks(70_001) {
                sink.write_all(piece).unwrap();
                sink.flush().unwrap();
            }
            sink.finish().unwrap();
            let back = std::fs::read(&path).unwrap();
            assert_eq!(back.len(), size, "size {size}");
            if let Some(at) = back.iter().zip(&data).position(|(a, b)| a != b) {
                panic!("size {size}: first difference at byte {at}");
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
        let mut sink = DirectSink::new(file, dir.path().join("not-there").join("pack"));
        let result = sink.write_all(&pattern(BUF + 1, 0)).and_then(|()| sink.finish());
        let e = result.expect_err("the write fails");
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
        assert_eq!(sink.finish().unwrap_err().raw_os_error(), Some(libc::EBADF), "and keeps failing");
    }
}
