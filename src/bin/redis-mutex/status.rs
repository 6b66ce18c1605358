//! `redis-mutex status` (who holds a lock, for how much longer, who waits; as text or
//! one JSON object) and `redis-mutex unlock --force`.

use std::fmt::Write as _;
use std::time::Duration;

use redis_mutex::Holder;

use crate::args::{Connection, StatusArgs, UnlockArgs};
use crate::connect;
use crate::exit::{Failure, say};

pub fn status(conn: &Connection, a: StatusArgs) -> Result<u8, Failure> {
    let client = connect::client(conn)?;
    let m = client.mutex(&a.name);
    let asking = format!("reading lock {:?}", a.name);
    let key = m.key().map_err(|e| Failure::from_error(&asking, &e))?.to_owned();
    let holder = m.holder().map_err(|e| Failure::from_error(&asking, &e))?;
    let out = if a.json { json(&a.name, &key, holder.as_ref()) } else { text(&a.name, &key, holder.as_ref()) };
    println!("{out}");
    Ok(0)
}

pub fn unlock(conn: &Connection, a: UnlockArgs) -> Result<u8, Failure> {
    if !a.force {
        return Err(Failure::usage(format!(
            "unlock deletes lock {:?} whoever holds it, and its holder runs on without it until it notices: add \
             --force to do it anyway",
            a.name
        )));
    }
    let client = connect::client(conn)?;
    let m = client.mutex(&a.name);
    let doing = format!("force-unlocking {:?}", a.name);
    let holder = m.holder().map_err(|e| Failure::from_error(&doing, &e))?;
    if m.force_unlock().map_err(|e| Failure::from_error(&doing, &e))? {
        let token = holder.map_or_else(|| "unknown".to_owned(), |h| h.token);
        say(&format!(
            "warning: force-unlocked {:?} (owner token {token}); its holder was not asked and runs on without the lock \
             until its next renewal finds out (a redis-mutex run then stops its command)",
            a.name
        ));
    } else {
        say(&format!("lock {:?} was not held; nothing to unlock", a.name));
    }
    Ok(0)
}

fn text(name: &str, key: &str, holder: Option<&Holder>) -> String {
    let Some(h) = holder else { return format!("{name:?} ({key}): free") };
    let mut out = format!("{name:?} ({key}): held\n  owner token  {}\n  lease left   ", h.token);
    match h.remaining_lease {
        Some(d) => write!(out, "{:.1}s", d.as_secs_f64()),
        None => write!(out, "none: the key has no expiry (set by hand?)"),
    }
    .unwrap();
    let client = h.client_id.as_deref().unwrap_or("unknown");
    write!(out, "\n  client       {client} (its connections are named redis-mutex:{client} in CLIENT LIST)\n").unwrap();
    let waiting = match (h.waiting_clients.as_slice(), h.contended) {
        ([], false) => "nobody".to_owned(),
        ([], true) => "threads of the holder's own client".to_owned(),
        (ids, _) => format!("{} client(s), first in line first: {}", ids.len(), ids.join(" ")),
    };
    write!(out, "  waiting      {waiting}").unwrap();
    out
}

/// One JSON object; every string escaped (a lock name is any UTF-8 text).
fn json(name: &str, key: &str, holder: Option<&Holder>) -> String {
    let string = |s: Option<&str>| s.map_or_else(|| "null".to_owned(), quote);
    let lease = holder.and_then(|h| h.remaining_lease).map(|d: Duration| d.as_millis().to_string());
    let waiting: Vec<String> = holder.map_or(&[][..], |h| &h.waiting_clients).iter().map(|id| quote(id)).collect();
    format!(
        "{{\"name\":{},\"key\":{},\"held\":{},\"token\":{},\"lease_left_ms\":{},\"client_id\":{},\"contended\":{},\
         \"waiting_clients\":[{}]}}",
        quote(name),
        quote(key),
        holder.is_some(),
        string(holder.map(|h| h.token.as_str())),
        lease.as_deref().unwrap_or("null"),
        string(holder.and_then(|h| h.client_id.as_deref())),
        holder.is_some_and(|h| h.contended),
        waiting.join(",")
    )
}

/// A JSON string literal (RFC 8259: `"`, `\` and control characters escaped).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => write!(out, "\\u{:04x}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("line\nnext\ttab\u{1}\u{7f}"), r#""line\nnext\ttab\u0001\u007f""#);
        assert_eq!(quote("café ✓"), "\"café ✓\"");
    }

    #[test]
    fn a_free_lock_is_all_nulls() {
        assert_eq!(
            json("j\"ob", "redis-mutex:{j\"ob}", None),
            r#"{"name":"j\"ob","key":"redis-mutex:{j\"ob}","held":false,"token":null,"lease_left_ms":null,"client_id":null,"contended":false,"waiting_clients":[]}"#
        );
        assert_eq!(text("job", "redis-mutex:{job}", None), "\"job\" (redis-mutex:{job}): free");
    }
}
