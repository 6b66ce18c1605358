//! The worker processes, seen from the controller: started, watched, signalled,
//! replaced, reaped.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::config::Config;
use super::record;
use super::worker::{LockTarget, WORKER_ENV, WorkerSpec};

pub struct Proc {
    pub idx: usize,
    pub child: Child,
    pub rec: PathBuf,
    pub err: PathBuf,
    pub killed: bool,
    pub status: Option<ExitStatus>,
    pub client_id: Option<String>,
}

pub struct Fleet {
    pub cfg: Config,
    pub dir: PathBuf,
    pub target: LockTarget,
    pub data_url: String,
    pub end_ns: u64,
    pub procs: Vec<Proc>,
}

impl Fleet {
    pub fn spawn(&mut self) -> Result<(), String> {
        let idx = self.procs.len();
        let rec = self.dir.join(format!("worker-{idx}.rec"));
        let err = self.dir.join(format!("worker-{idx}.stderr"));
        let spec = WorkerSpec {
            idx,
            target: self.target.clone(),
            data_url: self.data_url.clone(),
            threads: self.cfg.threads,
            locks: self.cfg.locks,
            lock: self.cfg.lock,
            permits: self.cfg.permits,
            reads: self.cfg.reads,
            lease_ms: self.cfg.lease.as_millis() as u64,
            end_ns: self.end_ns,
            seed: self.cfg.seed.wrapping_add(1 + idx as u64 * 104_729),
            no_exclusion: self.cfg.no_exclusion,
            out: rec.clone(),
        };
        let out = File::create(self.dir.join(format!("worker-{idx}.stdout"))).map_err(|e| e.to_string())?;
        let child = Command::new(&self.cfg.worker.program)
            .args(&self.cfg.worker.args)
            .env(WORKER_ENV, spec.encode())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(File::create(&err).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot start a worker ({}): {e}", self.cfg.worker.program.display()))?;
        self.procs.push(Proc { idx, child, rec, err, killed: false, status: None, client_id: None });
        Ok(())
    }

    /// Indices of workers that run (not killed, not exited).
    pub fn running(&mut self) -> Vec<usize> {
        for p in &mut self.procs {
            if p.status.is_none() && !p.killed {
                p.status = p.child.try_wait().ok().flatten();
            }
        }
        self.procs.iter().filter(|p| p.status.is_none() && !p.killed).map(|p| p.idx).collect()
    }

    /// The crate's client id of worker `i` (from the file it writes at start).
    pub fn client_id(&mut self, i: usize) -> Option<String> {
        let p = &mut self.procs[i];
        if p.client_id.is_none() {
            let id = fs::read_to_string(record::id_path(&p.rec)).ok()?;
            p.client_id = Some(id.trim().to_owned()).filter(|id| !id.is_empty());
        }
        p.client_id.clone()
    }

    /// Sends `sig` (`-STOP`, `-CONT`) to worker `i`; whether `kill` said it did.
    pub fn signal(&self, i: usize, sig: &str) -> bool {
        let pid = self.procs[i].child.id().to_string();
        Command::new("kill").args([sig, pid.as_str()]).status().is_ok_and(|s| s.success())
    }

    /// Process id of worker `i`.
    pub fn pid(&self, i: usize) -> u32 {
        self.procs[i].child.id()
    }

    /// Waits for every worker until `deadline`; kills those still running then.
    pub fn wait_all(&mut self, deadline: Instant) {
        while !self.running().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        for p in &mut self.procs {
            if p.status.is_none() && !p.killed {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if p.status.is_none() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
}
