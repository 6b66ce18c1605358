//! Where a lock lives in Redis, and the checks that names pass before any I/O.

use std::sync::Arc;

use crate::error::{Error, Result};

/// Longest lock name accepted, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 512;

/// Which primitive a lock is: its keys, scripts and renewals differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Mutex,
    RwLock,
    Semaphore,
}

/// The Redis names of one lock. All share the hash tag `{name}`, so in a cluster they
/// live in one slot.
///
/// A mutex is one hash (`key`) and a fencing counter. A read-write lock or a semaphore
/// (`Kind::RwLock`, `Kind::Semaphore`) is a zset of holders (`key`: readers or permits,
/// scored by the server-clock ms their lease ends) and a state hash (`state`: the
/// writer, the queue, the permit count); their names end in `:rw` and `:sem`, so a
/// mutex, a read-write lock and a semaphore of one name are three separate locks.
#[derive(Debug, Clone)]
pub(crate) struct LockKeys {
    pub name: Arc<str>,
    pub kind: Kind,
    /// The lock hash (a mutex), or the zset of holders.
    pub key: String,
    /// The fencing counter (never expires; a mutex's only).
    pub fence: String,
    /// The state hash of a read-write lock or semaphore ("" for a mutex).
    pub state: String,
}

impl LockKeys {
    /// The keys of the mutex `name`.
    pub fn new(prefix: &str, name: &str) -> Result<LockKeys> {
        validate_name(name)?;
        let key = format!("{prefix}:{{{name}}}");
        let fence = format!("{key}:fence");
        Ok(LockKeys { name: name.into(), kind: Kind::Mutex, key, fence, state: String::new() })
    }

    /// The keys of the read-write lock or semaphore `name` (`kind` is not `Mutex`).
    pub fn shared(prefix: &str, name: &str, kind: Kind) -> Result<LockKeys> {
        validate_name(name)?;
        let suffix = if kind == Kind::RwLock { "rw" } else { "sem" };
        let key = format!("{prefix}:{{{name}}}:{suffix}");
        let state = format!("{key}:s");
        Ok(LockKeys { name: name.into(), kind, key, fence: String::new(), state })
    }

    /// Whether this is a read-write lock or a semaphore.
    pub fn is_shared(&self) -> bool {
        self.kind != Kind::Mutex
    }
}

/// The pub/sub channels of one client. Channels are server-wide while keys live in a
/// database, hence the database number in their names: clients of other databases
/// never hear each other. Plain `SUBSCRIBE`, no patterns: a `PUBLISH` costs Redis the
/// same however many clients are connected.
///
/// On a cluster ([`sharded`](Self::sharded)) a client's channel is per lock,
/// `<prefix>:{<name>}:c:<client id>`: in the lock's slot (its hash tag), so that the
/// lock's scripts may `SPUBLISH` to it and only the slot's master carries the message.
/// A cluster has database 0 only, so no database number; the braces keep these names
/// apart from the server-wide ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Channels {
    /// Messages addressed to this client: `<prefix>:<db>:c:<client id>` (not used when
    /// sharded).
    pub mine: String,
    /// Broadcasts to every client of the prefix and database: `<prefix>:<db>:all` (not
    /// used when sharded).
    pub all: String,
    /// What a script prefixes to a client id to address it: `<prefix>:<db>:c:` (when
    /// sharded, see [`clients_of`](Self::clients_of)).
    pub clients: String,
    /// Per-lock channels and `SPUBLISH` (a cluster).
    sharded: Option<Sharded>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Sharded {
    prefix: String,
    client_id: String,
}

impl Channels {
    pub fn new(prefix: &str, db: i64, client_id: &str) -> Channels {
        let clients = format!("{prefix}:{db}:c:");
        Channels { mine: format!("{clients}{client_id}"), all: format!("{prefix}:{db}:all"), clients, sharded: None }
    }

    /// A cluster client's channels: one per lock, in the lock's slot.
    pub fn sharded(prefix: &str, client_id: &str) -> Channels {
        Channels {
            sharded: Some(Sharded { prefix: prefix.to_owned(), client_id: client_id.to_owned() }),
            ..Channels::new(prefix, 0, client_id)
        }
    }

    /// Whether the channels are per lock (a cluster's sharded pub/sub).
    pub fn is_sharded(&self) -> bool {
        self.sharded.is_some()
    }

    /// What a script about lock `name` prefixes to a client id to address it.
    pub fn clients_of(&self, name: &str) -> std::borrow::Cow<'_, str> {
        match &self.sharded {
            None => std::borrow::Cow::Borrowed(&self.clients),
            Some(s) => std::borrow::Cow::Owned(format!("{}:{{{name}}}:c:", s.prefix)),
        }
    }

    /// This client's channel for messages about lock `name`.
    pub fn mine_of(&self, name: &str) -> std::borrow::Cow<'_, str> {
        match &self.sharded {
            None => std::borrow::Cow::Borrowed(&self.mine),
            Some(s) => std::borrow::Cow::Owned(format!("{}{}", self.clients_of(name), s.client_id)),
        }
    }

    /// The command a script publishes to a client with.
    pub fn publish(&self) -> &'static str {
        if self.is_sharded() { "SPUBLISH" } else { "PUBLISH" }
    }
}

/// The hash tag of a key or sharded channel of ours: the text between its first `{` and
/// the next `}`. Lock names and prefixes have no braces, so it is the lock's name.
pub(crate) fn hash_tag(key: &str) -> Option<&str> {
    let (_, rest) = key.split_once('{')?;
    rest.split_once('}').map(|(name, _)| name)
}

pub(crate) fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "a lock name must not be empty"
    } else if name.len() > MAX_NAME_LEN {
        "a lock name must be at most 512 bytes"
    } else if name.contains(['{', '}']) {
        "a lock name must not contain `{` or `}` (they delimit the Redis Cluster hash tag)"
    } else {
        return Ok(());
    };
    let mut shown = name;
    if shown.len() > 64 {
        let mut end = 64;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown = &shown[..end];
    }
    Err(Error::InvalidName { name: shown.to_owned(), reason })
}

pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    let reason = if prefix.is_empty() {
        "must not be empty"
    } else if prefix.contains(['*', '?', '[', ']', '\\']) {
        "must not contain glob characters (* ? [ ] \\): an ACL grants the crate `~<prefix>:*` and `&<prefix>:*`"
    } else if prefix.contains(['{', '}']) {
        "must not contain `{` or `}`: the lock name is the hash tag"
    } else {
        return Ok(());
    };
    Err(Error::InvalidOption { option: "key_prefix", reason: format!("{prefix:?} {reason}") })
}

/// `url` with its credentials replaced by `***`, for `Debug`, logs and errors.
///
/// Works on any text, a URL or not, and hides too much rather than too little: a
/// password may hold `/ ? # @ :`, which end the userinfo for a URL parser but not for
/// whoever wrote it, so parsing the URL the way redis-rs does would show the rest.
/// Hidden, each as one `***`:
/// - everything between the scheme's `://` (or the start, when there is no plausible
///   scheme) and the **last** `@`: the userinfo, whatever it holds, username included
///   (`redis://secret:x@h` cannot be told from a user `secret`);
/// - from a query parameter whose name contains `pass` (`pass=`, `password=`, also
///   percent-encoded or in capitals) to the end: redis-rs takes a unix socket's
///   password from `?pass=`, and the value may hold `&` or `#` too.
pub(crate) fn redact_url(url: &str) -> String {
    let mut hidden: Vec<(usize, usize)> = Vec::new();
    if let Some(at) = url.rfind('@') {
        hidden.push((userinfo_start(url, at), at));
    }
    if let Some(value) = password_parameter(url) {
        hidden.push((value, url.len()));
    }
    hidden.sort_unstable();
    // Overlapping or touching ranges become one, shown as one `***`.
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (from, to) in hidden.into_iter().filter(|(from, to)| from < to) {
        match merged.last_mut() {
            Some(last) if from <= last.1 => last.1 = last.1.max(to),
            _ => merged.push((from, to)),
        }
    }
    let mut out = String::with_capacity(url.len());
    let mut shown_from = 0;
    for (from, to) in merged {
        out.push_str(&url[shown_from..from]);
        out.push_str("***");
        shown_from = to;
    }
    out.push_str(&url[shown_from..]);
    out
}

/// Where the userinfo ending at `at` starts: after `scheme://`, if `url` opens with a
/// scheme whose `://` comes before `at`; otherwise at 0, so that a `://` inside a
/// password does not pass for the scheme's and leave the text before it shown.
fn userinfo_start(url: &str, at: usize) -> usize {
    match url.find("://") {
        Some(i) if i + 3 <= at && is_scheme(&url[..i]) => i + 3,
        _ => 0,
    }
}

/// RFC 3986: a letter, then letters, digits, `+`, `-`, `.`.
fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Where the value of the first `pass`-like parameter starts: after the `=` of a name
/// that follows any `?`, `&`, `;` or `#` (wherever it is, even inside what a parser
/// would call the path or the userinfo) and contains `pass` once percent-decoded and
/// lowercased.
fn password_parameter(url: &str) -> Option<usize> {
    url.match_indices(['?', '&', ';', '#']).find_map(|(i, _)| {
        let rest = &url[i + 1..];
        let eq = rest.find('=')?;
        let name = &rest[..eq];
        (!name.contains(['&', ';', '?', '#']) && percent_decoded(name).to_lowercase().contains("pass"))
            .then_some(i + 1 + eq + 1)
    })
}

/// `s` with `%XX` escapes decoded (others kept as written) and `+` read as a space, as
/// redis-rs reads query names.
fn percent_decoded(s: &str) -> String {
    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
            (b'+', ..) => out.push(b' '),
            (b, ..) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_hash_tag() {
        let k = LockKeys::new("billing", "invoice:42").unwrap();
        assert_eq!(k.key, "billing:{invoice:42}");
        assert_eq!(k.fence, "billing:{invoice:42}:fence");
        let c = Channels::new("billing", 3, "abc");
        assert_eq!(
            (c.mine.as_str(), c.all.as_str(), c.clients.as_str()),
            ("billing:3:c:abc", "billing:3:all", "billing:3:c:")
        );
    }

    #[test]
    fn sharded_channels_are_per_lock_in_the_lock_s_slot_and_server_wide_ones_unchanged() {
        let c = Channels::new("billing", 3, "abc");
        assert_eq!(
            (&*c.clients_of("job"), &*c.mine_of("job"), c.publish()),
            ("billing:3:c:", "billing:3:c:abc", "PUBLISH")
        );
        let s = Channels::sharded("billing", "abc");
        assert_eq!(&*s.clients_of("invoice:42"), "billing:{invoice:42}:c:");
        assert_eq!(&*s.mine_of("invoice:42"), "billing:{invoice:42}:c:abc");
        assert_eq!(s.publish(), "SPUBLISH");
        let keys = LockKeys::new("billing", "invoice:42").unwrap();
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
        assert_eq!(tag(&s.mine_of("invoice:42")), tag(&keys.key), "the lock's hash tag, so its slot");
        assert!(s.is_sharded() && !c.is_sharded());
        assert_eq!(hash_tag(&s.mine_of("invoice:42")), Some("invoice:42"));
        assert_eq!((hash_tag("p:{a}:rw"), hash_tag("nobraces"), hash_tag("p:{open")), (Some("a"), None, None));
    }

    #[test]
    fn bad_names_are_rejected() {
        for (name, want) in [("", "empty"), ("a{b", "`{`"), ("a}b", "`{`")] {
            let err = validate_name(name).unwrap_err();
            assert!(err.to_string().contains(want), "{name:?}: {err}");
        }
        let long = "é".repeat(300);
        let err = validate_name(&long).unwrap_err();
        assert!(err.to_string().contains("512 bytes"));
        assert!(validate_name(&"x".repeat(512)).is_ok());
    }

    #[test]
    fn bad_prefixes_are_rejected() {
        for p in ["", "a*", "a?", "a[", "a]", "a\\", "a{", "a}"] {
            assert!(matches!(validate_prefix(p), Err(Error::InvalidOption { option: "key_prefix", .. })), "{p:?}");
        }
        assert!(validate_prefix("billing:eu").is_ok());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("redis://user:pw@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact_url("redis://:pw@host/"), "redis://***@host/");
        assert_eq!(redact_url("redis://pw@host/"), "redis://***@host/");
        assert_eq!(redact_url("redis://host:6379/"), "redis://host:6379/");
        assert_eq!(redact_url("redis://@host/"), "redis://@host/");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_url(""), "");
        assert_eq!(redact_url("redis+unix:///tmp/r.sock?db=1&pass=pw"), "redis+unix:///tmp/r.sock?db=1&pass=***");
        assert_eq!(redact_url("redis+unix:///tmp/r.sock?db=1"), "redis+unix:///tmp/r.sock?db=1");
    }

    #[test]
    fn a_password_that_ends_the_userinfo_early_is_still_hidden() {
        for (url, shown) in [
            ("redis://:se/cret@host/", "redis://***@host/"),
            ("redis://user:pa#ss@host/", "redis://***@host/"),
            ("redis://user:pa?ss@host/", "redis://***@host/"),
            ("redis://user:p@ss@host/1", "redis://***@host/1"),
            ("rediss://user:a://b@host/", "rediss://***@host/"),
            // Without a plausible scheme, everything up to the last `@` goes.
            ("1se://cret@host", "***@host"),
            ("x y://secret@host", "***@host"),
            // An `@` after the userinfo hides more than needed, never less.
            ("rediss://u:p@h/?x=a@b", "rediss://***@b"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_password_parameter_is_hidden_to_the_end() {
        for (url, shown) in [
            ("redis+unix:///s?pass=pw&db=1", "redis+unix:///s?pass=***"),
            ("redis+unix:///s?db=1&password=p&w#x", "redis+unix:///s?db=1&password=***"),
            ("redis+unix:///s?PASS=pw", "redis+unix:///s?PASS=***"),
            ("redis+unix:///s?pa%73s=pw", "redis+unix:///s?pa%73s=***"),
            ("redis+unix:///s?user=u;pass=pw", "redis+unix:///s?user=u;pass=***"),
            ("unix:/s?pass=", "unix:/s?pass="),
            // A `@` in the value: both rules apply, and the hidden parts merge.
            ("redis+unix:///s?pass=p@w", "redis+unix://***"),
            ("redis://u:p?pass=q@host/", "redis://***"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn percent_escapes_decode_and_bad_ones_stay() {
        assert_eq!(percent_decoded("pa%73s"), "pass");
        assert_eq!(percent_decoded("a+b%2"), "a b%2");
        assert_eq!(percent_decoded("%zz%4"), "%zz%4");
        assert_eq!(percent_decoded("%C3%A9"), "é");
    }
}
