//! `redis-mutex run`: take the lock, run CMD, watch the lock while CMD runs (stopping
//! CMD in time when it is lost or may soon be), release it once CMD has exited.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::{Error, MutexGuard, MutexOptions};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGKILL, SIGTERM, SIGTSTP};
use signal_hook::iterator::Signals;

use crate::args::{Connection, RunArgs};
use crate::connect;
use crate::duration::show;
use crate::exit::{self, Failure, say};
use crate::process::{Group, exit_code, is_ignored};

/// How often the lock is looked at while CMD runs (`is_lost`, `remaining_lease`: local
/// reads, no I/O). It adds to how late a loss is acted on; [`MARGIN`] covers it.
const TICK: Duration = Duration::from_millis(100);
/// What is left of the lease Redis last confirmed when SIGKILL goes to a CMD whose
/// renewals keep failing: covers [`TICK`], the time a killed process takes to go, and
/// a busy machine's scheduling delays.
pub const MARGIN: Duration = Duration::from_millis(500);
/// The longest the release after CMD may take: a Redis that does not answer would
/// otherwise hold the exit for its read timeout times the connections tried.
const RELEASE_BOUND: Duration = Duration::from_secs(4);
/// Signals passed on to CMD.
const FORWARDED: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

/// Why CMD is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// The watchdog found the lock gone (force-unlocked, or its lease ran out).
    Lost,
    /// Renewals kept failing: the lease Redis last confirmed is about to run out.
    Renewals,
}

struct Stopping {
    kill_at: Instant,
    killed: bool,
}

pub fn run(conn: &Connection, a: RunArgs) -> Result<u8, Failure> {
    check_lease(a.lease, a.kill_grace)?;
    let client = connect::client(conn)?;
    let m = client.mutex_with(&a.name, MutexOptions::default().lease(a.lease).fencing(a.fencing));
    let cmd = a.command[0].to_string_lossy().into_owned();
    let got = match (a.no_wait, a.wait) {
        (true, _) => m.try_lock(),
        (false, Some(d)) => m.try_lock_for(d),
        (false, None) => m.lock().map(Some),
    };
    let Some(guard) = got.map_err(|e| Failure::from_error(&format!("locking {:?}", a.name), &e))? else {
        let how = match a.wait {
            Some(d) if !a.no_wait => format!("still, after --wait {}", show(d)),
            _ => "--no-wait".to_owned(),
        };
        say(&format!("lock {:?} is held elsewhere ({how}); {cmd:?} was not run", a.name));
        return Ok(a.conflict_exit_code);
    };
    // After taking the lock: a signal while waiting ends redis-mutex as it would any
    // program, holding nothing. From here on signals are CMD's.
    let signals = match signals() {
        Ok(s) => s,
        Err(f) => return Err(release_first(guard, f)),
    };
    let env = [
        ("REDIS_MUTEX_NAME", Some(a.name.clone())),
        ("REDIS_MUTEX_TOKEN", Some(guard.token().to_owned())),
        // Removed without --fencing: an outer run's token must not pass for this one's.
        ("REDIS_MUTEX_FENCING_TOKEN", guard.fencing_token().map(|f| f.to_string())),
    ];
    let group = match Group::spawn(&a.command, &env) {
        Ok(g) => g,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound { exit::NOT_FOUND } else { exit::CANNOT_RUN };
            let f = Failure::new(code, format!("cannot run {cmd:?}: {e}; the lock was released"));
            return Err(release_first(guard, f));
        }
    };
    let (status, why) = supervise(group, &guard, &signals, &a, &cmd);
    let status = status.map_err(|e| Failure::new(exit::OS_ERROR, format!("cannot wait for {cmd:?}: {e}")))?;
    if why.is_some() {
        // Said when CMD was stopped. A lock that is gone is not released.
        let _ = release(guard);
        return Ok(exit::LOCK_LOST);
    }
    let code = exit_code(status);
    let ended = format!("{cmd:?} exited with {code}");
    match release(guard) {
        Released::Yes => Ok(code),
        Released::Lost => {
            say(&format!(
                "{ended}, but lock {:?} had been lost before it did (force-unlocked, or its lease ran out): its work \
                 may have overlapped another holder's",
                a.name
            ));
            Ok(exit::LOCK_LOST)
        }
        Released::Failed(e) => {
            say(&format!("{ended}; releasing lock {:?} failed ({e}); it ends with its lease", a.name));
            Ok(code)
        }
        Released::NoAnswer => {
            say(&format!(
                "{ended}; Redis did not answer the release of lock {:?} within {}: it ends with its lease",
                a.name,
                show(RELEASE_BOUND)
            ));
            Ok(code)
        }
    }
}

/// A lease too short for the kill grace would stop CMD at its first slow renewal, or
/// leave no time between SIGKILL and the end of the lease.
pub fn check_lease(lease: Duration, grace: Duration) -> Result<(), Failure> {
    let least = grace.checked_add(MARGIN).and_then(|d| d.checked_mul(2));
    if least.is_none_or(|least| lease < least) {
        let least = least.map_or_else(|| "longer than that".to_owned(), show);
        return Err(Failure::usage(format!(
            "--lease {} is too short for --kill-grace {}: a lease must be at least 2 x (kill grace + {}) = {least}, \
             so that a command can be stopped before its lease runs out when renewals fail; raise --lease or lower \
             --kill-grace",
            show(lease),
            show(grace),
            show(MARGIN)
        )));
    }
    Ok(())
}

/// Waits for CMD to exit, passing signals on and stopping it (SIGTERM, SIGKILL after
/// the grace) when the lock is lost or its renewals keep failing. Returns its status,
/// and why it was stopped, if it was.
fn supervise(
    group: Group,
    guard: &MutexGuard,
    signals: &Receiver<i32>,
    a: &RunArgs,
    cmd: &str,
) -> (std::io::Result<std::process::ExitStatus>, Option<Why>) {
    let mut stopping: Option<(Why, Stopping)> = None;
    loop {
        let now = Instant::now();
        let timeout = match &stopping {
            Some((_, s)) if !s.killed => s.kill_at.saturating_duration_since(now).min(TICK),
            _ => TICK,
        };
        match signals.recv_timeout(timeout) {
            Ok(signal) if FORWARDED.contains(&signal) => {
                if let Ok(false) = group.has_exited() {
                    group.signal(signal);
                }
            }
            // SIGCHLD: looked at below. SIGTSTP: ignored (see the help).
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => thread::sleep(timeout),
        }
        match group.has_exited() {
            Ok(false) => {}
            Ok(true) => {
                if stopping.is_some() {
                    // Whatever CMD left running in its group has no lock either.
                    group.signal(SIGKILL);
                }
                return (group.wait(), stopping.map(|(why, _)| why));
            }
            Err(e) => return (Err(e), stopping.map(|(why, _)| why)),
        }
        if stopping.is_none() {
            let why = if guard.is_lost() {
                Some(Why::Lost)
            } else if guard.remaining_lease() <= a.kill_grace + MARGIN {
                Some(Why::Renewals)
            } else {
                None
            };
            if let Some(why) = why {
                announce(why, guard, a, cmd);
                group.signal(SIGTERM);
                let kill_at = Instant::now().checked_add(a.kill_grace).unwrap_or_else(Instant::now);
                stopping = Some((why, Stopping { kill_at, killed: false }));
            }
        }
        if let Some((_, s)) = &mut stopping
            && !s.killed
            && Instant::now() >= s.kill_at
        {
            group.signal(SIGKILL);
            s.killed = true;
        }
    }
}

fn announce(why: Why, guard: &MutexGuard, a: &RunArgs, cmd: &str) {
    let name = &a.name;
    let what = match why {
        Why::Lost => format!("lock {name:?} was lost while {cmd:?} ran (force-unlocked, or its lease ran out)"),
        Why::Renewals => format!(
            "renewals of lock {name:?} keep failing (is Redis reachable?) and the lease Redis last confirmed has {} \
             left: another run may take the lock then",
            show(Duration::from_millis(guard.remaining_lease().as_millis() as u64))
        ),
    };
    say(&format!(
        "{what}; stopping {cmd:?}: SIGTERM now, SIGKILL in {} if it still runs; exit code {}",
        show(a.kill_grace),
        exit::LOCK_LOST
    ));
}

/// The signals redis-mutex handles while CMD runs, as they arrive: SIGCHLD, and those
/// it was not started ignoring (see [`is_ignored`]).
fn signals() -> Result<Receiver<i32>, Failure> {
    let failed = |e: std::io::Error| Failure::new(exit::OS_ERROR, format!("cannot handle signals: {e}"));
    let handled = FORWARDED.into_iter().chain([SIGTSTP]).filter(|s| !is_ignored(*s)).chain([SIGCHLD]);
    let mut signals = Signals::new(handled).map_err(failed)?;
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("redis-mutex-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if tx.send(signal).is_err() {
                    return;
                }
            }
        })
        .map_err(failed)?;
    Ok(rx)
}

enum Released {
    Yes,
    /// The lock was no longer this run's.
    Lost,
    Failed(Error),
    NoAnswer,
}

/// Releases the lock, waiting at most [`RELEASE_BOUND`] for Redis.
fn release(guard: MutexGuard) -> Released {
    let (tx, rx) = mpsc::channel();
    let spawned = thread::Builder::new().name("redis-mutex-release".into()).spawn(move || {
        let _ = tx.send(guard.unlock());
    });
    if spawned.is_err() {
        // The guard went with the closure, and its drop released the lock.
        return Released::Yes;
    }
    match rx.recv_timeout(RELEASE_BOUND) {
        Ok(Ok(())) => Released::Yes,
        Ok(Err(e)) if e.is_lock_lost() => Released::Lost,
        Ok(Err(e)) => Released::Failed(e),
        Err(_) => Released::NoAnswer,
    }
}

/// `failure`, after releasing the lock CMD will not use.
fn release_first(guard: MutexGuard, failure: Failure) -> Failure {
    let _ = release(guard);
    failure
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_must_cover_twice_the_grace_and_margin() {
        let s = Duration::from_secs;
        assert!(check_lease(s(30), s(5)).is_ok(), "the defaults");
        assert!(check_lease(s(11), s(5)).is_ok());
        assert!(check_lease(s(2), Duration::from_millis(500)).is_ok());
        assert!(check_lease(s(1), Duration::ZERO).is_ok());
        let f = check_lease(s(10), s(5)).unwrap_err();
        assert_eq!(f.code, exit::USAGE);
        assert!(f.message.contains("at least 2 x (kill grace + 500ms) = 11s"), "{}", f.message);
        assert!(check_lease(s(5), s(5)).is_err(), "a lease no longer than the grace");
        assert!(check_lease(Duration::MAX, Duration::MAX).is_err(), "overflow is refused, not a panic");
    }
}
