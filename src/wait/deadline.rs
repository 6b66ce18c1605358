//! How long a waiter may wait, in its type: until an [`Instant`], or [`Forever`], whose
//! wait cannot end with "no lock" (it has no value that says the deadline passed), so
//! `lock()` has no such path to handle.

use std::convert::Infallible;
use std::time::Instant;

use super::Hold;

pub(crate) trait Deadline: Copy {
    /// What the wait gives.
    type Outcome<H>;
    /// That the deadline passed; uninhabited for [`Forever`].
    type Passed;
    fn at(self) -> Option<Instant>;
    /// `Some` once `now` is at or past the deadline.
    fn passed_at(self, now: Instant) -> Option<Self::Passed>;
    fn acquired(hold: Hold) -> Self::Outcome<Hold>;
    fn passed(passed: Self::Passed) -> Self::Outcome<Hold>;
}

/// No deadline: the wait ends with the lock or an error.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forever;

impl Deadline for Forever {
    type Outcome<H> = H;
    type Passed = Infallible;

    fn at(self) -> Option<Instant> {
        None
    }

    fn passed_at(self, _: Instant) -> Option<Infallible> {
        None
    }

    fn acquired(hold: Hold) -> Hold {
        hold
    }

    fn passed(passed: Infallible) -> Hold {
        match passed {}
    }
}

impl Deadline for Instant {
    type Outcome<H> = Option<H>;
    type Passed = ();

    fn at(self) -> Option<Instant> {
        Some(self)
    }

    fn passed_at(self, now: Instant) -> Option<()> {
        (now >= self).then_some(())
    }

    fn acquired(hold: Hold) -> Option<Hold> {
        Some(hold)
    }

    fn passed((): ()) -> Option<Hold> {
        None
    }
}
