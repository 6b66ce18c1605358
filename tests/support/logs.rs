//! A logger that keeps every record, for tests that check what the crate logs.

use std::sync::Mutex as StdMutex;

static RECORDS: StdMutex<Vec<String>> = StdMutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}: {}", record.level(), record.target(), record.args());
        let mut records = RECORDS.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() < 200_000 {
            records.push(line);
        }
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

/// Installs the capturing logger (once per test binary: every test's records land in it).
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&CAPTURE).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Trace);
    });
}

pub fn captured() -> Vec<String> {
    RECORDS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
