//! The control socket of a read-write mount (`_pond/control.sock`): how a command that needs the
//! pond's single writer while a mount holds it — `pond prune` — reaches the daemon, which runs it
//! between two commits. One request per connection, a line of JSON each way.
//!
//! Only the daemon's own user and root may use it: the socket is created 0600 in the pond's private
//! directory, and the peer's uid (SO_PEERCRED) is checked again on every connection.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::audit::prune::{PruneReport, Rules};
use crate::fs::PondFs;
use crate::layout::{WORK_CONTROL_SOCKET, WORK_DIR};
use crate::private_fs::PrivateDir;

/// What a client asks.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Prune { rules: Rules, dry_run: bool },
}

/// What the daemon answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Pruned(PruneReport),
    Failed(String),
}

/// Why the daemon could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the pond is mounted read-write, and its daemon does not answer on {path}: {source}")]
    Unreachable { path: PathBuf, source: io::Error },
    #[error("the daemon's answer on {path} could not be read: {reason}")]
    BadAnswer { path: PathBuf, reason: String },
}

/// Where the control socket of the pond at `root` is.
pub fn socket_path(root: &Path) -> PathBuf {
    root.join(WORK_DIR).join(WORK_CONTROL_SOCKET)
}

/// Asks the daemon serving the pond at `root`.
pub fn ask(root: &Path, request: &Request) -> Result<Response, ControlError> {
    let path = socket_path(root);
    let unreachable = |source| ControlError::Unreachable { path: path.clone(), source };
    let mut stream = UnixStream::connect(&path).map_err(unreachable)?;
    let mut line = serde_json::to_string(request).map_err(|e| unreachable(io::Error::other(e)))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(unreachable)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(unreachable)?;
    serde_json::from_str(&answer).map_err(|e| ControlError::BadAnswer { path: path.clone(), reason: e.to_string() })
}

/// The listening side, on a thread of its own; stops (and removes the socket) when dropped.
pub struct ControlServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// `_pond/`, where the socket is removed from at the end.
    dir: PrivateDir,
}

impl ControlServer {
    /// Listens on the control socket of the pond `fs` writes (the caller holds its writer lock,
    /// so a socket file left there is a dead daemon's and is replaced).
    pub fn start(fs: Arc<PondFs>) -> io::Result<ControlServer> {
        // Through `_pond/`'s descriptor (see `private_fs`): no link there is ever followed.
        let dir = PrivateDir::ensure(fs.root(), WORK_DIR).map_err(io::Error::other)?;
        let listener = dir.bind_socket(WORK_CONTROL_SOCKET).map_err(io::Error::other)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("pond-control".into())
            .spawn(move || accept_loop(&listener, &fs, &flag))?;
        Ok(ControlServer { stop, thread: Some(thread), dir })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = self.dir.remove_file(WORK_CONTROL_SOCKET);
    }
}

fn accept_loop(listener: &UnixListener, fs: &Arc<PondFs>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = serve_one(stream, fs) {
                    tracing::warn!("control socket: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                tracing::warn!("control socket: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn serve_one(stream: UnixStream, fs: &PondFs) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)?;
    let me = nix::unistd::geteuid().as_raw();
    let mut writer = stream.try_clone()?;
    let respond = |writer: &mut UnixStream, r: &Response| -> io::Result<()> {
        let mut line = serde_json::to_string(r).map_err(io::Error::other)?;
        line.push('\n');
        writer.write_all(line.as_bytes())
    };
    if peer.uid() != me && peer.uid() != 0 {
        let refusal = format!("uid {} may not control a pond mounted by uid {me}", peer.uid());
        return respond(&mut writer, &Response::Failed(refusal));
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Prune { rules, dry_run }) => match fs.prune(rules, dry_run) {
            Ok(report) => Response::Pruned(report),
            Err(e) => Response::Failed(e.to_string()),
        },
        Err(e) => Response::Failed(format!("not a request: {e}")),
    };
    respond(&mut writer, &response)
}
