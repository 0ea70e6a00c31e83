//! The rollout slots (`--max-concurrent-rollouts`), shared fairly between namespaces.
//!
//! A slot is held from a workload's template patch until its rollout is over (see
//! [`crate::rollout`]). With one global pool, one tenant rotating a secret consumed by many
//! slow workloads could hold every slot for up to `--rollout-timeout` while other tenants wait.
//!
//! The rule, a **fair share when others wait**: a namespace may take a free slot if no other
//! namespace is waiting for one, or if it holds fewer than its share — the slots divided by the
//! namespaces contending for them (holding or waiting), rounded up. So one namespace alone may
//! use every slot (nothing is kept idle), and as soon as another namespace asks, the first
//! takes no new slot above its share: the next free slot goes to the one that waits.
//!
//! Why not a round-robin queue: rollouts are not queued here. A DsoSecret that finds no slot is
//! reconciled again a few seconds later (a reconcile worker never waits for a slot), so there is
//! no waiter to hand a freed slot to. The share rule needs only the count held per namespace
//! and the namespaces that asked recently; a namespace that stops asking (its DsoSecret was
//! deleted, its rotation was handled) stops counting as waiting after [`WAITING_FOR`].
//!
//! [`Fair`] is the pure state, tested with tables; [`Slots`] wraps it for concurrent use and
//! hands out [`Slot`] guards that give their slot back when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a namespace counts as waiting after its last refused request: well over the retry
/// delay of a deferred DsoSecret, so a waiting namespace never drops out between two retries.
pub const WAITING_FOR: Duration = Duration::from_secs(30);

/// The slots held per namespace, and the namespaces waiting for one.
#[derive(Debug)]
pub struct Fair {
    capacity: usize,
    held: HashMap<String, usize>,
    /// Namespace → when it last asked in vain.
    waiting: HashMap<String, Instant>,
}

impl Fair {
    pub fn new(capacity: usize) -> Self {
        Fair {
            capacity: capacity.max(1),
            held: HashMap::new(),
            waiting: HashMap::new(),
        }
    }

    /// Slots held in all.
    pub fn in_use(&self) -> usize {
        self.held.values().sum()
    }

    /// Slots `namespace` holds.
    pub fn held_by(&self, namespace: &str) -> usize {
        self.held.get(namespace).copied().unwrap_or(0)
    }

    /// The most slots one namespace may hold while `namespace` contends with the others.
    fn share(&self, namespace: &str) -> usize {
        let mut contending: Vec<&str> = self
            .held
            .keys()
            .chain(self.waiting.keys())
            .map(String::as_str)
            .collect();
        contending.push(namespace);
        contending.sort_unstable();
        contending.dedup();
        self.capacity.div_ceil(contending.len())
    }

    /// Takes a slot for `namespace` at `now`, or records it as waiting and says no.
    pub fn try_take(&mut self, namespace: &str, now: Instant) -> bool {
        self.waiting
            .retain(|_, at| now.saturating_duration_since(*at) < WAITING_FOR);
        let others_wait = self.waiting.keys().any(|ns| ns != namespace);
        let free = self.in_use() < self.capacity;
        let within_share = self.held_by(namespace) < self.share(namespace);
        if free && (!others_wait || within_share) {
            *self.held.entry(namespace.to_string()).or_insert(0) += 1;
            self.waiting.remove(namespace);
            true
        } else {
            self.waiting.insert(namespace.to_string(), now);
            false
        }
    }

    /// Gives back one slot of `namespace`.
    pub fn give_back(&mut self, namespace: &str) {
        if let Some(n) = self.held.get_mut(namespace) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.held.remove(namespace);
            }
        }
    }
}

/// [`Fair`] shared by reconciles and the tasks that wait for rollouts.
#[derive(Clone)]
pub struct Slots(Arc<Mutex<Fair>>);

impl Slots {
    pub fn new(capacity: usize) -> Self {
        Slots(Arc::new(Mutex::new(Fair::new(capacity))))
    }

    fn fair(&self) -> std::sync::MutexGuard<'_, Fair> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a rollout in `namespace`, if its fair share allows one now.
    pub fn try_acquire(&self, namespace: &str) -> Option<Slot> {
        self.fair()
            .try_take(namespace, Instant::now())
            .then(|| Slot {
                slots: self.clone(),
                namespace: namespace.to_string(),
            })
    }

    /// Slots held in all.
    pub fn in_use(&self) -> usize {
        self.fair().in_use()
    }
}

/// One held slot; given back when dropped.
pub struct Slot {
    slots: Slots,
    namespace: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.fair().give_back(&self.namespace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn takes(f: &mut Fair, ns: &str, now: Instant, n: usize) -> usize {
        (0..n).filter(|_| f.try_take(ns, now)).count()
    }

    #[test]
    fn one_namespace_alone_may_use_every_slot() {
        let now = Instant::now();
        let mut f = Fair::new(4);
        assert_eq!(takes(&mut f, "a", now, 6), 4);
        assert_eq!(f.in_use(), 4);
    }

    #[test]
    fn a_freed_slot_goes_to_the_waiting_namespace_not_to_the_one_holding_the_most() {
        let now = Instant::now();
        let mut f = Fair::new(4);
        assert_eq!(takes(&mut f, "a", now, 4), 4);
        assert!(!f.try_take("b", now), "all slots held");
        f.give_back("a");
        assert!(
            !f.try_take("a", now),
            "a holds 3, over its share of 2 while b waits"
        );
        assert!(f.try_take("b", now), "the freed slot goes to b");
        // a gets slots back only as they fall below its share.
        f.give_back("a");
        assert!(f.try_take("b", now), "b may take up to its share of 2");
        assert!(!f.try_take("b", now), "b is at its share, all slots held");
        f.give_back("a");
        assert_eq!(f.held_by("a"), 1);
        assert!(f.try_take("a", now), "a is below its share");
    }

    #[test]
    fn shares_round_up_and_no_namespace_is_shut_out_by_many_others() {
        let now = Instant::now();
        let mut f = Fair::new(4);
        assert_eq!(takes(&mut f, "a", now, 4), 4);
        for ns in ["b", "c", "d", "e"] {
            assert!(!f.try_take(ns, now));
        }
        // Five namespaces contend: a share of one slot each. Each slot a gives back goes to a
        // waiting namespace, never back to a.
        for ns in ["b", "c", "d"] {
            f.give_back("a");
            assert!(!f.try_take("a", now), "a holds more than its share");
            assert!(f.try_take(ns, now), "{ns} gets the freed slot");
        }
        assert_eq!(f.held_by("a"), 1);
        f.give_back("a");
        assert!(f.try_take("e", now));
        assert_eq!(f.in_use(), 4);
    }

    #[test]
    fn a_namespace_that_stops_asking_stops_holding_back_the_others() {
        let t0 = Instant::now();
        let mut f = Fair::new(2);
        assert_eq!(takes(&mut f, "a", t0, 2), 2);
        assert!(!f.try_take("b", t0));
        f.give_back("a");
        assert!(!f.try_take("a", t0 + Duration::from_secs(1)), "b waits");
        // b never asks again (its DsoSecret was deleted): a may use the slot once b's request
        // is old.
        assert!(f.try_take("a", t0 + WAITING_FOR + Duration::from_secs(1)));
    }

    #[test]
    fn never_more_slots_than_the_capacity() {
        let now = Instant::now();
        let mut f = Fair::new(3);
        let mut taken = 0;
        for i in 0..50 {
            let ns = format!("ns{}", i % 7);
            if f.try_take(&ns, now) {
                taken += 1;
            }
            assert!(f.in_use() <= 3);
            if i % 5 == 0 && f.held_by(&ns) > 0 {
                f.give_back(&ns);
                taken -= 1;
            }
        }
        assert_eq!(f.in_use(), taken);
    }

    #[test]
    fn a_dropped_slot_is_given_back() {
        let slots = Slots::new(1);
        let slot = slots.try_acquire("a").expect("a free slot");
        assert!(slots.try_acquire("a").is_none());
        drop(slot);
        assert_eq!(slots.in_use(), 0);
        assert!(slots.try_acquire("a").is_some());
    }
}
