//! The run's configuration: the kinds of fault, how a worker process is started, and
//! the command line (clap).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use redis_mutex_harness::wall_clock_ns;

/// A kind of fault the controller injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// SIGKILL a worker process; a replacement is started.
    Kill,
    /// SIGSTOP a worker that holds a lock for longer than the lease, then SIGCONT.
    Stop,
    /// `CLIENT KILL TYPE normal`.
    ClientKillNormal,
    /// `CLIENT KILL TYPE pubsub`.
    ClientKillPubsub,
    /// `CLIENT PAUSE 2000`.
    Pause,
    /// Redis killed and restarted without its data (no persistence).
    Restart,
    /// Redis killed and restarted from its AOF (`appendfsync always`).
    RestartAof,
    /// `SENTINEL FAILOVER`: the replica is promoted while the old master still runs.
    Failover,
    /// The master SIGKILLed; the Sentinels promote the replica, and the old master,
    /// started again, becomes its replica.
    FailoverKill,
    /// `CLUSTER FAILOVER` on a replica of a master that serves a lock.
    ClusterFailover,
    /// A master that serves a lock SIGKILLed; its replica takes over after the node
    /// timeout, and the old master, started again empty, rejoins as a replica.
    ClusterFailoverKill,
    /// The slot of a held (and perhaps waited for) lock moved to another master, key by
    /// key, as `redis-cli --cluster reshard` does.
    Reshard,
    /// One Redlock master SIGKILLed, started again without its data; it sits out of
    /// quorums for `redlock_max_lease` (the run's lease) before the next fault.
    MasterKill,
    /// One Redlock master frozen (SIGSTOP) for longer than the lease, then SIGCONT.
    MasterStop,
    /// A majority of the Redlock masters (3 of 5) frozen at once for about a lease: no
    /// quorum, renewals fail, holders must be told they lost the lock.
    MajorityStop,
}

impl Fault {
    /// Every kind.
    pub const ALL: [Fault; 15] = [
        Fault::Kill,
        Fault::Stop,
        Fault::ClientKillNormal,
        Fault::ClientKillPubsub,
        Fault::Pause,
        Fault::Restart,
        Fault::RestartAof,
        Fault::Failover,
        Fault::FailoverKill,
        Fault::ClusterFailover,
        Fault::ClusterFailoverKill,
        Fault::Reshard,
        Fault::MasterKill,
        Fault::MasterStop,
        Fault::MajorityStop,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Stop => "stop",
            Fault::ClientKillNormal => "clientkill-normal",
            Fault::ClientKillPubsub => "clientkill-pubsub",
            Fault::Pause => "pause",
            Fault::Restart => "restart",
            Fault::RestartAof => "restart-aof",
            Fault::Failover => "failover",
            Fault::FailoverKill => "failover-kill",
            Fault::ClusterFailover => "cluster-failover",
            Fault::ClusterFailoverKill => "cluster-failover-kill",
            Fault::Reshard => "reshard",
            Fault::MasterKill => "master-kill",
            Fault::MasterStop => "master-stop",
            Fault::MajorityStop => "majority-stop",
        }
    }

    /// Whether the kind applies to `topology`. A restart of a Sentinel group's or a
    /// cluster's master is a failover (`failover-kill`, `cluster-failover-kill`) once it
    /// is down longer than they wait, and a race with them when it is not; each kind of
    /// failover needs its topology, and slots only a cluster has.
    pub fn applies_to(self, topology: Topology) -> bool {
        self.topology().is_none_or(|only| only == topology)
    }

    /// The one topology the kind is for (`None`: every one).
    fn topology(self) -> Option<Topology> {
        match self {
            Fault::Restart | Fault::RestartAof => Some(Topology::Single),
            Fault::Failover | Fault::FailoverKill => Some(Topology::Sentinel),
            Fault::ClusterFailover | Fault::ClusterFailoverKill | Fault::Reshard => Some(Topology::Cluster),
            Fault::MasterKill | Fault::MasterStop | Fault::MajorityStop => Some(Topology::Redlock),
            Fault::Kill | Fault::Stop | Fault::ClientKillNormal | Fault::ClientKillPubsub | Fault::Pause => None,
        }
    }

    /// Every kind that applies to `topology`: what `--faults all` means.
    pub fn all(topology: Topology) -> Vec<Fault> {
        Fault::ALL.into_iter().filter(|f| f.applies_to(topology)).collect()
    }

    /// Parses `all` (every kind that applies to `topology`), `none` or a
    /// comma-separated list (`clientkill` means both kinds); a kind that does not apply
    /// to `topology` is an error.
    pub fn parse_list(s: &str, topology: Topology) -> Result<Vec<Fault>, String> {
        match s {
            "all" => return Ok(Fault::all(topology)),
            "none" | "" => return Ok(Vec::new()),
            _ => {}
        }
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim) {
            match part {
                "clientkill" => out.extend([Fault::ClientKillNormal, Fault::ClientKillPubsub]),
                _ => out.push(
                    *Fault::ALL.iter().find(|f| f.name() == part).ok_or_else(|| format!("unknown fault {part:?}"))?,
                ),
            }
        }
        out.sort();
        out.dedup();
        if let Some(f) = out.iter().find(|f| !f.applies_to(topology)) {
            let only = f.topology().unwrap_or_else(|| unreachable!("{f} applies to every topology"));
            let why = match (only, topology) {
                (Topology::Single, Topology::Sentinel) => ": on a Sentinel group a killed master is failover-kill",
                (Topology::Single, Topology::Cluster) => ": on a cluster a killed master is cluster-failover-kill",
                (Topology::Single, Topology::Redlock) => ": on Redlock a killed master is master-kill",
                (Topology::Sentinel, Topology::Cluster) => {
                    ": on a cluster, use cluster-failover or cluster-failover-kill"
                }
                (Topology::Cluster, Topology::Sentinel) if *f != Fault::Reshard => {
                    ": on a Sentinel group, use failover or failover-kill"
                }
                _ => "",
            };
            return Err(format!("the {f} fault is for --topology {only} only (not {topology}){why}"));
        }
        Ok(out)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the workers lock on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Topology {
    /// One `redis-server`, which also holds the counters and the fenced resource.
    #[default]
    Single,
    /// A master, a replica and three Sentinels; the counters and the fenced resource on
    /// a server of their own, outside the failovers.
    Sentinel,
    /// A Redis Cluster of three masters with a replica each, the locks' slots spread
    /// over the masters; the counters and the fenced resource on a server of their own.
    Cluster,
    /// Five independent masters (Redlock, `build_redlock`); the counters and the fenced
    /// resource on a server of their own.
    Redlock,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Topology::Single => "single",
            Topology::Sentinel => "sentinel",
            Topology::Cluster => "cluster",
            Topology::Redlock => "redlock",
        })
    }
}

/// What kind of lock the workers take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LockKind {
    /// `client.mutex_with`, fencing on: one holder at a time.
    #[default]
    Mutex,
    /// `client.rw_lock_with`: readers share, a writer holds alone.
    #[value(name = "rwlock")]
    RwLock,
    /// `client.semaphore_with(name, permits)`: at most `permits` holders at once.
    Semaphore,
}

impl LockKind {
    pub fn name(self) -> &'static str {
        match self {
            LockKind::Mutex => "mutex",
            LockKind::RwLock => "rwlock",
            LockKind::Semaphore => "semaphore",
        }
    }

    /// Why `self` cannot run on `topology`, if it cannot.
    pub fn refused_on(self, topology: Topology) -> Option<String> {
        (self != LockKind::Mutex && topology == Topology::Redlock).then(|| {
            format!(
                "--lock {self} is not available on --topology redlock: a quorum of independent masters cannot bound \
                 a semaphore's permits or keep a writer apart from readers (with 2 permits and 5 masters, three \
                 holders can each own a different majority), so the crate refuses it (Error::Unsupported); use \
                 --topology single, sentinel or cluster"
            )
        })
    }
}

impl fmt::Display for LockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to start one worker process: `program args...` with [`WORKER_ENV`] set.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before anything else (e.g. `--worker`).
    pub args: Vec<String>,
}

/// One torture run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Worker processes alive at any time.
    pub procs: usize,
    /// Threads per worker.
    pub threads: usize,
    /// Length of the run.
    pub secs: u64,
    /// Lock names the threads pick from.
    pub locks: usize,
    /// What the workers lock on.
    pub topology: Topology,
    /// What kind of lock they take.
    pub lock: LockKind,
    /// A semaphore's permits (`LockKind::Semaphore`).
    pub permits: u32,
    /// Percent of a read-write lock's acquisitions that are reads (`LockKind::RwLock`).
    pub reads: u32,
    /// Faults to inject (each at least once when the run is long enough); each must
    /// apply to `topology`.
    pub faults: Vec<Fault>,
    /// Seed of every random choice (workers derive theirs from it).
    pub seed: u64,
    /// Lease of every acquisition (renewed by the watchdog at a third of it).
    pub lease: Duration,
    /// How to start a worker.
    pub worker: WorkerCommand,
    /// Checker self-test: each worker process locks a private name instead of the shared
    /// one, so processes do not exclude each other and the checker must report it.
    pub no_exclusion: bool,
}

/// The command line of `cargo run --example torture -- ...`.
#[derive(Parser)]
#[command(
    name = "torture",
    about = "Worker processes fight over a few locks while faults are injected; a checker looks for any \
             sign that mutual exclusion broke. Exit status 0: no violation.",
    after_help = "A 10-minute soak: --procs 4 --threads 4 --secs 600 --locks 3 --faults all \
                  [--topology sentinel|cluster|redlock] [--lock rwlock|semaphore]"
)]
pub struct Args {
    /// Worker processes alive at any time.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    procs: u64,
    /// Threads per worker.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    threads: u64,
    /// Length of the run, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    secs: u64,
    /// Lock names the threads pick from.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    locks: u64,
    /// What the workers lock on: one server; a master, a replica and three Sentinels; a
    /// cluster of three masters with a replica each; or five independent masters
    /// (Redlock).
    #[arg(long, value_enum, default_value_t = Topology::Single)]
    topology: Topology,
    /// What kind of lock the workers take: a mutex (fencing on), a read-write lock, or a
    /// semaphore (not on redlock).
    #[arg(long, value_enum, default_value_t = LockKind::Mutex)]
    lock: LockKind,
    /// A semaphore's permits (with --lock semaphore).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    permits: u32,
    /// Percent of a read-write lock's acquisitions that are reads (with --lock rwlock).
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u32).range(0..=100))]
    reads: u32,
    /// Faults to inject: all (every kind that applies to the topology), none, or a list
    /// of kill,stop,clientkill,pause and restart,restart-aof (single) or
    /// failover,failover-kill (sentinel) or cluster-failover,cluster-failover-kill,reshard
    /// (cluster) or master-kill,master-stop,majority-stop (redlock).
    #[arg(long, default_value = "all")]
    faults: String,
    /// Seed of every random choice [default: the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// Lease of every acquisition, in milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(300..))]
    lease_ms: u64,
    /// Checker self-test: worker processes lock private names, so the run must fail.
    #[arg(long)]
    no_exclusion: bool,
}

impl Args {
    /// The run these arguments describe; workers are this program with `--worker`.
    pub fn into_config(self) -> Result<Config, String> {
        let program = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        if let Some(why) = self.lock.refused_on(self.topology) {
            return Err(why);
        }
        Ok(Config {
            procs: self.procs as usize,
            threads: self.threads as usize,
            secs: self.secs,
            locks: self.locks as usize,
            topology: self.topology,
            lock: self.lock,
            permits: self.permits,
            reads: self.reads,
            faults: Fault::parse_list(&self.faults, self.topology).map_err(|e| format!("--faults: {e}"))?,
            seed: self.seed.unwrap_or_else(wall_clock_ns),
            lease: Duration::from_millis(self.lease_ms),
            worker: WorkerCommand { program, args: vec!["--worker".into()] },
            no_exclusion: self.no_exclusion,
        })
    }
}
