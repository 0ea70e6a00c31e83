//! Issue 14 end to end, on the real cluster: a `dso://` environment reference becomes a kubelet
//! env file (`valueFrom.fileKeyRef`, KEP-3721) that dso-init writes into the memory volume, so
//! the app's process has the value while the pod spec never does; a template renders several
//! keys into one file; a JSON Pointer reaches a nested key; a pointer the secret does not have
//! fails closed; a malformed pointer is refused by the apiserver; a rotation rolls a Deployment
//! that consumes its DsoSecret through `dso://` only, and the new pod's process has the new value.
//!
//! The webhook runs as a process ([`dso_e2e::Webhook`]), and so does the operator
//! ([`dso_e2e::Operator`]); dso-init runs in the pods, on the pod network, and reaches moto by
//! name (`DSO_POD_AWS_ENDPOINT`).

use dso_e2e::operator::{events, get_dso, replicasets, wait_printed, wait_ready, wait_recorded};
use dso_e2e::{
    Operator, Webhook, annotated, app_container, apply, client, container_log, create_once_cached,
    create_secret, dso_secret, env, kubectl_stdin, pod, put_secret_value, quick_deployment, unique,
    wait_for,
};
use k8s_openapi::api::apps::v1::Deployment;
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
    let created = create_once_cached(&pods, &PostParams::default(), &sent)
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

/// The ReplicaSet that owns a pod.
fn replicaset_of(p: &Pod) -> String {
    p.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "ReplicaSet")
        .map(|o| o.name.clone())
        .expect("a Deployment's pod is owned by a ReplicaSet")
}

/// Issue 14: env consumers roll like file consumers. The Deployment's only use of the DsoSecret
/// is `DB_PASSWORD: dso://db/password` (it still names it in `dso.dev/secrets`, which is what
/// makes it a consumer); after PutSecretValue the operator rolls it and the new ReplicaSet's
/// pod prints the hash of the new value. Neither value is ever in the pod spec, the
/// Deployment, the DsoSecret, an event or a DSO process's log.
#[tokio::test]
async fn a_rotation_rolls_a_dso_env_consumer_and_the_new_pod_sees_the_new_value() {
    let mut wh = webhook(18442).await;
    let ns = wh.namespace(&[]).await;
    let secret = unique("e2e/env/rotate");
    let (old, new) = (unique("canary-envrot-old"), unique("canary-envrot-new"));
    create_secret(&secret, &json!({ "password": old }).to_string()).await;
    let spec = json!({"aws": {"roleArn": ROLE}, "refresh": {"interval": "10s"}});
    apply(&ns, &dso_secret("db", &secret, spec));
    let mut app = app_container(
        "app",
        "echo \"sha=$(printf %s \"$DB_PASSWORD\" | sha256sum | cut -d' ' -f1)\"; sleep 3600",
    );
    app["env"] = json!([{"name": "DB_PASSWORD", "value": "dso://db/password"}]);
    apply(&ns, &quick_deployment("web", "db", app));
    let first = wait_printed(&ns, "web", &format!("sha={}", sha(&old)))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));

    let op = Operator::start(&ns, 18522, &env("DSO_MOTO_ENDPOINT"));
    op.ready().await;
    wait_ready(&ns, "db", "True", "Synced").await;
    wait_recorded(&ns, "web").await;
    assert_eq!(
        replicasets(&ns, "web").await,
        1,
        "pods already running the current version are not restarted"
    );

    put_secret_value(&secret, &json!({ "password": new }).to_string()).await;
    let second = wait_printed(&ns, "web", &format!("sha={}", sha(&new)))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(replicasets(&ns, "web").await, 2);
    assert_ne!(
        replicaset_of(&first),
        replicaset_of(&second),
        "the new value is seen by a pod of the new ReplicaSet"
    );
    let rolled = get_dso(&ns, "db")
        .await
        .expect("the DsoSecret")
        .status
        .and_then(|s| s.last_rotation)
        .map(|r| r.workloads);
    assert_eq!(rolled, Some(vec!["Deployment/web".to_string()]));

    // Where a value must never be: what the apiserver stored, and what DSO logged.
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let pod = pods
        .get(second.metadata.name.as_deref().expect("name"))
        .await
        .expect("the new pod");
    let deployments: Api<Deployment> = Api::namespaced(client().await, &ns);
    let stored = [
        ("the new pod", serde_json::to_string(&pod).expect("json")),
        (
            "the Deployment",
            serde_json::to_string(&deployments.get("web").await.expect("Deployment"))
                .expect("json"),
        ),
        (
            "the DsoSecret",
            serde_json::to_string(&get_dso(&ns, "db").await.expect("DsoSecret")).expect("json"),
        ),
        (
            "the DsoSecret's events",
            format!("{:?}", events(&ns, "db").await),
        ),
        (
            "the namespace's events",
            String::from_utf8_lossy(
                &dso_e2e::kubectl(&["-n", &ns, "get", "events", "-o", "json"]).stdout,
            )
            .to_string(),
        ),
        ("the operator's log", op.log()),
        ("the webhook's log", wh.log()),
    ];
    for (place, text) in &stored {
        for value in [&old, &new] {
            assert!(!text.contains(value.as_str()), "a value in {place}");
        }
    }
    op.stop();
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
    create_once_cached(&pods, &PostParams::default(), &sent)
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
