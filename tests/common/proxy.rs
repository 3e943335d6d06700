//! A TCP proxy on 127.0.0.1 in front of a server (the local S3 server), that the test can take
//! down and bring back: down, it cuts every connection and refuses new ones (accepts and closes),
//! as a server that stopped would; up again, it forwards as before. Stopped on drop.

use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

struct State {
    up: AtomicBool,
    stopped: AtomicBool,
    /// Both ends of every forwarded connection, to cut them when going down.
    open: Mutex<Vec<TcpStream>>,
}

pub struct TcpProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl TcpProxy {
    /// A proxy to `upstream` (`host:port`), up.
    pub fn start(upstream: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state =
            Arc::new(State { up: AtomicBool::new(true), stopped: AtomicBool::new(false), open: Mutex::default() });
        let (st, upstream) = (state.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if !st.up.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let mut open = st.open.lock().unwrap();
                for s in [&client, &server] {
                    if let Ok(c) = s.try_clone() {
                        open.push(c);
                    }
                }
                drop(open);
                pump(client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                pump(server, client);
            }
        });
        TcpProxy { addr, state }
    }

    /// `http://127.0.0.1:PORT`: the endpoint to give a client.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Take the "server" down (every connection cut, new ones closed at once) or bring it back.
    pub fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
        if !up {
            for s in self.state.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Copies `from` to `to` on a thread of its own until either end closes.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if std::io::Write::write_all(&mut to, &buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        self.set_up(false);
        // Wake the accept loop so it sees `stopped`.
        let _ = TcpStream::connect(self.addr);
    }
}
