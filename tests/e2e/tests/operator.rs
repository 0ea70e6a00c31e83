//! `dso-operator` on the real cluster against moto.
//!
//! Each test creates its own namespace and starts its own operator process
//! (`$DSO_BIN_DIR/dso-operator --namespace <ns>`, its Lease in that namespace, its metrics on
//! its own port in 18510-18529), so tests run side by side without seeing each other. The
//! workloads are plain busybox Deployments annotated like DSO users annotate them; without the
//! webhook nothing is injected, which is all the operator needs (it reads templates, never
//! pods' files).
//!
//! A tiny local AWS endpoint ([`aws_endpoint`]) records the operation of every call the
//! operator makes: it forwards to moto (so a test can assert the operator never asks for a
//! value), or, since moto does not deny, answers every call with `AccessDeniedException`
//! (HTTP 400, the AWS JSON error shape) — what a role without `secretsmanager:DescribeSecret`
//! gets.

use dso_e2e::{
    apply_crd, check, client, container_log, env, kubectl, kubectl_stdin, moto, namespace, unique,
    wait_for,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(60);
/// Refresh interval of the DsoSecrets that must notice a rotation (the schema's minimum).
const SHORT: &str = "10s";

async fn create_secret(name: &str) -> String {
    moto()
        .create_secret()
        .name(name)
        .secret_string("canary-operator-value")
        .send()
        .await
        .expect("CreateSecret in moto")
        .version_id()
        .expect("version id")
        .to_string()
}

async fn rotate(name: &str) -> String {
    moto()
        .put_secret_value()
        .secret_id(name)
        .secret_string("canary-operator-rotated")
        .send()
        .await
        .expect("PutSecretValue in moto")
        .version_id()
        .expect("version id")
        .to_string()
}

/// A running `dso-operator`; killed (SIGKILL) if the test panics before stopping it.
struct Operator {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Operator {
    fn start(ns: &str, port: u16, aws_endpoint: &str) -> Operator {
        Operator::start_with(ns, port, aws_endpoint, &[])
    }

    /// Starts one with extra flags.
    fn start_with(ns: &str, port: u16, aws_endpoint: &str, flags: &[&str]) -> Operator {
        let bin = PathBuf::from(env("DSO_BIN_DIR")).join("dso-operator");
        assert!(
            bin.exists(),
            "{} missing: build it (tests/images.sh)",
            bin.display()
        );
        let log = std::env::temp_dir().join(format!("dso-operator-{ns}-{port}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(bin)
            .args([
                "--namespace",
                ns,
                "--lease-namespace",
                ns,
                "--http-addr",
                &format!("127.0.0.1:{port}"),
                "--backoff-max-seconds",
                "5",
            ])
            .args(flags)
            .env("KUBECONFIG", env("KUBECONFIG"))
            .env("AWS_ENDPOINT_URL", aws_endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("RUST_LOG", "info,dso_operator=debug")
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("start dso-operator");
        Operator {
            child: Some(child),
            port,
            log,
        }
    }

    async fn ready(&self) {
        let port = self.port;
        wait_for("the operator's /readyz", TIMEOUT, || async move {
            Ok(http_get(port, "/readyz")
                .await
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| ()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
    }

    fn log(&self) -> String {
        format!(
            "operator log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// A counter or gauge from /metrics (0 when absent).
    async fn metric(&self, name: &str) -> f64 {
        let (_, body) = http_get(self.port, "/metrics").await.expect("GET /metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().expect("a number"))
    }

    async fn describe_calls(&self) -> f64 {
        self.metric("dso_aws_calls_total{operation=\"DescribeSecret\"}")
            .await
    }

    /// SIGTERM (a graceful stop releases the Lease), then waits for the exit.
    fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let status = child.wait().expect("wait for the operator");
            assert!(status.success(), "operator exit {status}\n{}", self.log());
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// GET on 127.0.0.1:port (HTTP/1.1, no dependency needed for three endpoints).
async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn dsosecret(ns: &str, name: &str, secret_id: &str, interval: &str, strategy: &str) {
    let yaml = format!(
        "apiVersion: dso.dev/v1alpha1\nkind: DsoSecret\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  files: [{{path: password, secretId: {secret_id}}}]\n  refresh: {{interval: {interval}, strategy: {strategy}}}\n"
    );
    check(
        kubectl_stdin(&["apply", "-f", "-"], &yaml),
        "apply DsoSecret",
    );
}

fn deployment(ns: &str, name: &str, secrets: &str) {
    let d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name},
                             "annotations": {"dso.dev/inject": "true", "dso.dev/secrets": secrets}},
                "spec": {"hostNetwork": true, "terminationGracePeriodSeconds": 1, "containers": [{
                    "name": "app", "image": env("DSO_BUSYBOX_IMAGE"), "imagePullPolicy": "Never",
                    "command": ["/bin/busybox", "sleep", "3600"]}]}
            }
        }
    });
    check(
        kubectl_stdin(&["apply", "-f", "-"], &d.to_string()),
        "apply Deployment",
    );
}

/// A StatefulSet (0 replicas) or DaemonSet (selecting no node) consuming `secrets`: their
/// templates are patched like a Deployment's, without running anything.
fn idle_workload(kind: &str, ns: &str, name: &str, secrets: &str) {
    let mut spec = json!({
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name},
                         "annotations": {"dso.dev/inject": "true", "dso.dev/secrets": secrets}},
            "spec": {"nodeSelector": {"dso.dev/e2e-no-such-node": "true"}, "containers": [{
                "name": "app", "image": env("DSO_BUSYBOX_IMAGE"), "imagePullPolicy": "Never",
                "command": ["/bin/busybox", "sleep", "3600"]}]}
        }
    });
    if kind == "StatefulSet" {
        spec["replicas"] = json!(0);
        spec["serviceName"] = json!(name);
    }
    let w = json!({"apiVersion": "apps/v1", "kind": kind,
                   "metadata": {"name": name, "namespace": ns}, "spec": spec});
    check(
        kubectl_stdin(&["apply", "-f", "-"], &w.to_string()),
        "apply workload",
    );
}

/// `dso.dev/versions-hash` on any workload's template, through kubectl.
fn template_hash_of(kind: &str, ns: &str, name: &str) -> Option<String> {
    let out = kubectl(&[
        "get",
        kind,
        name,
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.template.metadata.annotations.dso\\.dev/versions-hash}",
    ]);
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!v.is_empty()).then_some(v)
}

/// The DsoSecret as JSON (kubectl: no typed client needed).
fn get_dso(ns: &str, name: &str) -> Value {
    let out = kubectl(&["get", "dsosecret", name, "-n", ns, "-o", "json"]);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn ready(dso: &Value) -> Option<(String, String)> {
    let c = dso["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
    ))
}

fn version_of(dso: &Value) -> Option<String> {
    dso["status"]["secrets"][0]["versionId"]
        .as_str()
        .map(str::to_string)
}

/// Waits until the DsoSecret's Ready condition has this status and reason.
async fn wait_ready(op: &Operator, ns: &str, name: &str, status: &str, reason: &str) -> Value {
    let want = (status.to_string(), reason.to_string());
    wait_for(
        &format!("DsoSecret {name} Ready={status} ({reason})"),
        TIMEOUT,
        || {
            let want = want.clone();
            async move {
                let d = get_dso(ns, name);
                Ok((ready(&d) == Some(want)).then_some(d))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()))
}

async fn replicasets(ns: &str, app: &str) -> usize {
    let rs: Api<ReplicaSet> = Api::namespaced(client().await, ns);
    rs.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list ReplicaSets")
        .items
        .len()
}

async fn template_hash(ns: &str, name: &str) -> Option<String> {
    let d: Api<Deployment> = Api::namespaced(client().await, ns);
    d.get(name)
        .await
        .expect("get Deployment")
        .spec?
        .template
        .metadata?
        .annotations?
        .get("dso.dev/versions-hash")
        .cloned()
}

/// Waits until the operator recorded the Deployment's baseline (it has seen the workload).
async fn wait_recorded(op: &Operator, ns: &str, name: &str) {
    wait_for(
        "the versions recorded on the Deployment",
        TIMEOUT,
        || async move {
            let d: Api<Deployment> = Api::namespaced(client().await, ns);
            Ok(d.get(name)
                .await?
                .metadata
                .annotations
                .and_then(|a| a.get("dso.dev/recorded-versions").cloned()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
}

async fn events(ns: &str, name: &str) -> Vec<Event> {
    let ev: Api<Event> = Api::namespaced(client().await, ns);
    ev.list(&ListParams::default().fields(&format!(
        "involvedObject.kind=DsoSecret,involvedObject.name={name}"
    )))
    .await
    .expect("list events")
    .items
}

#[tokio::test]
async fn a_rotation_rolls_the_consuming_deployment_once_and_a_restart_rolls_nothing() {
    apply_crd();
    let kube = client().await;
    let ns = namespace(&kube, "op-rotate", &[]).await;
    let secret = unique("e2e/op/rotate");
    let v1 = create_secret(&secret).await;
    let op = Operator::start(&ns, 18510, &env("DSO_MOTO_ENDPOINT"));
    op.ready().await;

    dsosecret(&ns, "db", &secret, SHORT, "Rollout");
    deployment(&ns, "web", "db");
    idle_workload("StatefulSet", &ns, "sts", "db");
    idle_workload("DaemonSet", &ns, "ds", "db");
    let d = wait_ready(&op, &ns, "db", "True", "Synced").await;
    assert_eq!(version_of(&d).as_deref(), Some(v1.as_str()));
    wait_recorded(&op, &ns, "web").await;
    assert_eq!(replicasets(&ns, "web").await, 1);
    assert_eq!(
        template_hash(&ns, "web").await,
        None,
        "a workload seen first is not restarted"
    );

    let v2 = rotate(&secret).await;
    let rotated_at = std::time::Instant::now();
    wait_for(
        "a new ReplicaSet after the rotation",
        Duration::from_secs(40),
        || {
            let ns = ns.clone();
            async move { Ok((replicasets(&ns, "web").await == 2).then_some(())) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
    assert!(
        rotated_at.elapsed() < Duration::from_secs(10 + 10),
        "rolled within the interval (plus slack): {:?}",
        rotated_at.elapsed()
    );
    let d = wait_for("status with the new version", TIMEOUT, || {
        let (ns, v2) = (ns.clone(), v2.clone());
        async move {
            let d = get_dso(&ns, "db");
            Ok((version_of(&d) == Some(v2)).then_some(d))
        }
    })
    .await
    .expect("new version in status");
    assert_eq!(
        d["status"]["lastRotation"]["workloads"],
        json!(["DaemonSet/ds", "Deployment/web", "StatefulSet/sts"])
    );
    let sts_hash = template_hash_of("statefulset", &ns, "sts").expect("StatefulSet rolled");
    let ds_hash = template_hash_of("daemonset", &ns, "ds").expect("DaemonSet rolled");
    let reasons: Vec<String> = events(&ns, "db")
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "Rotated"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "RolledOut"), "{reasons:?}");
    let hash = template_hash(&ns, "web").await.expect("hash stamped");
    // The operator never reads a value: none in its log, the status or the events.
    assert!(!op.log().contains("canary-operator"), "{}", op.log());
    assert!(!d.to_string().contains("canary-operator"));
    assert!(
        !format!("{:?}", events(&ns, "db").await).contains("canary-operator"),
        "events hold no value"
    );

    // The template is owned by its applier except for the one annotation DSO applied.
    let managed = kubectl(&[
        "get",
        "deployment",
        "web",
        "-n",
        &ns,
        "--show-managed-fields",
        "-o",
        "json",
    ]);
    let managed: Value = serde_json::from_slice(&managed.stdout).expect("json");
    let ours: Vec<&Value> = managed["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter(|m| m["manager"] == "dso-operator")
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(
        ours[0]["fieldsV1"],
        json!({
            "f:metadata": {"f:annotations": {"f:dso.dev/recorded-versions": {}}},
            "f:spec": {"f:template": {"f:metadata": {"f:annotations": {"f:dso.dev/versions-hash": {}}}}}
        })
    );

    // The rollout slot is freed when the Deployment's rollout is over, not at the patch.
    wait_for("the web rollout seen complete", TIMEOUT, || async {
        Ok(op
            .log()
            .lines()
            .any(|l| l.contains("rollout complete") && l.contains("Deployment/web"))
            .then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));

    // Restart: the new operator reconciles and rolls nothing.
    op.stop();
    let op = Operator::start(&ns, 18511, &env("DSO_MOTO_ENDPOINT"));
    op.ready().await;
    wait_for("a reconcile by the restarted operator", TIMEOUT, || async {
        Ok((op.metric("dso_reconcile_duration_seconds_count").await >= 1.0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
    assert_eq!(replicasets(&ns, "web").await, 2, "{}", op.log());
    assert_eq!(template_hash(&ns, "web").await, Some(hash));
    assert_eq!(template_hash_of("statefulset", &ns, "sts"), Some(sts_hash));
    assert_eq!(template_hash_of("daemonset", &ns, "ds"), Some(ds_hash));
    assert_eq!(
        op.metric("dso_rollouts_total{kind=\"Deployment\"}").await,
        0.0
    );
    op.stop();
    check(kubectl(&["delete", "ns", &ns, "--wait=false"]), "delete ns");
}

#[tokio::test]
async fn dsosecrets_on_one_secret_share_one_lookup_and_refresh_forces_a_check() {
    apply_crd();
    let kube = client().await;
    let ns = namespace(&kube, "op-shared", &[]).await;
    let secret = unique("e2e/op/shared");
    create_secret(&secret).await;
    // The operator reaches moto through a recorder: what AWS saw is what counts, whatever the
    // operator's own metrics say.
    let (endpoint, operations) = aws_endpoint(Upstream::Forward(env("DSO_MOTO_ENDPOINT"))).await;
    let op = Operator::start(&ns, 18512, &endpoint);
    op.ready().await;

    dsosecret(&ns, "first", &secret, "1h", "Rollout");
    wait_ready(&op, &ns, "first", "True", "Synced").await;
    let after_first = op.describe_calls().await;
    assert_eq!(after_first, 1.0, "{}", op.log());
    dsosecret(&ns, "second", &secret, "1h", "Rollout");
    wait_ready(&op, &ns, "second", "True", "Synced").await;
    assert_eq!(
        op.describe_calls().await,
        after_first,
        "a second DsoSecret on the same secret adds no AWS call"
    );

    // An interval of 1h: only dso.dev/refresh makes the operator look before then.
    let v2 = rotate(&secret).await;
    let dsos: Api<kube::api::DynamicObject> = Api::namespaced_with(
        kube.clone(),
        &ns,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("dso.dev", "v1alpha1", "DsoSecret"),
            "dsosecrets",
        ),
    );
    dsos.patch(
        "first",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"dso.dev/refresh": "1"}}})),
    )
    .await
    .expect("annotate dso.dev/refresh");
    wait_for("the refreshed version", Duration::from_secs(20), || {
        let (ns, v2) = (ns.clone(), v2.clone());
        async move { Ok((version_of(&get_dso(&ns, "first")) == Some(v2)).then_some(())) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
    assert_eq!(op.describe_calls().await, 2.0);
    op.stop();
    let seen: BTreeSet<String> = operations.lock().expect("lock").iter().cloned().collect();
    assert!(
        !seen.is_empty(),
        "the operator reached AWS through the recorder"
    );
    assert!(
        seen.is_subset(&BTreeSet::from([
            "DescribeSecret".to_string(),
            "ListSecrets".to_string()
        ])),
        "the operator reads metadata only, never a value: it called {seen:?}"
    );
    check(kubectl(&["delete", "ns", &ns, "--wait=false"]), "delete ns");
}

#[tokio::test]
async fn a_rollout_holds_its_slot_until_it_completes_so_the_next_one_waits() {
    apply_crd();
    let kube = client().await;
    let ns = namespace(&kube, "op-bound", &[]).await;
    let secret = unique("e2e/op/bound");
    create_secret(&secret).await;
    // One slot, and rollouts that cannot complete (paused Deployments create no new pods):
    // the second workload must wait for the first rollout's timeout.
    let timeout = Duration::from_secs(15);
    let op = Operator::start_with(
        &ns,
        18519,
        &env("DSO_MOTO_ENDPOINT"),
        &[
            "--max-concurrent-rollouts",
            "1",
            "--rollout-timeout-seconds",
            &timeout.as_secs().to_string(),
        ],
    );
    op.ready().await;
    dsosecret(&ns, "db", &secret, SHORT, "Rollout");
    for name in ["a", "b"] {
        deployment(&ns, name, "db");
        wait_recorded(&op, &ns, name).await;
        check(
            kubectl(&[
                "patch",
                "deployment",
                name,
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"spec":{"paused":true}}"#,
            ]),
            "pause the Deployment",
        );
    }
    wait_ready(&op, &ns, "db", "True", "Synced").await;

    rotate(&secret).await;
    let hashes = || {
        let ns = ns.clone();
        async move { [template_hash(&ns, "a").await, template_hash(&ns, "b").await] }
    };
    let first = wait_for("the first rollout", Duration::from_secs(40), || async {
        let h = hashes().await;
        Ok(h.iter().any(Option::is_some).then_some(h))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
    let first_at = std::time::Instant::now();
    assert_eq!(
        first.iter().filter(|h| h.is_some()).count(),
        1,
        "one slot: one rollout at a time {first:?}\n{}",
        op.log()
    );
    let waiting = wait_for(
        "a Rotated event naming the workload waiting for a slot",
        TIMEOUT,
        || {
            let ns = ns.clone();
            async move {
                Ok(events(&ns, "db")
                    .await
                    .into_iter()
                    .filter(|e| e.reason.as_deref() == Some("Rotated"))
                    .find_map(|e| {
                        e.message
                            .filter(|m| m.contains("waiting for a rollout slot"))
                    }))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
    assert!(waiting.contains("Deployment/"), "{waiting}");
    wait_for("the second rollout", TIMEOUT, || async {
        Ok(hashes().await.iter().all(Option::is_some).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
    assert!(
        first_at.elapsed() >= timeout - Duration::from_secs(5),
        "the second rollout waited for the first one's slot: {:?}\n{}",
        first_at.elapsed(),
        op.log()
    );
    assert!(
        op.log().contains("rollout not complete in time"),
        "{}",
        op.log()
    );
    op.stop();
    check(kubectl(&["delete", "ns", &ns, "--wait=false"]), "delete ns");
}

#[tokio::test]
async fn strategy_none_records_the_rotation_without_restarting_anything() {
    apply_crd();
    let kube = client().await;
    let ns = namespace(&kube, "op-none", &[]).await;
    let secret = unique("e2e/op/none");
    create_secret(&secret).await;
    let op = Operator::start(&ns, 18513, &env("DSO_MOTO_ENDPOINT"));
    op.ready().await;

    dsosecret(&ns, "db", &secret, SHORT, "None");
    deployment(&ns, "web", "db");
    wait_ready(&op, &ns, "db", "True", "Synced").await;
    let v2 = rotate(&secret).await;
    let d = wait_for("the rotation in status", Duration::from_secs(40), || {
        let (ns, v2) = (ns.clone(), v2.clone());
        async move {
            let d = get_dso(&ns, "db");
            Ok((version_of(&d) == Some(v2)).then_some(d))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
    assert!(d["status"]["lastRotation"]["at"].is_string(), "{d}");
    assert_eq!(d["status"]["lastRotation"]["workloads"], json!([]));
    assert_eq!(replicasets(&ns, "web").await, 1);
    assert_eq!(template_hash(&ns, "web").await, None);
    op.stop();
    check(kubectl(&["delete", "ns", &ns, "--wait=false"]), "delete ns");
}

#[tokio::test]
async fn a_missing_secret_is_not_ready_with_reason_secret_not_found_and_an_event() {
    apply_crd();
    let kube = client().await;
    let ns = namespace(&kube, "op-missing", &[]).await;
    let op = Operator::start(&ns, 18514, &env("DSO_MOTO_ENDPOINT"));
    op.ready().await;
    dsosecret(&ns, "db", &unique("e2e/op/absent"), SHORT, "Rollout");
    let d = wait_ready(&op, &ns, "db", "False", "SecretNotFound").await;
    let message = d["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("ResourceNotFoundException"), "{message}");
    let ev = wait_for("a SecretNotFound event", TIMEOUT, || {
        let ns = ns.clone();
        async move {
            Ok(events(&ns, "db")
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("SecretNotFound")))
        }
    })
    .await
    .expect("event");
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    op.stop();
    check(kubectl(&["delete", "ns", &ns, "--wait=false"]), "delete ns");
}

/// What the test AWS endpoint does with each request.
#[derive(Clone)]
enum Upstream {
    /// Answers like Secrets Manager denying the caller (AccessDeniedException).
    Deny,
    /// Forwards to this HTTP endpoint (moto) and relays its answer.
    Forward(String),
}

/// A local Secrets Manager endpoint that records the operation (`x-amz-target`) of every
/// request, then denies it or forwards it (one request per connection). Returns its URL and
/// the operations seen so far.
async fn aws_endpoint(upstream: Upstream) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (upstream, record) = (upstream.clone(), record.clone());
            tokio::spawn(async move {
                let Some((head, body)) = read_request(&mut sock).await else {
                    return;
                };
                let header = |name: &str| {
                    head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case(name)
                            .then(|| v.trim().to_string())
                    })
                };
                // "secretsmanager.DescribeSecret" -> "DescribeSecret"
                let target = header("x-amz-target").unwrap_or_default();
                let operation = target.rsplit('.').next().unwrap_or_default().to_string();
                record.lock().expect("lock").push(operation);
                let resp = match upstream {
                    Upstream::Deny => {
                        let body = r#"{"__type":"AccessDeniedException","message":"User: arn:aws:iam::123456789012:user/e2e is not authorized to perform: secretsmanager:DescribeSecret"}"#;
                        format!(
                            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .into_bytes()
                    }
                    Upstream::Forward(url) => {
                        let Some(authority) = url.strip_prefix("http://") else {
                            return;
                        };
                        let Ok(mut up) =
                            tokio::net::TcpStream::connect(authority.trim_end_matches('/')).await
                        else {
                            return;
                        };
                        // One request per connection: the upstream closes after answering.
                        let head: String = head
                            .lines()
                            .filter(|l| {
                                !l.to_ascii_lowercase().starts_with("connection:") && !l.is_empty()
                            })
                            .map(|l| format!("{l}\r\n"))
                            .collect();
                        let mut req = format!("{head}Connection: close\r\n\r\n").into_bytes();
                        req.extend_from_slice(&body);
                        if up.write_all(&req).await.is_err() {
                            return;
                        }
                        let mut resp = Vec::new();
                        if up.read_to_end(&mut resp).await.is_err() {
                            return;
                        }
                        resp
                    }
                };
                let _ = sock.write_all(&resp).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

/// Reads one HTTP/1.1 request: its head (without the blank line) and its body.
async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = sock.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_string();
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            })
            .unwrap_or(0);
        if got.len() >= end + 4 + len {
            return Some((head, got[end + 4..end + 4 + len].to_vec()));
        }
    }
}

#[tokio::test]
async fn a_denied_call_is_not_ready_with_reason_access_denied() {
    apply_crd();
    let kube = client().await;
    let ns = namespace(&kube, "op-denied", &[]).await;
    let (endpoint, _) = aws_endpoint(Upstream::Deny).await;
    let op = Operator::start(&ns, 18515, &endpoint);
    op.ready().await;
    dsosecret(&ns, "db", "prod/db", SHORT, "Rollout");
    let d = wait_ready(&op, &ns, "db", "False", "AccessDenied").await;
    let message = d["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("secretsmanager:DescribeSecret"),
        "{message}"
    );
    op.stop();
    check(kubectl(&["delete", "ns", &ns, "--wait=false"]), "delete ns");
}

#[tokio::test]
async fn one_replica_leads_and_a_standby_takes_over_when_it_stops() {
    apply_crd();
    let kube = client().await;
    let ns = namespace(&kube, "op-lease", &[]).await;
    let first = Operator::start(&ns, 18516, &env("DSO_MOTO_ENDPOINT"));
    first.ready().await;
    assert_eq!(first.metric("dso_leader").await, 1.0, "{}", first.log());
    let second = Operator::start(&ns, 18517, &env("DSO_MOTO_ENDPOINT"));
    second.ready().await;
    let (_, body) = http_get(18517, "/readyz").await.expect("readyz");
    assert!(body.contains("standby"), "{body}");
    assert_eq!(second.metric("dso_leader").await, 0.0);

    first.stop();
    wait_for("the standby to lead", Duration::from_secs(30), || async {
        Ok((second.metric("dso_leader").await == 1.0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", second.log()));
    second.ready().await;
    second.stop();
    check(kubectl(&["delete", "ns", &ns, "--wait=false"]), "delete ns");
}

#[tokio::test]
async fn a_standby_takes_over_from_a_killed_leader_only_after_a_full_lease_duration() {
    apply_crd();
    let kube = client().await;
    let ns = namespace(&kube, "op-lease-kill", &[]).await;
    let lease = ["--lease-seconds", "6"];
    let mut first = Operator::start_with(&ns, 18520, &env("DSO_MOTO_ENDPOINT"), &lease);
    first.ready().await;
    assert_eq!(first.metric("dso_leader").await, 1.0, "{}", first.log());
    let second = Operator::start_with(&ns, 18521, &env("DSO_MOTO_ENDPOINT"), &lease);
    second.ready().await;
    assert_eq!(second.metric("dso_leader").await, 0.0);

    // SIGKILL: no release. The Lease's last renewal is at most 2 s (a third) old.
    let mut child = first.child.take().expect("running");
    child.kill().expect("kill the leader");
    child.wait().expect("reap the leader");
    let killed = std::time::Instant::now();
    wait_for("the standby to lead", Duration::from_secs(30), || async {
        Ok((second.metric("dso_leader").await == 1.0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", second.log()));
    let after = killed.elapsed();
    assert!(
        after >= Duration::from_secs(3),
        "took over {after:?} after the kill: before the Lease could have expired"
    );
    second.ready().await;
    second.stop();
    check(kubectl(&["delete", "ns", &ns, "--wait=false"]), "delete ns");
}

/// The webhook (`$DSO_BIN_DIR/dso-webhook`) registered for namespaces labelled
/// `dso-operator-e2e=<run>` only, so the full chain can run: injected pods, dso-init writing
/// its termination message, the operator reading it.
struct Webhook {
    child: Child,
    config: String,
    log: PathBuf,
}

impl Webhook {
    async fn start(port: u16, run: &str) -> Webhook {
        let dir = std::env::temp_dir().join(format!("dso-operator-e2e-wh-{run}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
            .expect("serving certificate");
        std::fs::write(dir.join("tls.crt"), cert.cert.pem()).expect("cert");
        std::fs::write(dir.join("tls.key"), cert.signing_key.serialize_pem()).expect("key");
        let log = dir.join("webhook.log");
        let child = dso_e2e::webhook_command(port, &dir)
            .args([
                "--init-env",
                &format!("AWS_ENDPOINT_URL={}", env("DSO_MOTO_ENDPOINT")),
            ])
            .stdout(Stdio::from(std::fs::File::create(&log).expect("log")))
            .stderr(Stdio::null())
            .spawn()
            .expect("start dso-webhook");
        let admin = port + 50;
        wait_for("the webhook's /readyz", TIMEOUT, || async move {
            Ok(http_get(admin, "/readyz")
                .await
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| ()))
        })
        .await
        .expect("webhook ready");
        let config = format!("dso-operator-e2e-{run}");
        let mut mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": config},
            "webhooks": [{
                "name": "pods.dso.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "timeoutSeconds": 5, "failurePolicy": "Fail",
                "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate")},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["pods"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchLabels": {"dso-operator-e2e": run}},
                "matchConditions": [{"name": "opted-in", "expression":
                    "has(object.metadata.annotations) && 'dso.dev/inject' in object.metadata.annotations"}]
            }]
        }))
        .expect("webhook configuration");
        if let Some(w) = mwc.webhooks.as_mut().and_then(|w| w.first_mut()) {
            w.client_config.ca_bundle = Some(ByteString(cert.cert.pem().into_bytes()));
        }
        Api::<MutatingWebhookConfiguration>::all(client().await)
            .create(&PostParams::default(), &mwc)
            .await
            .expect("create the MutatingWebhookConfiguration");
        Webhook { child, config, log }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- dso-webhook log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = kubectl(&[
            "delete",
            "mutatingwebhookconfiguration",
            &self.config,
            "--ignore-not-found",
        ]);
    }
}

/// The running pods of `app` and their `app` container logs.
async fn app_logs(ns: &str, app: &str) -> Vec<(Pod, String)> {
    let pods: Api<Pod> = Api::namespaced(client().await, ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list pods");
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .map(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            let log = container_log(ns, &name, "app").unwrap_or_default();
            (p, log)
        })
        .collect()
}

/// The whole chain on the node: webhook, dso-init, operator. A workload whose pods already
/// run the current version is not restarted when first seen; after PutSecretValue it rolls,
/// and the new pods read the new value.
#[tokio::test]
async fn after_a_rotation_the_new_pods_read_the_new_value() {
    apply_crd();
    let kube = client().await;
    let run = unique("chain");
    let wh = Webhook::start(18530, &run).await;
    let ns = namespace(&kube, "op-chain", &[("dso-operator-e2e", &run)]).await;
    let secret = unique("e2e/op/chain");
    let (old, new) = (unique("canary-chain-old"), unique("canary-chain-new"));
    moto()
        .create_secret()
        .name(&secret)
        .secret_string(json!({ "password": old }).to_string())
        .send()
        .await
        .expect("CreateSecret");
    let dso = json!({
        "apiVersion": "dso.dev/v1alpha1", "kind": "DsoSecret",
        "metadata": {"name": "db", "namespace": ns},
        "spec": {
            "aws": {"roleArn": "arn:aws:iam::123456789012:role/e2e-operator"},
            "files": [{"path": "password", "secretId": secret, "jsonKey": "password"}],
            "refresh": {"interval": SHORT}
        }
    });
    check(
        kubectl_stdin(&["apply", "-f", "-"], &dso.to_string()),
        "apply DsoSecret",
    );
    let app = json!({
        "name": "app", "image": env("DSO_BUSYBOX_IMAGE"), "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", "echo \"value=$(cat /run/secrets/dso/db/password)\"; sleep 3600"],
        "securityContext": {"runAsNonRoot": true, "runAsUser": 1001, "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    });
    let d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"},
                "annotations": {"dso.dev/inject": "true", "dso.dev/secrets": "db"}},
                "spec": {"hostNetwork": true, "terminationGracePeriodSeconds": 1, "containers": [app]}}}
    });
    check(
        kubectl_stdin(&["apply", "-f", "-"], &d.to_string()),
        "apply Deployment",
    );
    wait_for(
        "the first pod to read the value",
        Duration::from_secs(120),
        || {
            let (ns, old) = (ns.clone(), old.clone());
            async move {
                Ok(app_logs(&ns, "web")
                    .await
                    .iter()
                    .any(|(_, log)| log.contains(&format!("value={old}")))
                    .then_some(()))
            }
        },
    )
    .await
    .expect("the injected pod reads the secret");

    let op = Operator::start(&ns, 18518, &env("DSO_MOTO_ENDPOINT"));
    op.ready().await;
    wait_ready(&op, &ns, "db", "True", "Synced").await;
    wait_recorded(&op, &ns, "web").await;
    assert_eq!(replicasets(&ns, "web").await, 1, "{}", op.log());
    assert_eq!(
        template_hash(&ns, "web").await,
        None,
        "pods already running the current version are not restarted"
    );

    moto()
        .put_secret_value()
        .secret_id(&secret)
        .secret_string(json!({ "password": new }).to_string())
        .send()
        .await
        .expect("PutSecretValue");
    wait_for(
        "a new pod reading the new value",
        Duration::from_secs(120),
        || {
            let (ns, new) = (ns.clone(), new.clone());
            async move {
                Ok(app_logs(&ns, "web")
                    .await
                    .iter()
                    .any(|(_, log)| log.contains(&format!("value={new}")))
                    .then_some(()))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
    assert_eq!(replicasets(&ns, "web").await, 2);
    let status = get_dso(&ns, "db").to_string();
    let events = format!("{:?}", events(&ns, "db").await);
    for value in [&old, &new] {
        assert!(!status.contains(value.as_str()), "a value in status");
        assert!(!events.contains(value.as_str()), "a value in an event");
        assert!(
            !op.log().contains(value.as_str()),
            "a value in the operator log"
        );
    }
    op.stop();
    drop(wh);
    check(kubectl(&["delete", "ns", &ns, "--wait=false"]), "delete ns");
}
