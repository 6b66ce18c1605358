//! The command line (clap derive): every option with its default, and the help texts.
//! The names are the contract of issue 17 (DESIGN.md's CLI line): add, don't rename.

use std::ffi::OsString;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};

use crate::duration;
use crate::exit::{self, Failure};

const ABOUT: &str = "Run a command while holding a Redis lock: cron jobs and shell scripts on many machines, \
one at a time.";

const EXAMPLES: &str = "\
Examples:
  redis-mutex run nightly-report -- ./report.sh --full
  redis-mutex --url redis://:PASSWORD@redis.internal:6379/ run --wait 5m deploy -- make deploy
  redis-mutex status nightly-report --json
  redis-mutex unlock --force nightly-report

  # crontab: every host has this line; one sync runs at a time across them, and a host
  # that finds it running skips this turn (--no-wait) instead of queueing up:
  */5 * * * * REDIS_URL=redis://redis.internal:6379/ redis-mutex run --no-wait sync-invoices -- /opt/app/sync-invoices

Exit status (as flock(1): sysexits.h for redis-mutex's own failures, 1 for a conflict):
  CMD's code  CMD ran and exited with it
  128+N       CMD was ended by signal N (143: SIGTERM, 137: SIGKILL)
  1           the lock was held elsewhere (--no-wait, or --wait ran out); CMD did not run
              (--conflict-exit-code N to change it)
  75          the lock was lost while CMD ran (or renewals failed until it could have
              been): CMD was stopped, or its work may have overlapped another holder's
  64          bad usage: an argument, a URL, a lock name or prefix that cannot be used
  69          Redis unreachable or failing
  77          Redis refused the credentials, or its ACL a command
  126, 127    CMD could not be run, or was not found (as in sh)
Errors are one line on stderr, starting with \"redis-mutex:\"; passwords are never shown.";

const RUN_ABOUT: &str = "\
Run CMD while holding the lock NAME, and exit with CMD's exit code.

Waits for the lock (as long as it takes, unless --wait or --no-wait), then runs CMD with
stdin, stdout and stderr passed through, renews the lock's lease every third of it while
CMD runs, and releases the lock once CMD has exited. CMD's environment has
REDIS_MUTEX_NAME (the lock's name), REDIS_MUTEX_TOKEN (the owner token Redis keeps while
it holds the lock) and, with --fencing, REDIS_MUTEX_FENCING_TOKEN (a number that rises
with every acquisition of NAME: pass it to a resource that can refuse an older one).

Signals: SIGINT, SIGTERM and SIGHUP sent to redis-mutex are passed on to CMD, and the lock
is released once CMD has exited (a signal redis-mutex was started ignoring, as nohup does
SIGHUP, stays ignored, for CMD too). CMD runs in a process group of its own, so that a signal
(and stopping it, below) reaches what it started too, such as a script's commands; so it
is not in a terminal's foreground, and a CMD that reads the terminal stops as a
background job would: give it its input from a file or a pipe (cron does). Ctrl-Z does not
suspend redis-mutex, which would stop the renewals while CMD ran on.

Losing the lock: when the lock is lost while CMD runs (force-unlocked, or its lease ran
out), CMD gets SIGTERM, then SIGKILL after --kill-grace, and redis-mutex exits with 75.
Stopping CMD only once the lock is known lost would let it overlap the next holder for the
grace period, so while renewals keep failing (Redis unreachable) CMD gets SIGTERM early:
when the lease Redis last confirmed has kill grace + 0.5 s left. Even a CMD that ignores
SIGTERM is then gone 0.5 s before its lease can run out in Redis and another run take the
lock. Hence --lease must be at least 2 x (kill grace + 0.5 s). A redis-mutex that is itself
killed (kill -9) or frozen cannot stop CMD: the lock then ends with its lease while CMD
may run on; use --fencing where that matters.";

/// The whole command line.
#[derive(Debug, Parser)]
#[command(name = "redis-mutex", version, about = ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the locks live (accepted before or after the subcommand).
#[derive(Debug, Args)]
pub struct Connection {
    /// Redis URL: redis://[user:password@]host:port/[db], or rediss:// for TLS. With
    /// --sentinel, a Sentinel's URL, with --cluster a node's, with --redlock a master's:
    /// repeat it for each.
    /// Default: $REDIS_URL, then redis://127.0.0.1:6379/
    #[arg(long = "url", value_name = "URL", global = true)]
    pub urls: Vec<String>,
    /// Key prefix: lock NAME lives at P:{NAME}; only runs that share the Redis and the
    /// prefix exclude each other. Default: redis-mutex
    #[arg(long, value_name = "P", global = true)]
    pub prefix: Option<String>,
    /// Lock on the master that Sentinels monitor under this name (the --url values are
    /// the Sentinels'). The master's password, if any, is read from
    /// $REDIS_MUTEX_MASTER_PASSWORD (an option would show it in ps)
    #[arg(long, value_name = "MASTER", global = true)]
    pub sentinel: Option<String>,
    /// With --sentinel: the ACL user to log in to the master with
    #[arg(long, value_name = "USER", global = true, requires = "sentinel")]
    pub master_user: Option<String>,
    /// With --sentinel: the database number on the master. Default: 0
    #[arg(long, value_name = "N", global = true, requires = "sentinel")]
    pub master_db: Option<i64>,
    /// Lock on a Redis Cluster: the --url values are any of its nodes (repeat --url)
    #[arg(long, global = true, conflicts_with = "sentinel")]
    pub cluster: bool,
    /// Lock with Redlock on independent masters: the --url values are the masters (an
    /// odd number, at least 3; repeat --url)
    #[arg(long, global = true, conflicts_with_all = ["sentinel", "cluster"])]
    pub redlock: bool,
    /// For rediss:// URLs: trust the CA certificate in FILE (PEM). Default: the system's
    /// roots
    #[arg(long, value_name = "FILE", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// For rediss:// URLs: present the client certificate in FILE (PEM), for servers with
    /// tls-auth-clients yes (with --tls-key)
    #[arg(long, value_name = "FILE", global = true, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, value_name = "FILE", global = true, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run CMD while holding the lock NAME; exit with CMD's exit code
    #[command(long_about = RUN_ABOUT, after_help = EXAMPLES)]
    Run(RunArgs),
    /// Show whether NAME is held, by whom, for how much longer, and which clients wait
    Status(StatusArgs),
    /// Delete the lock NAME whoever holds it (with --force): for a stuck lock
    Unlock(UnlockArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Wait at most this long for the lock (500ms, 30s, 5m, 1h, 1m30s), then exit with
    /// the conflict code without running CMD. Default: wait as long as it takes
    #[arg(long, value_name = "DUR", value_parser = duration::parse, conflicts_with = "no_wait")]
    pub wait: Option<Duration>,
    /// Try once: if the lock is held elsewhere, exit with the conflict code at once
    #[arg(long)]
    pub no_wait: bool,
    /// The lock's lease, renewed every third of it while CMD runs: how long the lock
    /// outlives a redis-mutex that died. At least 2 x (kill grace + 0.5 s)
    #[arg(long, value_name = "DUR", value_parser = duration::parse, default_value = "30s")]
    pub lease: Duration,
    /// Pass CMD a fencing token in $REDIS_MUTEX_FENCING_TOKEN (rises with every
    /// acquisition of NAME)
    #[arg(long)]
    pub fencing: bool,
    /// Exit code when the lock is held elsewhere (--no-wait, or --wait ran out)
    #[arg(long, value_name = "N", default_value_t = exit::CONFLICT)]
    pub conflict_exit_code: u8,
    /// Time between SIGTERM and SIGKILL when CMD must stop because the lock is lost (or
    /// may soon be)
    #[arg(long, value_name = "DUR", value_parser = duration::parse, default_value = "5s")]
    pub kill_grace: Duration,
    /// The lock's name: UTF-8, at most 512 bytes, no { or }
    pub name: String,
    /// The command and its arguments, after --
    #[arg(value_name = "CMD", required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object: name, key, held, token, lease_left_ms, client_id,
    /// contended, waiting_clients
    #[arg(long)]
    pub json: bool,
    /// The lock's name
    pub name: String,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Required: whoever holds the lock is not asked, and keeps running without it
    /// until it notices (a redis-mutex run then stops its command)
    #[arg(long)]
    pub force: bool,
    /// The lock's name
    pub name: String,
}

/// The command line, or the exit code after help, the version or a usage error (one
/// line, code 64) was printed.
pub fn parse() -> Result<Cli, u8> {
    Cli::try_parse().map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            0
        }
        _ => Failure::usage(usage_error(e.kind(), &e.to_string())).report(),
    })
}

/// clap's error text without its usage block, on one line.
fn usage_error(kind: ErrorKind, text: &str) -> String {
    if kind == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return "say what to do: run, status or unlock; see redis-mutex --help".to_owned();
    }
    let text = text.split("\nUsage:").next().unwrap_or(text);
    let text = text.split("\nFor more information").next().unwrap_or(text);
    let text = exit::one_line(text.trim().strip_prefix("error: ").unwrap_or(text));
    format!("{text}; see redis-mutex --help")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_from(args: &[&str]) -> Result<Cli, String> {
        Cli::try_parse_from(args).map_err(|e| usage_error(e.kind(), &e.to_string()))
    }

    #[test]
    fn the_command_may_follow_the_name_with_or_without_dashes() {
        for args in [
            &["redis-mutex", "run", "job", "--", "ls", "-l", "--wait"][..],
            &["redis-mutex", "run", "job", "ls", "-l", "--wait"][..],
        ] {
            let cli = parse_from(args).unwrap();
            let Command::Run(run) = cli.command else { panic!() };
            assert_eq!(run.name, "job");
            assert_eq!(run.command, ["ls", "-l", "--wait"]);
            assert_eq!((run.wait, run.lease, run.kill_grace), (None, Duration::from_secs(30), Duration::from_secs(5)));
        }
    }

    #[test]
    fn connection_options_go_before_or_after_the_subcommand() {
        let cli = parse_from(&["redis-mutex", "--url", "redis://a/", "status", "job", "--prefix", "p"]).unwrap();
        assert_eq!((cli.connection.urls, cli.connection.prefix.as_deref()), (vec!["redis://a/".into()], Some("p")));
    }

    #[test]
    fn usage_errors_are_one_line() {
        for args in [
            &["redis-mutex"][..],
            &["redis-mutex", "run", "job"],
            &["redis-mutex", "run", "--wait", "5", "job", "--", "true"],
            &["redis-mutex", "run", "--wait", "1s", "--no-wait", "job", "--", "true"],
            &["redis-mutex", "run", "--conflict-exit-code", "300", "job", "--", "true"],
            &["redis-mutex", "--master-user", "u", "status", "job"],
            &["redis-mutex", "status"],
            &["redis-mutex", "frobnicate"],
        ] {
            let err = parse_from(args).map(|_| ()).expect_err(&format!("{args:?}"));
            assert!(!err.contains('\n') && err.ends_with("see redis-mutex --help"), "{args:?}: {err}");
            assert!(!err.starts_with("error:") && err.len() > 30 && err.len() < 200, "{args:?}: {err}");
            assert!(!err.contains("For more information"), "{args:?}: {err}");
        }
    }
}
