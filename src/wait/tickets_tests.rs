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

fn tenure(lease_ms: u64) -> Arc<Tenure> {
    let keys = crate::keys::LockKeys::shared("t", "x", crate::keys::Kind::Semaphore).unwrap();
    Arc::new(Tenure::new(keys, "held".into(), lease_ms, Stamp::now(), None, 0))
}

#[test]
fn only_the_first_waiting_thread_of_a_class_asks_redis_until_one_is_queued_there() {
    let tickets = Arc::new(Tickets::default());
    let a = tickets.register("a", "x".into(), Class::Writer, 1000, true);
    let r = tickets.register("r", "x".into(), Class::Reader, 1000, true);
    let b = tickets.register("b", "x".into(), Class::Writer, 1000, true);
    assert_eq!(b.turn(false), Turn::Wait(None), "a asks for the writers");
    assert_eq!(b.turn(true), Turn::Attempt, "per thread, every one asks");
    b.attempted(None);
    assert_eq!(r.turn(false), Turn::Attempt, "the first reader asks for the readers");
    assert_eq!(a.turn(false), Turn::Attempt);
    a.attempted(Some((Stamp::now(), Instant::now())));
    drop(a);
    let soon = Instant::now() + Duration::from_millis(20);
    assert_eq!(b.sleep_until(soon), Woken::Notified, "the representative left: b asks now");
    assert_eq!(b.turn(false), Turn::Attempt);
}

#[test]
fn a_handoff_to_the_representative_passes_its_entry_to_the_next_thread() {
    let tickets = Arc::new(Tickets::default());
    let a = tickets.register("a", "x".into(), Class::Permit, 1000, true);
    let b = tickets.register("b", "x".into(), Class::Permit, 1000, true);
    assert_eq!(a.turn(false), Turn::Attempt);
    let due = Instant::now() + Duration::from_secs(5);
    a.attempted(Some((Stamp::now(), due)));
    let held = tenure(1000);
    assert!(tickets.hand_over("x", &held, Class::Permit));
    assert!(a.take_handed().is_some_and(|t| Arc::ptr_eq(&t, &held)));
    assert_eq!(held.local_handoffs(), 1);
    // b waits under a's token now: a grant on it reaches b, and b asks Redis when a
    // would have.
    assert_eq!(b.token(), "a");
    assert!(b.queued_at().is_some());
    assert!(tickets.grant("a", 300));
    assert_eq!(b.take_grant(), Some(300));
    b.attempted(None);
    assert_eq!(b.turn(false), Turn::Wait(Some(due)), "adopted: it sleeps until a's next request");
    assert_eq!(b.turn(false), Turn::Attempt);
    // Nobody left to pass the entry to: no handoff (the release goes to Redis).
    b.attempted(Some((Stamp::now(), due)));
    assert!(!tickets.hand_over("x", &held, Class::Permit));
    // Nor to a thread of another class or lease.
    let c = tickets.register("c", "y".into(), Class::Permit, 2000, true);
    assert!(!tickets.hand_over("y", &held, Class::Permit));
    drop(c);
}

#[test]
fn handing_over_to_the_thread_about_to_ask_redis_wakes_the_next_one() {
    let tickets = Arc::new(Tickets::default());
    let a = tickets.register("a", "x".into(), Class::Permit, 1000, true);
    let b = tickets.register("b", "x".into(), Class::Permit, 1000, true);
    assert_eq!(b.turn(false), Turn::Wait(None));
    // a was to ask Redis (first, none queued) but has not yet: a holder hands it a permit.
    assert!(tickets.hand_over("x", &tenure(1000), Class::Permit));
    let soon = Instant::now() + Duration::from_millis(20);
    assert_eq!(b.sleep_until(soon), Woken::Notified);
    assert_eq!(b.turn(false), Turn::Attempt);
    drop(a);
}

#[test]
fn tickets_are_found_by_the_lock_name_in_their_key_s_hash_tag() {
    let tickets = Arc::new(Tickets::default());
    let rw = tickets.register("a", "p:{job}:rw".into(), Class::Writer, 1000, true);
    let _sem = tickets.register("b", "p:{job}:sem".into(), Class::Permit, 1000, true);
    let _other = tickets.register("c", "p:{job2}:sem".into(), Class::Permit, 1000, true);
    assert_eq!((tickets.waiting_tagged("job"), tickets.waiting_tagged("jo"), tickets.waiting_tagged("x")), (2, 0, 0));
    tickets.wake_tagged("job2");
    let soon = Instant::now() + Duration::from_millis(20);
    assert_eq!(rw.sleep_until(soon), Woken::TimedOut, "another name's wake-up");
    tickets.wake_tagged("job");
    assert_eq!(rw.sleep_until(soon), Woken::Notified);
}
