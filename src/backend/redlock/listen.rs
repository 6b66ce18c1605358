//! What the masters' notifiers hear (one notifier per master, the single-server one),
//! delivered to the client's one waiter registry:
//! - **Listening**: waiters sleep on messages while a majority of the notifiers is
//!   subscribed. A holder's release runs on a majority of masters (the ones that voted
//!   for it), which then shares a master with any majority of subscribed notifiers;
//!   with fewer subscribed, waiters poll.
//! - **One wake-up per release**: every master where a client waited sends it a copy
//!   of the release (`-<token> <name>`). The first copy wakes the first waiting thread;
//!   the others, arriving while it attempts, would wake it again for nothing (an
//!   attempt on every master each). They are dropped, unless the attempt saw the
//!   released token still holding the lock on some master (the release had not
//!   reached it yet): then a copy from there may come later and is needed, so the
//!   attempt lets copies through again, and wakes the waiter at once if one was
//!   dropped meanwhile.
//! - **Names passed on**: a release names one waiting client (`nominate.lua`); one
//!   told while none of its threads waits (its last waiter left, or it never came
//!   back) passes the name on at once, on the master that told it (`PassOn`), rather
//!   than let the others wait for the name to lapse.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::backend::{Granted, ReleaseSink};
use crate::sync::lock;

/// Release tokens remembered, per lock name, at most.
const REMEMBERED: usize = 4096;

/// The last release heard of a lock, and whether a copy of it was dropped since.
#[derive(Debug)]
struct Heard {
    token: String,
    dropped: bool,
}

/// Leaves the queue of a lock on one master, passing a name given to this client on
/// (master index, lock name); runs the request on that master's worker, not here.
pub(super) type PassOn = Box<dyn Fn(usize, &str) + Send + Sync>;

pub(super) struct Listeners {
    sink: Arc<dyn ReleaseSink>,
    pass_on: PassOn,
    quorum: usize,
    up: Mutex<Vec<bool>>,
    heard: Mutex<HashMap<String, Heard>>,
}

impl Listeners {
    pub fn new(sink: Arc<dyn ReleaseSink>, masters: usize, quorum: usize, pass_on: PassOn) -> Arc<Listeners> {
        Arc::new(Listeners { sink, pass_on, quorum, up: Mutex::new(vec![false; masters]), heard: Mutex::default() })
    }

    /// The sink master `index`'s notifier delivers to.
    pub fn for_master(self: &Arc<Self>, index: usize) -> Arc<dyn ReleaseSink> {
        Arc::new(MasterSink { index, listeners: self.clone() })
    }

    fn set_up(&self, index: usize, up: bool) {
        let mut ups = lock(&self.up);
        ups[index] = up;
        self.sink.set_listening(ups.iter().filter(|u| **u).count() >= self.quorum);
    }

    fn released(&self, index: usize, name: &str, token: &str) -> bool {
        let mut heard = lock(&self.heard);
        if let Some(h) = heard.get_mut(name)
            && h.token == token
        {
            h.dropped = true;
            return false;
        }
        if !self.sink.has_waiters(name) {
            heard.remove(name);
            drop(heard);
            (self.pass_on)(index, name);
            return false;
        }
        if heard.len() >= REMEMBERED {
            heard.clear();
        }
        heard.insert(name.to_owned(), Heard { token: token.to_owned(), dropped: false });
        self.sink.wake_first(name)
    }

    /// Whether a thread of this client waits for `name`.
    pub fn has_waiters(&self, name: &str) -> bool {
        self.sink.has_waiters(name)
    }

    /// An attempt on `name` found these owners on the masters that answered. If the
    /// last release heard of is among them, it had not reached every master: its later
    /// copies are let through, and a copy dropped meanwhile wakes the first waiter.
    pub fn seen(&self, name: &str, owners: &[&str]) {
        let mut heard = lock(&self.heard);
        if let Some(h) = heard.get(name)
            && owners.contains(&h.token.as_str())
        {
            let dropped = h.dropped;
            heard.remove(name);
            if dropped {
                self.sink.wake_first(name);
            }
        }
    }
}

/// One master's notifier's view of the listeners.
struct MasterSink {
    index: usize,
    listeners: Arc<Listeners>,
}

impl ReleaseSink for MasterSink {
    fn granted(&self, _: &str, _: Granted) -> bool {
        // A Redlock release grants nothing (see `release.lua`): no such message.
        false
    }

    fn wake_first(&self, name: &str) -> bool {
        self.listeners.sink.wake_first(name)
    }

    fn released(&self, name: &str, token: &str) -> bool {
        self.listeners.released(self.index, name, token)
    }

    fn wake_all(&self) {
        self.listeners.sink.wake_all();
    }

    fn has_waiters(&self, name: &str) -> bool {
        self.listeners.sink.has_waiters(name)
    }

    fn set_listening(&self, up: bool) {
        self.listeners.set_up(self.index, up);
    }

    fn server_changed(&self) {
        // A master restarted: every held lock is renewed at once, which finds out
        // whether it still has a quorum.
        self.listeners.sink.server_changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[derive(Default)]
    struct Counting {
        woken: AtomicUsize,
        listening: AtomicBool,
        /// No thread waits.
        idle: AtomicBool,
    }

    impl ReleaseSink for Counting {
        fn granted(&self, _: &str, _: Granted) -> bool {
            false
        }
        fn wake_first(&self, _: &str) -> bool {
            self.woken.fetch_add(1, Ordering::SeqCst);
            true
        }
        fn wake_all(&self) {}
        fn has_waiters(&self, _: &str) -> bool {
            !self.idle.load(Ordering::SeqCst)
        }
        fn set_listening(&self, up: bool) {
            self.listening.store(up, Ordering::SeqCst);
        }
        fn server_changed(&self) {}
    }

    #[test]
    fn copies_of_one_release_wake_once_unless_an_attempt_saw_it_under_way() {
        let sink = Arc::new(Counting::default());
        let l = Listeners::new(sink.clone(), 5, 3, Box::new(|_, _| {}));
        let woken = || sink.woken.load(Ordering::SeqCst);
        let masters: Vec<_> = (0..5).map(|i| l.for_master(i)).collect();
        assert!(masters[0].released("job", "t1"));
        assert!(!masters[1].released("job", "t1"), "a copy");
        assert_eq!(woken(), 1);
        // The attempt it caused saw t1 elsewhere, and a copy had been dropped: again.
        l.seen("job", &["t1", "x"]);
        assert_eq!(woken(), 2);
        assert!(masters[3].released("job", "t1"), "copies pass again");
        // Another release wakes; an attempt that saw other owners changes nothing.
        assert!(masters[2].released("job", "t2"));
        l.seen("job", &["x"]);
        assert!(!masters[4].released("job", "t2"));
        assert_eq!(woken(), 4);
    }

    #[test]
    fn waiters_listen_while_a_majority_of_notifiers_is_subscribed() {
        let sink = Arc::new(Counting::default());
        let l = Listeners::new(sink.clone(), 5, 3, Box::new(|_, _| {}));
        let masters: Vec<_> = (0..5).map(|i| l.for_master(i)).collect();
        for m in &masters[..2] {
            m.set_listening(true);
        }
        assert!(!sink.listening.load(Ordering::SeqCst));
        masters[4].set_listening(true);
        assert!(sink.listening.load(Ordering::SeqCst));
        masters[0].set_listening(false);
        assert!(!sink.listening.load(Ordering::SeqCst));
    }

    #[test]
    fn a_release_heard_while_no_thread_waits_is_passed_on_at_the_master_that_told() {
        let sink = Arc::new(Counting::default());
        sink.idle.store(true, Ordering::SeqCst);
        let passed = Arc::new(Mutex::new(Vec::new()));
        let p = passed.clone();
        let l = Listeners::new(sink.clone(), 5, 3, Box::new(move |i, name: &str| lock(&p).push((i, name.to_owned()))));
        assert!(!l.for_master(2).released("job", "t1"));
        assert!(!l.for_master(4).released("job", "t1"));
        assert_eq!(*lock(&passed), [(2, "job".to_owned()), (4, "job".to_owned())]);
        assert_eq!(sink.woken.load(Ordering::SeqCst), 0);
        sink.idle.store(false, Ordering::SeqCst);
        assert!(l.for_master(0).released("job", "t2"));
        assert_eq!(lock(&passed).len(), 2, "a waiting thread takes it");
    }
}
