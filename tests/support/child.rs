//! Other processes for tests: the test binary run again, its entry point `child_entry`
//! selected by the `REDIS_MUTEX_CHILD` environment variable; a child reports on stdout,
//! one `CHILD-...` line per fact.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The child's role; absent in a normal test run.
const CHILD_ENV: &str = "REDIS_MUTEX_CHILD";
const URL_ENV: &str = "REDIS_MUTEX_URL";

/// In a child: its role and the server URL. `None` in a normal test run.
pub fn role() -> Option<(String, String)> {
    let role = std::env::var(CHILD_ENV).ok()?;
    Some((role, std::env::var(URL_ENV).expect("REDIS_MUTEX_URL is set for children")))
}

/// Prints one line for the parent, at once.
pub fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// A child process of this test binary, its stdout lines arriving on a channel.
pub struct ChildProcess {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    /// Every stdout line so far, for failure messages.
    pub seen: Vec<String>,
}

impl ChildProcess {
    pub fn spawn(role: &str, url: &str) -> ChildProcess {
        let mut child = Command::new(std::env::current_exe().expect("current_exe"))
            .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, role)
            .env(URL_ENV, url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a child process");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChildProcess { child, lines, seen: Vec::new() }
    }

    /// What follows `prefix` in the first stdout line that has it, waiting at most `limit`.
    pub fn expect_line(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    // libtest may have printed "test child_entry ... " on the same line.
                    if let Some(at) = line.find(prefix) {
                        return line[at + prefix.len()..].trim().to_owned();
                    }
                }
                Err(e) => panic!("child {} printed no {prefix:?} line ({e}); stdout: {:?}", self.child.id(), self.seen),
            }
        }
    }

    /// Waits at most `limit` for the child to exit.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll a child") {
                return status;
            }
            assert!(Instant::now() < deadline, "child {} did not exit within {limit:?}", self.child.id());
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        // Only reached with the child still running when the test failed.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildProcess {
    /// Sends a signal (`"-STOP"`, `"-CONT"`, ...) to the child.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args([sig, &pid]).status().expect("run kill");
        assert!(status.success(), "kill {sig} {pid}: {status}");
    }
}
