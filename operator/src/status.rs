//! What a reconcile reports: the DsoSecret's status (written by server-side apply, only when it
//! changed) and its events (a Ready reason change, rotations, rollouts). A failure to publish
//! an event is logged, never fatal.

use crate::controller::{Context, FIELD_MANAGER, lock};
use crate::domain::{self, Reason, Resolution};
use crate::error::{Error, Result};
use dso_api::{DsoSecret, DsoSecretStatus, InPlaceStatus, RotationStatus};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

/// Now, to the second (as condition and rotation times are written).
pub fn now() -> Time {
    let t = Timestamp::now();
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// What a reconcile found besides the resolution: the status fields about the consumers.
#[derive(Clone, Debug, Default)]
pub struct Consumers {
    /// The last rotation acted on.
    pub last_rotation: Option<RotationStatus>,
    /// Under InPlace: how far the versions reached the pods.
    pub in_place: Option<InPlaceStatus>,
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
        in_place,
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
        in_place,
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
    if let Err(e) = ctx.recorder.publish(&event, &dso.object_ref(&())).await {
        warn!(error = %e, reason, "could not publish event");
    }
}
