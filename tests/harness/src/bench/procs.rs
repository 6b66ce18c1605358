//! Worker processes: the program re-run as `PROGRAM --child ARGS... THREADS SECS
//! ID_BASE THINK`. A child sets its lock up, prints `ready`, and starts only when the
//! parent writes `go` to its stdin, so every process of a run (64 on 2 cores, too)
//! starts measuring at the same moment and the parent reads Redis's counters around
//! the measured interval only, not around the processes' start-up. Each child's
//! output is read by a thread of its own; a child that fails, or does not get ready
//! or finish in time, is killed and the run reported as failed with its reason.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{Part, Rec, Subject, run_workers};

/// How long the processes of a run may take to get ready: 30 s, and 1 s more per process.
fn ready_timeout(procs: u32) -> Duration {
    Duration::from_secs(30 + u64::from(procs))
}

/// After the run's length, how long the processes may take to finish their last
/// acquisition and report.
const FINISH_GRACE: Duration = Duration::from_secs(60);

/// The `--child` side: `args` is everything after `--child` (the program's own
/// arguments, then `THREADS SECS ID_BASE THINK`); `subject(own_args, threads)` sets the
/// lock up. Once the threads have their handles it prints `ready` and waits for a line
/// on stdin; then it runs the workers and prints records, totals and the subject's
/// counters on stdout for the parent.
pub fn child_main<S: Subject>(args: &[String], subject: impl FnOnce(&[String], u32) -> S) {
    let (own, run) = args.split_at(args.len().checked_sub(4).expect("--child ... THREADS SECS ID_BASE THINK"));
    let threads: u32 = run[0].parse().expect("THREADS");
    let (secs, id_base): (f64, u32) = (run[1].parse().expect("SECS"), run[2].parse().expect("ID_BASE"));
    let gate = || {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready").and_then(|()| out.flush()).expect("stdout");
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).expect("stdin");
    };
    let part = run_workers(&subject(own, threads), threads, secs, id_base, run[3] == "1", gate);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for r in part.recs {
        writeln!(out, "rec {} {} {} {}", r.thread, r.asked, r.got, r.released).unwrap();
    }
    for (name, n) in part.counters.iter().flatten() {
        writeln!(out, "counter {name} {n}").unwrap();
    }
    let sent = part.sent.map_or("-".to_string(), |s| s.to_string());
    writeln!(out, "total {sent} {} {}", part.cpu, part.errors).unwrap();
    if let Some(e) = part.first_error {
        writeln!(out, "error {}", e.replace('\n', " ")).unwrap();
    }
}

enum Event {
    Ready,
    Done(usize, Part),
}

/// The worker processes of one run, started and ready (see [`Children::start`]).
pub(super) struct Children {
    procs: Vec<Proc>,
    events: Receiver<Event>,
}

/// One worker process: its stdin until `go` is written, the thread keeping its stderr.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Option<JoinHandle<Vec<String>>>,
}

impl Children {
    /// Starts `procs` processes of `threads` threads (thread ids from 1000, 2000, ...)
    /// and returns once every one is ready; an error (every child killed) if one fails
    /// first or they are not all ready in time.
    pub(super) fn start(
        child_args: &[String],
        procs: u32,
        threads: u32,
        secs: f64,
        think: bool,
    ) -> Result<Children, String> {
        let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
        let (tx, events) = channel();
        let mut children = Children { procs: Vec::new(), events };
        for p in 0..procs {
            let spawned = Command::new(&exe)
                .arg("--child")
                .args(child_args)
                .args([threads.to_string(), secs.to_string(), ((p + 1) * 1000).to_string()])
                .arg(if think { "1" } else { "0" })
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            let mut c = match spawned {
                Ok(c) => c,
                Err(e) => return Err(children.abort(format!("cannot start worker process {}: {e}", p + 1))),
            };
            let (stdout, mut stderr) = (c.stdout.take().unwrap(), c.stderr.take().unwrap());
            let tx = tx.clone();
            let index = p as usize;
            thread::spawn(move || {
                let part = read_child(BufReader::new(stdout), || {
                    let _ = tx.send(Event::Ready);
                });
                let _ = tx.send(Event::Done(index, part));
            });
            // The last lines of stderr (a panic's message), kept for the reason.
            let stderr = thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                text.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect()
            });
            let stdin = c.stdin.take();
            children.procs.push(Proc { child: c, stdin, stderr: Some(stderr) });
        }
        let deadline = Instant::now() + ready_timeout(procs);
        let mut ready = 0;
        while ready < procs {
            match children.events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Event::Ready) => ready += 1,
                Ok(Event::Done(i, _)) => {
                    let why = children.reason(i);
                    return Err(
                        children.abort(format!("worker process {} of {procs} exited before the start: {why}", i + 1))
                    );
                }
                Err(_) => {
                    let t = ready_timeout(procs).as_secs();
                    return Err(children.abort(format!("{ready} of {procs} worker processes ready after {t} s")));
                }
            }
        }
        Ok(children)
    }

    /// Starts every process's run at once.
    pub(super) fn go(&mut self) {
        for p in &mut self.procs {
            if let Some(mut s) = p.stdin.take() {
                let _ = s.write_all(b"go\n"); // a child that died is reported by `finish`
            }
        }
    }

    /// Waits for every process's report (at most the run's length and a grace period)
    /// and adds them up; an error if one failed or did not finish.
    pub(super) fn finish(mut self, secs: f64) -> Result<Part, String> {
        let n = self.procs.len();
        let deadline = Instant::now() + Duration::from_secs_f64(secs) + FINISH_GRACE;
        let mut parts: Vec<Option<Part>> = (0..n).map(|_| None).collect();
        let mut done = 0;
        while done < n {
            match self.events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Event::Done(i, part)) => {
                    parts[i] = Some(part);
                    done += 1;
                }
                Ok(Event::Ready) => {}
                Err(_) => {
                    let (grace, total) = (FINISH_GRACE.as_secs(), n);
                    return Err(self.abort(format!(
                        "{} of {total} worker processes had not finished {grace} s after the run's end",
                        total - done
                    )));
                }
            }
        }
        let mut total = Part { sent: Some(0), ..Part::default() };
        for (i, part) in parts.into_iter().enumerate() {
            let status = self.procs[i].child.wait().map_err(|e| e.to_string())?;
            if !status.success() {
                let why = self.reason(i);
                return Err(self.abort(format!("worker process {} of {n} failed ({status}): {why}", i + 1)));
            }
            let part = part.expect("every process reported");
            // Round trips are known only if every process counted them.
            let sent = total.sent.zip(part.sent).map(|(a, b)| a + b);
            total.add(part);
            total.sent = sent;
        }
        Ok(total)
    }

    /// What child `i` printed on stderr, or its exit status.
    fn reason(&mut self, i: usize) -> String {
        let p = &mut self.procs[i];
        let _ = p.child.kill();
        let status = p.child.wait().map(|s| s.to_string()).unwrap_or_default();
        let lines = p.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        // A panic: "thread 'main' panicked at FILE:" then the message.
        let msg: Vec<&str> = lines
            .iter()
            .map(String::as_str)
            .filter(|l| !l.starts_with("note:") && !l.starts_with("stack backtrace:") && !l.starts_with(' '))
            .take(3)
            .collect();
        if msg.is_empty() { status } else { msg.join(" ") }
    }

    /// Kills and reaps every process; returns `why`.
    fn abort(&mut self, why: String) -> String {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        why
    }
}

/// A child's stdout, until it closes: `ready` calls `on_ready`; records, counters and
/// totals make the [`Part`].
fn read_child(out: impl BufRead, mut on_ready: impl FnMut()) -> Part {
    let mut this = Part::default();
    let mut counters = BTreeMap::new();
    for line in out.lines() {
        let Ok(line) = line else { break };
        if let Some(e) = line.strip_prefix("error ") {
            this.first_error.get_or_insert(e.to_owned());
            continue;
        }
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["ready"] => on_ready(),
            ["rec", t, a, g, r] => this.recs.push(Rec {
                thread: t.parse().unwrap(),
                asked: a.parse().unwrap(),
                got: g.parse().unwrap(),
                released: r.parse().unwrap(),
            }),
            ["counter", name, n] => {
                counters.insert((*name).to_owned(), n.parse().unwrap());
            }
            ["total", sent, cpu, errors] => {
                this.sent = sent.parse().ok();
                this.cpu = cpu.parse().unwrap();
                this.errors = errors.parse().unwrap();
            }
            _ => {}
        }
    }
    this.counters = vec![counters];
    this
}
