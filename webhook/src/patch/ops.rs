//! The JSON patch: as few operations as the pod's shape allows. An array the pod lacks is
//! added whole in one operation; into an existing one each new element is appended (JSON
//! Patch adds one value per operation).

use dso_api::annotations as ann;
use json_patch::{AddOperation, PatchOperation, ReplaceOperation};
use jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::{Container, PodSpec, Volume, VolumeMount};
use serde_json::{Value, json};

/// What the injection adds, turned into operations on a pod of shape `spec`.
pub(super) struct Additions<'a> {
    /// The value of the `dso.dev/injected` annotation.
    pub injected: String,
    pub volumes: &'a [Volume],
    pub init: &'a Container,
    /// The `dso-refresh` sidecar, right after `init`, when a DsoSecret is `InPlace`.
    pub sidecar: Option<&'a Container>,
    /// The read-only mount for the selected containers.
    pub mount: VolumeMount,
    /// Indexes of the regular containers that get `mount`.
    pub selected: &'a [usize],
    /// Env entries to replace (`dso://` references).
    pub env: &'a [super::env::Rewrite],
    pub fs_group: Option<i64>,
    /// Add `shareProcessNamespace: true` (`refresh.signal`).
    pub share_process_namespace: bool,
}

pub(super) fn operations(spec: &PodSpec, a: &Additions<'_>) -> Vec<PatchOperation> {
    let mut ops = Vec::new();
    ops.push(add(
        ptr(["metadata", "annotations", ann::INJECTED]),
        Value::String(a.injected.clone()),
    ));
    append(
        &mut ops,
        &["spec", "volumes"],
        spec.volumes.is_some(),
        a.volumes.iter().map(to_value).collect(),
    );
    // dso-init first, then the sidecar: init containers start in order, so the sidecar starts
    // once the files are there, and before the pod's own init containers.
    if spec.init_containers.is_some() {
        ops.push(add(ptr(["spec", "initContainers", "0"]), to_value(a.init)));
        if let Some(sidecar) = a.sidecar {
            ops.push(add(ptr(["spec", "initContainers", "1"]), to_value(sidecar)));
        }
    } else {
        let mut list = vec![to_value(a.init)];
        list.extend(a.sidecar.map(to_value));
        ops.push(add(ptr(["spec", "initContainers"]), Value::Array(list)));
    }
    let mount = to_value(&a.mount);
    for &i in a.selected {
        let index = i.to_string();
        append(
            &mut ops,
            &["spec", "containers", &index, "volumeMounts"],
            spec.containers[i].volume_mounts.is_some(),
            vec![mount.clone()],
        );
    }
    for (i, j, var) in a.env {
        ops.push(PatchOperation::Replace(ReplaceOperation {
            path: ptr(["spec", "containers", &i.to_string(), "env", &j.to_string()]),
            value: to_value(var),
        }));
    }
    if a.share_process_namespace {
        ops.push(add(
            ptr(["spec", "shareProcessNamespace"]),
            Value::Bool(true),
        ));
    }
    if let Some(group) = a.fs_group {
        match &spec.security_context {
            None => ops.push(add(
                ptr(["spec", "securityContext"]),
                json!({"fsGroup": group}),
            )),
            Some(sc) if sc.fs_group.is_none() => ops.push(add(
                ptr(["spec", "securityContext", "fsGroup"]),
                json!(group),
            )),
            Some(_) => {}
        }
    }
    ops
}

fn ptr<I, T>(tokens: I) -> PointerBuf
where
    I: IntoIterator<Item = T>,
    T: AsRef<str>,
{
    let owned: Vec<String> = tokens.into_iter().map(|t| t.as_ref().to_string()).collect();
    PointerBuf::from_tokens(owned.iter())
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

/// Appends `items` to the array at `base`, creating it when the pod has none.
fn append(ops: &mut Vec<PatchOperation>, base: &[&str], exists: bool, items: Vec<Value>) {
    if items.is_empty() {
        return;
    }
    if exists {
        for item in items {
            ops.push(add(ptr(base.iter().copied().chain(["-"])), item));
        }
    } else {
        ops.push(add(ptr(base.iter().copied()), Value::Array(items)));
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    // Serializing k8s-openapi types into a Value cannot fail (string keys, no custom errors).
    serde_json::to_value(v).unwrap_or(Value::Null)
}
