//! Acting on the workloads that consume a DsoSecret: the rollout decision
//! ([`crate::domain::decide`]) applied to each, the annotation patch, and the bound on
//! rollouts in progress.
//!
//! The bound counts rollouts, not patches: a slot is held from the template patch until the
//! workload's rollout is complete ([`crate::workload::rollout_complete`], awaited on a watch of
//! the workload) or [`Settings::rollout_timeout`](crate::controller::Settings) has passed, by a
//! task of its own. A rollout that cannot go on by itself — a paused Deployment, or one past its
//! progress deadline — gives its slot back at once, with a `RolloutSlotReleased` event on the
//! DsoSecret: its owner must act, and other rollouts should not wait for that. Slots are shared
//! fairly between namespaces ([`crate::slots`]). A DsoSecret whose workload finds no slot does
//! not wait for one (that would hold a reconcile worker): the workload is left for a retry a
//! few seconds later, and other DsoSecrets go on.
//!
//! Before a slot is asked for, [`crate::coalesce`] decides whether the rollout starts now or
//! waits: for the versions to settle (`--rollout-settle`), or for a rollout DSO started for the
//! workload to end. A held rollout is asked for again by the next reconcile.

use crate::coalesce::{Gate, Health, Wait};
use crate::controller::{Context, FIELD_MANAGER, lookup, not_before};
use crate::domain::{self, Decision, Versions};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::slots::Slot;
use crate::status::Events;
use crate::workload::{Kind, Standing, Workload, WorkloadKind, standing};
use dso_api::RefreshStrategy;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::wait::await_condition;
use kube::{Client, Resource};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// First pause before a failed watch of a rollout in progress is started again (doubles per
/// failure, jittered, up to [`WATCH_RETRY_MAX`]).
const WATCH_RETRY: Duration = Duration::from_secs(1);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(30);

/// What was done to one consuming workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to roll (current, recorded, or a consumed DsoSecret is not Ready).
    Unchanged,
    /// Its template was patched: a rollout started.
    Rolled,
    /// Nothing to roll: a rollout this replica applied, for the reconcile of another DsoSecret
    /// it consumes, already carries this DsoSecret's new versions (rotations that came together
    /// get one rollout, and each DsoSecret counts it as its own).
    Covered,
    /// It needs a rollout, but every rollout slot is taken: retried shortly.
    Deferred,
    /// It needs a rollout, held to coalesce rotations (why): asked again within the duration.
    Held(Wait, Duration),
}

/// The versions a workload consumes under `strategy: Rollout`, or `None` when one of its
/// DsoSecrets cannot be resolved now (its pods could not start either: better not roll).
async fn consumed_versions(
    ctx: &Context,
    w: &Workload,
    this: &str,
    this_versions: &Versions,
) -> Option<Versions> {
    let mut versions = this_versions.clone();
    for name in w.consumes() {
        if name == this {
            continue;
        }
        let Some(other) = ctx
            .stores
            .dsosecrets
            .get(&ObjectRef::new(&name).within(&w.namespace))
        else {
            continue;
        };
        if other.spec.strategy() != RefreshStrategy::Rollout
            || dso_api::validate::validate_spec(&other.spec).is_err()
        {
            continue;
        }
        let r = lookup(
            ctx,
            &other,
            not_before(ctx.settings.detection.interval(&other.spec)),
        )
        .await;
        if r.problem.is_some() {
            debug!(
                workload = w.id(),
                dsosecret = name,
                "a consumed DsoSecret is not ready: not rolling"
            );
            return None;
        }
        versions.extend(r.following);
    }
    Some(versions)
}

/// Decides and acts on one consuming workload.
pub async fn act_on(
    ctx: &Context,
    w: &Workload,
    this: &str,
    this_ref: &ObjectReference,
    this_versions: &Versions,
) -> Result<Outcome> {
    let Some(current) = consumed_versions(ctx, w, this, this_versions).await else {
        return Ok(Outcome::Unchanged);
    };
    let key = (w.namespace.clone(), w.id());
    let hash = domain::hash(&current);
    let now = Instant::now();
    let last = ctx.applied.lock().ok().and_then(|a| a.get(&key).cloned());
    let covered = last.as_ref().is_some_and(|l| l.covers(&hash, this, now));
    let unchanged = if covered {
        Outcome::Covered
    } else {
        Outcome::Unchanged
    };
    if already_applied(last.as_ref(), &hash, now) {
        debug!(workload = w.id(), versions_hash = %hash, "rollout already applied; the watch cache has not caught up");
        return Ok(unchanged);
    }
    let rolling_left = match ctx.tracker.health(
        &key,
        w.template_hash(),
        w.template_digest.as_deref(),
        &w.progress,
        now,
        ctx.settings.rollout_timeout,
    ) {
        Health::Going { left } => Some(left),
        Health::Settled | Health::Degraded { .. } => None,
    };
    if rolling_left.is_some() && w.template_hash() != Some(hash.as_str()) {
        // New versions while DSO's rollout of it is going: they wait for it to end (no need
        // to ask its pods what they run: they are being replaced).
        if let Gate::Wait(why, after) =
            ctx.tracker
                .gate(&key, &hash, rolling_left, now, ctx.settings.rollout_settle)
        {
            debug!(workload = w.id(), versions_hash = %hash, "new versions wait for the rollout in progress");
            return Ok(Outcome::Held(why, after));
        }
    }
    let recorded = w.recorded();
    let mut decision = domain::decide(&current, w.template_hash(), recorded.as_ref(), None);
    if decision == Decision::NeedPods {
        let reports = pod_reports(ctx, w).await?;
        decision = domain::decide(
            &current,
            w.template_hash(),
            recorded.as_ref(),
            Some(&reports),
        );
    }
    let record = domain::record(&current);
    match decision {
        Decision::Current | Decision::NeedPods => {
            ctx.tracker.current(&key);
            if w.template_hash() == Some(hash.as_str()) {
                Ok(unchanged)
            } else {
                Ok(Outcome::Unchanged)
            }
        }
        Decision::Record => {
            ctx.tracker.current(&key);
            patch_workload(ctx, w, &w.apply_patch(w.template_hash(), &record)).await?;
            debug!(workload = w.id(), "recorded the versions its pods run");
            Ok(Outcome::Unchanged)
        }
        Decision::Roll => {
            if let Gate::Wait(why, after) =
                ctx.tracker
                    .gate(&key, &hash, None, now, ctx.settings.rollout_settle)
            {
                debug!(workload = w.id(), versions_hash = %hash, wait = ?after, "rollout waits for the versions to settle");
                return Ok(Outcome::Held(why, after));
            }
            let Some(slot) = ctx.slots.try_acquire(&w.namespace) else {
                return Ok(Outcome::Deferred);
            };
            // Two DsoSecrets of this workload rotated together: their reconciles run side by
            // side and reach the same versions. One patches; the other counts it as its own.
            let mine = Applied {
                hash: hash.clone(),
                at: Instant::now(),
                changed: domain::changed_dsosecrets(recorded.as_ref(), &record),
            };
            if let Some(theirs) = claim(&ctx.applied, &key, mine) {
                debug!(workload = w.id(), versions_hash = %hash, "rolled by a concurrent reconcile");
                return Ok(if theirs.covers(&hash, this, Instant::now()) {
                    Outcome::Covered
                } else {
                    Outcome::Unchanged
                });
            }
            let generation =
                match patch_workload(ctx, w, &w.apply_patch(Some(&hash), &record)).await {
                    Ok(g) => g,
                    Err(e) => {
                        unclaim(&ctx.applied, &key, &hash);
                        return Err(e);
                    }
                };
            let now = Instant::now();
            ctx.tracker
                .started(&key, &hash, now, generation, w.template_digest.as_deref());
            ctx.metrics.rolled(w.kind.as_str());
            info!(workload = w.id(), versions_hash = %hash, "rolled out");
            tokio::spawn(hold_slot(
                slot,
                ctx.client.clone(),
                ctx.events.clone(),
                this_ref.clone(),
                w.clone(),
                ctx.settings.rollout_timeout,
                ctx.metrics.clone(),
            ));
            Ok(Outcome::Rolled)
        }
    }
}

/// How long a rollout this replica applied is trusted over a watch cache that does not show it.
/// Longer than an apiserver restart and a watch's relist; short enough that a template someone
/// set back by hand is rolled again on a later check.
const APPLIED_TRUST: Duration = Duration::from_secs(120);

/// How long a rollout this replica applied is credited to the DsoSecrets it changed whose own
/// reconcile comes later: up to the longest `refresh.interval` (24 h), and some.
const CREDIT_KEEP: Duration = Duration::from_secs(25 * 3600);

/// A rollout this replica applied to one workload.
#[derive(Clone, Debug)]
pub(crate) struct Applied {
    /// The versions hash stamped on its template.
    hash: String,
    at: Instant,
    /// The DsoSecrets whose versions it changed, against the workload's record before it.
    changed: BTreeSet<String>,
}

impl Applied {
    /// Whether this rollout, to `hash`, is also one for a rotation of DsoSecret `dso`.
    fn covers(&self, hash: &str, dso: &str, now: Instant) -> bool {
        self.hash == hash && self.changed.contains(dso) && now.duration_since(self.at) < CREDIT_KEEP
    }
}

pub(crate) type AppliedMap = std::sync::Mutex<std::collections::HashMap<(String, String), Applied>>;

/// Claims the rollout `mine` of workload `key` for the calling reconcile, unless another
/// reconcile applied (or is applying) the same versions: then returns that one's record.
fn claim(applied: &AppliedMap, key: &(String, String), mine: Applied) -> Option<Applied> {
    let mut applied = applied.lock().ok()?;
    if let Some(theirs) = applied.get(key)
        && already_applied(Some(theirs), &mine.hash, mine.at)
    {
        return Some(theirs.clone());
    }
    let now = mine.at;
    applied.retain(|_, a| now.duration_since(a.at) < CREDIT_KEEP);
    applied.insert(key.clone(), mine);
    None
}

/// Gives up the claim to roll workload `key` to `hash` (the patch failed: a retry may roll).
fn unclaim(applied: &AppliedMap, key: &(String, String), hash: &str) {
    if let Ok(mut applied) = applied.lock()
        && applied.get(key).is_some_and(|a| a.hash == hash)
    {
        applied.remove(key);
    }
}

/// Whether `hash` is the rollout this replica applied to the workload within `APPLIED_TRUST`.
fn already_applied(last: Option<&Applied>, hash: &str, now: Instant) -> bool {
    last.is_some_and(|a| a.hash == hash && now.duration_since(a.at) < APPLIED_TRUST)
}

/// Holds a rollout's slot until its rollout is over, paused, stalled, or `timeout` has passed;
/// says which (a paused or stalled one with an event on the DsoSecret `dso` and one on the
/// workload, each naming the other as related object).
async fn hold_slot(
    slot: Slot,
    client: Client,
    events: Events,
    dso: ObjectReference,
    w: Workload,
    timeout: Duration,
    metrics: Metrics,
) {
    let end = match w.kind {
        Kind::Deployment => wait_rolled_out::<Deployment>(client, &w, timeout).await,
        Kind::StatefulSet => wait_rolled_out::<StatefulSet>(client, &w, timeout).await,
        Kind::DaemonSet => wait_rolled_out::<DaemonSet>(client, &w, timeout).await,
    };
    drop(slot);
    if stuck(end) {
        metrics.rollout_timed_out(w.kind.as_str());
    }
    let why = match end {
        Some(Standing::Complete) => {
            info!(workload = w.id(), "rollout complete");
            return;
        }
        None | Some(Standing::Going) => {
            warn!(workload = w.id(), timeout = ?timeout, "rollout not complete in time; freeing its slot");
            return;
        }
        Some(Standing::Paused) => "is paused (spec.paused): it goes on when it is resumed",
        Some(Standing::Stalled) => {
            "stalled (Progressing=False, ProgressDeadlineExceeded): it goes on once its pods can start"
        }
    };
    warn!(
        workload = w.id(),
        "rollout {why}; its rollout slot is given back"
    );
    let (on_dso, on_workload) = slot_released_events(&w, &dso, why);
    events.publish(&on_dso, &dso).await;
    events.publish(&on_workload, &w.object_ref()).await;
}

/// Whether a rollout DSO started that ended so counts in `dso_rollout_timeouts_total` (alert
/// `DsoRolloutStuck`): not complete within the timeout, or stalled past its Deployment's
/// `progressDeadlineSeconds` — both `Degraded`. A paused one is its owner's doing, not counted.
fn stuck(end: Option<Standing>) -> bool {
    matches!(end, None | Some(Standing::Going | Standing::Stalled))
}

/// The `RolloutSlotReleased` events for workload `w` whose rollout `why` (paused, stalled):
/// one on the DsoSecret `dso` (related: the workload), one on the workload (related: the
/// DsoSecret), each note naming the workload, so that `kubectl events --for` either says which.
fn slot_released_events(w: &Workload, dso: &ObjectReference, why: &str) -> (Event, Event) {
    let note = format!(
        "{} {why}; its rollout slot was given back to other rollouts",
        w.id()
    );
    let event = |related: ObjectReference| Event {
        type_: EventType::Warning,
        reason: "RolloutSlotReleased".into(),
        note: Some(note.clone()),
        action: "Rollout".into(),
        secondary: Some(related),
    };
    (event(w.object_ref()), event(dso.clone()))
}

/// Waits, on a watch of the workload, until its rollout is complete (or it is deleted), paused
/// or stalled, and says which; `None` when `timeout` passed first. A failed watch is started
/// again (jittered backoff) until the timeout.
async fn wait_rolled_out<K>(client: Client, w: &Workload, timeout: Duration) -> Option<Standing>
where
    K: WorkloadKind + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    let api: Api<K> = Api::namespaced(client, &w.namespace);
    let standing_of = |obj: Option<&K>| obj.map_or(Standing::Complete, |o| standing(&o.progress()));
    let settled = move |obj: Option<&K>| standing_of(obj) != Standing::Going;
    let watch = async {
        let mut failures = 0;
        loop {
            match await_condition(api.clone(), &w.name, settled).await {
                Ok(obj) => return standing_of(obj.as_ref()),
                Err(e) => {
                    failures += 1;
                    debug!(workload = w.id(), error = %e, "could not watch rollout progress");
                    let pause = dso_api::backoff::delay(
                        failures,
                        WATCH_RETRY,
                        WATCH_RETRY_MAX,
                        fastrand::u64(..),
                    );
                    tokio::time::sleep(pause).await;
                }
            }
        }
    };
    tokio::time::timeout(timeout, watch).await.ok()
}

/// Applies DSO's annotations to a workload (server-side apply, DSO's fields only); its
/// `metadata.generation` after the patch.
async fn patch_workload(
    ctx: &Context,
    w: &Workload,
    patch: &serde_json::Value,
) -> Result<Option<i64>> {
    async fn apply<K: WorkloadKind + Resource<Scope = k8s_openapi::NamespaceResourceScope>>(
        api: Api<K>,
        name: &str,
        patch: &serde_json::Value,
    ) -> kube::Result<Option<i64>> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(name, &params, &Patch::Apply(patch))
            .await
            .map(|o| o.meta().generation)
    }
    // Checked last thing before the write: a replica that lost the Lease patches nothing.
    if !ctx.leadership.is_leading() {
        return Err(Error::NotLeader);
    }
    let (c, ns) = (ctx.client.clone(), w.namespace.as_str());
    match w.kind {
        Kind::Deployment => apply(Api::<Deployment>::namespaced(c, ns), &w.name, patch).await,
        Kind::StatefulSet => apply(Api::<StatefulSet>::namespaced(c, ns), &w.name, patch).await,
        Kind::DaemonSet => apply(Api::<DaemonSet>::namespaced(c, ns), &w.name, patch).await,
    }
    .map_err(Error::kube("patch workload annotations"))
}

/// The `dso-init` reports of the workload's live pods (those that have one).
async fn pod_reports(
    ctx: &Context,
    w: &Workload,
) -> Result<Vec<Vec<dso_api::contract::ReportedVersion>>> {
    let Some(selector) = w.selector.clone() else {
        return Ok(Vec::new());
    };
    let Ok(selector) = kube::core::Selector::try_from(selector) else {
        return Ok(Vec::new());
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &w.namespace);
    let list = pods
        .list(&ListParams::default().labels_from(&selector))
        .await
        .map_err(Error::kube("list pods of a workload"))?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            p.status
                .as_ref()?
                .init_container_statuses
                .as_ref()?
                .iter()
                .find(|s| s.name == dso_api::annotations::INIT_CONTAINER_NAME)?
                .state
                .as_ref()?
                .terminated
                .as_ref()?
                .message
                .as_deref()
                .and_then(domain::parse_report)
        })
        .collect())
}

#[cfg(test)]
mod applied_tests {
    use super::*;

    fn applied(hash: &str, at: Instant, changed: &[&str]) -> Applied {
        Applied {
            hash: hash.into(),
            at,
            changed: changed.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_same_rollout_is_not_applied_twice_while_the_cache_lags() {
        let t0 = Instant::now();
        let last = applied("h1", t0, &["db"]);
        assert!(already_applied(
            Some(&last),
            "h1",
            t0 + Duration::from_secs(5)
        ));
        assert!(
            !already_applied(Some(&last), "h2", t0 + Duration::from_secs(5)),
            "a new rotation rolls"
        );
        assert!(
            !already_applied(Some(&last), "h1", t0 + APPLIED_TRUST),
            "trust ends"
        );
        assert!(!already_applied(None, "h1", t0));
    }

    #[test]
    fn a_rollout_counts_for_every_dsosecret_whose_versions_it_changed() {
        let t0 = Instant::now();
        let last = applied("h1", t0, &["db", "cache"]);
        let later = t0 + Duration::from_secs(600);
        assert!(last.covers("h1", "db", later));
        assert!(
            last.covers("h1", "cache", later),
            "rolled by db's reconcile, for cache's rotation too"
        );
        assert!(!last.covers("h1", "queue", later), "queue did not change");
        assert!(!last.covers("h2", "cache", later), "another state");
        assert!(!last.covers("h1", "cache", t0 + CREDIT_KEEP));
    }

    #[test]
    fn of_two_reconciles_reaching_the_same_versions_one_rolls_and_the_other_is_credited() {
        let map = AppliedMap::default();
        let key = ("shop".to_string(), "Deployment/web".to_string());
        let t0 = Instant::now();
        assert!(claim(&map, &key, applied("h1", t0, &["db", "cache"])).is_none());
        let theirs = claim(&map, &key, applied("h1", t0, &["db", "cache"]))
            .expect("the second reconcile finds the first's claim");
        assert!(theirs.covers("h1", "cache", t0));
        assert!(
            claim(&map, &key, applied("h2", t0, &["db"])).is_none(),
            "new versions roll"
        );
        unclaim(&map, &key, "h2");
        assert!(
            claim(&map, &key, applied("h2", t0, &["db"])).is_none(),
            "a failed patch gives its claim back"
        );
    }

    #[test]
    fn timed_out_and_stalled_rollouts_are_counted_for_the_alert_paused_and_complete_ones_not() {
        assert!(stuck(None), "not complete within --rollout-timeout");
        assert!(
            stuck(Some(Standing::Stalled)),
            "past progressDeadlineSeconds"
        );
        assert!(!stuck(Some(Standing::Paused)));
        assert!(!stuck(Some(Standing::Complete)));
    }

    #[test]
    fn a_released_slot_is_told_on_the_dsosecret_and_the_workload_naming_each_other() {
        let w = Workload::of(
            &serde_json::from_value::<Deployment>(serde_json::json!({
                "metadata": {"name": "paused", "namespace": "ns", "uid": "w-uid"}
            }))
            .expect("deployment"),
        );
        let dso = ObjectReference {
            kind: Some("DsoSecret".into()),
            name: Some("db".into()),
            namespace: Some("ns".into()),
            uid: Some("d-uid".into()),
            ..ObjectReference::default()
        };
        let (on_dso, on_workload) = slot_released_events(&w, &dso, "is paused (spec.paused)");
        for e in [&on_dso, &on_workload] {
            assert_eq!(e.reason, "RolloutSlotReleased");
            assert_eq!(
                e.note.as_deref(),
                Some(
                    "Deployment/paused is paused (spec.paused); its rollout slot was given back to other rollouts"
                )
            );
        }
        assert_eq!(on_dso.secondary, Some(w.object_ref()));
        assert_eq!(on_workload.secondary, Some(dso));
        let r = w.object_ref();
        assert_eq!(
            (
                r.api_version.as_deref(),
                r.kind.as_deref(),
                r.uid.as_deref()
            ),
            (Some("apps/v1"), Some("Deployment"), Some("w-uid")),
            "kubectl describe matches events by uid"
        );
    }
}
