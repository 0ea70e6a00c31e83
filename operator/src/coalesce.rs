//! Coalescing rotations into rollouts, and the health of the rollouts DSO started: the pure
//! decisions ([`gate`], [`health`], [`degraded_condition`]) and the small per-workload memory
//! they read ([`Tracker`]).
//!
//! **Coalescing.** A consuming workload is rolled to a set of versions only once
//! - they have **settled**: the versions it consumes (of every `Rollout` DsoSecret it mounts) have
//!   not changed for `--rollout-settle` (default 2s). Two rotations a second apart — one secret
//!   rotated twice, or two secrets of one workload rotated together — give one rollout, to the
//!   last versions. A burst that never pauses delays the rollout by at most
//!   [`MAX_WAIT_FACTOR`] × the settle time.
//! - and **no rollout DSO started for it is still going**: rotations that arrive while it rolls
//!   wait for that rollout to complete (or to be judged degraded), then give one rollout to the
//!   versions current then, never one per rotation.
//!
//! **Health.** A rollout DSO started is *degraded* when its new pods are not all Ready within
//! `--rollout-timeout` of the patch (reason `RolloutTimedOut`), or when its Deployment passed its
//! `progressDeadlineSeconds` before that (`RolloutStalled`). Every DsoSecret the workload
//! consumes then shows `Degraded=True` naming it, until its rollout completes or another change
//! takes over (a new rollout, an edit of the pod template by its owner; a scale is not one). A
//! rollout is judged until it completes, then forgotten: pods that go missing later (a node
//! drain) are not its doing.
//!
//! The memory is this replica's: after an operator restart or a leader change, a rollout the
//! previous leader started is neither waited for nor timed (a `Degraded` condition it wrote
//! stays while the workload's rollout is still incomplete).

use crate::workload::{Progress, rollout_complete};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A burst of rotations delays a rollout by at most this many settle times.
pub const MAX_WAIT_FACTOR: u32 = 10;

/// How often a DsoSecret is looked at while a rollout of one of its consumers is going (no AWS
/// call: the version cache answers): to see it complete, and to roll what waited for it.
pub const RECHECK: Duration = Duration::from_secs(5);

/// A wish to roll that nobody repeated for this long is forgotten (its DsoSecret was deleted,
/// or the workload became current by other means) — or for longer than [`MAX_WAIT_FACTOR`] + 1
/// settle times ([`forget_after`]): a held rollout is asked for again only a settle time later.
const FORGET_WANTED: Duration = Duration::from_secs(60);

/// How long a wish nobody repeated is kept with settle time `settle`: longer than the longest
/// wait of a held rollout, so that the reconcile it asked for finds it (with `--rollout-settle`
/// 2m, it comes ~2 minutes later; a 60 s memory would start the settle time again each time,
/// and never roll).
fn forget_after(settle: Duration) -> Duration {
    FORGET_WANTED.max(settle * (MAX_WAIT_FACTOR + 1))
}

/// A workload: its namespace and `Kind/name`.
pub type Key = (String, String);

/// The rollout this replica started last for a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    /// The versions hash written on the template.
    pub hash: String,
    /// When the patch was applied.
    pub at: Instant,
    /// The same, on the wall clock (whole seconds), as the `Degraded` message tells it: a
    /// message that does not change while nothing changes is not written again.
    pub since: Timestamp,
    /// The workload's `metadata.generation` after the patch: until the watch cache shows it,
    /// the patch is not seen yet.
    pub generation: Option<i64>,
    /// [`template_digest`](crate::workload::template_digest) of the template DSO patched: its
    /// owner changing the template takes the rollout over (a scale does not).
    pub digest: Option<String>,
}

/// A rollout wanted and not started yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// The versions hash wanted now.
    pub hash: String,
    /// When a rollout was first wanted (any hash).
    pub first: Instant,
    /// When the wanted hash last changed.
    pub changed: Instant,
    /// When it was last asked for.
    pub seen: Instant,
}

/// What this replica knows of one workload's rollouts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub wanted: Option<Wanted>,
    pub started: Option<Started>,
}

/// Why a rollout waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The versions changed less than the settle time ago.
    Settling,
    /// A rollout DSO started for the workload is still going.
    Rolling,
}

/// Whether to roll a workload to the versions it needs now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Roll,
    /// Not yet: ask again in (at most) the duration.
    Wait(Wait, Duration),
}

/// Records that a rollout to `hash` is wanted at `now`, and says whether to start it.
/// `rolling_left` is the time left to the rollout in progress ([`health`] `Going`), if any.
pub fn gate(
    entry: &mut Entry,
    hash: &str,
    rolling_left: Option<Duration>,
    now: Instant,
    settle: Duration,
) -> Gate {
    let wanted = match entry.wanted.take() {
        Some(w) if now.saturating_duration_since(w.seen) <= forget_after(settle) => Wanted {
            changed: if w.hash == hash { w.changed } else { now },
            hash: hash.to_string(),
            seen: now,
            ..w
        },
        _ => Wanted {
            hash: hash.to_string(),
            first: now,
            changed: now,
            seen: now,
        },
    };
    let quiet = now.saturating_duration_since(wanted.changed);
    let waited = now.saturating_duration_since(wanted.first);
    entry.wanted = Some(wanted);
    if let Some(left) = rolling_left {
        return Gate::Wait(Wait::Rolling, left.min(RECHECK));
    }
    let max_wait = settle * MAX_WAIT_FACTOR;
    if quiet >= settle || waited >= max_wait {
        Gate::Roll
    } else {
        Gate::Wait(Wait::Settling, (settle - quiet).min(max_wait - waited))
    }
}

/// Why a rollout DSO started is degraded (the reason of the `Degraded` condition).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Degraded {
    /// Its new pods were not all Ready within `--rollout-timeout`.
    TimedOut,
    /// The Deployment passed its `progressDeadlineSeconds`.
    Stalled,
}

impl Degraded {
    pub fn as_str(self) -> &'static str {
        match self {
            Degraded::TimedOut => "RolloutTimedOut",
            Degraded::Stalled => "RolloutStalled",
        }
    }
}

/// Where the rollout DSO started last for a workload stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// None going: none started by this replica, complete, or taken over by another change.
    Settled,
    /// Going, within its deadline, which comes in `left`.
    Going { left: Duration },
    /// Degraded: why, and what the workload shows (counts only).
    Degraded { why: Degraded, detail: String },
}

/// Judges the rollout `started` of a workload whose template now carries `template_hash`, has
/// digest `template_digest`, and whose controller reports `progress`.
pub fn health(
    started: Option<&Started>,
    template_hash: Option<&str>,
    template_digest: Option<&str>,
    progress: &Progress,
    now: Instant,
    deadline: Duration,
) -> Health {
    let Some(s) = started else {
        return Health::Settled;
    };
    let elapsed = now.saturating_duration_since(s.at);
    let going = || Health::Going {
        left: deadline.saturating_sub(elapsed),
    };
    match s.generation {
        // The watch cache has not seen the patch yet.
        Some(g) if progress.generation < g => {
            return if elapsed >= deadline {
                Health::Degraded {
                    why: Degraded::TimedOut,
                    detail: format!(
                        "its controller had not taken up the new template DSO applied at {} (--rollout-timeout {}s)",
                        s.since,
                        deadline.as_secs()
                    ),
                }
            } else {
                going()
            };
        }
        _ => {}
    }
    if template_hash != Some(s.hash.as_str()) {
        // Another hash on the template: someone else's change.
        return Health::Settled;
    }
    if s.digest.is_some() && template_digest != s.digest.as_deref() {
        // The owner changed the template since: the rollout is theirs now. (A scale, an
        // annotation of the workload bump its generation too, and change nothing of this.)
        return Health::Settled;
    }
    if rollout_complete(progress) {
        return Health::Settled;
    }
    let counts = format!(
        "{} of {} pods updated, {} of {} pods available (old and new)",
        progress.updated.max(0),
        progress.desired.max(0),
        progress.ready.max(0),
        progress.total.max(0)
    );
    if progress.stalled {
        Health::Degraded {
            why: Degraded::Stalled,
            detail: format!(
                "rollout past its progressDeadlineSeconds (ProgressDeadlineExceeded), {counts}"
            ),
        }
    } else if elapsed >= deadline {
        let paused = if progress.paused { " (paused)" } else { "" };
        Health::Degraded {
            why: Degraded::TimedOut,
            detail: format!(
                "new pods not Ready within --rollout-timeout {}s of the rollout DSO started at {}{paused}: {counts}",
                deadline.as_secs(),
                s.since
            ),
        }
    } else {
        going()
    }
}

/// The `Degraded` condition: True, with the reason of the first and every workload in the
/// message, when `degraded` (workload id, why, detail) is not empty; else the previous one when
/// `keep_previous` (a rollout this replica cannot judge is still incomplete); else False.
/// `lastTransitionTime` is kept while the status does not change.
pub fn degraded_condition(
    previous: &[Condition],
    degraded: &[(String, Degraded, String)],
    keep_previous: bool,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    let before = previous.iter().find(|c| c.type_ == "Degraded");
    if degraded.is_empty()
        && keep_previous
        && let Some(c) = before.filter(|c| c.status == "True")
    {
        return c.clone();
    }
    let (status, reason, message) = match degraded.first() {
        Some((_, why, _)) => (
            "True",
            why.as_str(),
            degraded
                .iter()
                .map(|(id, _, detail)| format!("{id}: {detail}"))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        None => (
            "False",
            "RolloutsHealthy",
            "no rollout DSO started for this DsoSecret is past its deadline".to_string(),
        ),
    };
    let last_transition_time = before
        .filter(|c| c.status == status)
        .map_or(now, |c| c.last_transition_time.clone());
    Condition {
        type_: "Degraded".into(),
        status: status.into(),
        reason: reason.into(),
        message: crate::domain::truncate(&message, 1024),
        observed_generation: generation,
        last_transition_time,
    }
}

/// [`Entry`] per workload, shared by reconciles.
#[derive(Default)]
pub struct Tracker(Mutex<HashMap<Key, Entry>>);

impl Tracker {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is known of the workload.
    pub fn get(&self, key: &Key) -> Entry {
        self.map().get(key).cloned().unwrap_or_default()
    }

    /// [`gate`] on the workload's entry.
    pub fn gate(
        &self,
        key: &Key,
        hash: &str,
        rolling_left: Option<Duration>,
        now: Instant,
        settle: Duration,
    ) -> Gate {
        let mut map = self.map();
        gate(
            map.entry(key.clone()).or_default(),
            hash,
            rolling_left,
            now,
            settle,
        )
    }

    /// A rollout to `hash` was applied at `now` to a template of digest `digest`: nothing
    /// waits any more, and it is judged from now on.
    pub fn started(
        &self,
        key: &Key,
        hash: &str,
        now: Instant,
        generation: Option<i64>,
        digest: Option<&str>,
    ) {
        let mut map = self.map();
        if map.len() > 256 {
            // Forget workloads nothing was started for or asked about in a long while.
            let old =
                |t: Instant| now.saturating_duration_since(t) > Duration::from_secs(24 * 3600);
            map.retain(|_, e| {
                !(e.started.as_ref().is_none_or(|s| old(s.at))
                    && e.wanted.as_ref().is_none_or(|w| old(w.seen)))
            });
        }
        let entry = map.entry(key.clone()).or_default();
        entry.wanted = None;
        entry.started = Some(Started {
            hash: hash.to_string(),
            at: now,
            since: Timestamp::from_second(Timestamp::now().as_second())
                .unwrap_or_else(|_| Timestamp::now()),
            generation,
            digest: digest.map(str::to_string),
        });
    }

    /// [`health`] of the rollout this replica started last for the workload. One found over
    /// (complete, or taken over by another change) is forgotten: a later shortage of Ready pods
    /// — a node drained hours later — is no rollout of DSO's to time or to wait for.
    pub fn health(
        &self,
        key: &Key,
        template_hash: Option<&str>,
        template_digest: Option<&str>,
        progress: &Progress,
        now: Instant,
        deadline: Duration,
    ) -> Health {
        let mut map = self.map();
        let Some(entry) = map.get_mut(key) else {
            return Health::Settled;
        };
        let h = health(
            entry.started.as_ref(),
            template_hash,
            template_digest,
            progress,
            now,
            deadline,
        );
        if h == Health::Settled {
            entry.started = None;
        }
        h
    }

    /// The workload needs no rollout now: a wish to roll it is dropped.
    pub fn current(&self, key: &Key) {
        if let Some(e) = self.map().get_mut(key) {
            e.wanted = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_secs(2);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn two_rotations_a_second_apart_give_one_rollout_to_the_last_versions() {
        let t0 = Instant::now();
        let mut e = Entry::default();
        assert_eq!(
            gate(&mut e, "v2", None, t0, SETTLE),
            Gate::Wait(Wait::Settling, secs(2))
        );
        // The second rotation a second later starts the settle time again.
        assert_eq!(
            gate(&mut e, "v3", None, t0 + secs(1), SETTLE),
            Gate::Wait(Wait::Settling, secs(2))
        );
        assert_eq!(
            gate(&mut e, "v3", None, t0 + secs(2), SETTLE),
            Gate::Wait(Wait::Settling, secs(1))
        );
        assert_eq!(gate(&mut e, "v3", None, t0 + secs(3), SETTLE), Gate::Roll);
    }

    #[test]
    fn a_single_rotation_rolls_once_settled_and_no_settle_time_rolls_at_once() {
        let t0 = Instant::now();
        let mut e = Entry::default();
        assert!(matches!(
            gate(&mut e, "v2", None, t0, SETTLE),
            Gate::Wait(..)
        ));
        assert_eq!(gate(&mut e, "v2", None, t0 + SETTLE, SETTLE), Gate::Roll);
        let mut e = Entry::default();
        assert_eq!(gate(&mut e, "v2", None, t0, Duration::ZERO), Gate::Roll);
    }

    #[test]
    fn a_burst_that_never_pauses_delays_the_rollout_by_at_most_ten_settle_times() {
        let t0 = Instant::now();
        let mut e = Entry::default();
        let mut rolled_at = None;
        for i in 0..40u64 {
            let now = t0 + secs(i);
            if gate(&mut e, &format!("v{i}"), None, now, SETTLE) == Gate::Roll {
                rolled_at = Some(i);
                break;
            }
        }
        assert_eq!(rolled_at, Some(20));
    }

    #[test]
    fn rotations_during_a_rollout_wait_for_it_then_give_one_rollout() {
        let t0 = Instant::now();
        let mut e = Entry::default();
        let rolling = Some(secs(100));
        for (i, v) in ["v3", "v4", "v5"].into_iter().enumerate() {
            assert_eq!(
                gate(&mut e, v, rolling, t0 + secs(10 * i as u64), SETTLE),
                Gate::Wait(Wait::Rolling, RECHECK),
                "{v} waits for the rollout in progress"
            );
        }
        // The rollout completed long after the last rotation: one rollout, at once.
        assert_eq!(gate(&mut e, "v5", None, t0 + secs(60), SETTLE), Gate::Roll);
        assert_eq!(e.wanted.as_ref().map(|w| w.hash.as_str()), Some("v5"));
    }

    #[test]
    fn a_wish_nobody_repeated_is_forgotten() {
        let t0 = Instant::now();
        let mut e = Entry::default();
        let _ = gate(&mut e, "v2", None, t0, SETTLE);
        // Seen again long after: it settles afresh rather than counting the old wait.
        let later = t0 + FORGET_WANTED + secs(1);
        assert_eq!(
            gate(&mut e, "v3", None, later, SETTLE),
            Gate::Wait(Wait::Settling, SETTLE)
        );
    }

    #[test]
    fn a_long_settle_time_still_rolls_when_the_held_rollout_asks_again() {
        // --rollout-settle 5m, no other event: the held rollout is asked for again only when
        // its settle time has passed (the requeue is spread over its last tenth).
        let settle = secs(300);
        let t0 = Instant::now();
        let mut e = Entry::default();
        assert_eq!(
            gate(&mut e, "v2", None, t0, settle),
            Gate::Wait(Wait::Settling, settle)
        );
        assert_eq!(
            gate(&mut e, "v2", None, t0 + secs(270), settle),
            Gate::Wait(Wait::Settling, secs(30))
        );
        assert_eq!(gate(&mut e, "v2", None, t0 + secs(300), settle), Gate::Roll);
        // A burst that never pauses is still capped, at 10 settle times.
        let mut e = Entry::default();
        let mut rolled_at = None;
        for i in 0..20u64 {
            let now = t0 + secs(290 * i);
            if gate(&mut e, &format!("v{i}"), None, now, settle) == Gate::Roll {
                rolled_at = Some(i);
                break;
            }
        }
        assert_eq!(rolled_at, Some(11), "3190 s >= 10 x 300 s");
    }

    fn progress(generation: i64, updated: i32, ready: i32, total: i32) -> Progress {
        Progress {
            generation,
            observed_generation: generation,
            desired: 1,
            updated,
            total,
            ready,
            ..Progress::default()
        }
    }

    fn started(at: Instant) -> Started {
        Started {
            hash: "h2".into(),
            at,
            since: Timestamp::from_second(1_796_014_800).expect("time"),
            generation: Some(2),
            digest: Some("t1".into()),
        }
    }

    #[test]
    fn a_rollout_whose_new_pods_are_not_ready_by_the_deadline_is_degraded() {
        let t0 = Instant::now();
        let s = started(t0);
        let deadline = secs(30);
        let stuck = progress(2, 1, 0, 2);
        assert_eq!(
            health(
                Some(&s),
                Some("h2"),
                Some("t1"),
                &stuck,
                t0 + secs(10),
                deadline
            ),
            Health::Going { left: secs(20) }
        );
        let Health::Degraded { why, detail } = health(
            Some(&s),
            Some("h2"),
            Some("t1"),
            &stuck,
            t0 + secs(30),
            deadline,
        ) else {
            panic!("degraded at the deadline")
        };
        assert_eq!(why, Degraded::TimedOut);
        assert!(
            detail.contains("1 of 1 pods updated, 0 of 2 pods available"),
            "{detail}"
        );
        assert!(
            detail.contains("started at 2026-11-30T05:00:00Z"),
            "{detail}"
        );
        let Health::Degraded {
            detail: later_detail,
            ..
        } = health(
            Some(&s),
            Some("h2"),
            Some("t1"),
            &stuck,
            t0 + secs(60),
            deadline,
        )
        else {
            panic!("still degraded")
        };
        assert_eq!(
            later_detail, detail,
            "the same message while nothing changes: status is not rewritten at each look"
        );
        let done = progress(2, 1, 1, 1);
        assert_eq!(
            health(
                Some(&s),
                Some("h2"),
                Some("t1"),
                &done,
                t0 + secs(40),
                deadline
            ),
            Health::Settled,
            "complete: no longer degraded"
        );
    }

    #[test]
    fn a_scale_during_the_rollout_does_not_take_it_over() {
        // DSO rolled web (generation 2); the HPA scaled it 20 s later (generation 3, same
        // template): the rollout is still DSO's, and is judged.
        let t0 = Instant::now();
        let s = started(t0);
        let scaled = Progress {
            desired: 3,
            ..progress(3, 1, 0, 2)
        };
        assert_eq!(
            health(
                Some(&s),
                Some("h2"),
                Some("t1"),
                &scaled,
                t0 + secs(20),
                secs(30)
            ),
            Health::Going { left: secs(10) },
            "still DSO's rollout: a rotation now waits for it"
        );
        assert!(
            matches!(
                health(
                    Some(&s),
                    Some("h2"),
                    Some("t1"),
                    &scaled,
                    t0 + secs(30),
                    secs(30)
                ),
                Health::Degraded {
                    why: Degraded::TimedOut,
                    ..
                }
            ),
            "never Ready: degraded"
        );
    }

    #[test]
    fn a_stalled_deployment_is_degraded_before_the_deadline() {
        let t0 = Instant::now();
        let stalled = Progress {
            stalled: true,
            ..progress(2, 1, 0, 2)
        };
        assert!(matches!(
            health(
                Some(&started(t0)),
                Some("h2"),
                Some("t1"),
                &stalled,
                t0 + secs(5),
                secs(300)
            ),
            Health::Degraded {
                why: Degraded::Stalled,
                ..
            }
        ));
    }

    #[test]
    fn only_dsos_own_rollout_is_judged() {
        let t0 = Instant::now();
        let s = started(t0);
        let late = t0 + secs(600);
        let stuck = progress(2, 1, 0, 2);
        assert_eq!(
            health(None, Some("h2"), Some("t1"), &stuck, late, secs(30)),
            Health::Settled,
            "not started by this replica"
        );
        assert_eq!(
            health(Some(&s), Some("h3"), Some("t1"), &stuck, late, secs(30)),
            Health::Settled,
            "another hash on the template"
        );
        assert_eq!(
            health(
                Some(&s),
                Some("h2"),
                Some("t2"),
                &progress(3, 1, 0, 2),
                late,
                secs(30)
            ),
            Health::Settled,
            "the owner changed the template since"
        );
        assert_eq!(
            health(
                Some(&s),
                Some("h1"),
                Some("t1"),
                &progress(1, 1, 1, 1),
                t0,
                secs(30)
            ),
            Health::Going { left: secs(30) },
            "the watch cache has not seen the patch yet: not complete"
        );
    }

    #[test]
    fn a_completed_rollout_is_not_judged_again_when_pods_go_missing_later() {
        let t0 = Instant::now();
        let tracker = Tracker::default();
        let key: Key = ("shop".into(), "Deployment/web".into());
        tracker.started(&key, "h2", t0, Some(2), Some("t1"));
        let deadline = secs(300);
        let judge = |p: &Progress, at: u64| {
            tracker.health(&key, Some("h2"), Some("t1"), p, t0 + secs(at), deadline)
        };
        assert_eq!(
            judge(&progress(2, 1, 0, 2), 10),
            Health::Going { left: secs(290) }
        );
        assert_eq!(
            judge(&progress(2, 1, 1, 1), 60),
            Health::Settled,
            "complete"
        );
        assert_eq!(tracker.get(&key).started, None, "forgotten once complete");
        // Two hours later a node is drained: the pod is not Ready for a while. No rollout of
        // DSO's is going: neither degraded nor holding the next rotation.
        assert_eq!(judge(&progress(2, 1, 0, 1), 7200), Health::Settled);
    }

    fn time(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).expect("time"))
    }

    #[test]
    fn the_degraded_condition_names_every_workload_and_keeps_its_transition_time() {
        let bad = vec![
            (
                "Deployment/web".to_string(),
                Degraded::TimedOut,
                "new pods not Ready".to_string(),
            ),
            (
                "StatefulSet/db".to_string(),
                Degraded::Stalled,
                "x".to_string(),
            ),
        ];
        let c = degraded_condition(&[], &bad, false, Some(1), time(10));
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "RolloutTimedOut")
        );
        assert_eq!(
            c.message,
            "Deployment/web: new pods not Ready; StatefulSet/db: x"
        );
        let again = degraded_condition(
            std::slice::from_ref(&c),
            &bad[..1],
            false,
            Some(1),
            time(20),
        );
        assert_eq!(again.last_transition_time, time(10));
        let kept = degraded_condition(std::slice::from_ref(&c), &[], true, Some(1), time(20));
        assert_eq!(
            kept, c,
            "kept while a rollout it cannot judge is incomplete"
        );
        let healthy = degraded_condition(&[c], &[], false, Some(1), time(30));
        assert_eq!(
            (healthy.status.as_str(), healthy.reason.as_str()),
            ("False", "RolloutsHealthy")
        );
        assert_eq!(healthy.last_transition_time, time(30));
    }
}
