use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::keys::redact_url;
use crate::tls;

/// Everything that can go wrong when talking to the lock service.
///
/// Contention is never an error: `try_lock*` return `Ok(None)` when another holder keeps
/// the lock. The predicates ([`is_transient`](Error::is_transient),
/// [`is_lock_lost`](Error::is_lock_lost)) answer the questions a caller usually asks
/// without matching on variants.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The server could not be reached or stopped answering (refused, reset, timed out).
    /// Usually passes: retry later, or check that Redis runs at the configured URL.
    Connection(redis::RedisError),
    /// The server rejected the credentials, or its ACL refused a command, key or channel:
    /// whether at the top level, inside one of this crate's scripts, in a pipeline, or
    /// the `SELECT` of a database while connecting. Not transient: it lasts until the
    /// credentials or the ACL change.
    Auth(redis::RedisError),
    /// A TLS connection (`rediss://`) could not be set up: the server's certificate is
    /// not trusted (not signed by the CA given to
    /// [`tls_root_cert`](crate::LockClientBuilder::tls_root_cert), or not for this host
    /// name), the server refused this client's certificate or wants one
    /// ([`tls_client_cert`](crate::LockClientBuilder::tls_client_cert)), or what
    /// answered does not speak TLS (a plain-TCP port). The message names which. Not
    /// transient: it lasts until the certificates or the URL change. (A server that
    /// accepts the connection but does not answer the handshake in time is an
    /// [`Error::Connection`]: it may be paused or overloaded.)
    Tls(redis::RedisError),
    /// The server answered with an error this crate does not expect.
    Redis(redis::RedisError),
    /// A key where this crate keeps a lock holds a value of another type, written by
    /// something else. The key is left untouched.
    WrongType {
        /// The Redis key.
        key: String,
    },
    /// The server's reply did not have the shape this crate's scripts return.
    UnexpectedReply {
        /// What was being done.
        operation: &'static str,
        /// The reply, for diagnosis.
        reply: String,
    },
    /// No pooled connection became free (or could be opened) in time.
    PoolTimeout {
        /// How long the caller waited.
        waited: Duration,
        /// The last connection error, if the pool failed to open one.
        last_error: Option<String>,
    },
    /// A lock name that cannot be used; reported before any I/O.
    InvalidName {
        /// The rejected name (truncated to 64 bytes).
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// An option value that cannot be used; reported before any I/O.
    InvalidOption {
        /// Which option.
        option: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The Redis URL could not be parsed.
    InvalidUrl {
        /// The URL, with its credentials (userinfo, a `pass=` parameter) replaced by
        /// `***`.
        url: String,
        /// What the parser said; without its details when the URL holds credentials
        /// (they may quote part of the password).
        reason: String,
    },
    /// The lock is no longer held by this guard: its lease ran out, or someone
    /// force-unlocked it, and another owner (or nobody) has it now.
    LockLost {
        /// The Redis key of the lock.
        key: String,
    },
    /// Fewer replicas than [`MutexOptions::wait_replicas`](crate::MutexOptions::wait_replicas)
    /// asks for acknowledged, within its timeout, the write that gave this client the
    /// lock (or extended it). An acquisition was released again; an extend left the
    /// lock held with the lease it had. Transient: `lock()` retries it.
    ReplicasNotAcknowledged {
        /// The Redis key of the lock.
        key: String,
        /// The replicas asked for.
        wanted: u32,
        /// The replicas that acknowledged (Redis's `WAIT` reply).
        got: u32,
        /// How long Redis waited for them.
        timeout: Duration,
    },
    /// Redlock: fewer than a majority of the masters answered in time and count for a
    /// quorum (a master that restarted sits out for the client's `redlock_max_lease`),
    /// so the lock could be neither taken nor confirmed; what the answering masters
    /// were given was taken back. Transient: `lock()` retries it within the client's
    /// outage tolerance, `try_lock_for` until its deadline, `try_lock` returns it.
    NoQuorum {
        /// The client's masters.
        masters: usize,
        /// How many must count (a majority).
        needed: usize,
        /// How many answered in time.
        answered: usize,
        /// Of those, how many sat out because they restarted less than
        /// `redlock_max_lease` ago.
        sitting_out: usize,
        /// Why one of the others did not answer.
        last_error: Option<Box<Error>>,
    },
    /// The deployment cannot offer this primitive. Read-write locks and semaphores
    /// need one master to hold their state: a Redlock quorum cannot bound them (with 2
    /// permits and 5 masters, three holders can each own a different majority), so a
    /// client built with `build_redlock` refuses them rather than give a weaker lock.
    /// Not transient.
    Unsupported {
        /// What was asked for.
        what: &'static str,
        /// Why this deployment cannot offer it.
        reason: &'static str,
    },
    /// Another client uses this semaphore with a different number of permits, and the
    /// semaphore is in use (a permit held or a waiter queued): the counts must agree,
    /// or the larger would silently allow more holders than the smaller promises. The
    /// count is stored while the semaphore is in use and forgotten when it is idle, so
    /// changing it means stopping every user of the old count first. Not transient.
    PermitsMismatch {
        /// The Redis key of the semaphore's permits.
        key: String,
        /// The count this handle was made with.
        permits: u32,
        /// The count the semaphore is in use with.
        in_use: u32,
    },
    /// A background thread of the client (its notifier or watchdog) could not be
    /// started: the process is out of threads or memory.
    Spawn {
        /// The thread's name.
        thread: &'static str,
        /// What the operating system said.
        source: Arc<std::io::Error>,
    },
}

/// Shorthand for `Result<T, redis_mutex::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// `true` for failures that may pass by themselves: the server is unreachable, slow,
    /// loading, no pooled connection was free, too few replicas acknowledged, or too
    /// few Redlock masters answered.
    /// Locking retries these until its deadline or the client's outage tolerance.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connection(_)
            | Error::PoolTimeout { .. }
            | Error::ReplicasNotAcknowledged { .. }
            | Error::NoQuorum { .. } => true,
            Error::Redis(e) => matches!(
                e.kind(),
                redis::ErrorKind::Server(
                    redis::ServerErrorKind::BusyLoading
                        | redis::ServerErrorKind::TryAgain
                        | redis::ServerErrorKind::MasterDown
                        | redis::ServerErrorKind::ClusterDown
                        | redis::ServerErrorKind::ReadOnly
                )
            ),
            _ => false,
        }
    }

    pub(crate) fn spawn(thread: &'static str, e: std::io::Error) -> Error {
        Error::Spawn { thread, source: Arc::new(e) }
    }

    /// `true` when a guard found that it no longer owns its lock.
    pub fn is_lock_lost(&self) -> bool {
        matches!(self, Error::LockLost { .. })
    }

    /// The error for a `url` that redis-rs refused to parse with `err`, showing neither
    /// the credentials in the URL nor redis-rs's details about it when the URL holds
    /// credentials: those details quote the URL (an invalid `protocol=` value), and a
    /// password holding `?` ends the authority early, so its tail reads as the query
    /// (`redis://user:1?protocol=secret@host/`).
    pub(crate) fn invalid_url(url: &str, err: &redis::RedisError) -> Error {
        let shown = redact_url(url);
        let said = err.to_string();
        let reason = match err.detail() {
            Some(detail) if shown != url => match said.strip_suffix(detail).and_then(|s| s.strip_suffix(": ")) {
                Some(summary) => format!("{summary} (details withheld: the URL holds credentials)"),
                None => "the URL does not parse (details withheld: the URL holds credentials)".to_owned(),
            },
            _ => said,
        };
        Error::InvalidUrl { url: shown, reason }
    }

    /// Sorts a redis error into the variant a caller can act on.
    pub(crate) fn from_redis(err: redis::RedisError, key: Option<&str>) -> Error {
        if tls::failure(&err).is_some() {
            return Error::Tls(err);
        }
        if err.is_io_error() || err.is_timeout() || err.is_connection_dropped() || err.is_connection_refusal() {
            return Error::Connection(err);
        }
        // A pipeline's error (`holder`, batched renewals) has no `code()` when the
        // server's code is one redis-rs does not name (WRONGTYPE): take its first item's.
        let code = err.code().map(str::to_owned).or_else(|| {
            err.clone().into_server_errors().and_then(|items| items.first().map(|(_, e)| e.code().to_owned()))
        });
        let code = code.as_deref();
        match err.kind() {
            redis::ErrorKind::AuthenticationFailed => Error::Auth(err),
            _ if code == Some("NOAUTH") || code == Some("WRONGPASS") || is_acl_refusal(&err) => Error::Auth(err),
            _ if code == Some("WRONGTYPE") || err.detail().is_some_and(|d| d.contains("not an integer")) => match key {
                Some(key) => Error::WrongType { key: key.to_owned() },
                None => Error::Redis(err),
            },
            _ => Error::Redis(err),
        }
    }
}

/// `true` when the server refused a command, key or channel under its ACL, however the
/// refusal reached us. A plain `NOPERM` reply has redis-rs's `NoPerm` kind, but:
/// - in a pipeline (`holder`, the watchdog's batched renewals) the kind is that of the
///   first failed item only, so every item is looked at;
/// - redis-rs reports a refused `SELECT` while connecting as "refused to switch
///   database", kind `ResponseError`, the server's text in the detail;
/// - a command refused *inside* a script comes back as `ERR The user executing the
///   script can't run this command or subcommand ...` (Redis 6 and 7.0) or, in later
///   versions, with `NOPERM` in the text, possibly wrapped in a script error.
///
/// Hence the server's phrasings are matched as well as its code.
fn is_acl_refusal(err: &redis::RedisError) -> bool {
    fn says_refused(text: &str) -> bool {
        text.contains("NOPERM") || text.contains("no permissions to") || text.contains("The user executing the script")
    }
    err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
        || err.code() == Some("NOPERM")
        || err.detail().is_some_and(says_refused)
        || err.clone().into_server_errors().is_some_and(|items| {
            items.iter().any(|(_, e)| e.code() == "NOPERM" || e.details().is_some_and(says_refused))
        })
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connection(e) => {
                write!(f, "cannot reach Redis ({e}); check that the server runs at the configured URL, or retry later")
            }
            Error::Auth(e) if is_acl_refusal(e) => write!(
                f,
                "Redis's ACL refused a command, key or channel this crate needs ({e}); grant the user \
                 every permission of the ACL line in the README (\"Redis permissions\"); `ACL LOG` on the \
                 server shows what was refused"
            ),
            Error::Auth(e) => write!(
                f,
                "Redis refused the credentials ({e}); check the username and password in the URL, and \
                 that the user is enabled (`on`) in the server's ACL"
            ),
            Error::Tls(e) => match tls::failure(e) {
                Some(why) => write!(f, "TLS connection to Redis failed: {why}"),
                None => write!(f, "TLS connection to Redis failed: {e}"),
            },
            Error::Redis(e) => write!(f, "Redis returned an error: {e}"),
            Error::WrongType { key } => write!(
                f,
                "key `{key}` holds a value that is not a redis-mutex lock (written by something else); \
                 it was left untouched: use another lock name or key prefix"
            ),
            Error::UnexpectedReply { operation, reply } => {
                write!(f, "unexpected reply from Redis to {operation}: {reply}; is this a Redis-compatible server?")
            }
            Error::PoolTimeout { waited, last_error } => {
                write!(f, "no Redis connection became available within {waited:?}")?;
                match last_error {
                    Some(e) => write!(f, " (last connection error: {e})"),
                    None => write!(f, "; raise `pool_max_size` or `pool_timeout`"),
                }
            }
            Error::InvalidName { name, reason } => write!(f, "invalid lock name {name:?}: {reason}"),
            Error::InvalidOption { option, reason } => write!(f, "invalid option `{option}`: {reason}"),
            Error::InvalidUrl { url, reason } => {
                write!(f, "invalid Redis URL {url:?}: {reason}; expected e.g. redis://[user:password@]host:6379/[db]")
            }
            Error::LockLost { key } => write!(
                f,
                "lock `{key}` is no longer held by this guard (its lease ran out or it was force-unlocked); \
                 work done under it since may have overlapped with another holder"
            ),
            Error::ReplicasNotAcknowledged { key, wanted, got, timeout } => write!(
                f,
                "lock `{key}`: {got} of the {wanted} replicas `wait_replicas` asks for acknowledged it within \
                 {timeout:?}, so it is not held on the strength of them (an acquisition was released \
                 again, an extend left the lease as it was); check that the master has {wanted} replicas \
                 connected and in sync (`INFO replication`), or retry later"
            ),
            Error::NoQuorum { masters, needed, answered, sitting_out, last_error } => {
                write!(
                    f,
                    "only {} of the {masters} Redlock masters took part in time ({needed} needed, a majority)",
                    answered - sitting_out
                )?;
                if *sitting_out > 0 {
                    write!(
                        f,
                        "; {sitting_out} answered but sit out: they restarted less than `redlock_max_lease` ago, \
                         and may have forgotten locks that are still held"
                    )?;
                }
                if let Some(e) = last_error {
                    write!(f, "; last error: {e}")?;
                }
                write!(f, "; check that the masters run and answer within `redlock_master_timeout`, or retry later")
            }
            Error::Unsupported { what, reason } => {
                write!(f, "{what} are not offered on this deployment: {reason}")
            }
            Error::PermitsMismatch { key, permits, in_use } => write!(
                f,
                "semaphore `{key}` is in use with {in_use} permits, and this handle was made with \
                 {permits}: every client must use the same count for a name (it can change once no permit \
                 is held and nobody waits), or use another name"
            ),
            Error::Spawn { thread, source } => write!(
                f,
                "cannot start the client's {thread} thread ({source}); the process may have reached its \
                 thread or memory limit"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connection(e) | Error::Auth(e) | Error::Tls(e) | Error::Redis(e) => Some(e),
            Error::Spawn { source, .. } => Some(&**source),
            Error::NoQuorum { last_error: Some(e), .. } => Some(&**e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(url: &str) -> redis::RedisError {
        redis::Client::open(url).expect_err("the URL does not parse")
    }

    #[test]
    fn an_invalid_url_shows_neither_the_password_nor_details_that_quote_it() {
        // The password `1?protocol=Zq9` ends the authority after `1`, so redis-rs reads
        // `protocol=Zq9@host/` as the query and quotes it.
        let url = "redis://user:1?protocol=Zq9@127.0.0.1:1/";
        let err = parse_error(url);
        assert!(err.to_string().contains("Zq9"), "redis-rs no longer quotes the value: {err}");
        let err = Error::invalid_url(url, &err);
        let Error::InvalidUrl { url: shown, reason } = &err else { panic!("{err:?}") };
        assert_eq!(shown, "redis://***@127.0.0.1:1/");
        assert!(reason.starts_with("Invalid protocol version") && reason.contains("withheld"), "{reason}");
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains("Zq9"), "{text}");
        }
    }

    /// The error redis-rs makes of the server's reply `line`.
    fn reply(line: &str) -> redis::RedisError {
        match redis::parse_redis_value(format!("-{line}\r\n").as_bytes()) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn acl_refusals_are_auth_errors_whatever_their_shape() {
        let select = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "Redis server refused to switch database",
            "this user has no permissions to run the 'select' command".to_owned(),
        ));
        for err in [
            reply("NOPERM this user has no permissions to run the 'pttl' command"),
            reply("NOPERM this user has no permissions to access one of the keys used as arguments"),
            reply(
                "ERR The user executing the script can't run this command or subcommand script: 1f, on @user_script:4.",
            ),
            reply("ERR The user executing the script can't publish to the channel mentioned in the command"),
            reply("ERR Error running script (call to f_1f): @user_script:1: NOPERM User u has no permissions"),
            select,
        ] {
            let shown = err.to_string();
            let err = Error::from_redis(err, Some("k"));
            assert!(matches!(err, Error::Auth(_)), "{shown}: {err:?}");
            assert!(err.to_string().contains("ACL LOG"), "{err}");
        }
    }

    #[test]
    fn other_server_errors_are_not_auth_errors() {
        let err = Error::from_redis(reply("ERR wrong number of arguments for 'hset' command"), Some("k"));
        assert!(matches!(err, Error::Redis(_)), "{err:?}");
        let err =
            Error::from_redis(reply("WRONGTYPE Operation against a key holding the wrong kind of value"), Some("k"));
        assert!(matches!(err, Error::WrongType { .. }), "{err:?}");
        let err = Error::from_redis(reply("WRONGPASS invalid username-password pair or user is disabled."), None);
        assert!(matches!(err, Error::Auth(_)) && err.to_string().contains("username and password"), "{err}");
    }

    #[test]
    fn an_invalid_url_without_credentials_keeps_the_parser_s_details() {
        let url = "redis://127.0.0.1:1/?protocol=resp9";
        let err = Error::invalid_url(url, &parse_error(url));
        let Error::InvalidUrl { url: shown, reason } = &err else { panic!("{err:?}") };
        assert_eq!(shown, url);
        assert!(reason.contains("resp9"), "{reason}");
    }
}
