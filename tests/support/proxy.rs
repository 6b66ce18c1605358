//! A TCP proxy in front of a test server that can lose the server's replies, or
//! everything.
//!
//! While [`FaultProxy::drop_replies`] is on, requests still reach the server but what
//! it answers is read and thrown away. That is the fault a read timeout cannot tell
//! apart from a slow server: the command ran, the caller never hears of it. While
//! [`FaultProxy::blackhole`] is on, nothing passes either way and no connection is
//! closed (new ones are accepted and stay silent): a network partition.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// A proxy listening on a free port of 127.0.0.1, forwarding to `127.0.0.1:<target>`.
/// Dropping it closes every connection through it.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

struct Shared {
    drop_replies: AtomicBool,
    blackhole: AtomicBool,
    stopping: AtomicBool,
    /// Both ends of every proxied connection, to close them on drop.
    streams: Mutex<Vec<TcpStream>>,
}

impl FaultProxy {
    /// Starts forwarding to the server on `target` (a port of 127.0.0.1).
    pub fn start(target: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("the proxy binds a free port");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            drop_replies: AtomicBool::new(false),
            blackhole: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let acceptor = thread::Builder::new()
            .name("test-proxy".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if s.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    {
                        let mut streams = s.streams.lock().unwrap();
                        streams.push(client.try_clone().unwrap());
                        streams.push(server.try_clone().unwrap());
                    }
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let up = s.clone();
                    thread::spawn(move || pump(client, server, &up, false));
                    let down = s.clone();
                    thread::spawn(move || pump(s2, c2, &down, true));
                }
            })
            .expect("the proxy thread starts");
        FaultProxy { port, shared, acceptor: Some(acceptor) }
    }

    /// `redis://127.0.0.1:<proxy port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// While on, the server's replies are read and discarded (requests still reach it).
    pub fn drop_replies(&self, on: bool) {
        self.shared.drop_replies.store(on, Ordering::SeqCst);
    }

    /// While on, what either side sends is read and discarded, and connections stay
    /// open: requests never reach the server, and clients wait for their timeouts.
    pub fn blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either side closes; `replies` marks the server → client
/// direction, the one `drop_replies` silences (`blackhole` silences both).
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, replies: bool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if shared.blackhole.load(Ordering::SeqCst) || (replies && shared.drop_replies.load(Ordering::SeqCst)) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Unblock `accept`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for s in self.shared.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}
