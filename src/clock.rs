//! Time as a lease needs it: how long since Redis confirmed it, counting the time the
//! machine was suspended, and `Instant` arithmetic that cannot panic.
//!
//! `Instant` is CLOCK_MONOTONIC on Linux, which stops while the system is suspended
//! (and during some VM pauses): after a resume a lease would still look fresh by
//! `Instant` alone although Redis, whose clock ran on, let it expire. The wall clock
//! runs through a suspend. So a [`Stamp`] reads both, and the time elapsed since one is
//! the larger of the two readings: never less than what really passed (as long as the
//! wall clock does not jump backwards by more than the suspend; a wall clock that steps
//! forward only makes a lease look older than it is, which costs a round trip, never
//! safety).

use std::time::{Duration, Instant, SystemTime};

/// One reading of both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Stamp {
    pub fn now() -> Stamp {
        Stamp { mono: Instant::now(), wall: SystemTime::now() }
    }

    /// This reading moved back by `d` on both clocks (saturating at the clocks' start).
    pub fn earlier(self, d: Duration) -> Stamp {
        Stamp {
            mono: self.mono.checked_sub(d).unwrap_or(self.mono),
            wall: self.wall.checked_sub(d).unwrap_or(self.wall),
        }
    }

    /// Time passed from `self` to `now`: the larger of the monotonic and the wall-clock
    /// difference (a wall clock that went backwards counts as zero).
    pub fn elapsed_at(&self, now: Stamp) -> Duration {
        let mono = now.mono.saturating_duration_since(self.mono);
        let wall = now.wall.duration_since(self.wall).unwrap_or(Duration::ZERO);
        mono.max(wall)
    }
}

/// The furthest any deadline of the crate lies ahead: a caller's `Duration::MAX` means
/// "no bound", and a century is as good as none.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `at + d`, saturating at a century ahead instead of panicking on overflow.
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d.min(FAR)).or_else(|| at.checked_add(FAR)).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_time_counts_a_suspend_the_monotonic_clock_missed() {
        let then = Stamp::now();
        // Resumed after an hour of suspend: the monotonic clock moved 10 ms.
        let now = Stamp { mono: then.mono + Duration::from_millis(10), wall: then.wall + Duration::from_secs(3600) };
        assert_eq!(then.elapsed_at(now), Duration::from_secs(3600));
    }

    #[test]
    fn a_wall_clock_stepped_back_falls_back_to_the_monotonic_one() {
        let then = Stamp::now();
        let now = Stamp { mono: then.mono + Duration::from_millis(10), wall: then.wall - Duration::from_secs(60) };
        assert_eq!(then.elapsed_at(now), Duration::from_millis(10));
    }

    #[test]
    fn later_saturates() {
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now + Duration::from_secs(3600 * 24 * 365));
        assert_eq!(later(now, Duration::from_secs(1)), now + Duration::from_secs(1));
    }
}
