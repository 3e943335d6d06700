//! `pond ls`, `pond cat`, `pond log`: read a pond without mounting, through the filesystem core opened
//! read-only at a version (no FUSE involved). A replica's URL is read the way a mount reads it:
//! its table mirrored into the cache, large files fetched as they are read (`pond::remote_mount`).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};

use pond::fs::{Attr, FsOptions, NodeKind, PondFs};
use pond::oplog::ROOT_INO;
use pond::oplog::history::read_history;
use pond::remote_mount::Replica;

use super::format_time;

/// A pond or a replica opened to read. The replica lives as long as its view, and goes after it:
/// dropping it waits for the chunks read to be written to the cache (`Replica`'s drop), so a
/// later reader finds them there.
struct Opened {
    fs: PondFs,
    _replica: Option<Replica>,
}

impl std::ops::Deref for Opened {
    type Target = PondFs;
    fn deref(&self) -> &PondFs {
        &self.fs
    }
}

fn open(pond: &Path, version: Option<u64>) -> anyhow::Result<Opened> {
    if let Some(url) = url_of(pond) {
        let replica = replica(url)?;
        let v = replica.sync(version).with_context(|| format!("reading the log of {url}"))?;
        return Ok(Opened { fs: replica.open_view(v)?, _replica: Some(replica) });
    }
    let fs = PondFs::open(pond, FsOptions { read_only: true, version, threshold: None })?;
    Ok(Opened { fs, _replica: None })
}

/// The replica's URL, when `pond` names one.
fn url_of(pond: &Path) -> Option<&str> {
    pond.to_str().filter(|p| super::sync::is_url(p))
}

/// A replica opened with the defaults a mount has (the user's cache, `AWS_*` settings).
fn replica(url: &str) -> anyhow::Result<Replica> {
    let cfg = super::mount_remote::config(url, &Default::default())?;
    Ok(Replica::open(&cfg)?)
}

/// Resolve `path` (slash-separated, relative to the pond root) to an inode, without following symlinks.
fn resolve(fs: &PondFs, path: &str) -> anyhow::Result<u64> {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        ino = fs.lookup(ino, part.as_bytes()).with_context(|| format!("{path}: {part}"))?.ino;
    }
    Ok(ino)
}

fn mode_string(a: &Attr) -> String {
    let t = match a.kind {
        NodeKind::File => '-',
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Fifo => 'p',
        NodeKind::Socket => 's',
        NodeKind::CharDevice => 'c',
        NodeKind::BlockDevice => 'b',
    };
    let mut s = String::from(t);
    for shift in [6, 3, 0] {
        let bits = (a.perm >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn line(fs: &PondFs, a: &Attr, name: &str) -> String {
    let target = if a.kind == NodeKind::Symlink {
        fs.readlink(a.ino).map(|t| format!(" -> {}", String::from_utf8_lossy(&t))).unwrap_or_default()
    } else {
        String::new()
    };
    format!(
        "{} {:>3} {:>5} {:>5} {:>12} {} {name}{target}",
        mode_string(a),
        a.nlink,
        a.uid,
        a.gid,
        a.size,
        format_time(a.mtime_ns)
    )
}

pub fn ls(pond: &Path, path: Option<&str>, version: Option<u64>) -> anyhow::Result<ExitCode> {
    let fs = open(pond, version)?;
    let path = path.unwrap_or("/");
    let ino = resolve(&fs, path)?;
    let attr = fs.getattr(ino)?;
    let mut out = std::io::stdout().lock();
    if attr.kind != NodeKind::Dir {
        let name = path.rsplit('/').find(|p| !p.is_empty()).unwrap_or(path);
        writeln!(out, "{}", line(&fs, &attr, name))?;
        return Ok(ExitCode::SUCCESS);
    }
    let fh = fs.opendir(ino)?;
    for (entry, a) in fs.readdirplus(fh, 2)? {
        writeln!(out, "{}", line(&fs, &a, &String::from_utf8_lossy(&entry.name)))?;
    }
    fs.releasedir(fh)?;
    Ok(ExitCode::SUCCESS)
}

pub fn cat(pond: &Path, path: &str, version: Option<u64>) -> anyhow::Result<ExitCode> {
    let fs = open(pond, version)?;
    let ino = resolve(&fs, path)?;
    let attr = fs.getattr(ino)?;
    match attr.kind {
        NodeKind::File => {}
        NodeKind::Dir => bail!("{path}: is a directory"),
        NodeKind::Symlink => bail!("{path}: is a symlink to {}", String::from_utf8_lossy(&fs.readlink(ino)?)),
        _ => bail!("{path}: is not a regular file"),
    }
    let fh = fs.open_file(ino, libc::O_RDONLY)?;
    let mut out = std::io::stdout().lock();
    let mut offset = 0u64;
    const STEP: u32 = 1 << 20;
    loop {
        let buf = fs.read(fh, offset, STEP).with_context(|| format!("{path}: reading at byte {offset}"))?;
        if buf.is_empty() {
            break;
        }
        offset += buf.len() as u64;
        if let Err(e) = out.write_all(&buf) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e.into());
        }
    }
    fs.release(fh)?;
    Ok(ExitCode::SUCCESS)
}

pub fn log(pond: &Path) -> anyhow::Result<ExitCode> {
    let history = match url_of(pond) {
        Some(url) => replica(url)?.history()?,
        None => read_history(pond)?,
    };
    let mut out = std::io::stdout().lock();
    for e in history {
        writeln!(
            out,
            "{:>6}  {}  {:>6} files  {:>14} bytes  {}",
            e.version,
            format_time(e.timestamp_ms.saturating_mul(1_000_000)),
            e.files_changed,
            e.bytes,
            e.operation
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
