//! Hash slots: which of the 16384 slots a key is in (CRC16 of its hash tag), and which
//! master serves each slot, as `CLUSTER SLOTS` last said, corrected by `MOVED` replies.

use std::sync::Arc;

use redis::Value;

/// Hash slots of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

/// The slot of `key`: CRC16 (XMODEM) of its hash tag, the text between the first `{`
/// and the next `}` when that is not empty, else of the whole key.
pub(crate) fn slot(key: &str) -> u16 {
    let k = key.as_bytes();
    let hashed = k
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &k[open + 1..];
            rest.iter().position(|&b| b == b'}').filter(|&len| len > 0).map(|len| &rest[..len])
        })
        .unwrap_or(k);
    crc16(hashed) % SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// A node's address, `host:port`.
pub(crate) type Addr = Arc<str>;

/// The master serving each slot (`None`: not known).
pub(crate) struct SlotMap {
    owners: Vec<Option<Addr>>,
}

impl SlotMap {
    pub fn empty() -> SlotMap {
        SlotMap { owners: vec![None; usize::from(SLOTS)] }
    }

    pub fn owner(&self, slot: u16) -> Option<&Addr> {
        self.owners.get(usize::from(slot)).and_then(Option::as_ref)
    }

    /// A `MOVED` reply said that `addr` serves `slot` now.
    pub fn set(&mut self, slot: u16, addr: Addr) {
        if let Some(o) = self.owners.get_mut(usize::from(slot)) {
            *o = Some(addr);
        }
    }

    /// Every master named, once each.
    pub fn masters(&self) -> Vec<Addr> {
        let mut seen: Vec<Addr> = Vec::new();
        for a in self.owners.iter().flatten() {
            if !seen.iter().any(|s| s == a) {
                seen.push(a.clone());
            }
        }
        seen
    }

    /// The map a `CLUSTER SLOTS` reply describes, asked of the node at `asked_host`
    /// (a node that does not know its own host name says `""` or `?`). `None` for a
    /// reply of another shape.
    pub fn from_cluster_slots(reply: &Value, asked_host: &str) -> Option<SlotMap> {
        let Value::Array(ranges) = reply else { return None };
        let mut map = SlotMap::empty();
        let mut interned: Vec<Addr> = Vec::new();
        for range in ranges {
            let Value::Array(fields) = range else { return None };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(h) => String::from_utf8_lossy(h).into_owned(),
                Value::SimpleString(h) => h.clone(),
                Value::Nil => String::new(),
                _ => return None,
            };
            let Value::Int(port) = master.get(1)? else { return None };
            let host = if host.is_empty() || host == "?" { asked_host.to_owned() } else { host };
            let addr = format!("{host}:{port}");
            let addr = match interned.iter().find(|a| ***a == *addr) {
                Some(a) => a.clone(),
                None => {
                    let a: Addr = addr.into();
                    interned.push(a.clone());
                    a
                }
            };
            let (first, last) = (u16::try_from(*first).ok()?, u16::try_from(*last).ok()?);
            if first > last || last >= SLOTS {
                return None;
            }
            for s in first..=last {
                map.owners[usize::from(s)] = Some(addr.clone());
            }
        }
        Some(map)
    }
}

/// `host` and `port` of `host:port` (an IPv6 host keeps its colons).
pub(crate) fn split_addr(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.trim_start_matches('[').trim_end_matches(']'), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_s() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS, "an empty tag hashes the whole key");
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
        assert_eq!(slot("redis-mutex:{job}"), slot("redis-mutex:{job}:fence"));
    }

    #[test]
    fn a_cluster_slots_reply_maps_every_slot_and_odd_ones_are_refused() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |a: i64, b: i64, host: &str, port: i64| {
            Value::Array(vec![Value::Int(a), Value::Int(b), node(host, port), node("10.0.0.9", 1)])
        };
        let reply = Value::Array(vec![range(0, 8191, "10.0.0.1", 7000), range(8192, 16383, "", 7001)]);
        let map = SlotMap::from_cluster_slots(&reply, "seed").unwrap();
        assert_eq!(map.owner(0).map(|a| &**a), Some("10.0.0.1:7000"));
        assert_eq!(map.owner(16383).map(|a| &**a), Some("seed:7001"), "an unknown host is the asked node's");
        assert_eq!(map.masters().len(), 2);
        assert!(SlotMap::from_cluster_slots(&Value::Array(vec![range(5, 16384, "h", 1)]), "s").is_none());
        assert!(SlotMap::from_cluster_slots(&Value::Int(1), "s").is_none());
        assert_eq!(split_addr("10.0.0.1:7000"), Some(("10.0.0.1", 7000)));
        assert_eq!(split_addr("[::1]:7000"), Some(("::1", 7000)));
        assert_eq!(split_addr("nope"), None);
    }
}
