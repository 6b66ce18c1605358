//! What a worker writes: one line per critical section (`R ...`), and the outcomes
//! each line records.

/// The plain `SET` of the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetState {
    NotSent,
    Acked,
    /// Failed: it may or may not have been applied.
    Unknown,
}

/// The fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteState {
    NotSent,
    Accepted,
    Refused,
    Unknown,
}

/// What a thread learned after a Redis error inside its critical section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// No error.
    None,
    /// `is_held()` confirmed the lock is still ours.
    Held,
    /// The watchdog had marked the guard lost (`is_lost()`) by then.
    WatchdogLost,
    /// `is_held()` said another owner or no lock.
    NotHeld,
    /// Redis never answered `is_held()`; the thread stopped using the guard.
    Unconfirmed,
    /// The lock was confirmed ours, but the retried operation failed again; the thread
    /// stopped using the guard (not a lost lease).
    GaveUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlock {
    Ok,
    Lost,
    Error,
}

/// One critical section. Times are wall-clock ns (0: did not happen).
#[derive(Debug, Clone)]
pub struct Rec {
    pub worker: usize,
    pub thread: usize,
    pub lock: usize,
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
}

impl Rec {
    pub fn to_line(&self) -> String {
        let set = match self.set {
            SetState::NotSent => 'n',
            SetState::Acked => 'a',
            SetState::Unknown => 'u',
        };
        let write = match self.write {
            WriteState::NotSent => 'n',
            WriteState::Accepted => 'a',
            WriteState::Refused => 'r',
            WriteState::Unknown => 'u',
        };
        let recovery = match self.recovery {
            Recovery::None => '-',
            Recovery::Held => 'k',
            Recovery::WatchdogLost => 'w',
            Recovery::NotHeld => 'h',
            Recovery::Unconfirmed => 'e',
            Recovery::GaveUp => 'g',
        };
        let unlock = match self.unlock {
            Unlock::Ok => 'o',
            Unlock::Lost => 'l',
            Unlock::Error => 'e',
        };
        format!(
            "R {} {} {} {} {} {} {} {} {} {} {set} {} {} {write} {} {} {recovery} {} {unlock}\n",
            self.worker,
            self.thread,
            self.lock,
            self.token,
            self.asked,
            self.start,
            self.end,
            self.get_sent,
            self.set_sent,
            self.set_ack,
            self.wr_sent,
            self.wr_ack,
            self.wr_top,
            u8::from(self.lost_before_write),
            u8::from(self.lost_at_end),
        )
    }

    pub fn parse(line: &str) -> Option<Rec> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 20 || f[0] != "R" {
            return None;
        }
        let n = |i: usize| f[i].parse::<u64>().ok();
        let c = |i: usize| f[i].chars().next();
        Some(Rec {
            worker: n(1)? as usize,
            thread: n(2)? as usize,
            lock: n(3)? as usize,
            token: n(4)?,
            asked: n(5)?,
            start: n(6)?,
            end: n(7)?,
            get_sent: n(8)?,
            set_sent: n(9)?,
            set_ack: n(10)?,
            set: match c(11)? {
                'n' => SetState::NotSent,
                'a' => SetState::Acked,
                'u' => SetState::Unknown,
                _ => return None,
            },
            wr_sent: n(12)?,
            wr_ack: n(13)?,
            write: match c(14)? {
                'n' => WriteState::NotSent,
                'a' => WriteState::Accepted,
                'r' => WriteState::Refused,
                'u' => WriteState::Unknown,
                _ => return None,
            },
            wr_top: n(15)?,
            lost_before_write: n(16)? == 1,
            recovery: match c(17)? {
                '-' => Recovery::None,
                'k' => Recovery::Held,
                'w' => Recovery::WatchdogLost,
                'h' => Recovery::NotHeld,
                'e' => Recovery::Unconfirmed,
                'g' => Recovery::GaveUp,
                _ => return None,
            },
            lost_at_end: n(18)? == 1,
            unlock: match c(19)? {
                'o' => Unlock::Ok,
                'l' => Unlock::Lost,
                'e' => Unlock::Error,
                _ => return None,
            },
        })
    }

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
