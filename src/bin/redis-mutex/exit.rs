//! Exit codes and the one-line messages that go with them.
//!
//! The conventions of `flock(1)`: `sysexits.h` codes for the tool's own failures, 1 (or
//! `--conflict-exit-code`) when the lock is held elsewhere; for the command, what a
//! shell would give (its code, 128 + signal, 126 and 127 when it cannot be run).

use redis_mutex::Error;

/// The lock was held elsewhere (the default of `--conflict-exit-code`, as `flock`'s).
pub const CONFLICT: u8 = 1;
/// `EX_USAGE`: arguments, a URL, a lock name or prefix that cannot be used.
pub const USAGE: u8 = 64;
/// `EX_UNAVAILABLE`: Redis unreachable or failing.
pub const UNAVAILABLE: u8 = 69;
/// `EX_OSERR`: the system refused a thread or a signal handler.
pub const OS_ERROR: u8 = 71;
/// `EX_TEMPFAIL`: the lock was lost while the command ran (or renewals failed until it
/// could have been): the command was stopped, or its work may have overlapped another
/// holder's. Try again later.
pub const LOCK_LOST: u8 = 75;
/// `EX_NOPERM`: Redis refused the credentials, or its ACL a command.
pub const NO_PERMISSION: u8 = 77;
/// The command was found but could not be run (as in `sh`).
pub const CANNOT_RUN: u8 = 126;
/// The command was not found (as in `sh`).
pub const NOT_FOUND: u8 = 127;

/// What went wrong, and the exit code that says so.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure { code, message: message.into() }
    }

    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(USAGE, message)
    }

    /// A library error while doing `what` ("connecting to ...", "locking ..."). The
    /// library's messages say what to do and never show a password.
    pub fn from_error(what: &str, e: &Error) -> Failure {
        let code = match e {
            Error::InvalidUrl { .. } | Error::InvalidName { .. } | Error::InvalidOption { .. } => USAGE,
            Error::Auth(_) => NO_PERMISSION,
            Error::Spawn { .. } => OS_ERROR,
            Error::LockLost { .. } => LOCK_LOST,
            _ => UNAVAILABLE,
        };
        Failure::new(code, format!("{what}: {e}"))
    }

    /// Prints the message; returns the code.
    pub fn report(self) -> u8 {
        say(&self.message);
        self.code
    }
}

/// One line on stderr: `redis-mutex: <message>`.
pub fn say(message: &str) {
    eprintln!("redis-mutex: {}", one_line(message));
}

/// `text` on one line: line breaks (a server's reply, an OS message) become spaces.
pub fn one_line(text: &str) -> String {
    text.split(['\n', '\r']).map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line() {
        assert_eq!(one_line("a\nb\r\n  c\n\n"), "a b c");
        assert_eq!(one_line("plain"), "plain");
    }

    #[test]
    fn library_errors_map_to_their_codes() {
        let f = Failure::from_error("x", &Error::LockLost { key: "k".into() });
        assert_eq!(f.code, LOCK_LOST);
        let f = Failure::from_error("x", &Error::InvalidOption { option: "lease", reason: "r".into() });
        assert_eq!(f.code, USAGE);
        let f = Failure::from_error("x", &Error::WrongType { key: "k".into() });
        assert_eq!(f.code, UNAVAILABLE);
        assert!(f.message.starts_with("x: key `k`"), "{}", f.message);
    }
}
