//! A throwaway loopback `redis-server` for the benchmarks.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The server process and its temp dir; the process is killed when dropped.
pub struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `redis-server` on a free loopback port, without persistence, and waits until
/// it answers.
pub fn start_server() -> Server {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server not found on PATH: install it with `apt-get install -y redis-server`");
    let url = format!("redis://127.0.0.1:{port}/");
    let server = Server { child, _dir: dir, url };
    for _ in 0..400 {
        if redis::Client::open(server.url.as_str()).unwrap().get_connection().is_ok() {
            return server;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("redis-server did not answer within 10 s");
}
