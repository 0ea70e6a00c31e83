//! What a reconcile reports: the DsoSecret's status (written by server-side apply, only when it
//! changed) and its events (a Ready reason change, rotations, rollouts). A failure to publish
//! an event is logged, never fatal.

use crate::controller::{Context, FIELD_MANAGER, lock};
use crate::domain::{self, Reason, Resolution};
use crate::error::{Error, Result};
use dso_api::{DsoSecret, DsoSecretStatus, InPlaceStatus, PropagationStatus, RotationStatus};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Now, to the second (as condition and rotation times are written).
pub fn now() -> Time {
    let t = Timestamp::now();
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// Under `strategy: InPlace`: how far the versions reached the pods (`status.inPlace` and
/// `status.propagation`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InPlaceProgress {
    pub in_place: Option<InPlaceStatus>,
    pub propagation: Option<PropagationStatus>,
}

impl InPlaceProgress {
    /// What the previous status recorded.
    pub fn recorded(status: &DsoSecretStatus) -> Self {
        InPlaceProgress {
            in_place: status.in_place.clone(),
            propagation: status.propagation.clone(),
        }
    }
}

/// What a reconcile found besides the resolution: the status fields about the consumers.
#[derive(Clone, Debug, Default)]
pub struct Consumers {
    /// The last rotation acted on.
    pub last_rotation: Option<RotationStatus>,
    /// Under InPlace: how far the versions reached the pods.
    pub progress: InPlaceProgress,
    /// Under Rollout: the `Degraded` condition.
    pub degraded: Option<Condition>,
}

/// Writes status if it changed, and publishes an event when the Ready reason changes.
pub async fn write_status(
    ctx: &Context,
    dso: &DsoSecret,
    ns: &str,
    previous: &DsoSecretStatus,
    resolution: &Resolution,
    consumers: Consumers,
) -> Result<()> {
    let Consumers {
        last_rotation,
        progress,
        degraded,
    } = consumers;
    let reason = resolution.reason();
    let message = match &resolution.problem {
        Some((_, m)) => m.clone(),
        None => format!(
            "{} secret version(s) resolved from AWS Secrets Manager",
            resolution.secrets.len()
        ),
    };
    let condition = domain::ready_condition(
        &previous.conditions,
        reason,
        &message,
        dso.metadata.generation,
        now(),
    );
    let status = DsoSecretStatus {
        observed_generation: dso.metadata.generation,
        conditions: std::iter::once(condition).chain(degraded).collect(),
        secrets: domain::status_versions(&previous.secrets, resolution),
        last_rotation,
        in_place: progress.in_place,
        propagation: progress.propagation,
    };
    let before = previous
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.clone());
    if &status != previous {
        if !ctx.leadership.is_leading() {
            return Err(Error::NotLeader);
        }
        let api: Api<DsoSecret> = Api::namespaced(ctx.client.clone(), ns);
        let patch = json!({
            "apiVersion": DsoSecret::api_version(&()),
            "kind": DsoSecret::kind(&()),
            "status": status,
        });
        api.patch_status(
            &dso.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::kube("write DsoSecret status"))?;
        lock(&ctx.written).insert(dso.uid().unwrap_or_default(), status.clone());
        debug!(reason = reason.as_str(), "status written");
    }
    if before.as_deref() != Some(reason.as_str()) {
        let type_ = if reason == Reason::Synced {
            EventType::Normal
        } else {
            EventType::Warning
        };
        if reason == Reason::Synced {
            info!(%message, "ready");
        } else {
            warn!(reason = reason.as_str(), %message, "not ready");
        }
        publish(ctx, dso, type_, reason.as_str(), "Reconcile", message, None).await;
    }
    Ok(())
}

/// Publishes an event on the DsoSecret; a failure to publish is logged, never fatal.
pub async fn publish(
    ctx: &Context,
    dso: &DsoSecret,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    secondary: Option<ObjectReference>,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary,
    };
    ctx.events.publish(&event, &dso.object_ref(&())).await;
}

/// How long kube's `Recorder` folds a repeated event into a series (its cache's time to live).
const SERIES_TTL: Duration = Duration::from_secs(6 * 60);

/// Publishes Kubernetes events (events.k8s.io/v1) and logs a failure to.
///
/// kube's `Recorder` folds an event into the last one with the same type, reason, action,
/// regarding and related object (for six minutes) and keeps that one's note: a second
/// `RolloutSlotReleased` for another workload, or a second `Rotated` with new versions, only
/// raised a count under the first note, and what it said was lost. A `Recorder` is kept per
/// distinct note here, so an event that says something new is a new event, and the same one
/// again is still folded into a series.
#[derive(Clone)]
pub struct Events {
    client: Client,
    reporter: Reporter,
    by_note: Arc<Mutex<HashMap<String, (Recorder, Instant)>>>,
}

impl Events {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Events {
            client,
            reporter,
            by_note: Arc::default(),
        }
    }

    /// Publishes `event` on `regarding`; a failure is logged (with the reason and the object),
    /// never returned: an event is worth less than the work it reports on.
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) {
        let recorder = self.recorder_for(event.note.as_deref().unwrap_or_default(), Instant::now());
        if let Err(e) = recorder.publish(event, regarding).await {
            warn!(
                error = %e,
                reason = event.reason,
                regarding = format!(
                    "{}/{}",
                    regarding.kind.as_deref().unwrap_or_default(),
                    regarding.name.as_deref().unwrap_or_default()
                ),
                "could not publish event"
            );
        }
    }

    /// The recorder that published `note` last (within the series time to live), or a new one.
    fn recorder_for(&self, note: &str, now: Instant) -> Recorder {
        let mut by_note = lock(&self.by_note);
        by_note.retain(|_, (_, used)| now.duration_since(*used) < SERIES_TTL);
        let (recorder, used) = by_note.entry(note.to_string()).or_insert_with(|| {
            (
                Recorder::new(self.client.clone(), self.reporter.clone()),
                now,
            )
        });
        *used = now;
        recorder.clone()
    }
}

#[cfg(test)]
mod events_tests {
    use super::*;
    use kube::client::Body;

    /// (method, note) of each request.
    type Seen = Arc<Mutex<Vec<(String, String)>>>;

    /// A client whose apiserver answers every request with its own body, and what it was sent.
    fn recording_client() -> (Client, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let service = tower::service_fn(move |req: http::Request<Body>| {
            let log = log.clone();
            async move {
                let method = req.method().to_string();
                let body = req.into_body().collect_bytes().await?;
                let event: serde_json::Value = serde_json::from_slice(&body)?;
                let note = event["note"].as_str().unwrap_or_default().to_string();
                lock(&log).push((method, note));
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    http::Response::builder()
                        .status(201)
                        .body(Body::from(body.to_vec()))?,
                )
            }
        });
        (Client::new(service, "default"), seen)
    }

    fn slot_released(note: &str) -> Event {
        Event {
            type_: EventType::Warning,
            reason: "RolloutSlotReleased".into(),
            note: Some(note.into()),
            action: "Rollout".into(),
            secondary: None,
        }
    }

    #[tokio::test]
    async fn an_event_that_says_something_new_is_a_new_event_and_a_repeat_is_a_series() {
        let (client, seen) = recording_client();
        let events = Events::new(client, "dso-operator".into());
        let dso = ObjectReference {
            api_version: Some("dso.dev/v1alpha1".into()),
            kind: Some("DsoSecret".into()),
            namespace: Some("ns".into()),
            name: Some("db".into()),
            uid: Some("u1".into()),
            ..ObjectReference::default()
        };
        for note in ["Deployment/paused is paused", "Deployment/stalled stalled"] {
            events.publish(&slot_released(note), &dso).await;
        }
        events
            .publish(&slot_released("Deployment/paused is paused"), &dso)
            .await;
        assert_eq!(
            *lock(&seen),
            [
                ("POST", "Deployment/paused is paused"),
                ("POST", "Deployment/stalled stalled"),
                ("PATCH", "Deployment/paused is paused"),
            ]
            .map(|(m, n)| (m.to_string(), n.to_string()))
        );
    }

    #[test]
    fn a_note_unused_for_longer_than_a_series_lasts_is_forgotten() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        let (client, _) = recording_client();
        let events = Events::new(client, "dso-operator".into());
        let t0 = Instant::now();
        events.recorder_for("a", t0);
        events.recorder_for("b", t0 + SERIES_TTL / 2);
        assert_eq!(lock(&events.by_note).len(), 2);
        events.recorder_for("b", t0 + SERIES_TTL);
        assert_eq!(
            lock(&events.by_note).keys().collect::<Vec<_>>(),
            ["b"],
            "a is forgotten, b was used again"
        );
    }
}
