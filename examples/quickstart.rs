//! The shortest useful program: take a lock, do the work, let the guard release it.
//!
//! `REDIS_URL=redis://127.0.0.1:6379/ cargo run --example quickstart`

use redis_mutex::LockClient;

fn main() -> Result<(), redis_mutex::Error> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let client = LockClient::open(&url)?;

    let report = client.mutex("nightly-report");
    let guard = report.lock()?; // waits while any other process holds "nightly-report"
    println!("holding {} as {}", report.name(), guard.token());
    // ... the work only one process may do at a time ...
    guard.unlock()?; // or just drop it; unlock() reports a lease that ran out
    Ok(())
}
