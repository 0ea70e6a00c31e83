//! Mounts of DSO's reserved volumes that DSO did not add. DSO adds the `dso-secrets` volume
//! (and, for IRSA, the `dso-aws-iam-token` token volume) itself; a mount of either already in
//! the pod would hand a container the secrets read-write, or dso-init's AWS token. Refused in
//! every init, regular and ephemeral container, except, in a pod injected before, the mounts
//! DSO added: dso-init's and the dso-refresh sidecar's, and the read-only `dso-secrets` mounts of regular containers.

use crate::error::{Error, Result};
use dso_api::annotations as ann;
use k8s_openapi::api::core::v1::{PodSpec, VolumeMount};

/// Volume names only DSO may mount.
pub const RESERVED_VOLUMES: [&str; 4] = [
    ann::VOLUME_NAME,
    ann::TOKEN_VOLUME_NAME,
    ann::CA_BUNDLE_VOLUME_NAME,
    ann::REFRESH_VOLUME_NAME,
];

/// Refuses a mount of a reserved volume DSO did not add. `injected`: the pod carries a
/// previous injection (see `previous`).
pub(super) fn check_mounts(spec: &PodSpec, injected: bool) -> Result<()> {
    let is_ours = |kind: Kind, container: &str, m: &VolumeMount| {
        injected
            && match kind {
                Kind::Init => {
                    container == ann::INIT_CONTAINER_NAME
                        || container == ann::REFRESH_CONTAINER_NAME
                }
                Kind::Regular => m.name == ann::VOLUME_NAME && m.read_only == Some(true),
                Kind::Ephemeral => false,
            }
    };
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| (Kind::Init, c.name.as_str(), c.volume_mounts.as_deref()))
        .chain(
            spec.containers
                .iter()
                .map(|c| (Kind::Regular, c.name.as_str(), c.volume_mounts.as_deref())),
        )
        .chain(
            spec.ephemeral_containers
                .iter()
                .flatten()
                .map(|c| (Kind::Ephemeral, c.name.as_str(), c.volume_mounts.as_deref())),
        );
    for (kind, container, mounts) in containers {
        for m in mounts.unwrap_or_default() {
            if RESERVED_VOLUMES.contains(&m.name.as_str()) && !is_ours(kind, container, m) {
                return Err(Error::ReservedMount {
                    container: container.to_string(),
                    kind: kind.as_str(),
                    volume: m.name.clone(),
                });
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    Init,
    Regular,
    Ephemeral,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Init => "init container",
            Kind::Regular => "container",
            Kind::Ephemeral => "ephemeral container",
        }
    }
}
