//! W4: 64 threads wait on a lock another client holds with a 60 s lease, and what
//! Redis receives meanwhile. (W1–W3 are measured by the shared module,
//! `redis_mutex_harness::bench`.)

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex_harness::bench::{Contender, Snap};
use redis_mutex_harness::{process_cpu, wall_clock_ns};

use crate::peers::{Impl, Lease, Names, Shared};

/// One W4 run of one implementation.
pub struct W4Row {
    pub imp: Impl,
    pub waiters: u32,
    pub window_s: f64,
    pub calls_per_s: f64,
    pub cmds_per_s: f64,
    pub pings_per_s: f64,
    pub conns_per_s: f64,
    /// ms of CPU per second of wall time (1000 = one core busy).
    pub rcpu_ms_per_s: f64,
    pub pcpu_ms_per_s: f64,
    /// Waiters that got the lock before the holder released it (should be 0).
    pub acquired_early: usize,
    /// From the holder's release until the last waiter got the lock, s.
    pub drain_s: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

pub const W4_WAITERS: u32 = 64;
/// Time for the waiters' first attempts to settle before the window opens.
pub const W4_SETTLE: Duration = Duration::from_secs(1);

fn cpu_seconds() -> f64 {
    process_cpu().map_or(0.0, |d| d.as_secs_f64())
}

pub fn w4(imp: Impl, url: &str, tls_ca: Option<&str>, admin: &mut redis::Connection, window: f64) -> W4Row {
    let _: () = redis::cmd("DEL").arg(imp.keys()).query(admin).unwrap();
    // The holder: another client (connection, pool) of the same implementation.
    let holder_shared = Shared::new(imp, url, tls_ca, 1, Names::ONE);
    let mut holder = holder_shared.worker(0, "w4-holder".into());
    holder.acquire_with(Lease::Fixed60s).expect("W4 holder");

    let shared = Shared::new(imp, url, tls_ca, W4_WAITERS, Names::ONE);
    let barrier = Arc::new(Barrier::new(W4_WAITERS as usize + 1));
    let handles: Vec<_> = (0..W4_WAITERS)
        .map(|t| {
            let (shared, barrier) = (shared.clone(), barrier.clone());
            thread::spawn(move || {
                let mut w = shared.worker(t, format!("{}-w4-{t}", std::process::id()));
                barrier.wait();
                let mut errors = 0u64;
                let mut first_error = None;
                // Errors are retried, but not forever: a broken peer must not hang the run.
                let give_up = Instant::now() + W4_SETTLE + Duration::from_secs_f64(window) + Duration::from_secs(120);
                let got = loop {
                    match w.acquire_with(Lease::Default) {
                        Ok(()) => break wall_clock_ns(),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                            if Instant::now() > give_up {
                                return (u64::MAX, errors, first_error);
                            }
                            thread::sleep(Duration::from_millis(10));
                        }
                    }
                };
                if let Err(e) = w.release() {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
                (got, errors, first_error)
            })
        })
        .collect();
    barrier.wait();
    thread::sleep(W4_SETTLE);
    let (before, cpu0, t0) = (Snap::take(admin), cpu_seconds(), Instant::now());
    thread::sleep(Duration::from_secs_f64(window));
    let (after, cpu1, elapsed) = (Snap::take(admin), cpu_seconds(), t0.elapsed().as_secs_f64());
    let released_at = wall_clock_ns();
    let release_err = holder.release().err();
    let d = before.delta(&after, 0.0);
    let mut row = W4Row {
        imp,
        waiters: W4_WAITERS,
        window_s: elapsed,
        calls_per_s: d.all / elapsed,
        cmds_per_s: d.top / elapsed,
        pings_per_s: d.pings / elapsed,
        conns_per_s: d.conns / elapsed,
        rcpu_ms_per_s: d.cpu * 1e3 / elapsed,
        pcpu_ms_per_s: (cpu1 - cpu0) * 1e3 / elapsed,
        acquired_early: 0,
        drain_s: 0.0,
        errors: 0,
        first_error: release_err,
    };
    let mut last = released_at;
    for h in handles {
        let (got, errors, fe) = h.join().expect("W4 waiter panicked");
        if got == u64::MAX {
            continue; // gave up after errors (counted in `errors`)
        }
        if got < released_at {
            row.acquired_early += 1;
        }
        last = last.max(got);
        row.errors += errors;
        if row.first_error.is_none() {
            row.first_error = fe;
        }
    }
    row.drain_s = (last - released_at) as f64 / 1e9;
    row
}
