//! `refresh.signal`: which container the `dso-refresh` sidecar signals after a swap, and what
//! the pod needs for that to work.
//!
//! - The target is the container named by `dso.dev/signal-container`, else the first container
//!   that gets the mount; it must be one that gets the mount (it reads the files).
//! - The pod gets `shareProcessNamespace: true` (the sidecar must see the app's process). A pod
//!   that sets `shareProcessNamespace: false` is refused: it asked for the isolation that a
//!   signal would undo, and DSO does not overrule it silently. A pod with `hostPID: true` is
//!   refused too: the API server rejects `hostPID` together with `shareProcessNamespace`, so
//!   the pod could not be created (and the sidecar would see the node's processes).
//! - DSO's containers (dso-init and dso-refresh, which writes where dso-init did) run as the
//!   target's user: `kill(2)` needs the same user or `CAP_KILL`, and Pod Security `restricted`
//!   allows no capability but `NET_BIND_SERVICE` (and the kubelet does not give added
//!   capabilities to a non-root process anyway). The user must be known at admission (the
//!   container's or the pod's `runAsUser`) and not root.
//!
//! The annotation is checked whenever present (a typo is refused), and used only when a
//! DsoSecret the pod mounts asks for a signal.

use crate::error::{Error, Result};
use dso_api::DsoSecret;
use dso_api::annotations as ann;
use dso_api::contract::PlanSignal;
use k8s_openapi::api::core::v1::PodSpec;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the injection does for signals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Signalling {
    pub target: PlanSignal,
    /// The user DSO's containers run as: the target's.
    pub run_as_user: i64,
    /// The pod needs `shareProcessNamespace: true` added (it does not set it yet).
    pub share_process_namespace: bool,
}

/// The container index named by `dso.dev/signal-container`, checked to exist.
pub(super) fn annotated_target(
    spec: &PodSpec,
    annotations: &BTreeMap<String, String>,
) -> Result<Option<usize>> {
    let Some(value) = annotations.get(ann::SIGNAL_CONTAINER) else {
        return Ok(None);
    };
    let name = value.trim();
    if name.is_empty() {
        return Err(Error::MalformedAnnotation {
            key: ann::SIGNAL_CONTAINER,
            message: "empty: name the container whose main process gets the signal, or remove the annotation to signal the first container that mounts the secrets".into(),
        });
    }
    match spec.containers.iter().position(|c| c.name == name) {
        Some(i) => Ok(Some(i)),
        None => Err(Error::MalformedAnnotation {
            key: ann::SIGNAL_CONTAINER,
            message: format!(
                "names {name:?}, but the pod has no such container (its containers: {})",
                spec.containers
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// `None` when no DsoSecret of the pod asks for a signal; else the target and what the pod
/// needs, or a denial naming what prevents it.
pub(super) fn plan(
    spec: &PodSpec,
    secrets: &[(String, Arc<DsoSecret>)],
    annotated: Option<usize>,
    selected: &[usize],
) -> Result<Option<Signalling>> {
    let Some((asker, signal)) = secrets
        .iter()
        .find_map(|(name, s)| s.spec.signal().map(|sig| (name.as_str(), sig)))
    else {
        return Ok(None);
    };
    let refuse = |problem: String| Error::Signal {
        dso_secret: asker.to_string(),
        signal: signal.name(),
        problem,
    };
    let Some(&first) = selected.first() else {
        return Err(refuse("no container mounts the secrets".into()));
    };
    let index = annotated.unwrap_or(first);
    let container = &spec.containers[index];
    if !selected.contains(&index) {
        return Err(refuse(format!(
            "dso.dev/signal-container names {:?}, which does not mount the secrets (see dso.dev/containers): signal a container that reads the files",
            container.name
        )));
    }
    if spec.share_process_namespace == Some(false) {
        return Err(refuse(
            "the pod sets shareProcessNamespace: false, and the sidecar can reach the app's process only in a shared process namespace: remove the field (DSO sets it to true) or remove refresh.signal".into(),
        ));
    }
    if spec.host_pid == Some(true) {
        return Err(refuse(
            "the pod sets hostPID: true, and Kubernetes refuses hostPID together with the shareProcessNamespace: true the sidecar needs to reach the app's process: remove hostPID, or remove refresh.signal (the files are still refreshed in place)".into(),
        ));
    }
    let user = container
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .or_else(|| spec.security_context.as_ref().and_then(|s| s.run_as_user));
    let run_as_user = match user {
        Some(u) if u != 0 => u,
        Some(_) => {
            return Err(refuse(format!(
                "container {:?} runs as root (runAsUser 0); DSO's containers run as the user they signal and never as root: run the app as a non-root user, or use strategy Rollout",
                container.name
            )));
        }
        None => {
            return Err(refuse(format!(
                "container {:?} sets no runAsUser (nor does the pod), and DSO's containers must run as the same user to signal it: set a non-root securityContext.runAsUser on the container or the pod",
                container.name
            )));
        }
    };
    Ok(Some(Signalling {
        target: PlanSignal {
            container: container.name.clone(),
        },
        run_as_user,
        share_process_namespace: spec.share_process_namespace != Some(true),
    }))
}
