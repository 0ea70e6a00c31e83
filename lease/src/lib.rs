//! Leader election on a `coordination.k8s.io/v1` Lease (kube 5 has no elector of its own).
//!
//! One replica holds the Lease and renews it every `duration / 3`; it stops leading when it has
//! not renewed for the renew deadline ([`renew_deadline`], 2/3 of `duration`), so it has
//! stopped before anyone may take over. The others take the Lease over once they have seen it
//! unchanged for `duration` — measured on their own clock from when they observed its
//! `renewTime` change (as client-go does), never by comparing the timestamp with their clock,
//! so clock skew between nodes cannot cause two leaders. Writes are `replace` with the
//! observed `resourceVersion`, so two candidates can never both win: the loser gets a
//! conflict. A leader that shuts down gracefully releases the Lease, so a standby takes over
//! at once.
//!
//! A renewal counts from when its request was **sent**, not from when the answer came: the
//! Lease on the server runs from the `renewTime` stamped before the request, and a standby
//! counts from when it saw that write, so a slow answer must not lengthen this replica's
//! leadership. [`Leadership`] carries that time to every writer: a workload patch or a status
//! write is refused once the renew deadline has passed or the Lease was lost, and reconciles in
//! flight are cancelled at the loss ([`Leadership::lost`]), so an old leader writes nothing
//! after a standby may have taken over.
//!
//! [`LeaderElector::acquire`] waits for the Lease; [`keep_renewed`] is the leader's renewal
//! task.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, warn};

/// A candidate for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    observed: Mutex<Option<Observed>>,
}

/// A foreign Lease record as this candidate last saw it, and when (on its own clock) it first
/// saw that record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub holder: String,
    pub renew_time: Option<String>,
    pub since: Instant,
}

/// Updates the observation with the record read at `now`: a changed holder or renewTime
/// restarts the clock, the same record keeps it.
pub fn observe(
    previous: Option<&Observed>,
    holder: &str,
    renew_time: Option<String>,
    now: Instant,
) -> Observed {
    match previous {
        Some(p) if p.holder == holder && p.renew_time == renew_time => p.clone(),
        _ => Observed {
            holder: holder.to_string(),
            renew_time,
            since: now,
        },
    }
}

/// Whether a foreign Lease may be taken over: its record has not changed for `lasts`.
pub fn foreign_lease_expired(observed: &Observed, lasts: Duration, now: Instant) -> bool {
    now.saturating_duration_since(observed.since) >= lasts
}

/// How long a leader may go without a successful renewal before it stops leading: 2/3 of the
/// Lease duration, so it has stopped well before a standby may take over.
pub fn renew_deadline(duration: Duration) -> Duration {
    duration * 2 / 3
}

/// Whether a leader whose last successful renewal was at `last_renew` still leads at `now`.
pub fn still_leading(last_renew: Instant, duration: Duration, now: Instant) -> bool {
    now.saturating_duration_since(last_renew) < renew_deadline(duration)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        LeaderElector {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
            observed: Mutex::new(None),
        }
    }

    /// How long a Lease lasts without renewal.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// This candidate's identity (holderIdentity).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1)
    }

    /// One attempt to take or renew the Lease. `Ok(true)`: this candidate leads now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.seconds()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.identity;
        if !mine && !holder.is_empty() {
            let lasts = Duration::from_secs(
                u64::try_from(
                    spec.lease_duration_seconds
                        .unwrap_or_else(|| self.seconds()),
                )
                .unwrap_or(1),
            );
            let renew_time = spec.renew_time.as_ref().map(|t| t.0.to_string());
            let seen = {
                let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
                let seen = observe(observed.as_ref(), &holder, renew_time, Instant::now());
                *observed = Some(seen.clone());
                seen
            };
            if !foreign_lease_expired(&seen, lasts, Instant::now()) {
                return Ok(false);
            }
        }
        if !mine {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(self.seconds());
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Tries every fifth of the Lease duration until this candidate leads (its [`Leadership`],
    /// counted from when the winning request was sent) or `stop` turns true (`None`).
    pub async fn acquire(&self, stop: &mut watch::Receiver<bool>) -> Option<Leadership> {
        loop {
            let sent = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => return Some(Leadership::elected(self.duration, sent)),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.duration / 5) => {},
                _ = stop.wait_for(|s| *s) => return None,
            }
        }
    }

    /// Gives the Lease up (if still held), so a standby takes over without waiting.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Whether this replica may write now. Cloned into every writer; without leader election it
/// always leads.
#[derive(Clone, Debug)]
pub struct Leadership(Option<Arc<Lead>>);

#[derive(Debug)]
struct Lead {
    duration: Duration,
    /// When the last successful acquire or renew request was sent.
    renewed: Mutex<Instant>,
    lost: watch::Sender<bool>,
}

impl Leadership {
    /// A replica that runs without leader election.
    pub fn always() -> Self {
        Leadership(None)
    }

    /// A replica that won a Lease of `duration` with a request sent at `sent`.
    pub fn elected(duration: Duration, sent: Instant) -> Self {
        Leadership(Some(Arc::new(Lead {
            duration,
            renewed: Mutex::new(sent),
            lost: watch::channel(false).0,
        })))
    }

    /// Records a successful renewal whose request was sent at `sent`.
    pub fn renewed(&self, sent: Instant) {
        if let Some(lead) = &self.0 {
            let mut renewed = lead.renewed.lock().unwrap_or_else(|p| p.into_inner());
            *renewed = (*renewed).max(sent);
        }
    }

    /// When the last successful request was sent (`None` without leader election).
    pub fn last_renewed(&self) -> Option<Instant> {
        self.0
            .as_ref()
            .map(|lead| *lead.renewed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Marks the Lease lost: every later [`Leadership::is_leading`] is false and
    /// [`Leadership::lost`] resolves.
    pub fn lose(&self) {
        if let Some(lead) = &self.0 {
            lead.lost.send_replace(true);
        }
    }

    /// Whether this replica may write at `now`: the Lease was not lost and its last renewal
    /// request was sent less than the renew deadline ago.
    pub fn is_leading_at(&self, now: Instant) -> bool {
        match &self.0 {
            None => true,
            Some(lead) => {
                !*lead.lost.borrow()
                    && self
                        .last_renewed()
                        .is_some_and(|t| still_leading(t, lead.duration, now))
            }
        }
    }

    /// [`Leadership::is_leading_at`] now.
    pub fn is_leading(&self) -> bool {
        self.is_leading_at(Instant::now())
    }

    /// Resolves when the Lease is lost (never without leader election).
    pub async fn lost(&self) {
        match &self.0 {
            None => std::future::pending().await,
            Some(lead) => {
                let mut rx = lead.lost.subscribe();
                let _ = rx.wait_for(|lost| *lost).await;
            }
        }
    }
}

/// The leader's renewal task: renews every third of the Lease duration (every tenth after a
/// failure) until `stop` turns true. When the Lease is lost — taken by another replica, or not
/// renewed before the renew deadline, a hung call included — it marks `leadership` lost, calls
/// `on_lost` at once and ends. The task's output says whether the Lease was lost.
pub fn keep_renewed(
    elector: Arc<LeaderElector>,
    leadership: Leadership,
    mut stop: watch::Receiver<bool>,
    on_lost: impl FnOnce() + Send + 'static,
) -> JoinHandle<bool> {
    tokio::spawn(async move {
        let duration = elector.duration();
        let mut pause = duration / 3;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {},
                _ = stop.wait_for(|s| *s) => return false,
            }
            let last_ok = leadership.last_renewed().unwrap_or_else(Instant::now);
            // An attempt may not outlive the renew deadline (a hung call included).
            let left = renew_deadline(duration).saturating_sub(last_ok.elapsed());
            // Stamped before the request: the Lease runs from the renewTime it writes.
            let sent = Instant::now();
            match tokio::time::timeout(left, elector.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {
                    leadership.renewed(sent);
                    pause = duration / 3;
                }
                Ok(Ok(false)) => {
                    error!("lost the leader Lease to another replica; stopping");
                    break;
                }
                Ok(Err(e)) if still_leading(last_ok, duration, Instant::now()) => {
                    warn!(error = %e, "Lease renewal failed; retrying");
                    pause = duration / 10;
                }
                Ok(Err(e)) => {
                    error!(error = %e, "could not renew the leader Lease before the renew deadline; stopping");
                    break;
                }
                Err(_) => {
                    error!("Lease renewal did not answer before the renew deadline; stopping");
                    break;
                }
            }
        }
        leadership.lose();
        on_lost();
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    #[test]
    fn a_foreign_lease_expires_a_full_duration_after_this_replica_saw_it_change() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let first = observe(None, "a", Some("10:00:00".into()), at(0));
        assert!(!foreign_lease_expired(&first, LEASE, at(14)));
        // The same record, read again: the clock keeps running from the first sight.
        let again = observe(Some(&first), "a", Some("10:00:00".into()), at(14));
        assert_eq!(again.since, at(0));
        assert!(foreign_lease_expired(&again, LEASE, at(15)));
        // A renewal restarts it, whatever the timestamp says (here: far in the past).
        let renewed = observe(Some(&again), "a", Some("09:00:00".into()), at(16));
        assert_eq!(renewed.since, at(16));
        assert!(!foreign_lease_expired(&renewed, LEASE, at(30)));
        // So does a new holder.
        let other = observe(Some(&renewed), "b", Some("09:00:00".into()), at(20));
        assert_eq!(other.since, at(20));
    }

    #[test]
    fn a_lease_first_seen_long_expired_by_its_timestamp_is_still_waited_for() {
        // A renewTime an hour old (or a skewed clock) is not trusted: only a full duration of
        // seeing no change is.
        let t0 = Instant::now();
        let first = observe(None, "a", Some("2000-01-01T00:00:00Z".into()), t0);
        assert!(!foreign_lease_expired(&first, LEASE, t0));
    }

    #[test]
    fn leadership_counts_from_when_the_renewal_was_sent_not_answered() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let lead = Leadership::elected(LEASE, t0);
        assert!(lead.is_leading_at(at(9)));
        assert!(
            !lead.is_leading_at(at(10)),
            "renew deadline of the first request"
        );
        // A renewal sent at 8 s whose answer took until 12 s: leading until 8 + 10 s, not 22 s.
        lead.renewed(at(8));
        assert!(lead.is_leading_at(at(17)));
        assert!(!lead.is_leading_at(at(18)));
        // An older request answered late never moves the time back.
        lead.renewed(at(5));
        assert_eq!(lead.last_renewed(), Some(at(8)));
    }

    #[tokio::test]
    async fn a_lost_lease_stops_every_writer_at_once() {
        let lead = Leadership::elected(LEASE, Instant::now());
        let writer = lead.clone();
        let waiting = tokio::spawn(async move { writer.lost().await });
        assert!(lead.is_leading());
        lead.lose();
        assert!(!lead.is_leading(), "lost: even within the renew deadline");
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("lost() resolves at the loss")
            .expect("task");
        assert!(Leadership::always().is_leading());
    }

    #[test]
    fn a_leader_stops_at_the_renew_deadline_before_anyone_may_take_over() {
        let t0 = Instant::now();
        assert_eq!(renew_deadline(LEASE), Duration::from_secs(10));
        assert!(still_leading(t0, LEASE, t0 + Duration::from_secs(9)));
        assert!(!still_leading(t0, LEASE, t0 + Duration::from_secs(10)));
        assert!(renew_deadline(LEASE) < LEASE);
    }
}
