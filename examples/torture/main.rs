//! Torture run: many processes and threads fight over a few locks while faults are
//! injected, and a checker looks for any sign that mutual exclusion broke.
//!
//! ```text
//! cargo run --release --example torture -- --procs 3 --threads 3 --secs 60 --locks 2 \
//!     [--topology single|sentinel|cluster|redlock] [--faults all|none|kill,stop,clientkill,pause,...]
//!     [--lock mutex|rwlock|semaphore [--reads PCT] [--permits N]] [--seed N] [--lease-ms 2000]
//! ```
//!
//! It starts its own `redis-server` (AOF on, `appendfsync always`; the test harness's
//! launcher) on a free port in a temporary directory (on `/dev/shm` when there is one:
//! fsync on a disk would make the locks sit idle), then `--procs` worker processes (this program again, with
//! `--worker`) of `--threads` threads each, for `--secs` seconds, over `--locks` lock
//! names, every lock with `auto_renew`, a short lease (2 s) so that faults matter, and
//! (a mutex's) `fencing(true)`. Exit status 0 when the checker found no violation, 1 otherwise. A
//! failed run keeps its directory (records, worker stderr, server log) and says where;
//! `TORTURE_KEEP_DIR=1` keeps it always; `TORTURE_LOG=debug` (or `trace`) writes the
//! crate's log to each worker's stderr file, stamped with the records' wall clock.
//! `--no-exclusion` is the checker's self-test: worker processes lock private names, so
//! the run must fail.
//!
//! A 10-minute soak (add `--topology redlock`, or `--lock rwlock`, `--lock semaphore`):
//!
//! ```text
//! cargo run --release --example torture -- --procs 4 --threads 4 --secs 600 --locks 3 --faults all
//! ```
//!
//! or through the test harness (same program, run in-process by `tests/torture.rs`):
//! `TORTURE_SECS=600 cargo test --release --test torture -- --nocapture`.
//!
//! # Topologies
//!
//! `--topology single` (the default) is the one server above, which also holds the
//! counters and the fenced resource. `--topology sentinel` starts a Sentinel group (a
//! master, a replica, three Sentinels; down after 1 s) in subdirectories of the run's
//! directory, and a plain server (`data/`) for the counters and the fenced resource, out
//! of the faults' reach, as a protected resource is in production: workers lock through
//! `build_sentinel`, and the controller reads each lock from whichever server the
//! Sentinels name as master now. Its faults are those below that apply (`all` means
//! them): `failover`, `failover-kill` and `kill`, `stop`, `clientkill`, `pause` (on the
//! current master; the restarts are single-topology faults: a master down longer than the
//! Sentinels wait is `failover-kill`, and one back sooner races them).
//!
//! `--topology cluster` starts a Redis Cluster of three masters with a replica each
//! (`cluster-node-timeout` 5 s; a subdirectory `node-N` per node) and, before the
//! workers, moves lock `k`'s slot to master `k % 3` (CRC16 puts `lock-1` and `lock-2` on
//! one master); the counters and the fenced resource on `data/` as for Sentinel. Workers
//! lock through `build_cluster`; the controller reads each lock on its slot's master.
//! Faults (`all` means them): `cluster-failover`, `cluster-failover-kill`, `reshard`,
//! and `kill`, `stop`, `clientkill` (on every node), `pause` (`CLIENT PAUSE 2000` on a
//! lock's master, under the node timeout).
//!
//! `--topology redlock` starts five independent masters (subdirectories `master-N`, no
//! persistence) and the `data/` server; workers lock through `build_redlock` with
//! `redlock_max_lease` set to the run's lease (a master started again sits out only
//! that long), and the controller takes as a lock's holder the client a quorum of
//! masters names. Faults (`all` means them): `master-kill`, `master-stop`,
//! `majority-stop`, and `kill`, `stop`, `clientkill` and `pause` on one master. A
//! fault that does not apply to the topology is refused with a message saying which
//! topology it is for.
//!
//! # Kinds of lock
//!
//! `--lock mutex` (the default) is `client.mutex_with`, fencing on. `--lock rwlock` is
//! `client.rw_lock_with`: each acquisition is a read with probability `--reads` percent
//! (default 80), else a write; `--lock semaphore` is `client.semaphore_with(name,
//! --permits)` (default 3). Neither has fencing tokens, so there is no fenced write; a
//! writer does the counter's read-modify-write, a reader or a permit reads the counter
//! and pauses as long, and leaves its client id under its owner token on the data
//! server (how the controller finds a worker that holds one of many shares, for
//! `stop`). Every fault of the topology applies; both are refused on `--topology
//! redlock` (the crate refuses them there: a quorum cannot bound them).
//!
//! # Where things are
//!
//! `config.rs` (faults, the command line), `worker.rs` (a worker process and its
//! critical sections), `record.rs` (what a worker writes per critical section),
//! `fleet.rs` (the worker processes, seen from the controller), `controller.rs` (the
//! run: server, fleet, faults, collecting records), `checker.rs` (one function per kind
//! of violation), `report.rs` (the outcome and how it prints).
//!
//! # What each worker thread does
//!
//! `try_lock_until` one of the locks (bounded by the end of the run), then inside the
//! critical section: a non-atomic read-modify-write of a per-lock counter (`GET`, a
//! short sleep that widens the race window, `SET n+1`, on a plain connection), a
//! fenced write (a Lua script that refuses a token lower than the highest it accepted),
//! and one record line (lock, worker, thread, token, times in wall-clock ns, outcomes)
//! written unbuffered to the worker's file, so a SIGKILLed worker's records survive up
//! to its death. A Redis error inside the critical section makes the thread hold on to
//! its guard until the watchdog had a chance to renew it (or to find it lost), then ask
//! Redis (`is_held`) before going on; a lost guard ends the critical section.
//!
//! # Faults (one at a time, at random gaps)
//!
//! `kill` SIGKILLs a worker and starts a replacement; `stop` SIGSTOPs a worker that
//! holds a lock for longer than the lease, then SIGCONTs it (its guard must report lost,
//! and the fenced resource must refuse its stale write); `clientkill` runs
//! `CLIENT KILL TYPE normal` and `CLIENT KILL TYPE pubsub`; `pause` runs
//! `CLIENT PAUSE 2000`; `restart-aof` kills Redis and starts it again on the same port
//! from its AOF (locks and fence counters survive); `restart` does the same after
//! deleting the AOF, i.e. a restart without persistence (every lock, fence counter and
//! resource is forgotten; guards that outlive it must be marked lost).
//! On a Sentinel group: `failover` asks a Sentinel for `SENTINEL FAILOVER` (the old
//! master takes writes until the Sentinels demote it, about 10 s later);
//! `failover-kill` SIGKILLs the master and starts it again 2 s after every Sentinel
//! names the new one (it comes back empty and is made a replica); each returns when
//! the group is whole again. `pause` is `CLIENT PAUSE 700` there (under the Sentinels'
//! down-after of 1 s), and `clientkill` spares the Sentinels' connections: either would
//! otherwise make them fail the master over.
//! On a cluster: `cluster-failover` runs `CLUSTER FAILOVER` on a replica of a lock's
//! master (a held lock's, when there is one); `cluster-failover-kill` SIGKILLs that
//! master and, once every node names its replica, starts it again empty with its
//! `nodes.conf`, so it rejoins as a replica; `reshard` moves the slot of a held (and,
//! when there is one, waited-for) lock to another master key by key, as
//! `redis-cli --cluster reshard` does. Each returns when the cluster is ok again. A
//! replica promoted less than 21 s ago is not failed over again (Redis starts its next
//! election only 4 node timeouts after the last).
//! On Redlock: `master-kill` SIGKILLs one master and starts it again empty 0.7 s later,
//! then waits until it counts again (the lease and 1.5 s); `master-stop` SIGSTOPs one
//! master for 1.5 leases; `majority-stop` SIGSTOPs three of the five at once for a
//! lease (no quorum: nothing is acquired or renewed meanwhile). Every other fault takes
//! at most one master away, one at a time, so a quorum always counts except during
//! `majority-stop`.
//!
//! # The checker
//!
//! For a read-write lock: a writer never overlaps any other holder (readers may overlap
//! each other), and the counter (the writers') loses no update; for a semaphore: never
//! more holders at once than permits. With no tokens to order grants, an overlap is
//! allowed only when a holder that may have been granted first (it asked before the
//! other returned) was told it lost its lease, or in a failover window as below. The
//! report adds acquisitions per role, the most holders at once and the longest time a
//! lock went without an acquisition (waiters keep progressing). For a mutex:
//!
//! See `checker.rs`: overlapping critical sections, fencing-token order, stale fenced writes
//! that were accepted, and lost counter updates, with the accounting explained there.
//! Fencing tokens must rise across restarts without persistence too (the fence counter
//! is lost, but the next one follows the server clock); the fenced resource and the
//! counter, which live in the same Redis, are wiped by such a restart and are checked
//! per epoch between such restarts. Across a failover (from the fault until the group
//! is whole again) two holders may overlap only when one that was granted meanwhile was
//! told it lost the lock; tokens must rise all the same, and the counters and the
//! resource, outside the group, are checked over the whole run. The report gives, per
//! failover, when the Sentinels named the new master, when acquisitions resumed, the
//! longest pause, and how many guards were told they lost their lock. On a cluster a
//! window covers only the locks of the master that failed over, and a reshard excuses
//! nothing; the report adds a line per move of a slot. On Redlock nothing is excused
//! (no failover, no restart of the lock service as a whole): the strict rules hold through
//! every master fault, `majority-stop` included; the report adds a line per kind of
//! master fault.

mod checker;
mod config;
mod controller;
mod fleet;
mod record;
mod report;
mod worker;

// What `tests/torture.rs` runs in-process.
pub use config::{Config, Fault, LockKind, Topology, WorkerCommand};
pub use controller::run;
pub use report::Report;
pub use worker::{WORKER_ENV, worker_entry};

use clap::Parser;

fn main() {
    if std::env::args().any(|a| a == "--worker") {
        std::process::exit(worker_entry().unwrap_or_else(|| {
            eprintln!("--worker is for worker processes started by the torture run ({WORKER_ENV} is not set)");
            2
        }));
    }
    let cfg = match config::Args::parse().into_config() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    match run(&cfg) {
        Ok(report) => {
            println!("{report}");
            std::process::exit(if report.is_ok() { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("torture: {e}");
            std::process::exit(2);
        }
    }
}
