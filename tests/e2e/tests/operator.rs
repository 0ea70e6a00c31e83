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

use dso_api::DsoSecret;
use dso_e2e::operator::{
    events, get_dso, replicasets, series_value, slow_rollout_deployment, template_hash,
    wait_available, wait_printed, wait_ready, wait_recorded,
};
use dso_e2e::{
    Operator, TestNamespace, Webhook, annotated, app_container, apply, apply_crd, client,
    create_secret, deployment, dso_secret, env, http_get, kubectl, namespace, pod,
    put_secret_value, quick_deployment, ready, refreshing, unique, wait_for,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(60);
/// Refresh interval of the DsoSecrets that must notice a rotation (the schema's minimum).
const SHORT: &str = "10s";

/// The series counting the Deployments an operator rolled (it appears at the first one).
const ROLLED_DEPLOYMENTS: &str = "dso_rollouts_total{kind=\"Deployment\"}";

/// A secret in moto for the operator tests; returns its version id. The operator never reads
/// the value: the tests look for "canary-operator" where it must not be.
async fn new_secret(name: &str) -> String {
    create_secret(name, "canary-operator-value").await
}

/// A new version of the secret; returns its id.
async fn rotate(name: &str) -> String {
    put_secret_value(name, "canary-operator-rotated").await
}

/// Applies a Deployment consuming `secrets` whose pod sleeps.
fn consuming_deployment(ns: &str, name: &str, secrets: &str) {
    let app = app_container("app", "sleep 3600");
    apply(ns, &quick_deployment(name, secrets, app));
}

/// A StatefulSet (0 replicas) or DaemonSet (selecting no node) consuming `secrets`: their
/// templates are patched like a Deployment's, without running anything.
fn idle_workload(kind: &str, ns: &str, name: &str, secrets: &str) {
    let mut w = deployment(
        name,
        &annotated(secrets),
        vec![app_container("app", "sleep 3600")],
    );
    w["kind"] = json!(kind);
    w["spec"]["template"]["spec"]["nodeSelector"] = json!({"dso.dev/e2e-no-such-node": "true"});
    let spec = w["spec"].as_object_mut().expect("spec");
    if kind == "StatefulSet" {
        spec.insert("replicas".into(), json!(0));
        spec.insert("serviceName".into(), json!(name));
    } else {
        spec.remove("replicas");
    }
    apply(ns, &w);
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

/// Installs the CRD and makes the test's namespace, where its operator runs and holds its Lease.
async fn operator_namespace(prefix: &str) -> TestNamespace {
    apply_crd();
    namespace(&client().await, prefix, &[]).await
}

/// The version id in status of the DsoSecret's first secret.
fn version_of(dso: &DsoSecret) -> Option<String> {
    dso.status.as_ref()?.secrets.first()?.version_id.clone()
}

/// The message of the DsoSecret's first condition.
fn first_condition_message(dso: &DsoSecret) -> &str {
    dso.status
        .as_ref()
        .and_then(|s| s.conditions.first())
        .map_or("", |c| c.message.as_str())
}

/// `status.lastRotation.workloads`, `None` without a recorded rotation.
fn rotated_workloads(dso: &DsoSecret) -> Option<Vec<String>> {
    Some(
        dso.status
            .as_ref()?
            .last_rotation
            .as_ref()?
            .workloads
            .clone(),
    )
}

#[tokio::test]
async fn a_rotation_rolls_the_consuming_deployment_once_and_a_restart_rolls_nothing() {
    let ns = operator_namespace("op-rotate").await;
    let secret = unique("e2e/op/rotate");
    let v1 = new_secret(&secret).await;
    let op = Operator::start(&ns, 18510, &env("DSO_MOTO_ENDPOINT"));
    op.ready().await;

    apply(&ns, &refreshing("db", &secret, SHORT, "Rollout"));
    consuming_deployment(&ns, "web", "db");
    idle_workload("StatefulSet", &ns, "sts", "db");
    idle_workload("DaemonSet", &ns, "ds", "db");
    let d = wait_ready(&ns, "db", "True", "Synced").await;
    assert_eq!(version_of(&d).as_deref(), Some(v1.as_str()));
    wait_recorded(&ns, "web").await;
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
            let ns = ns.to_string();
            async move { Ok((replicasets(&ns, "web").await == 2).then_some(())) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // The 10 s interval, then the versions must settle (--rollout-settle, 2 s by default, so
    // that rotations close together make one rollout), plus slack for a loaded machine (a CI
    // run saw 20.3 s).
    assert!(
        rotated_at.elapsed() < Duration::from_secs(10 + 2 + 13),
        "rolled within the interval and the settle time (plus slack): {:?}",
        rotated_at.elapsed()
    );
    // The new version is in status from the check that sees it; the workloads join
    // lastRotation when they roll (once the versions settled, --rollout-settle).
    let d = wait_for(
        "status with the new version and its rollouts",
        TIMEOUT,
        || {
            let (ns, v2) = (ns.to_string(), v2.clone());
            async move {
                let d = get_dso(&ns, "db").await?;
                let rolled = rotated_workloads(&d).is_some_and(|w| w.len() == 3);
                Ok((version_of(&d) == Some(v2) && rolled).then_some(d))
            }
        },
    )
    .await
    .expect("new version in status");
    assert_eq!(
        rotated_workloads(&d).expect("status.lastRotation"),
        ["DaemonSet/ds", "Deployment/web", "StatefulSet/sts"]
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
    assert!(!op.log().contains("canary-operator"));
    assert!(
        !serde_json::to_string(&d)
            .expect("json")
            .contains("canary-operator")
    );
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
    .unwrap_or_else(|e| panic!("{e}"));
    // The series the restarted operator must not have: this one has it.
    assert!(op.metric(ROLLED_DEPLOYMENTS).await >= 1.0);

    // Restart: the new operator reconciles and rolls nothing.
    op.stop();
    let op = Operator::start(&ns, 18511, &env("DSO_MOTO_ENDPOINT"));
    op.ready().await;
    wait_for("a reconcile by the restarted operator", TIMEOUT, || async {
        Ok((op
            .try_metric("dso_reconcile_duration_seconds_count")
            .await?
            >= 1.0)
            .then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(replicasets(&ns, "web").await, 2);
    assert_eq!(template_hash(&ns, "web").await, Some(hash));
    assert_eq!(template_hash_of("statefulset", &ns, "sts"), Some(sts_hash));
    assert_eq!(template_hash_of("daemonset", &ns, "ds"), Some(ds_hash));
    // A labelled series appears at its first increment: absent (or 0) means no rollout.
    let metrics = op.metrics().await.expect("GET /metrics");
    assert!(
        series_value(&metrics, ROLLED_DEPLOYMENTS).is_none_or(|n| n == 0.0),
        "the restarted operator rolled a Deployment:\n{metrics}"
    );
    op.stop();
}

#[tokio::test]
async fn dsosecrets_on_one_secret_share_one_lookup_and_refresh_forces_a_check() {
    let ns = operator_namespace("op-shared").await;
    let kube = client().await;
    let secret = unique("e2e/op/shared");
    new_secret(&secret).await;
    // The operator reaches moto through a recorder: what AWS saw is what counts, whatever the
    // operator's own metrics say.
    let (endpoint, operations) = aws_endpoint(Upstream::Forward(env("DSO_MOTO_ENDPOINT"))).await;
    let op = Operator::start(&ns, 18512, &endpoint);
    op.ready().await;

    apply(&ns, &refreshing("first", &secret, "1h", "Rollout"));
    wait_ready(&ns, "first", "True", "Synced").await;
    let after_first = op.describe_calls().await;
    assert_eq!(after_first, 1.0);
    apply(&ns, &refreshing("second", &secret, "1h", "Rollout"));
    wait_ready(&ns, "second", "True", "Synced").await;
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
        let (ns, v2) = (ns.to_string(), v2.clone());
        async move { Ok((version_of(&get_dso(&ns, "first").await?) == Some(v2)).then_some(())) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
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
}

#[tokio::test]
async fn a_rollout_holds_its_slot_until_it_completes_so_the_next_one_waits() {
    let ns = operator_namespace("op-bound").await;
    let secret = unique("e2e/op/bound");
    new_secret(&secret).await;
    // One slot, and rollouts that cannot complete (their new pods never become ready; a paused
    // Deployment would give its slot back at once): the second workload must wait for the
    // first rollout's timeout.
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
            // Roll as soon as the rotation is seen, so that the Rotated event says which
            // workload waits for a slot (with a settle time it says both wait for the versions
            // to settle).
            "--rollout-settle",
            "0s",
        ],
    );
    op.ready().await;
    apply(&ns, &refreshing("db", &secret, SHORT, "Rollout"));
    for name in ["a", "b"] {
        apply(&ns, &slow_rollout_deployment(name, "db", None));
        wait_available(&ns, name).await;
        wait_recorded(&ns, name).await;
    }
    wait_ready(&ns, "db", "True", "Synced").await;

    rotate(&secret).await;
    let hashes = || {
        let ns = ns.to_string();
        async move { [template_hash(&ns, "a").await, template_hash(&ns, "b").await] }
    };
    let first = wait_for("the first rollout", Duration::from_secs(40), || async {
        let h = hashes().await;
        Ok(h.iter().any(Option::is_some).then_some(h))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let first_at = std::time::Instant::now();
    assert_eq!(
        first.iter().filter(|h| h.is_some()).count(),
        1,
        "one slot: one rollout at a time {first:?}"
    );
    let waiting = wait_for(
        "a Rotated event naming the workload waiting for a slot",
        TIMEOUT,
        || {
            let ns = ns.to_string();
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
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(waiting.contains("Deployment/"), "{waiting}");
    wait_for("the second rollout", TIMEOUT, || async {
        Ok(hashes().await.iter().all(Option::is_some).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        first_at.elapsed() >= timeout - Duration::from_secs(5),
        "the second rollout waited for the first one's slot: {:?}",
        first_at.elapsed()
    );
    assert!(op.log().contains("rollout not complete in time"));
    op.stop();
}

#[tokio::test]
async fn strategy_none_records_the_rotation_without_restarting_anything() {
    let ns = operator_namespace("op-none").await;
    let secret = unique("e2e/op/none");
    new_secret(&secret).await;
    let op = Operator::start(&ns, 18513, &env("DSO_MOTO_ENDPOINT"));
    op.ready().await;

    apply(&ns, &refreshing("db", &secret, SHORT, "None"));
    consuming_deployment(&ns, "web", "db");
    wait_ready(&ns, "db", "True", "Synced").await;
    let v2 = rotate(&secret).await;
    let d = wait_for("the rotation in status", Duration::from_secs(40), || {
        let (ns, v2) = (ns.to_string(), v2.clone());
        async move {
            let d = get_dso(&ns, "db").await?;
            Ok((version_of(&d) == Some(v2)).then_some(d))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rotated_workloads(&d), Some(vec![]), "{d:?}");
    assert_eq!(replicasets(&ns, "web").await, 1);
    assert_eq!(template_hash(&ns, "web").await, None);
    op.stop();
}

#[tokio::test]
async fn a_missing_secret_is_not_ready_with_reason_secret_not_found_and_an_event() {
    let ns = operator_namespace("op-missing").await;
    let op = Operator::start(&ns, 18514, &env("DSO_MOTO_ENDPOINT"));
    op.ready().await;
    apply(
        &ns,
        &refreshing("db", &unique("e2e/op/absent"), SHORT, "Rollout"),
    );
    let d = wait_ready(&ns, "db", "False", "SecretNotFound").await;
    let message = first_condition_message(&d);
    assert!(message.contains("ResourceNotFoundException"), "{message}");
    let ev = wait_for("a SecretNotFound event", TIMEOUT, || {
        let ns = ns.to_string();
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
}

/// What the test AWS endpoint does with each request.
#[derive(Clone)]
enum Upstream {
    /// Answers like Secrets Manager denying the caller (AccessDeniedException).
    Deny,
    /// Forwards to this HTTP endpoint (moto) and relays its answer.
    Forward(String),
}

/// The caller [`Upstream::Deny`]'s answers name, as AWS names the operator's role.
const DENYING_PRINCIPAL: &str = "arn:aws:iam::123456789012:user/e2e";

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
                        let body = format!(
                            r#"{{"__type":"AccessDeniedException","message":"User: {DENYING_PRINCIPAL} is not authorized to perform: secretsmanager:DescribeSecret"}}"#
                        );
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
    let ns = operator_namespace("op-denied").await;
    let (endpoint, _) = aws_endpoint(Upstream::Deny).await;
    let op = Operator::start(&ns, 18515, &endpoint);
    op.ready().await;
    apply(&ns, &refreshing("db", "prod/db", SHORT, "Rollout"));
    let d = wait_ready(&ns, "db", "False", "AccessDenied").await;
    let message = first_condition_message(&d);
    assert!(
        message.contains("secretsmanager:DescribeSecret"),
        "{message}"
    );
    // AWS names the caller, the operator's identity: not for the namespace's eyes.
    let status = serde_json::to_string(&d.status).expect("json");
    let events = format!("{:?}", events(&ns, "db").await);
    assert!(events.contains("AccessDenied"), "{events}");
    for text in [&status, &events] {
        assert!(!text.contains(DENYING_PRINCIPAL), "{text}");
        assert!(!text.contains("user/e2e"), "{text}");
    }
    op.stop();
}

/// The admin's secret allowlist (issue 13, finding 5): a DsoSecret naming a secret outside its
/// namespace's entries is refused by the webhook when a pod mounts it, and marked InvalidSpec
/// by the operator without a single AWS call — in sweep mode, which would otherwise list the
/// whole region. An allowed DsoSecret of the same namespace is looked up as usual.
#[tokio::test]
async fn a_secret_outside_the_namespaces_allowlist_is_refused_and_never_looked_up() {
    let file = std::env::temp_dir().join(format!("{}.yaml", unique("dso-allowlist")));
    std::fs::write(
        &file,
        "default: [\"{namespace}/\"]\nnamespaces:\n  dso-elsewhere: [\"elsewhere-only/\"]\n",
    )
    .expect("write the allowlist");
    let list = file.to_string_lossy().to_string();
    let mut wh = Webhook::start(18537, &["--secret-allowlist", &list]).await;
    let ns = wh.namespace(&[]).await;
    let (endpoint, seen) = aws_endpoint(Upstream::Forward(env("DSO_MOTO_ENDPOINT"))).await;
    let op = Operator::start_with(
        &ns,
        18527,
        &endpoint,
        &["--secret-allowlist", &list, "--aws-lookup", "sweep"],
    );
    op.ready().await;

    // Another team's secret, which exists: the operator must not even say so.
    let theirs = unique("e2e/op/other-team");
    new_secret(&theirs).await;
    apply(&ns, &refreshing("stolen", &theirs, SHORT, "Rollout"));
    let d = wait_ready(&ns, "stolen", "False", "InvalidSpec").await;
    let message = first_condition_message(&d);
    for part in [
        "spec.files[0].secretId",
        &format!("secret {theirs:?} (file \"password\")"),
        &format!("not in the secret allowlist of namespace {ns}"),
    ] {
        assert!(message.contains(part), "{part} not in {message}");
    }
    assert!(!message.contains("elsewhere-only"), "{message}");
    assert!(d.status.as_ref().is_some_and(|s| s.secrets.is_empty()));

    // A pod mounting it is refused by the webhook, saying why.
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let pod: Pod = serde_json::from_value(pod("web", &annotated("stolen"))).expect("pod");
    let denied = match pods.create(&PostParams::default(), &pod).await {
        Err(kube::Error::Api(s)) => s.message,
        other => panic!("the pod was not refused: {other:?}"),
    };
    for part in [
        format!(
            "DsoSecret \"stolen\" of namespace {ns} names secrets outside the namespace's secret allowlist"
        ),
        format!("spec.files[0].secretId: secret {theirs:?} (file \"password\")"),
    ] {
        assert!(denied.contains(&part), "{part} not in {denied}");
    }
    assert!(!denied.contains("elsewhere-only"), "{denied}");
    let calls = seen.lock().expect("lock").clone();
    assert!(
        calls.is_empty(),
        "AWS was called for a refused secret: {calls:?}"
    );

    // The namespace's own secret is looked up (the endpoint records calls at all).
    let mine = format!("{ns}/db");
    new_secret(&mine).await;
    apply(&ns, &refreshing("mine", &mine, SHORT, "Rollout"));
    wait_ready(&ns, "mine", "True", "Synced").await;
    let calls = seen.lock().expect("lock").clone();
    assert!(calls.iter().any(|c| c == "ListSecrets"), "{calls:?}");
    assert_eq!(
        ready(&get_dso(&ns, "stolen").await.expect("stolen")).map(|r| r.1),
        Some("InvalidSpec".to_string())
    );
    op.stop();
    drop(wh);
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn one_replica_leads_and_a_standby_takes_over_when_it_stops() {
    let ns = operator_namespace("op-lease").await;
    let first = Operator::start(&ns, 18516, &env("DSO_MOTO_ENDPOINT"));
    first.ready().await;
    assert_eq!(first.metric("dso_leader").await, 1.0);
    let second = Operator::start(&ns, 18517, &env("DSO_MOTO_ENDPOINT"));
    second.ready().await;
    let (_, body) = http_get(18517, "/readyz").await.expect("readyz");
    assert!(body.contains("standby"), "{body}");
    assert_eq!(second.metric("dso_leader").await, 0.0);

    first.stop();
    wait_for("the standby to lead", Duration::from_secs(30), || async {
        Ok((second.try_metric("dso_leader").await? == 1.0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    second.ready().await;
    second.stop();
}

#[tokio::test]
async fn a_standby_takes_over_from_a_killed_leader_only_after_a_full_lease_duration() {
    let ns = operator_namespace("op-lease-kill").await;
    let lease = ["--lease-seconds", "6"];
    let mut first = Operator::start_with(&ns, 18520, &env("DSO_MOTO_ENDPOINT"), &lease);
    first.ready().await;
    assert_eq!(first.metric("dso_leader").await, 1.0);
    let second = Operator::start_with(&ns, 18521, &env("DSO_MOTO_ENDPOINT"), &lease);
    second.ready().await;
    assert_eq!(second.metric("dso_leader").await, 0.0);

    // SIGKILL: no release. The Lease's last renewal is at most 2 s (a third) old.
    first.kill();
    let killed = std::time::Instant::now();
    wait_for("the standby to lead", Duration::from_secs(30), || async {
        Ok((second.try_metric("dso_leader").await? == 1.0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let after = killed.elapsed();
    assert!(
        after >= Duration::from_secs(3),
        "took over {after:?} after the kill: before the Lease could have expired"
    );
    second.ready().await;
    second.stop();
}

/// The whole chain on the node: the webhook ([`Webhook`], serving this test's namespace only),
/// dso-init writing its termination message, the operator reading it. A workload whose pods
/// already run the current version is not restarted when first seen; after PutSecretValue it
/// rolls, and the new pods read the new value.
#[tokio::test]
async fn after_a_rotation_the_new_pods_read_the_new_value() {
    // dso-init runs in pods: it reaches moto by name, through its Service.
    let moto = format!("AWS_ENDPOINT_URL={}", env("DSO_POD_AWS_ENDPOINT"));
    let mut wh = Webhook::start(18530, &["--init-env", &moto]).await;
    let ns = wh.namespace(&[]).await;
    let secret = unique("e2e/op/chain");
    let (old, new) = (unique("canary-chain-old"), unique("canary-chain-new"));
    create_secret(&secret, &json!({ "password": old }).to_string()).await;
    let spec = json!({
        "aws": {"roleArn": "arn:aws:iam::123456789012:role/e2e-operator"},
        "refresh": {"interval": SHORT}
    });
    apply(&ns, &dso_secret("db", &secret, spec));
    let app = app_container(
        "app",
        "echo \"value=$(cat /run/secrets/dso/db/password)\"; sleep 3600",
    );
    apply(&ns, &quick_deployment("web", "db", app));
    wait_printed(&ns, "web", &format!("value={old}"))
        .await
        .expect("the injected pod reads the secret");

    let op = Operator::start(&ns, 18518, &env("DSO_MOTO_ENDPOINT"));
    op.ready().await;
    wait_ready(&ns, "db", "True", "Synced").await;
    wait_recorded(&ns, "web").await;
    assert_eq!(replicasets(&ns, "web").await, 1);
    assert_eq!(
        template_hash(&ns, "web").await,
        None,
        "pods already running the current version are not restarted"
    );

    put_secret_value(&secret, &json!({ "password": new }).to_string()).await;
    wait_printed(&ns, "web", &format!("value={new}"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(replicasets(&ns, "web").await, 2);
    let dso = get_dso(&ns, "db").await.expect("the DsoSecret");
    let status = serde_json::to_string(&dso).expect("json");
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
}
