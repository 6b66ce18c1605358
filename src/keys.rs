//! Where a lock lives in Redis, and the checks that names pass before any I/O.

use std::sync::Arc;

use crate::error::{Error, Result};

/// Longest lock name accepted, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 512;

/// The Redis names of one lock. All share the hash tag `{name}`, so in a cluster they
/// live in one slot; the release channel has the lock key's name (channels and keys
/// are separate namespaces).
#[derive(Debug, Clone)]
pub(crate) struct LockKeys {
    pub name: Arc<str>,
    /// The lock hash, and the release channel.
    pub key: String,
    /// The fencing counter (never expires).
    pub fence: String,
}

impl LockKeys {
    pub fn new(prefix: &str, name: &str) -> Result<LockKeys> {
        validate_name(name)?;
        let key = format!("{prefix}:{{{name}}}");
        let fence = format!("{key}:fence");
        Ok(LockKeys { name: name.into(), key, fence })
    }
}

/// The pattern the notifier subscribes to: every release channel under `prefix`.
pub(crate) fn channel_pattern(prefix: &str) -> String {
    format!("{prefix}:{{*}}")
}

/// The lock name inside a release channel `prefix:{name}`.
pub(crate) fn name_from_channel<'a>(prefix: &str, channel: &'a str) -> Option<&'a str> {
    channel.strip_prefix(prefix)?.strip_prefix(":{")?.strip_suffix('}')
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
        "must not contain glob characters (* ? [ ] \\): the notifier subscribes to `<prefix>:{*}`"
    } else if prefix.contains(['{', '}']) {
        "must not contain `{` or `}`: the lock name is the hash tag"
    } else {
        return Ok(());
    };
    Err(Error::InvalidOption { option: "key_prefix", reason: format!("{prefix:?} {reason}") })
}

/// `url` with the password (if any) replaced by `***`, for `Debug`, logs and errors.
pub(crate) fn redact_url(url: &str) -> String {
    redact_query(&redact_userinfo(url))
}

/// `redis+unix:///path?pass=secret`: redis-rs takes a unix socket's password from the
/// query string.
fn redact_query(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else { return url.to_owned() };
    let params: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_owned() };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_owned() };
    let userinfo = &rest[..at];
    let user = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None if userinfo.is_empty() => String::new(),
        // `redis://secret@host` puts the password where the user would be.
        None => "***".to_owned(),
    };
    format!("{}{}{}", &url[..scheme_end + 3], user, &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_hash_tag() {
        let k = LockKeys::new("billing", "invoice:42").unwrap();
        assert_eq!(k.key, "billing:{invoice:42}");
        assert_eq!(k.fence, "billing:{invoice:42}:fence");
        assert_eq!(name_from_channel("billing", &k.key), Some("invoice:42"));
        assert_eq!(name_from_channel("billing", "other:{x}"), None);
        assert_eq!(channel_pattern("billing"), "billing:{*}");
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
        assert_eq!(redact_url("redis://user:pw@host:6379/0"), "redis://user:***@host:6379/0");
        assert_eq!(redact_url("redis://:pw@host/"), "redis://:***@host/");
        assert_eq!(redact_url("redis://pw@host/"), "redis://***@host/");
        assert_eq!(redact_url("redis://host:6379/"), "redis://host:6379/");
        assert_eq!(redact_url("rediss://u:p@h/?x=a@b"), "rediss://u:***@h/?x=a@b");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_url("redis+unix:///tmp/r.sock?db=1&pass=pw"), "redis+unix:///tmp/r.sock?db=1&pass=***");
    }
}
