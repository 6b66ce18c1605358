//! Fencing tokens: a holder that stalls past its lease must not overwrite the work of
//! the holder after it. The lock cannot stop the stalled holder (it does not know it
//! stalled); the protected resource can, by refusing writes with an older token.
//!
//! `REDIS_URL=redis://127.0.0.1:6379/ cargo run --example fencing`

use std::error::Error;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use redis_mutex::{LockClient, MutexOptions};

const DATA: &str = "fencing-demo:store";
const SEEN: &str = "fencing-demo:store:token";

/// The store's write: compare and write in one script, so no writer can slip in
/// between the check and the write.
const WRITE: &str = r"
if tonumber(redis.call('GET', KEYS[2]) or '0') > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], ARGV[2])
return 1";

fn write(store: &mut redis::Connection, token: u64, value: &str) -> redis::RedisResult<bool> {
    redis::Script::new(WRITE).key(DATA).key(SEEN).arg(token).arg(value).invoke(store)
}

fn run(url: &str) -> Result<(), Box<dyn Error>> {
    // `build` PINGs the server with a 2 s connect timeout: no Redis means an error now,
    // not a hang later.
    let client = LockClient::builder().connect_timeout(Duration::from_secs(2)).build(url)?;
    let mut store = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))?;
    store.set_read_timeout(Some(Duration::from_secs(2)))?;
    redis::cmd("DEL").arg(DATA).arg(SEEN).query::<()>(&mut store)?;

    // No renewal: the 500 ms lease is all the time a holder gets.
    let opts = MutexOptions::default().lease(Duration::from_millis(500)).auto_renew(false).fencing(true);
    let lock = client.mutex_with("fencing-demo", opts);

    let a = lock.lock()?;
    let a_token = a.fencing_token().ok_or("fencing is on, so there is a token")?;
    println!("A holds the lock with fencing token {a_token}, then stalls for 800 ms (a GC pause, say)");
    thread::sleep(Duration::from_millis(800));

    // A's lease ran out while it stalled, so B gets the lock at once, with a newer token.
    let b = lock.lock()?;
    let b_token = b.fencing_token().ok_or("fencing is on, so there is a token")?;
    let accepted = write(&mut store, b_token, "written by B")?;
    println!("B holds the lock with token {b_token} and writes: {}", verdict(accepted));
    b.unlock()?;

    // A resumes, unaware, and writes what it computed before the stall.
    let accepted = write(&mut store, a_token, "written by A (stale)")?;
    println!("A resumes and writes with token {a_token}: {}", verdict(accepted));
    if let Err(e) = a.unlock() {
        println!("A's unlock reports: {e}");
    }
    let data: String = redis::cmd("GET").arg(DATA).query(&mut store)?;
    println!("the store holds {data:?}");
    if accepted { Err("the store accepted a stale write".into()) } else { Ok(()) }
}

fn verdict(accepted: bool) -> &'static str {
    if accepted { "accepted" } else { "REFUSED (an older token than the store has seen)" }
}

fn main() -> ExitCode {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    match run(&url) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fencing example against {url} failed: {e}");
            ExitCode::FAILURE
        }
    }
}
