//! `redis-mutex`: run a command while holding a Redis lock, for cron jobs and shell
//! scripts on many machines (feature `cli`).
//!
//! - `run` (`run.rs`): waits for the lock, runs the command in a process group of its
//!   own (`process.rs`), renews the lease while it runs, stops it in time when the lock
//!   is lost or its renewals keep failing, releases the lock once it has exited.
//! - `status` and `unlock --force` (`status.rs`).
//! - The command line and help texts (`args.rs`), durations (`duration.rs`), the
//!   connection (`connect.rs`), exit codes and messages (`exit.rs`).
//!
//! Built on the library's public API only. See `redis-mutex --help`, and
//! ARCHITECTURE.md, "The command-line tool".

#[cfg(not(unix))]
compile_error!("the redis-mutex command needs Unix: it runs commands as process groups and passes signals on");

mod args;
mod connect;
mod duration;
mod exit;
mod process;
mod run;
mod status;

use args::Command;

fn main() {
    let code = match args::parse() {
        Ok(cli) => {
            let done = match cli.command {
                Command::Run(a) => run::run(&cli.connection, a),
                Command::Status(a) => status::status(&cli.connection, a),
                Command::Unlock(a) => status::unlock(&cli.connection, a),
            };
            done.unwrap_or_else(exit::Failure::report)
        }
        Err(code) => code,
    };
    // Without running destructors: a client whose Redis stopped answering would hold
    // the exit for its threads' timeouts. Nothing is left to flush (println! ends lines).
    std::process::exit(code.into())
}
