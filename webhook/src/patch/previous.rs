//! What a previous injection left behind: all three of the `dso.dev/injected` annotation, the
//! volume and the init container mean "already injected". The annotation alone (copied from a
//! live pod into a template) is overwritten by a new injection; some but not all of them is a
//! copied, incomplete injection; the volume or container without the annotation is a name
//! collision.

use crate::error::{Error, Result};
use dso_api::annotations as ann;
use k8s_openapi::api::core::v1::PodSpec;
use std::collections::BTreeMap;

/// `Ok(true)`: injected before, leave the pod alone. `Ok(false)`: inject. `Err`: refuse.
pub(super) fn already_injected(
    spec: &PodSpec,
    annotations: &BTreeMap<String, String>,
) -> Result<bool> {
    let has_volume = |n: &str| spec.volumes.iter().flatten().any(|v| v.name == n);
    let init_named = spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.name == ann::INIT_CONTAINER_NAME);
    let marks = [
        (
            annotations.contains_key(ann::INJECTED),
            format!("the annotation {}", ann::INJECTED),
        ),
        (
            has_volume(ann::VOLUME_NAME),
            format!("the volume {:?}", ann::VOLUME_NAME),
        ),
        (
            init_named,
            format!("the init container {:?}", ann::INIT_CONTAINER_NAME),
        ),
    ];
    if marks.iter().all(|(present, _)| *present) {
        return Ok(true);
    }
    let present = |want: bool| {
        marks
            .iter()
            .filter(|(p, _)| *p == want)
            .map(|(_, what)| what.as_str())
            .collect::<Vec<_>>()
            .join(" and ")
    };
    if marks.iter().filter(|(p, _)| *p).count() >= 2 {
        return Err(Error::PartlyInjected {
            present: present(true),
            missing: present(false),
        });
    }
    let mut reserved = Vec::new();
    if has_volume(ann::VOLUME_NAME) {
        reserved.push(format!("a volume named {:?}", ann::VOLUME_NAME));
    }
    for name in [ann::TOKEN_VOLUME_NAME, ann::CA_BUNDLE_VOLUME_NAME] {
        if has_volume(name) {
            reserved.push(format!("a volume named {name:?}"));
        }
    }
    if init_named
        || spec
            .containers
            .iter()
            .any(|c| c.name == ann::INIT_CONTAINER_NAME)
    {
        reserved.push(format!("a container named {:?}", ann::INIT_CONTAINER_NAME));
    }
    if !reserved.is_empty() {
        return Err(Error::ReservedName {
            what: reserved.join(" and "),
        });
    }
    Ok(false)
}
