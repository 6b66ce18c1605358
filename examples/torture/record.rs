//! What a worker writes, as CSV rows (csv + serde), one write per row so that a
//! SIGKILL loses at most the row being written: a [`Rec`] per critical section in
//! `worker-N.rec`, its client's id in `worker-N.id` (plain text, at start), and a
//! [`Summary`] in `worker-N.summary` when it finishes.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The plain `SET` of the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetState {
    #[serde(rename = "n")]
    NotSent,
    #[serde(rename = "a")]
    Acked,
    /// Failed: it may or may not have been applied.
    #[serde(rename = "u")]
    Unknown,
}

/// The fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteState {
    #[serde(rename = "n")]
    NotSent,
    #[serde(rename = "a")]
    Accepted,
    #[serde(rename = "r")]
    Refused,
    #[serde(rename = "u")]
    Unknown,
}

/// What a thread learned after a Redis error inside its critical section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recovery {
    /// No error.
    #[serde(rename = "-")]
    None,
    /// `is_held()` confirmed the lock is still ours.
    #[serde(rename = "k")]
    Held,
    /// The watchdog had marked the guard lost (`is_lost()`) by then.
    #[serde(rename = "w")]
    WatchdogLost,
    /// `is_held()` said another owner or no lock.
    #[serde(rename = "h")]
    NotHeld,
    /// Redis never answered `is_held()`; the thread stopped using the guard.
    #[serde(rename = "e")]
    Unconfirmed,
    /// The lock was confirmed ours, but the retried operation failed again; the thread
    /// stopped using the guard (not a lost lease).
    #[serde(rename = "g")]
    GaveUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unlock {
    #[serde(rename = "o")]
    Ok,
    #[serde(rename = "l")]
    Lost,
    #[serde(rename = "e")]
    Error,
}

/// What a critical section held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A mutex (fencing token in `token`).
    #[serde(rename = "m")]
    Mutex,
    /// A read-write lock's read share.
    #[serde(rename = "r")]
    Reader,
    /// A read-write lock's write lock.
    #[serde(rename = "w")]
    Writer,
    /// A semaphore's permit.
    #[serde(rename = "p")]
    Permit,
}

/// One critical section. Times are wall-clock ns (0: did not happen).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rec {
    pub worker: usize,
    pub thread: usize,
    pub lock: usize,
    pub role: Role,
    /// The fencing token (a mutex's; 0 for the others, which have none).
    pub token: u64,
    /// `try_lock_until` called.
    pub asked: u64,
    /// `try_lock_until` returned the guard.
    pub start: u64,
    /// Last operation done, before `unlock`.
    pub end: u64,
    pub get_sent: u64,
    pub set_sent: u64,
    /// Acknowledged, or (for `SetState::Unknown`) when the failure was seen.
    pub set_ack: u64,
    pub set: SetState,
    pub wr_sent: u64,
    pub wr_ack: u64,
    pub write: WriteState,
    /// Highest token the resource had seen, as its reply said.
    pub wr_top: u64,
    /// `is_lost()` just before the fenced write.
    pub lost_before_write: bool,
    pub recovery: Recovery,
    /// `is_lost()` just before `unlock`.
    pub lost_at_end: bool,
    pub unlock: Unlock,
    /// `unlock` returned.
    pub released: u64,
}

impl Rec {
    /// The guard was reported lost (by the watchdog, `is_held`, or `unlock`), or the
    /// thread could not confirm it and stopped using it.
    pub fn lost(&self) -> bool {
        self.lost_at_end
            || self.unlock == Unlock::Lost
            || matches!(self.recovery, Recovery::WatchdogLost | Recovery::NotHeld | Recovery::Unconfirmed)
    }
}

/// Per-thread counters, summed into the worker's summary line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub acquisitions: u64,
    pub lock_timeouts: u64,
    pub lock_errors: u64,
    pub cs_errors: u64,
    pub unlock_errors: u64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.acquisitions += o.acquisitions;
        self.lock_timeouts += o.lock_timeouts;
        self.lock_errors += o.lock_errors;
        self.cs_errors += o.cs_errors;
        self.unlock_errors += o.unlock_errors;
    }
}

/// A worker's last row: its threads' totals and its client's counters.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct Summary {
    pub acquisitions: u64,
    pub lock_timeouts: u64,
    pub lock_errors: u64,
    pub cs_errors: u64,
    pub unlock_errors: u64,
    pub notifier_reconnects: u64,
    pub leases_lost: u64,
    pub renewals: u64,
    pub handoffs: u64,
    pub local_handoffs: u64,
    /// Acquisitions granted by another process's release (cross-process direct grant).
    #[serde(default)]
    pub grants: u64,
}

/// Where a worker whose records go to `rec` writes its client's id.
pub fn id_path(rec: &Path) -> PathBuf {
    rec.with_extension("id")
}

/// Where a worker whose records go to `rec` writes its [`Summary`].
pub fn summary_path(rec: &Path) -> PathBuf {
    rec.with_extension("summary")
}

/// Appends `row` to `out` as one CSV line, in one write.
pub fn write_row(out: &mut File, row: &impl Serialize) -> io::Result<()> {
    let mut line = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
    line.serialize(row)?;
    let line = line.into_inner().map_err(|e| e.into_error())?;
    out.write_all(&line)
}

/// The rows of the CSV file at `path` (none if it is missing), and how many rows did
/// not parse (a SIGKILL while one was written).
pub fn read_rows<T: DeserializeOwned>(path: &Path) -> (Vec<T>, usize) {
    let Ok(mut reader) = csv::ReaderBuilder::new().has_headers(false).from_path(path) else { return (Vec::new(), 0) };
    let (mut rows, mut unparsed) = (Vec::new(), 0);
    for row in reader.deserialize() {
        match row {
            Ok(row) => rows.push(row),
            Err(_) => unparsed += 1,
        }
    }
    (rows, unparsed)
}
