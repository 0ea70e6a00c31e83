//! The DsoSecret controller: the shell around [`crate::domain`]. `reconcile` looks secrets up
//! through the shared [`VersionCache`], acts on consuming workloads ([`crate::rollout`]),
//! records the outcome ([`crate::status`]), and says when to look again; `error_policy` backs
//! off per DsoSecret.

use crate::cache::VersionCache;
use crate::coalesce::{self, Health, Tracker, Wait};
use crate::domain::{self, Lookup, Resolution, SecretKey};
use crate::error::{Error, Result};
use crate::events::Detection;
use crate::lease::Leadership;
use crate::metrics::Metrics;
use crate::rollout::{Outcome, act_on};
use crate::slots::Slots;
use crate::status::{Consumers, Events, InPlaceProgress, now, publish, write_status};
use crate::workload::{Workload, WorkloadKind, rollout_complete};
use dso_api::annotations::REFRESH;
use dso_api::{DsoSecret, DsoSecretStatus, RefreshStrategy, RotationStatus};
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{Instrument, debug, info, info_span, warn};

/// The field manager of every write (status and workload annotations).
pub const FIELD_MANAGER: &str = "dso-operator";

/// The watch caches the controller reads.
#[derive(Clone)]
pub struct Stores {
    pub dsosecrets: Store<DsoSecret>,
    pub deployments: Store<Deployment>,
    pub statefulsets: Store<StatefulSet>,
    pub daemonsets: Store<DaemonSet>,
}

impl Stores {
    /// Workloads of `namespace` whose template consumes the DsoSecret `name`.
    pub fn consumers(&self, namespace: &str, name: &str) -> Vec<Workload> {
        fn scan<K: WorkloadKind>(store: &Store<K>, ns: &str, name: &str, out: &mut Vec<Workload>) {
            for obj in store.state() {
                if obj.meta().namespace.as_deref() != Some(ns) {
                    continue;
                }
                let w = Workload::of(obj.as_ref());
                if w.consumes().iter().any(|n| n == name) {
                    out.push(w);
                }
            }
        }
        let mut out = Vec::new();
        scan(&self.deployments, namespace, name, &mut out);
        scan(&self.statefulsets, namespace, name, &mut out);
        scan(&self.daemonsets, namespace, name, &mut out);
        out.sort_by(|a, b| (a.kind.as_str(), &a.name).cmp(&(b.kind.as_str(), &b.name)));
        out
    }
}

/// Tunables of the controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// First retry delay after a failed reconcile; doubles per consecutive failure.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Longest time a rollout holds its slot (`--max-concurrent-rollouts`) waiting to complete,
    /// and the time its new pods have to become Ready before its DsoSecrets are `Degraded`.
    pub rollout_timeout: Duration,
    /// How long the versions a workload consumes must stay unchanged before it is rolled
    /// (`--rollout-settle`): rotations closer together than that give one rollout.
    pub rollout_settle: Duration,
    /// The secrets each namespace may name (`--secret-allowlist`; default: all).
    pub allowlist: Arc<dso_api::allowlist::Allowlist>,
    /// Shortest time between two forced checks (`dso.dev/refresh`) of one DsoSecret.
    pub refresh_min_interval: Duration,
    /// Most rollouts in progress (`--max-concurrent-rollouts`).
    pub max_concurrent_rollouts: usize,
    /// Periodic checks alone, or change events with the periodic check as fallback: sets the
    /// refresh interval of DsoSecrets that set none.
    pub detection: Detection,
}

/// How soon an InPlace DsoSecret with pods just told is looked at again (to count them).
const IN_PLACE_FOLLOW_UP: Duration = Duration::from_secs(5);
/// How soon an InPlace DsoSecret whose pods are stale, none just told, is looked at again: a
/// failing sidecar is not mended by looking, and each look lists the namespace's pods.
const IN_PLACE_STALE_RECHECK: Duration = Duration::from_secs(30);

/// How soon a DsoSecret whose rollout found no free slot is looked at again.
const SLOT_RETRY: Duration = Duration::from_secs(2);

/// How often a DsoSecret with a degraded consumer is looked at (no AWS call), to see the
/// workload's rollout complete and clear `Degraded`.
const DEGRADED_RECHECK: Duration = Duration::from_secs(30);

/// State shared by `reconcile` and `error_policy`.
pub struct Context {
    pub client: Client,
    pub cache: VersionCache,
    pub events: Events,
    pub metrics: Metrics,
    pub stores: Stores,
    pub settings: Settings,
    /// Rollouts in progress (`--max-concurrent-rollouts`), shared fairly between namespaces.
    pub(crate) slots: Slots,
    /// Whether this replica may still write (leader election).
    pub leadership: Leadership,
    failures: Mutex<HashMap<(String, String), u32>>,
    refreshes: Mutex<HashMap<(String, String), RefreshState>>,
    /// The last status written per DsoSecret uid: the watch cache may not have seen it yet
    /// when the next reconcile starts (a workload event right after a rollout).
    pub(crate) written: Mutex<HashMap<String, DsoSecretStatus>>,
    /// The versions hash last applied per workload (namespace, Kind/name) and when: the watch
    /// cache may still show the old template (an apiserver restart, a slow watch), and the same
    /// rollout must not be applied, counted and announced again.
    /// Each entry also says which DsoSecrets' rotations the rollout was for.
    pub(crate) applied: crate::rollout::AppliedMap,
    /// Rollouts wanted and started per workload: coalescing and health ([`crate::coalesce`]).
    pub(crate) tracker: Tracker,
    /// One list of pods per namespace for the InPlace reconciles there ([`crate::pod_lists`]).
    pub(crate) pod_lists: crate::pod_lists::PodLists,
}

impl Context {
    pub fn new(
        client: Client,
        cache: VersionCache,
        events: Events,
        metrics: Metrics,
        stores: Stores,
        settings: Settings,
        leadership: Leadership,
    ) -> Self {
        Context {
            client,
            cache,
            events,
            metrics,
            stores,
            slots: Slots::new(settings.max_concurrent_rollouts),
            settings,
            leadership,
            failures: Mutex::new(HashMap::new()),
            refreshes: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            applied: Mutex::new(HashMap::new()),
            tracker: Tracker::default(),
            pod_lists: Default::default(),
        }
    }
}

fn key_of(dso: &DsoSecret) -> (String, String) {
    (dso.namespace().unwrap_or_default(), dso.name_any())
}

/// Reconciles one DsoSecret: a span per call, metrics, and the failure count for backoff.
pub async fn reconcile(dso: Arc<DsoSecret>, ctx: Arc<Context>) -> Result<Action> {
    let span = info_span!(
        "reconcile",
        namespace = dso.namespace().unwrap_or_default(),
        name = dso.name_any(),
        generation = dso.metadata.generation.unwrap_or_default(),
    );
    let _timer = ctx.metrics.reconcile_started();
    // Losing the Lease cancels the reconcile where it is: no write after the loss.
    let result = tokio::select! {
        result = apply(&dso, &ctx).instrument(span) => result,
        () = ctx.leadership.lost() => Err(Error::NotLeader),
    };
    if result.is_ok() {
        lock(&ctx.failures).remove(&key_of(&dso));
    }
    forget_deleted(&ctx);
    result
}

/// Drops what the per-DsoSecret maps hold for DsoSecrets that no longer exist (a delete
/// reaches no reconcile): a sweep, run once a map has outgrown the live set, so its cost is
/// spread over many reconciles.
fn forget_deleted(ctx: &Context) {
    let live = ctx.stores.dsosecrets.state();
    let keys = || live.iter().map(|d| key_of(d)).collect::<HashSet<_>>();
    sweep(&mut lock(&ctx.failures), live.len(), keys);
    sweep(&mut lock(&ctx.refreshes), live.len(), keys);
    sweep(&mut lock(&ctx.written), live.len(), || {
        live.iter().filter_map(|d| d.uid()).collect()
    });
}

/// Keeps only the `live` keys of `map`, when it holds well more entries than `live_count`.
fn sweep<K: Hash + Eq, V>(
    map: &mut HashMap<K, V>,
    live_count: usize,
    live: impl FnOnce() -> HashSet<K>,
) {
    if map.len() > 2 * live_count + 64 {
        let live = live();
        map.retain(|k, _| live.contains(k));
    }
}

/// Requeue delay after a failure: exponential per object, capped.
pub fn error_policy(dso: Arc<DsoSecret>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.metric_label());
    let n = {
        let mut failures = lock(&ctx.failures);
        let n = failures.entry(key_of(&dso)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(&ctx.settings, n);
    warn!(
        namespace = dso.namespace().unwrap_or_default(),
        name = dso.name_any(),
        error = %error,
        label = error.metric_label(),
        attempt = n,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// `base * 2^(attempt-1)`, capped at `max`, with jitter ([`dso_api::backoff`]): DsoSecrets that
/// failed together (an AWS outage) do not all come back in the same second.
pub fn backoff(settings: &Settings, attempt: u32) -> Duration {
    dso_api::backoff::delay(
        attempt,
        settings.backoff_base,
        settings.backoff_max,
        fastrand::u64(..),
    )
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What was done with one DsoSecret's `dso.dev/refresh` values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefreshState {
    /// The last value handled (its forced check was made).
    pub handled: Option<String>,
    /// When that forced check was made.
    pub forced_at: Option<Instant>,
    /// A value refused for coming too soon (its event is published once).
    pub refused: Option<String>,
}

/// What to do with the `dso.dev/refresh` value of a DsoSecret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshGate {
    /// No new value: the cache as usual.
    Usual,
    /// A new value, allowed: check AWS now.
    Force,
    /// A new value within `min` of the last forced check: not now; allowed in `retry_in`.
    /// `first` is true the first time this value is refused (publish the event then).
    TooSoon { retry_in: Duration, first: bool },
}

/// The rate limit on `dso.dev/refresh`: one forced check per `min` per DsoSecret.
pub fn refresh_gate(
    state: &RefreshState,
    value: Option<&str>,
    now: Instant,
    min: Duration,
) -> RefreshGate {
    let Some(value) = value else {
        return RefreshGate::Usual;
    };
    if state.handled.as_deref() == Some(value) {
        return RefreshGate::Usual;
    }
    match state.forced_at {
        Some(at) if now.saturating_duration_since(at) < min => RefreshGate::TooSoon {
            retry_in: min - now.saturating_duration_since(at),
            first: state.refused.as_deref() != Some(value),
        },
        _ => RefreshGate::Force,
    }
}

/// A periodic requeue, spread over its last tenth ([`dso_api::backoff::spread`]): never later
/// than `period`, and DsoSecrets created together do not stay in step.
pub fn requeue_after(period: Duration) -> Action {
    Action::requeue(dso_api::backoff::spread(period, 0.1, fastrand::u64(..)))
}

/// Drops what nothing references any more: cache entries of secrets no DsoSecret names, and
/// AWS clients of regions unused for `client_idle`. Run on a timer.
pub fn forget_unused(ctx: &Context, client_idle: Duration) {
    let region = ctx.cache.default_region();
    let live: HashSet<SecretKey> = ctx
        .stores
        .dsosecrets
        .state()
        .iter()
        .filter(|d| dso_api::validate::validate_spec(&d.spec).is_ok())
        .flat_map(|d| domain::secret_keys(&d.spec, &region))
        .collect();
    let (entries, clients) = ctx.cache.forget_unused(&live, client_idle);
    if entries + clients > 0 {
        debug!(
            entries,
            clients, "forgot cache entries and AWS clients no DsoSecret uses"
        );
    }
}

/// Looks up every secret of a DsoSecret (concurrently, through the cache) and resolves it.
pub(crate) async fn lookup(
    ctx: &Context,
    dso: &DsoSecret,
    not_before: Option<Instant>,
) -> Resolution {
    let region = ctx.cache.default_region();
    let keys: Vec<SecretKey> = domain::secret_keys(&dso.spec, &region)
        .into_iter()
        .collect();
    let answers: Vec<Lookup> = join_all(keys.iter().map(|k| ctx.cache.get(k, not_before))).await;
    let answers: HashMap<&SecretKey, Lookup> = keys.iter().zip(answers).collect();
    domain::resolve(&dso.name_any(), &dso.spec, &region, |k| answers.get(k))
}

pub(crate) fn not_before(interval: Duration) -> Option<Instant> {
    Instant::now().checked_sub(interval)
}

async fn apply(dso: &DsoSecret, ctx: &Context) -> Result<Action> {
    let ns = dso
        .namespace()
        .ok_or_else(|| Error::NoNamespace(format!("DsoSecret {}", dso.name_any())))?;
    let name = dso.name_any();
    let uid = dso.uid().unwrap_or_default();
    let previous = lock(&ctx.written)
        .get(&uid)
        .cloned()
        .or_else(|| dso.status.clone())
        .unwrap_or_default();
    let interval = ctx.settings.detection.interval(&dso.spec);

    // A spec that is invalid, or names a secret outside the namespace's allowlist, never
    // reaches AWS: the operator's role would otherwise describe it on the tenant's behalf.
    let refused = domain::invalid_spec(&dso.spec)
        .or_else(|| domain::not_allowed(&dso.spec, &ns, &ctx.settings.allowlist));
    if let Some(resolution) = refused {
        write_status(
            ctx,
            dso,
            &ns,
            &previous,
            &resolution,
            Consumers {
                last_rotation: previous.last_rotation.clone(),
                progress: InPlaceProgress::recorded(&previous),
                degraded: previous
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Degraded")
                    .cloned(),
            },
        )
        .await?;
        return Ok(Action::await_change());
    }

    // `dso.dev/refresh` set to a value not handled yet: bypass the cache for this DsoSecret,
    // at most once per --refresh-min-interval.
    let refresh = dso.annotations().get(REFRESH).cloned();
    let gate = {
        let refreshes = lock(&ctx.refreshes);
        let state = refreshes.get(&key_of(dso)).cloned().unwrap_or_default();
        refresh_gate(
            &state,
            refresh.as_deref(),
            Instant::now(),
            ctx.settings.refresh_min_interval,
        )
    };
    let forced = gate == RefreshGate::Force;
    let mut refresh_retry = None;
    if let RefreshGate::TooSoon { retry_in, first } = gate {
        refresh_retry = Some(retry_in);
        if first && let Some(v) = &refresh {
            lock(&ctx.refreshes).entry(key_of(dso)).or_default().refused = Some(v.clone());
            info!(refresh = %v, retry_in = ?retry_in, "forced check refused: too soon after the last one");
            publish(
                ctx,
                dso,
                EventType::Warning,
                "RefreshRateLimited",
                "Refresh",
                format!(
                    "dso.dev/refresh={v} not handled yet: at most one forced check per {} per DsoSecret; it is made in {}s",
                    humanize(ctx.settings.refresh_min_interval),
                    retry_in.as_secs().max(1)
                ),
                None,
            )
            .await;
        }
    }
    let resolution = lookup(
        ctx,
        dso,
        if forced {
            Some(Instant::now())
        } else {
            not_before(interval)
        },
    )
    .await;
    if forced && let Some(v) = refresh {
        // Handled: one fresh lookup per new value, whatever AWS answered.
        info!(refresh = %v, "forced check (dso.dev/refresh)");
        lock(&ctx.refreshes).insert(
            key_of(dso),
            RefreshState {
                handled: Some(v),
                forced_at: Some(Instant::now()),
                refused: None,
            },
        );
    }

    let mut rolled = Vec::new();
    // Rolled already, for this DsoSecret's rotation too, by another DsoSecret's reconcile.
    let mut covered = Vec::new();
    let mut deferred = Vec::new();
    let mut held = Vec::new();
    let mut failed = Vec::new();
    // The soonest look the rollouts of consumers ask for (held, going or degraded).
    let mut soonest: Option<Duration> = None;
    let mut sooner = |d: Duration| soonest = Some(soonest.map_or(d, |s| s.min(d)));
    let rollout = dso.spec.strategy() == RefreshStrategy::Rollout;
    let consumers = if rollout {
        ctx.stores.consumers(&ns, &name)
    } else {
        Vec::new()
    };
    if resolution.problem.is_none() && rollout {
        let this = dso.object_ref(&());
        let outcomes = join_all(
            consumers
                .iter()
                .map(|w| act_on(ctx, w, &name, &this, &resolution.following)),
        )
        .await;
        for (w, outcome) in consumers.iter().zip(outcomes) {
            match outcome {
                Ok(Outcome::Rolled) => rolled.push(w.id()),
                Ok(Outcome::Covered) => covered.push(w.id()),
                Ok(Outcome::Deferred) => deferred.push(w.id()),
                Ok(Outcome::Held(why, after)) => {
                    held.push((w.id(), why));
                    sooner(after);
                }
                Ok(Outcome::Unchanged) => {}
                Err(e) => failed.push(format!("{}: {e}", w.id())),
            }
        }
    }

    // InPlace: tell the consuming pods (hook into crate::inplace).
    let mut progress = InPlaceProgress::default();
    let mut follow_up = None;
    let mut propagated = None;
    if resolution.problem.is_none() && dso.spec.strategy() == RefreshStrategy::InPlace {
        match crate::inplace::tell_pods(ctx, &ns, &name, &resolution.following).await {
            Ok(t) => {
                follow_up = if t.told > 0 {
                    Some(IN_PLACE_FOLLOW_UP)
                } else if t.status.stale > 0 {
                    Some(IN_PLACE_STALE_RECHECK)
                } else {
                    None
                };
                let (propagation, took) = crate::propagation::advance(
                    previous.propagation.as_ref(),
                    &crate::inplace::desired_hash(&resolution.following),
                    &t.standings,
                    &now(),
                );
                propagated = took;
                progress = InPlaceProgress {
                    in_place: Some(t.status),
                    propagation: Some(propagation),
                };
            }
            Err(e) => {
                failed.push(format!("pods: {e}"));
                progress = InPlaceProgress::recorded(&previous);
            }
        }
    } else if dso.spec.strategy() == RefreshStrategy::InPlace {
        progress = InPlaceProgress::recorded(&previous);
    }

    // The health of the rollouts DSO started for the consumers (after acting: one just started
    // is going).
    let degraded = rollout.then(|| {
        let (bad, keep_previous) = judge(ctx, &consumers, &previous, &mut sooner);
        coalesce::degraded_condition(
            &previous.conditions,
            &bad,
            keep_previous,
            dso.metadata.generation,
            now(),
        )
    });

    let rotations = domain::rotations(&previous.secrets, &resolution.secrets);
    let next_run = if rollout && !rotations.is_empty() {
        next_run_consumers(ctx.client.clone(), &ns, &name).await
    } else {
        Vec::new()
    };
    // Status records the new versions even when a rollout failed: the Rotated event is then
    // published once, and the failed workloads are retried after backoff all the same (the
    // rollout decision reads the workloads, not this status). A rollout started after the
    // rotation was recorded (it waited for the versions to settle, a slot, or a rollout in
    // progress) joins that rotation's list.
    // A rollout another DsoSecret's reconcile started for this one's rotation too counts as
    // this one's (coalesced rotations: one rollout, credited to each).
    let credited: Vec<String> = rolled.iter().chain(&covered).cloned().collect();
    let last_rotation = if !rotations.is_empty() {
        Some(RotationStatus {
            at: now(),
            workloads: credited.clone(),
            next_run: next_run.clone(),
        })
    } else if !rolled.is_empty() || (!covered.is_empty() && previous.last_rotation.is_some()) {
        let mut r = previous.last_rotation.clone().unwrap_or(RotationStatus {
            at: now(),
            workloads: Vec::new(),
            next_run: Vec::new(),
        });
        for id in &credited {
            if !r.workloads.contains(id) {
                r.workloads.push(id.clone());
            }
        }
        Some(r)
    } else {
        previous.last_rotation.clone()
    };
    let stale_before = previous.in_place.as_ref().and_then(|s| s.message.clone());
    let stale_now = progress.in_place.as_ref().and_then(|s| s.message.clone());
    let written = write_status(
        ctx,
        dso,
        &ns,
        &previous,
        &resolution,
        Consumers {
            last_rotation,
            progress,
            degraded: degraded.clone(),
        },
    )
    .await;
    if written.is_ok() {
        announce_health(ctx, dso, &previous, degraded.as_ref()).await;
    }
    if let Some(took) = propagated.filter(|_| written.is_ok()) {
        // Observed once: the status now records the completion.
        ctx.metrics.propagated(took);
        info!(
            seconds = took.as_secs(),
            "rotation reached every consuming pod"
        );
    }
    if let Some(why) = stale_now.filter(|m| Some(m) != stale_before.as_ref()) {
        publish(
            ctx,
            dso,
            EventType::Warning,
            "RefreshFailed",
            "InPlaceRefresh",
            why,
            None,
        )
        .await;
    }
    if !rotations.is_empty() && written.is_ok() {
        ctx.metrics.rotated(rotations.len());
        let what = rotations
            .iter()
            .map(|r| format!("{} {}: {} -> {}", r.secret_id, r.stage, r.from, r.to))
            .collect::<Vec<_>>()
            .join(", ");
        let note = rotation_note(
            &what,
            dso.spec.strategy(),
            resolution.problem.is_none(),
            &credited,
            &deferred,
            &held,
            &next_run,
        );
        info!(rotations = %what, rolled = ?rolled, covered = ?covered, "secret rotated");
        publish(
            ctx,
            dso,
            EventType::Normal,
            "Rotated",
            "DetectRotation",
            note,
            None,
        )
        .await;
    }
    for id in &rolled {
        publish(
            ctx,
            dso,
            EventType::Normal,
            "RolledOut",
            "Rollout",
            format!("restarted {id}: a consumed secret version changed"),
            None,
        )
        .await;
    }
    written?;
    if !failed.is_empty() {
        let first = failed[0].clone();
        publish(
            ctx,
            dso,
            EventType::Warning,
            "RolloutFailed",
            "Rollout",
            failed.join("; "),
            None,
        )
        .await;
        return Err(Error::Rollout {
            failed: failed.len(),
            first,
        });
    }
    if resolution.transient
        && let Some((_, message)) = &resolution.problem
    {
        return Err(Error::AwsTransient(crate::aws::AwsProblem {
            kind: domain::ProblemKind::Transient,
            message: message.clone(),
        }));
    }
    let mut next = interval;
    if !deferred.is_empty() {
        debug!(deferred = ?deferred, "no rollout slot for this namespace now; retrying shortly");
        next = next.min(SLOT_RETRY);
    }
    if let Some(retry_in) = refresh_retry {
        next = next.min(retry_in);
    }
    if let Some(soon) = soonest {
        // Held rollouts, rollouts going or degraded: look again soon (no AWS call: the cache
        // answers until the interval has passed).
        next = next.min(soon);
    }
    if let Some(follow_up) = follow_up {
        // Pods just told, or stale: look again to count them (no AWS call: the cache answers
        // until the interval has passed).
        next = next.min(follow_up);
    }
    Ok(requeue_after(next))
}

/// Judges the rollouts DSO started for `consumers` ([`coalesce::health`]): the degraded ones
/// (workload, why, detail), and whether a previous `Degraded=True` stays because a workload it
/// names has a rollout this replica did not start and cannot time (after a restart or a
/// leader change) that is still incomplete. Asks `sooner` for the next look while a rollout is
/// going or degraded.
fn judge(
    ctx: &Context,
    consumers: &[Workload],
    previous: &DsoSecretStatus,
    sooner: &mut impl FnMut(Duration),
) -> (Vec<(String, coalesce::Degraded, String)>, bool) {
    let now = Instant::now();
    let mut bad = Vec::new();
    let previous_message = previous
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded" && c.status == "True")
        .map(|c| c.message.as_str());
    let mut keep_previous = false;
    for w in consumers {
        let key = (w.namespace.clone(), w.id());
        let started = ctx.tracker.get(&key).started;
        if started.is_none()
            && previous_message.is_some_and(|m| m.contains(&format!("{}: ", w.id())))
            && w.template_hash().is_some()
            && !rollout_complete(&w.progress)
        {
            keep_previous = true;
            sooner(DEGRADED_RECHECK);
        }
        match ctx.tracker.health(
            &key,
            w.template_hash(),
            w.template_digest.as_deref(),
            &w.progress,
            now,
            ctx.settings.rollout_timeout,
        ) {
            Health::Settled => {}
            Health::Going { left } => sooner(left.min(coalesce::RECHECK)),
            Health::Degraded { why, detail } => {
                sooner(DEGRADED_RECHECK);
                bad.push((w.id(), why, detail));
            }
        }
    }
    (bad, keep_previous)
}

/// An event when the `Degraded` condition changes status or reason: a Warning naming the
/// workloads when it turns True, a Normal one when it clears.
async fn announce_health(
    ctx: &Context,
    dso: &DsoSecret,
    previous: &DsoSecretStatus,
    now: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
) {
    let Some(now) = now else { return };
    let before = previous.conditions.iter().find(|c| c.type_ == "Degraded");
    let same = before.is_some_and(|b| b.status == now.status && b.reason == now.reason);
    // A first condition that says all is well is not news.
    if same || (before.is_none() && now.status != "True") {
        return;
    }
    if now.status == "True" {
        warn!(reason = %now.reason, message = %now.message, "degraded");
        publish(
            ctx,
            dso,
            EventType::Warning,
            &now.reason,
            "Rollout",
            now.message.clone(),
            None,
        )
        .await;
    } else {
        info!("no longer degraded");
        publish(
            ctx,
            dso,
            EventType::Normal,
            &now.reason,
            "Rollout",
            now.message.clone(),
            None,
        )
        .await;
    }
}

/// Jobs or CronJobs asked for per page when listing them for `nextRun`.
const LIST_PAGE: u32 = 500;

/// The names `keep` gives for the objects of `api`, read in pages of [`LIST_PAGE`]: a namespace
/// with thousands of Jobs is not one big answer, nor all held at once. (Not `match_any`: kube
/// drops `resourceVersion=0` from a list with a limit, since an API server answers it in full;
/// Kubernetes 1.34+ serves the pages of a consistent list from its watch cache.)
async fn list_kept<K>(
    api: &Api<K>,
    keep: impl Fn(&K) -> Option<String>,
) -> kube::Result<Vec<String>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(LIST_PAGE);
    loop {
        let page = api.list(&params).await?;
        out.extend(page.items.iter().filter_map(&keep));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            // The next pages come from the snapshot the token names.
            Some(token) => {
                params = ListParams::default()
                    .limit(LIST_PAGE)
                    .continue_token(&token)
            }
            None => return Ok(out),
        }
    }
}

/// The Jobs and CronJobs of `namespace` whose pod template consumes the DsoSecret `name`, as
/// Kind/name: never rolled, their next pods get the new versions. Jobs a CronJob owns, and
/// finished Jobs, are left out. Listed once per rotation; a failure to list is logged only.
async fn next_run_consumers(client: Client, namespace: &str, name: &str) -> Vec<String> {
    let consumes = |t: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>| {
        domain::consumed_names(
            t.and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref()),
        )
        .iter()
        .any(|n| n == name)
    };
    let mut out = Vec::new();
    let cronjobs = Api::<CronJob>::namespaced(client.clone(), namespace);
    match list_kept(&cronjobs, |c| {
        consumes(c.spec.job_template.spec.as_ref().map(|j| &j.template))
            .then(|| format!("CronJob/{}", c.name_any()))
    })
    .await
    {
        Ok(names) => out.extend(names),
        Err(e) => warn!(error = %e, "could not list CronJobs (status.lastRotation.nextRun)"),
    }
    let jobs = Api::<Job>::namespaced(client, namespace);
    let job = |j: &Job| {
        let owned = j.owner_references().iter().any(|o| o.kind == "CronJob");
        let finished = j
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
            });
        (!owned && !finished && consumes(j.spec.as_ref().map(|s| &s.template)))
            .then(|| format!("Job/{}", j.name_any()))
    };
    match list_kept(&jobs, job).await {
        Ok(names) => out.extend(names),
        Err(e) => warn!(error = %e, "could not list Jobs (status.lastRotation.nextRun)"),
    }
    out
}

/// `30s`, `5m`, `1h`: a duration as the flags spell it.
fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The note of the Rotated event: what rotated and what was done about it.
fn rotation_note(
    what: &str,
    strategy: RefreshStrategy,
    ready: bool,
    rolled: &[String],
    deferred: &[String],
    held: &[(String, Wait)],
    next_run: &[String],
) -> String {
    let mut note = if strategy == RefreshStrategy::Rollout
        && ready
        && rolled.is_empty()
        && deferred.is_empty()
        && !held.is_empty()
    {
        what.to_string()
    } else {
        rollout_note(what, strategy, ready, rolled, deferred)
    };
    let ids = |why: Wait| {
        held.iter()
            .filter(|(_, w)| *w == why)
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let settling = ids(Wait::Settling);
    if !settling.is_empty() {
        note.push_str(&format!(
            "; rolling once the versions settle (no other change for --rollout-settle): {settling}"
        ));
    }
    let rolling = ids(Wait::Rolling);
    if !rolling.is_empty() {
        note.push_str(&format!(
            "; rolling once the rollout in progress ends: {rolling}"
        ));
    }
    if !next_run.is_empty() {
        note.push_str(&format!(
            "; never restarted, their next run gets the new versions: {}",
            next_run.join(", ")
        ));
    }
    note
}

fn rollout_note(
    what: &str,
    strategy: RefreshStrategy,
    ready: bool,
    rolled: &[String],
    deferred: &[String],
) -> String {
    match strategy {
        RefreshStrategy::None => format!("{what}; strategy None: nothing restarted"),
        RefreshStrategy::InPlace if !ready => format!("{what}; pods not told: DsoSecret not Ready"),
        RefreshStrategy::InPlace => {
            format!("{what}; strategy InPlace: consuming pods told to swap their files")
        }
        RefreshStrategy::Rollout if !ready => format!("{what}; not rolled: DsoSecret not Ready"),
        RefreshStrategy::Rollout if rolled.is_empty() && deferred.is_empty() => {
            format!("{what}; no consuming workload needed a restart")
        }
        RefreshStrategy::Rollout if deferred.is_empty() => {
            format!("{what}; rolling {}", rolled.join(", "))
        }
        RefreshStrategy::Rollout => format!(
            "{what}; rolling {}; waiting for a rollout slot: {}",
            if rolled.is_empty() {
                "none yet".to_string()
            } else {
                rolled.join(", ")
            },
            deferred.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_failure_up_to_the_cap_with_jitter() {
        let s = Settings {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            rollout_timeout: Duration::from_secs(300),
            rollout_settle: Duration::from_secs(2),
            allowlist: Default::default(),
            refresh_min_interval: Duration::from_secs(30),
            max_concurrent_rollouts: 4,
            detection: Detection::default(),
        };
        let full = [1, 2, 4, 8, 16, 32, 60, 60].map(Duration::from_secs);
        for (n, full) in (1..).zip(full) {
            let d = backoff(&s, n);
            assert!(d >= full / 2 && d <= full, "failure {n}: {d:?}");
        }
        assert!(backoff(&s, u32::MAX) <= Duration::from_secs(60));
    }

    #[test]
    fn a_refresh_value_is_forced_at_most_once_per_minimum_interval() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let min = Duration::from_secs(30);
        let fresh = RefreshState::default();
        assert_eq!(refresh_gate(&fresh, None, t0, min), RefreshGate::Usual);
        assert_eq!(refresh_gate(&fresh, Some("1"), t0, min), RefreshGate::Force);
        let handled = RefreshState {
            handled: Some("1".into()),
            forced_at: Some(t0),
            refused: None,
        };
        assert_eq!(
            refresh_gate(&handled, Some("1"), at(1), min),
            RefreshGate::Usual,
            "a value is handled once"
        );
        assert_eq!(
            refresh_gate(&handled, Some("2"), at(10), min),
            RefreshGate::TooSoon {
                retry_in: Duration::from_secs(20),
                first: true
            }
        );
        let refused = RefreshState {
            refused: Some("2".into()),
            ..handled.clone()
        };
        assert_eq!(
            refresh_gate(&refused, Some("2"), at(25), min),
            RefreshGate::TooSoon {
                retry_in: Duration::from_secs(5),
                first: false
            },
            "one event per refused value"
        );
        assert_eq!(
            refresh_gate(&refused, Some("2"), at(30), min),
            RefreshGate::Force
        );
    }

    #[test]
    fn periodic_requeues_are_spread_but_never_later_than_their_period() {
        let period = Duration::from_secs(60);
        let delays: HashSet<Duration> = (0..50)
            .map(|_| dso_api::backoff::spread(period, 0.1, fastrand::u64(..)))
            .collect();
        assert!(delays.len() > 1, "jittered");
        assert!(
            delays
                .iter()
                .all(|d| *d <= period && *d >= Duration::from_secs(54))
        );
        assert_eq!(humanize(Duration::from_secs(30)), "30s");
        assert_eq!(humanize(Duration::from_secs(300)), "5m");
    }

    #[test]
    fn maps_forget_deleted_dsosecrets_once_they_outgrow_the_live_set() {
        let mut map: HashMap<u32, ()> = (0..64).map(|k| (k, ())).collect();
        sweep(&mut map, 0, || panic!("not swept while small"));
        map.extend((64..200).map(|k| (k, ())));
        sweep(&mut map, 10, || (0..10).collect());
        let mut left: Vec<u32> = map.into_keys().collect();
        left.sort_unstable();
        assert_eq!(left, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn the_rotated_event_says_what_was_done_and_why() {
        let w = |ids: &[&str]| ids.iter().map(ToString::to_string).collect::<Vec<_>>();
        let note = |strategy, ready, rolled: &[&str], deferred: &[&str]| {
            rotation_note(
                "db AWSCURRENT: v1 -> v2",
                strategy,
                ready,
                &w(rolled),
                &w(deferred),
                &[],
                &[],
            )
        };
        let r = RefreshStrategy::Rollout;
        assert!(note(r, false, &[], &[]).ends_with("; not rolled: DsoSecret not Ready"));
        assert!(note(r, true, &[], &[]).ends_with("; no consuming workload needed a restart"));
        assert!(note(r, true, &["Deployment/web"], &[]).ends_with("; rolling Deployment/web"));
        assert!(
            note(r, true, &[], &["Deployment/web"])
                .ends_with("; rolling none yet; waiting for a rollout slot: Deployment/web")
        );
        assert!(
            note(RefreshStrategy::None, true, &[], &[])
                .ends_with("; strategy None: nothing restarted")
        );
        let held = rotation_note(
            "db AWSCURRENT: v1 -> v2",
            r,
            true,
            &[],
            &[],
            &[
                ("Deployment/web".into(), Wait::Settling),
                ("Deployment/api".into(), Wait::Rolling),
            ],
            &w(&["CronJob/backup"]),
        );
        assert_eq!(
            held,
            "db AWSCURRENT: v1 -> v2; rolling once the versions settle (no other change for \
             --rollout-settle): Deployment/web; rolling once the rollout in progress ends: \
             Deployment/api; never restarted, their next run gets the new versions: CronJob/backup"
        );
    }
}

#[cfg(test)]
mod next_run_tests {
    use super::*;
    use kube::client::Body;

    #[tokio::test]
    async fn every_page_of_jobs_is_read() {
        let queries = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = queries.clone();
        let service = tower::service_fn(move |req: http::Request<Body>| {
            let seen = seen.clone();
            async move {
                let uri = req.uri().clone();
                let query = uri.query().unwrap_or_default().to_string();
                let job = |name: &str| {
                    serde_json::json!({"metadata": {"name": name}, "spec": {"template": {
                        "metadata": {"annotations": {"dso.dev/inject": "true", "dso.dev/secrets": "db"}}
                    }}})
                };
                let body = if uri.path().ends_with("/cronjobs") {
                    serde_json::json!({"apiVersion": "batch/v1", "kind": "CronJobList", "metadata": {}, "items": []})
                } else if query.contains("continue=p2") {
                    seen.lock().expect("lock").push(query);
                    serde_json::json!({"apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": [job("b")]})
                } else {
                    seen.lock().expect("lock").push(query);
                    serde_json::json!({"apiVersion": "batch/v1", "kind": "JobList",
                        "metadata": {"continue": "p2"}, "items": [job("a")]})
                };
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    http::Response::builder()
                        .status(200)
                        .body(Body::from(serde_json::to_vec(&body)?))?,
                )
            }
        });
        let client = Client::new(service, "default");
        let found = next_run_consumers(client, "shop", "db").await;
        assert_eq!(found, ["Job/a", "Job/b"], "both pages");
        let queries = queries.lock().expect("lock").clone();
        assert_eq!(queries.len(), 2, "{queries:?}");
        assert!(
            queries[0].contains("limit=500") && !queries[0].contains("continue"),
            "pages of 500: {}",
            queries[0]
        );
        assert!(queries[1].contains("limit=500"), "{}", queries[1]);
    }
}
