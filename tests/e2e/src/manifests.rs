//! The objects tests create, as JSON manifests: opted-in annotations, busybox containers and
//! pods that pass Pod Security `restricted`, Deployments, DsoSecrets; and `kubectl apply`.

use crate::{check, env, kubectl_stdin};
use serde_json::{Value, json};

/// The annotations that opt a pod in: `dso.dev/inject: "true"` and `dso.dev/secrets`.
pub fn annotated(secrets: &str) -> Value {
    json!({"dso.dev/inject": "true", "dso.dev/secrets": secrets})
}

/// A busybox container running `script` as user 1001, passing Pod Security `restricted`.
pub fn app_container(name: &str, script: &str) -> Value {
    json!({
        "name": name, "image": env("DSO_BUSYBOX_IMAGE"), "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", script],
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": 1001, "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
        }
    })
}

/// A pod passing Pod Security `restricted` on its own: one [`app_container`] `app` sleeping.
pub fn pod(name: &str, annotations: &Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "restartPolicy": "Never",
            "containers": [app_container("app", "sleep 3600")],
        }
    })
}

/// A one-replica Deployment whose pods are labelled `app: <name>` and carry `annotations`.
pub fn deployment(name: &str, annotations: &Value, containers: Vec<Value>) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": containers}
            }
        }
    })
}

/// A [`deployment`] consuming the DsoSecrets `secrets` whose pods run `container` and stop at
/// once (grace 1 s), so that the rollouts of a test end quickly.
pub fn quick_deployment(name: &str, secrets: &str, container: Value) -> Value {
    let mut d = deployment(name, &annotated(secrets), vec![container]);
    d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(1);
    d
}

/// A DsoSecret writing the file `password` from the JSON key `password` of `secret_id`; the
/// fields of `extra_spec` (`aws`, `refresh`, …) are added to its spec.
pub fn dso_secret(name: &str, secret_id: &str, extra_spec: Value) -> Value {
    let mut spec =
        json!({"files": [{"path": "password", "secretId": secret_id, "jsonKey": "password"}]});
    if let (Some(s), Value::Object(extra)) = (spec.as_object_mut(), extra_spec) {
        s.extend(extra);
    }
    json!({"apiVersion": "dso.dev/v1alpha1", "kind": "DsoSecret", "metadata": {"name": name}, "spec": spec})
}

/// `kubectl apply` of one manifest in namespace `ns`; fails the test with kubectl's output.
pub fn apply(ns: &str, manifest: &Value) {
    check(
        kubectl_stdin(
            &["apply", "-n", ns, "-f", "-"],
            &serde_json::to_string(manifest).expect("json"),
        ),
        "kubectl apply",
    );
}

/// A [`dso_secret`] with `refresh: {interval, strategy}`.
pub fn refreshing(name: &str, secret_id: &str, interval: &str, strategy: &str) -> Value {
    dso_secret(
        name,
        secret_id,
        json!({"refresh": {"interval": interval, "strategy": strategy}}),
    )
}
