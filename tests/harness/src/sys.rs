//! What a measurement asks the host: this process's CPU time, the wall clock.

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// CPU time (user + system) this process has used, all threads, dead ones included,
/// from `/proc/self/stat` (Linux); `None` where there is none.
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Field 2 (comm) may contain spaces and ')'; the fields after it start at 3 (state).
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = fields.get(14 - 3)?.parse::<u64>().ok()? + fields.get(15 - 3)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second() as f64))
}

/// Whether every thread of process `pid` is stopped (state `T`, as after SIGSTOP), from
/// `/proc/<pid>/task/*/stat` (Linux); `None` when it cannot be read (no such process).
/// A process that is stopped runs no code: a fault that freezes one checks with this
/// that it did, and that nothing let it run before its time.
pub fn process_stopped(pid: u32) -> Option<bool> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut any = false;
    for task in tasks {
        let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
        // Field 3 (state) follows field 2 (comm), which may contain spaces and ')'.
        let state = stat.get(stat.rfind(')')? + 2..)?.chars().next()?;
        if state != 'T' {
            return Some(false);
        }
        any = true;
    }
    Some(any)
}

/// `sysconf(_SC_CLK_TCK)`, the unit of `/proc` CPU times; asked once (it spawns a process).
fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Wall-clock nanoseconds since 1970: the one clock every process on this machine
/// shares, so records of several processes can be ordered.
pub fn wall_clock_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::{process_cpu, process_stopped};
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn process_stopped_tells_a_sigstopped_process_from_a_running_one() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("`sleep` runs");
        let pid = child.id();
        let kill = |sig: &str| assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
        assert_eq!(process_stopped(pid), Some(false), "a sleeping process is not stopped");
        kill("-STOP");
        let deadline = Instant::now() + Duration::from_secs(5);
        while process_stopped(pid) != Some(true) {
            assert!(Instant::now() < deadline, "SIGSTOP did not show as a stopped process");
            std::thread::sleep(Duration::from_millis(5));
        }
        kill("-CONT");
        while process_stopped(pid) != Some(false) {
            assert!(Instant::now() < deadline, "SIGCONT did not show as a running process");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(process_stopped(pid), None, "a reaped process has no state");
    }

    #[test]
    fn process_cpu_counts_a_busy_loop() {
        let before = process_cpu().expect("/proc/self/stat is readable on Linux");
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(200) {
            std::hint::spin_loop();
        }
        let used = process_cpu().unwrap() - before;
        // Ticks are 10 ms; a shared machine may lend us less than the whole core.
        assert!(used >= Duration::from_millis(50), "200 ms of spinning counted as {used:?}");
    }
}
