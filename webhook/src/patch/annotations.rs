//! Reading the pod's annotations: which DsoSecrets, where to mount them, in which containers.

use crate::error::{Error, Result};
use dso_api::annotations as ann;
use k8s_openapi::api::core::v1::PodSpec;
use std::collections::BTreeMap;

/// What the pod asks for.
pub(super) struct Wanted {
    /// DsoSecret names, in the annotation's order, without duplicates.
    pub names: Vec<String>,
    /// Where the volume is mounted, without a trailing `/`.
    pub mount_path: String,
    /// Indexes of the regular containers that get the mount, ascending.
    pub selected: Vec<usize>,
}

/// Reads and checks `dso.dev/secrets`, `dso.dev/mount-path` and `dso.dev/containers`.
pub(super) fn wanted(
    spec: &PodSpec,
    annotations: &BTreeMap<String, String>,
    default_mount_path: &str,
) -> Result<Wanted> {
    let names = parse_secret_names(annotations.get(ann::SECRETS))?;
    let mount_path = mount_path(annotations.get(ann::MOUNT_PATH), default_mount_path)?;
    let selected = select_containers(spec, annotations.get(ann::CONTAINERS))?;
    for &i in &selected {
        let c = &spec.containers[i];
        if let Some(m) = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| is_within(&m.mount_path, &mount_path))
        {
            return Err(Error::MountCollision {
                container: c.name.clone(),
                volume: m.name.clone(),
                existing: m.mount_path.clone(),
                mount_path,
            });
        }
    }
    Ok(Wanted {
        names,
        mount_path,
        selected,
    })
}

/// Checks a mount path: absolute, no `.`/`..`/empty segments, not `/`.
pub fn check_mount_path(path: &str) -> std::result::Result<(), String> {
    let trimmed = path.trim_end_matches('/');
    if !path.starts_with('/') {
        return Err(format!(
            "{path:?} must be an absolute path such as /run/secrets/dso"
        ));
    }
    if trimmed.is_empty() {
        return Err(
            "\"/\" cannot be the mount path: pick a directory such as /run/secrets/dso".into(),
        );
    }
    for seg in trimmed[1..].split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!(
                "{path:?} must not contain '..', '.' or empty segments"
            ));
        }
        if seg.chars().any(|c| c.is_control() || c == ':') {
            return Err(format!("{path:?} contains a control character or ':'"));
        }
    }
    Ok(())
}

/// The annotated mount path, else the default; never overlapping the IRSA token directory.
fn mount_path(annotated: Option<&String>, default: &str) -> Result<String> {
    let malformed = |message: String| Error::MalformedAnnotation {
        key: ann::MOUNT_PATH,
        message,
    };
    let mount_path = match annotated {
        Some(p) => {
            check_mount_path(p.trim()).map_err(malformed)?;
            p.trim().trim_end_matches('/').to_string()
        }
        None => default.to_string(),
    };
    if is_within(&mount_path, ann::TOKEN_MOUNT_PATH)
        || is_within(ann::TOKEN_MOUNT_PATH, &mount_path)
    {
        return Err(malformed(format!(
            "{mount_path:?} overlaps {}, where DSO mounts the IRSA token: pick another directory",
            ann::TOKEN_MOUNT_PATH
        )));
    }
    Ok(mount_path)
}

/// True when `inner` is `outer` or lies below it.
fn is_within(inner: &str, outer: &str) -> bool {
    let (inner, outer) = (inner.trim_end_matches('/'), outer.trim_end_matches('/'));
    inner == outer
        || (inner.starts_with(outer) && inner.as_bytes().get(outer.len()) == Some(&b'/'))
        || outer.is_empty()
}

/// A DNS-1123 subdomain, the form of every object name.
fn is_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn parse_secret_names(value: Option<&String>) -> Result<Vec<String>> {
    let malformed = |message: String| Error::MalformedAnnotation {
        key: ann::SECRETS,
        message,
    };
    let value = value.ok_or_else(|| {
        malformed("missing: list the DsoSecrets to mount, such as \"db,api\"".into())
    })?;
    let items = ann::split_list(value);
    if items.is_empty() {
        return Err(malformed(
            "empty: list the DsoSecrets to mount, such as \"db,api\"".into(),
        ));
    }
    let mut names: Vec<String> = Vec::new();
    for item in items {
        if item.contains('/') {
            return Err(Error::OtherNamespace {
                reference: item.to_string(),
            });
        }
        if !is_object_name(item) {
            return Err(malformed(format!(
                "{item:?} is not a DsoSecret name (lowercase letters, digits, '-' and '.')"
            )));
        }
        if !names.iter().any(|n| n == item) {
            names.push(item.to_string());
        }
    }
    Ok(names)
}

fn select_containers(spec: &PodSpec, value: Option<&String>) -> Result<Vec<usize>> {
    let Some(value) = value else {
        return Ok((0..spec.containers.len()).collect());
    };
    let wanted = ann::split_list(value);
    if wanted.is_empty() {
        return Err(Error::MalformedAnnotation {
            key: ann::CONTAINERS,
            message: "empty: name the containers that get the mount, or remove the annotation to mount it in all of them".into(),
        });
    }
    let mut picked = Vec::new();
    for name in wanted {
        match spec.containers.iter().position(|c| c.name == name) {
            Some(i) => {
                if !picked.contains(&i) {
                    picked.push(i);
                }
            }
            None => {
                return Err(Error::UnknownContainer {
                    name: name.to_string(),
                    available: spec
                        .containers
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
    }
    picked.sort_unstable();
    Ok(picked)
}
