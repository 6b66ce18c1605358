//! The command as a process group: starting it, signalling all of it, and telling
//! whether it exited without reaping it; and whether a signal is ignored. The only
//! `unsafe` of the binary: `kill(2)`, `waitid(2)` and `sigaction(2)`, which std does
//! not offer for a group, without reaping, or at all.
//!
//! Why a group of its own: `run` stops CMD when the lock is lost, and a shell script's
//! commands must stop with it (a signal to the shell alone leaves them running, without
//! the lock). Why not reap before signalling: a process group's id is its leader's
//! pid, which the system may give to a new process once the leader is reaped; while
//! the leader is a zombie (exited, not reaped) the id cannot be reused. Only this
//! thread reaps, so every signal is sent while the id is still CMD's.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};

/// CMD, running as the leader of its own process group.
pub struct Group {
    child: Child,
    pgid: libc::pid_t,
}

impl Group {
    /// Starts `command` (its first item the program, looked up in `PATH`) with
    /// stdin, stdout and stderr inherited and `env` added.
    pub fn spawn(command: &[OsString], env: &[(&str, Option<String>)]) -> io::Result<Group> {
        let (program, args) = command.split_first().ok_or_else(|| io::Error::other("no command"))?;
        let mut cmd = Command::new(program);
        cmd.args(args).process_group(0);
        for (name, value) in env {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
        let child = cmd.spawn()?;
        let pgid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
        Ok(Group { child, pgid })
    }

    /// Sends `signal` to every process of the group, then `SIGCONT` (a stopped process
    /// acts on a signal only once continued, as timeout(1) does it). Only before
    /// [`wait`](Self::wait). A group that has ended is not an error.
    pub fn signal(&self, signal: libc::c_int) {
        self.kill(signal);
        if signal != libc::SIGKILL && signal != libc::SIGCONT {
            self.kill(libc::SIGCONT);
        }
    }

    fn kill(&self, signal: libc::c_int) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours. The group
        // id is still CMD's (see the module docs).
        unsafe { libc::kill(-self.pgid, signal) };
    }

    /// Whether CMD (the leader) has exited, without reaping it.
    pub fn has_exited(&self) -> io::Result<bool> {
        // SAFETY: an all-zero `siginfo_t` is a valid value; waitid(2) writes only into
        // it. With WNOHANG it returns at once, and `si_signo` stays 0 when no child has
        // changed state (Linux zeroes it; POSIX asks callers to zero it first).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let options = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        let id = libc::id_t::try_from(self.pgid).map_err(io::Error::other)?;
        if unsafe { libc::waitid(libc::P_PID, id, &mut info, options) } == -1 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
        }
        Ok(info.si_signo != 0)
    }

    /// Reaps CMD; after this the group may no longer be signalled.
    pub fn wait(mut self) -> io::Result<ExitStatus> {
        self.child.wait()
    }
}

/// Whether `signal` is ignored (`SIG_IGN`): redis-mutex was started so (`nohup`
/// ignores SIGHUP; a non-interactive shell's background jobs ignore SIGINT). Such a
/// signal is left alone, so that CMD inherits it ignored too.
pub fn is_ignored(signal: libc::c_int) -> bool {
    // SAFETY: an all-zero `sigaction` is a valid value; with a null new action,
    // sigaction(2) changes nothing and only writes the current action into `old`.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    let read = unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) } == 0;
    read && old.sa_sigaction == libc::SIG_IGN
}

/// A shell's view of an exit status: the code, or 128 + the signal that ended it.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        (None, None) => 128,
    }
}
