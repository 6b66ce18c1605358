//! The bookkeeping of waiting threads and read shares, with no backend.

use super::*;

#[test]
fn a_grant_reaches_its_ticket_only_and_is_kept_until_taken() {
    let tickets = Arc::new(Tickets::default());
    let a = tickets.register("a", "x".into(), Class::Permit, 1000, true);
    let b = tickets.register("b", "x".into(), Class::Permit, 1000, true);
    assert_eq!(tickets.waiting("x"), 2);
    assert!(tickets.grant("a", 1000));
    assert!(!tickets.grant("c", 1000), "nobody waits under c");
    let soon = Instant::now() + Duration::from_millis(20);
    assert_eq!(b.sleep_until(soon), Woken::TimedOut, "b was not woken");
    assert_eq!(a.sleep_until(soon), Woken::Notified, "the wake-up came before the sleep and was kept");
    assert_eq!((a.take_grant(), a.take_grant(), b.take_grant()), (Some(1000), None, None));
    drop(a);
    assert!(!tickets.contains("a") && tickets.contains("b"));
    assert_eq!(tickets.wake_all(), 1);
}
