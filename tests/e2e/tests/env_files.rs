//! Issue 14 end to end, on the real cluster: a `dso://` environment reference becomes a kubelet
//! env file (`valueFrom.fileKeyRef`, KEP-3721) that dso-init writes into the memory volume, so
//! the app's process has the value while the pod spec never does; a template renders several
//! keys into one file; a JSON Pointer reaches a nested key; a pointer the secret does not have
//! fails closed; a malformed pointer is refused by the apiserver.
//!
//! The webhook runs as a process ([`dso_e2e::Webhook`]); dso-init runs in the pods, on the pod
//! network, and reaches moto by name (`DSO_POD_AWS_ENDPOINT`).

use dso_e2e::{
    Webhook, annotated, app_container, apply, client, container_log, create_secret, env,
    kubectl_stdin, pod, unique, wait_for,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);
const ROLE: &str = "arn:aws:iam::123456789012:role/e2e-env";

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

async fn webhook(port: u16) -> Webhook {
    let moto = format!("AWS_ENDPOINT_URL={}", env("DSO_POD_AWS_ENDPOINT"));
    Webhook::start(port, &["--init-env", &moto]).await
}

fn dso_secret_with(name: &str, files: Value) -> Value {
    json!({"apiVersion": "dso.dev/v1alpha1", "kind": "DsoSecret", "metadata": {"name": name},
           "spec": {"aws": {"roleArn": ROLE}, "files": files}})
}

/// Creates the pod and waits until `container`'s log has a line starting with `prefix`.
async fn run_and_read(ns: &str, manifest: Value, container: &str, prefix: &str) -> (Pod, String) {
    let pods: Api<Pod> = Api::namespaced(client().await, ns);
    let sent: Pod = serde_json::from_value(manifest).expect("pod");
    let name = sent.metadata.name.clone().expect("name");
    let created = pods
        .create(&PostParams::default(), &sent)
        .await
        .expect("the pod is admitted");
    let line = wait_for("the app's line", TIMEOUT, || async {
        Ok(container_log(ns, &name, container)?
            .lines()
            .find(|l| l.starts_with(prefix))
            .map(str::to_string))
    })
    .await
    .unwrap_or_else(|e| {
        let init = container_log(ns, &name, "dso-init").unwrap_or_default();
        panic!("{e:#}; dso-init said: {init}")
    });
    (created, line)
}

#[tokio::test]
async fn a_dso_env_reference_gives_the_process_the_value_and_the_pod_spec_none_of_it() {
    let mut wh = webhook(18440).await;
    let ns = wh.namespace(&[]).await;
    let secret = unique("e2e/env/db");
    let canary = unique("canary-env-value");
    create_secret(&secret, &json!({"password": canary}).to_string()).await;
    apply(
        &ns,
        &dso_secret_with(
            "db",
            json!([{"path": "password", "secretId": secret, "jsonKey": "password"}]),
        ),
    );
    let mut p = pod("env", &annotated("db"));
    p["spec"]["containers"] = json!([app_container(
        "app",
        "echo \"sha=$(printf %s \"$DB_PASSWORD\" | sha256sum | cut -d' ' -f1)\"; sleep 3600"
    )]);
    p["spec"]["containers"][0]["env"] =
        json!([{"name": "DB_PASSWORD", "value": "dso://db/password"}]);
    let (created, line) = run_and_read(&ns, p, "app", "sha=").await;
    assert_eq!(
        line,
        format!("sha={}", sha(&canary)),
        "the process sees the value"
    );
    // What the apiserver stored: a reference to DSO's volume, never the value.
    let var = &created.spec.as_ref().expect("spec").containers[0]
        .env
        .clone()
        .unwrap_or_default()[0];
    let key_ref = var
        .value_from
        .as_ref()
        .and_then(|v| v.file_key_ref.as_ref())
        .expect("valueFrom.fileKeyRef");
    assert_eq!(
        (
            var.value.as_deref(),
            key_ref.volume_name.as_str(),
            key_ref.key.as_str()
        ),
        (None, "dso-secrets", "DB_PASSWORD"),
        "{var:?}"
    );
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let stored = serde_json::to_string(&pods.get("env").await.expect("pod")).expect("json");
    assert!(!stored.contains(&canary), "the canary is in the pod object");
    let events = dso_e2e::kubectl(&["-n", &ns, "get", "events", "-o", "json"]);
    assert!(
        !String::from_utf8_lossy(&events.stdout).contains(&canary),
        "the canary is in an event"
    );
}

#[tokio::test]
async fn a_template_and_a_json_pointer_write_their_files_and_a_missing_pointer_fails_closed() {
    let mut wh = webhook(18441).await;
    let ns = wh.namespace(&[]).await;
    let secret = unique("e2e/env/tpl");
    let (user, pass, nested) = (
        unique("u"),
        unique("canary-tpl-pass"),
        unique("canary-nested"),
    );
    create_secret(
        &secret,
        &json!({"username": user, "password": pass, "conn": {"primary": {"password": nested}}})
            .to_string(),
    )
    .await;
    apply(
        &ns,
        &dso_secret_with(
            "app",
            json!([
                {"path": "url", "template": "postgres://{{ db.username }}:{{ db.password }}@db:5432/app",
                 "sources": {"db": {"secretId": secret}}},
                {"path": "nested", "secretId": secret, "jsonKey": "/conn/primary/password"},
            ]),
        ),
    );
    let mut p = pod("tpl", &annotated("app"));
    p["spec"]["containers"] = json!([app_container(
        "app",
        "echo \"files=$(sha256sum < /run/secrets/dso/app/url | cut -d' ' -f1),$(sha256sum < /run/secrets/dso/app/nested | cut -d' ' -f1)\"; sleep 3600"
    )]);
    let (_, line) = run_and_read(&ns, p, "app", "files=").await;
    let url = format!("postgres://{user}:{pass}@db:5432/app");
    assert_eq!(line, format!("files={},{}", sha(&url), sha(&nested)));

    // A pointer the secret does not have: dso-init fails closed, naming the pointer only.
    apply(
        &ns,
        &dso_secret_with(
            "missing",
            json!([{"path": "x", "secretId": secret, "jsonKey": "/conn/replica/password"}]),
        ),
    );
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let sent: Pod = serde_json::from_value(pod("missing", &annotated("missing"))).expect("pod");
    pods.create(&PostParams::default(), &sent)
        .await
        .expect("admitted");
    let message = wait_for("dso-init to fail", TIMEOUT, || async {
        let p = pods.get("missing").await?;
        let term = p
            .status
            .and_then(|s| s.init_container_statuses)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.name == "dso-init")
            .and_then(|c| {
                c.last_state
                    .and_then(|s| s.terminated)
                    .or(c.state.and_then(|s| s.terminated))
            })
            .filter(|t| t.exit_code != 0)
            .and_then(|t| t.message);
        Ok(term)
    })
    .await
    .expect("dso-init's termination message");
    assert!(
        message.contains("/conn/replica/password") && message.contains("nothing at"),
        "{message}"
    );
    for value in [&pass, &nested, &user] {
        assert!(!message.contains(value.as_str()), "a value in: {message}");
    }
}

#[test]
fn a_malformed_json_pointer_is_refused_by_the_apiserver_naming_the_field() {
    dso_e2e::apply_crd();
    let ns = unique("e2e-env-bad");
    let manifest = json!({"apiVersion": "dso.dev/v1alpha1", "kind": "DsoSecret",
        "metadata": {"name": "bad", "namespace": ns},
        "spec": {"files": [{"path": "x", "secretId": "a", "jsonKey": "/a~2"}]}});
    dso_e2e::kubectl(&["create", "namespace", &ns]);
    let out = kubectl_stdin(&["apply", "-f", "-"], &manifest.to_string());
    dso_e2e::kubectl(&["delete", "namespace", &ns, "--wait=false"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the apiserver accepted /a~2");
    assert!(
        stderr.contains("jsonKey") && stderr.contains("JSON Pointer"),
        "{stderr}"
    );
}
