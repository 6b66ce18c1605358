//! The queue helpers of the single-server scripts (`src/backend/single/lua/queue.lua`,
//! also prepended to the Redlock scripts), run in a real server against a model of the
//! queue written in Rust: they find a client's entry with plain `string.find` instead
//! of matching every entry, so ids that are prefixes, suffixes or parts of other
//! entries must not be mistaken for each other. And what an attempt on a granted lock
//! costs Redis: one `PTTL`, not two. About 1 s.

mod support;

use redis_mutex::LockClient;
use support::RedisServer;

const HELPERS: &str = include_str!("../src/backend/single/lua/queue.lua");

/// Runs one helper: `op` on queue `q` (`None`: the field is absent) and client `id`.
const DRIVER: &str = r"
local op, id = ARGV[1], ARGV[3]
local q = ARGV[2]
if ARGV[4] == 'absent' then q = nil end
if op == 'has' then return queue_has(q, id) and 1 or 0 end
if op == 'without' then return queue_without(q, id) end
if op == 'first' then return queue_first(q) or false end
if op == 'pop' then
  local first, span, mark, rest = queue_pop(q)
  return {first, tostring(span), mark, rest}
end
if op == 'peek' then
  local first, span, mark, look = queue_peek(q)
  return {first, tostring(span), mark, tostring(look)}
end
return redis.error_reply('unknown op ' .. op)
";

fn run<T: redis::FromRedisValue>(con: &mut redis::Connection, op: &str, q: Option<&str>, id: &str) -> T {
    let script = format!("{HELPERS}\n{DRIVER}");
    redis::cmd("EVAL")
        .arg(script)
        .arg(0)
        .arg(op)
        .arg(q.unwrap_or(""))
        .arg(id)
        .arg(if q.is_some() { "present" } else { "absent" })
        .query(con)
        .unwrap_or_else(|e| panic!("{op} on {q:?} for {id:?}: {e}"))
}

/// The model: entries are whitespace-separated, an entry's id is what precedes its
/// first ':'.
fn entry_id(e: &str) -> &str {
    e.split(':').next().unwrap_or(e)
}

fn model_has(q: &str, id: &str) -> bool {
    q.split_whitespace().any(|e| entry_id(e) == id)
}

fn model_without(q: &str, id: &str) -> String {
    q.split_whitespace().filter(|e| entry_id(e) != id).collect::<Vec<_>>().join(" ")
}

/// Small deterministic generator (no `rand` dependency).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Ids that are prefixes and suffixes of each other, and marks that spell them.
const IDS: [&str; 7] = ["a", "b", "ab", "ba", "aab", "abb", "bab"];

/// A queue as the scripts write it: distinct clients, single spaces, each entry
/// `<id>:<span>:<mark>` or, as by hand or an older version, `<id>` or `<id>:<span>`.
fn random_queue(rng: &mut Lcg) -> String {
    let mut ids: Vec<&str> = IDS.to_vec();
    let len = rng.below(ids.len() + 1);
    let mut entries = Vec::new();
    for _ in 0..len {
        let id = ids.remove(rng.below(ids.len()));
        let mark = IDS[rng.below(IDS.len())];
        entries.push(match rng.below(4) {
            0 => id.to_owned(),
            1 => format!("{id}:{}", rng.below(3)),
            _ => format!("{id}:{}:{mark}", rng.below(3)),
        });
    }
    entries.join(" ")
}

#[test]
fn queue_helpers_find_exactly_the_entry_of_one_client() {
    let server = RedisServer::start();
    let mut con = server.conn();
    let mut rng = Lcg(13);
    let mut checked = 0;
    for _ in 0..60 {
        let q = random_queue(&mut rng);
        for id in IDS {
            let has: i64 = run(&mut con, "has", Some(&q), id);
            assert_eq!(has == 1, model_has(&q, id), "queue_has({q:?}, {id:?})");
            let without: String = run(&mut con, "without", Some(&q), id);
            assert_eq!(without, model_without(&q, id), "queue_without({q:?}, {id:?})");
            checked += 2;
        }
        let first: Option<String> = run(&mut con, "first", Some(&q), "");
        assert_eq!(first.as_deref(), q.split_whitespace().next().map(entry_id), "queue_first({q:?})");
        if let Some(head) = q.split_whitespace().next() {
            let (id, span, mark, rest): (String, String, String, String) = run(&mut con, "pop", Some(&q), "");
            let mut parts = head.splitn(3, ':');
            assert_eq!(id, parts.next().unwrap(), "queue_pop({q:?}) id");
            assert_eq!(span, parts.next().filter(|s| !s.is_empty()).unwrap_or("0"), "queue_pop({q:?}) span");
            assert_eq!(mark, parts.next().filter(|m| !m.is_empty()).unwrap_or("0"), "queue_pop({q:?}) mark");
            assert_eq!(rest, q.split_whitespace().skip(1).collect::<Vec<_>>().join(" "), "queue_pop({q:?}) rest");
            let peeked: (String, String, String, String) = run(&mut con, "peek", Some(&q), "");
            assert_eq!((&peeked.0, &peeked.1, &peeked.2), (&id, &span, &mark), "queue_peek({q:?})");
        }
    }
    assert!(checked >= 800, "{checked} checks");
}

#[test]
fn queue_helpers_take_an_absent_queue_and_stray_spaces() {
    let server = RedisServer::start();
    let mut con = server.conn();
    assert_eq!(run::<i64>(&mut con, "has", None, "a"), 0);
    assert_eq!(run::<String>(&mut con, "without", None, "a"), "");
    assert_eq!(run::<Option<String>>(&mut con, "first", None, ""), None);
    // Written by hand: a leading space and double spaces; the entries are still found.
    let q = " a:0:1  ab:1:2 b";
    for id in ["a", "ab", "b"] {
        assert_eq!(run::<i64>(&mut con, "has", Some(q), id), 1, "{id} in {q:?}");
        let without: String = run(&mut con, "without", Some(q), id);
        assert_eq!(model_without(&without, "-"), model_without(q, id), "queue_without({q:?}, {id:?})");
    }
    assert_eq!(run::<i64>(&mut con, "has", Some(q), "ba"), 0);
    assert_eq!(run::<Option<String>>(&mut con, "first", Some(q), "").as_deref(), Some("a"));
    let (id, span, mark, rest): (String, String, String, String) = run(&mut con, "pop", Some(q), "");
    assert_eq!((id.as_str(), span.as_str(), mark.as_str()), ("a", "0", "1"));
    assert_eq!(model_without(&rest, "-"), "ab:1:2 b");
    let peeked: (String, String, String, String) = run(&mut con, "peek", Some(q), "");
    assert_eq!(peeked, ("a".into(), "0".into(), "1".into(), "nil".into()), "no look");
    let peeked: (String, String, String, String) = run(&mut con, "peek", Some("ab:2:x:1234 b"), "");
    assert_eq!(peeked, ("ab".into(), "2".into(), "x".into(), "1234".into()), "with look");
}

fn pttl_calls(con: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_pttl:calls="))
        .and_then(|v| v.split(',').next())
        .map_or(0, |v| v.parse().unwrap())
}

/// A lock granted to a client that has not taken it yet (`gt` set): an attempt reads
/// `PTTL` once, for the grant's end and for its answer (it read it twice before).
#[test]
fn an_attempt_on_a_granted_lock_reads_pttl_once() {
    let server = RedisServer::start();
    let mut con = server.conn();
    let _: () = redis::cmd("HSET")
        .arg("redis-mutex:{job}")
        .arg(&["o", "grant-token", "c", "another-client", "gt", "20000", "q", ""])
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("PEXPIRE").arg("redis-mutex:{job}").arg(30_000).query(&mut con).unwrap();
    let client = LockClient::builder().build(&server.url()).unwrap();
    let mutex = client.mutex("job");
    let before = pttl_calls(&mut con);
    assert!(mutex.try_lock().unwrap().is_none(), "the grant is another client's for ~10 s more");
    assert_eq!(pttl_calls(&mut con) - before, 1, "PTTL calls of one attempt");
}
