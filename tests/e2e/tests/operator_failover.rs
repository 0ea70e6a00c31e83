//! The operator when things go wrong mid-rotation, on the real cluster against moto: a leader
//! killed in the middle of a rollout, a Lease stolen while a reconcile is in flight, rollouts
//! that cannot go on by themselves (paused, stalled), and `dso.dev/refresh` sent too often.
//!
//! Each test has its own namespace, operators (metrics on ports 18540-18559) and Lease.
//! "Exactly one rollout per rotation" is counted where Kubernetes counts it: one more
//! ReplicaSet and one more `deployment.kubernetes.io/revision` per template change.

use dso_e2e::operator::{
    events, events_for, get_dso, replicasets, revision, slow_rollout_deployment, template_hash,
    wait_available, wait_ready, wait_recorded, wait_replicasets,
};
use dso_e2e::{
    Operator, TestNamespace, annotated, app_container, apply, apply_crd, check, client,
    create_secret, deployment, env, kubectl, namespace, put_secret_value, quick_deployment,
    refreshing, unique, wait_for,
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The schema's shortest refresh interval: how soon an operator notices a rotation.
const INTERVAL: Duration = Duration::from_secs(10);

async fn operator_namespace(prefix: &str) -> TestNamespace {
    apply_crd();
    namespace(&client().await, prefix, &[]).await
}

fn version_of(d: &dso_api::DsoSecret) -> Option<String> {
    d.status.as_ref()?.secrets.first()?.version_id.clone()
}

async fn wait_leader(op: &Operator) {
    wait_for("the standby to lead", Duration::from_secs(40), || async {
        Ok((op.try_metric("dso_leader").await? == 1.0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Waits until `op` has finished a reconcile after `count` of them, then one more interval
/// with slack, so that anything it would do about the current state is done.
async fn settle(op: &Operator, count: f64) {
    wait_for("another reconcile", TIMEOUT, || async {
        Ok((op.reconciles().await > count).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(INTERVAL + Duration::from_secs(3)).await;
}

/// Rotation → SIGKILL of the leader in the middle of the rollout (its new ReplicaSet exists,
/// its pods are not ready) → the standby takes over and does not roll again. Then a rotation
/// whose leader is killed before it can roll: the new leader rolls, once.
#[tokio::test]
async fn a_leader_killed_during_a_rotation_leaves_exactly_one_rollout_per_rotation() {
    let ns = operator_namespace("op-failover").await;
    let secret = unique("e2e/op/failover");
    create_secret(&secret, "canary-failover-1").await;
    let lease = ["--lease-seconds", "6"];
    let moto = env("DSO_MOTO_ENDPOINT");
    let mut first = Operator::start_with(&ns, 18540, &moto, &lease);
    first.ready().await;
    let second = Operator::start_with(&ns, 18541, &moto, &lease);
    second.ready().await;
    assert_eq!(first.metric("dso_leader").await, 1.0);
    assert_eq!(second.metric("dso_leader").await, 0.0);

    apply(&ns, &refreshing("db", &secret, "10s", "Rollout"));
    apply(&ns, &slow_rollout_deployment("web", "db", None));
    wait_available(&ns, "web").await;
    wait_ready(&ns, "db", "True", "Synced").await;
    wait_recorded(&ns, "web").await;
    assert_eq!(replicasets(&ns, "web").await, 1);

    // Rotation 1: kill the leader once its rollout is under way.
    put_secret_value(&secret, "canary-failover-2").await;
    let rotated = Instant::now();
    wait_replicasets(&ns, "web", 2, Duration::from_secs(40)).await;
    let rolled_after = rotated.elapsed();
    first.kill();
    let killed = Instant::now();
    wait_leader(&second).await;
    let takeover = killed.elapsed();
    settle(&second, 0.0).await;
    let rs_after_first = replicasets(&ns, "web").await;
    let rev_after_first = revision(&ns, "web").await;

    // Rotation 2: a new standby, and the leader killed right after the rotation, before its
    // next look (10 s interval) can roll anything.
    let third = Operator::start_with(&ns, 18542, &moto, &lease);
    third.ready().await;
    let mut second = second;
    put_secret_value(&secret, "canary-failover-3").await;
    second.kill();
    let killed = Instant::now();
    wait_leader(&third).await;
    let takeover_2 = killed.elapsed();
    wait_replicasets(&ns, "web", 3, Duration::from_secs(40)).await;
    settle(&third, third.reconciles().await).await;
    let rs_after_second = replicasets(&ns, "web").await;
    let rev_after_second = revision(&ns, "web").await;
    let rolled_by_third = third
        .try_metric("dso_rollouts_total{kind=\"Deployment\"}")
        .await
        .unwrap_or(0.0);
    eprintln!(
        "[failover] rotation 1: rolled {rolled_after:?} after the rotation, leader killed mid-rollout, standby led {takeover:?} after the kill; ReplicaSets {rs_after_first}, revision {rev_after_first:?}"
    );
    eprintln!(
        "[failover] rotation 2: leader killed before rolling, standby led {takeover_2:?} after the kill and rolled {rolled_by_third} time(s); ReplicaSets {rs_after_second}, revision {rev_after_second:?}"
    );
    assert_eq!(rs_after_first, 2, "one rollout for rotation 1");
    assert_eq!(rev_after_first.as_deref(), Some("2"));
    assert_eq!(rs_after_second, 3, "one rollout for rotation 2");
    assert_eq!(rev_after_second.as_deref(), Some("3"));
    assert_eq!(rolled_by_third, 1.0);
    assert!(
        takeover >= Duration::from_secs(3),
        "took over {takeover:?} after a SIGKILL: before the Lease could have expired"
    );
    third.stop();
}

/// A Secrets Manager endpoint in front of moto that holds every request for the current delay
/// before forwarding it (one request per connection). Returns its URL, the delay (ms) and how
/// many requests it is holding now.
async fn delaying_aws(upstream: String) -> (String, Arc<AtomicU64>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let delay = Arc::new(AtomicU64::new(0));
    let held = Arc::new(AtomicUsize::new(0));
    let (d, h) = (delay.clone(), held.clone());
    let authority = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (d, h, authority) = (d.clone(), h.clone(), authority.clone());
            tokio::spawn(async move {
                let Some(request) = read_request(&mut sock).await else {
                    return;
                };
                h.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(d.load(Ordering::SeqCst))).await;
                h.fetch_sub(1, Ordering::SeqCst);
                let Ok(mut up) = tokio::net::TcpStream::connect(&authority).await else {
                    return;
                };
                let mut answer = Vec::new();
                if up.write_all(&request).await.is_ok() && up.read_to_end(&mut answer).await.is_ok()
                {
                    let _ = sock.write_all(&answer).await;
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), delay, held)
}

/// Reads one HTTP/1.1 request and returns it with `Connection: close`, ready to forward.
async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
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
        if got.len() < end + 4 + len {
            continue;
        }
        let head: String = head
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        let mut out = format!("{head}Connection: close\r\n\r\n").into_bytes();
        out.extend_from_slice(&got[end + 4..end + 4 + len]);
        return Some(out);
    }
}

/// A reconcile is waiting for AWS when another replica takes the Lease: the old leader stops
/// at once and writes nothing afterwards — no template patch, no status — even when AWS then
/// answers with a rotated version.
#[tokio::test]
async fn a_leader_that_loses_its_lease_mid_reconcile_patches_nothing_afterwards() {
    let ns = operator_namespace("op-lease-lost").await;
    let secret = unique("e2e/op/lease-lost");
    let v1 = create_secret(&secret, "canary-lease-lost-1").await;
    let (endpoint, delay, held) = delaying_aws(env("DSO_MOTO_ENDPOINT")).await;
    let mut op = Operator::start_with(
        &ns,
        18543,
        &endpoint,
        &[
            "--lease-seconds",
            "6",
            "--refresh-min-interval",
            "1s",
            "--aws-timeout",
            "30s",
        ],
    );
    op.ready().await;
    apply(&ns, &refreshing("db", &secret, "1h", "Rollout"));
    apply(
        &ns,
        &deployment(
            "web",
            &annotated("db"),
            vec![app_container("app", "sleep 3600")],
        ),
    );
    wait_ready(&ns, "db", "True", "Synced").await;
    wait_recorded(&ns, "web").await;

    // AWS now answers after 12 s; a forced check starts a reconcile that waits for it.
    let answer_in = Duration::from_secs(12);
    delay.store(answer_in.as_millis() as u64, Ordering::SeqCst);
    put_secret_value(&secret, "canary-lease-lost-2").await;
    let dsos: Api<dso_api::DsoSecret> = Api::namespaced(client().await, &ns);
    dsos.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"dso.dev/refresh": "1"}}})),
    )
    .await
    .expect("annotate dso.dev/refresh");
    wait_for("the operator's call held by AWS", TIMEOUT, || async {
        Ok((held.load(Ordering::SeqCst) > 0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // Another replica takes the Lease (as after a partition: the old leader did not see it go).
    let leases: Api<Lease> = Api::namespaced(client().await, &ns);
    let mut lease = leases.get("dso-operator").await.expect("the Lease");
    let spec = lease.spec.as_mut().expect("spec");
    spec.holder_identity = Some("another-replica".into());
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    spec.lease_duration_seconds = Some(3600);
    leases
        .replace("dso-operator", &PostParams::default(), &lease)
        .await
        .expect("take the Lease");
    let taken = Instant::now();

    let status = op.wait_exit(Duration::from_secs(30)).await;
    let stopped_after = taken.elapsed();
    // Past the moment AWS answers the held call with the rotated version, plus slack.
    tokio::time::sleep(answer_in.saturating_sub(taken.elapsed()) + Duration::from_secs(4)).await;
    eprintln!(
        "[lease] the old leader stopped {stopped_after:?} after losing the Lease: {status:?}"
    );
    assert!(
        status.is_some_and(|s| !s.success()),
        "the operator exits with an error when it loses the Lease: {status:?}"
    );
    assert!(op.log().contains("lost the leader Lease"), "{}", op.log());
    assert_eq!(
        template_hash(&ns, "web").await,
        None,
        "the old leader patched the workload after losing the Lease"
    );
    assert_eq!(replicasets(&ns, "web").await, 1);
    let d = get_dso(&ns, "db").await.expect("DsoSecret");
    assert_eq!(
        version_of(&d).as_deref(),
        Some(v1.as_str()),
        "the old leader wrote status after losing the Lease"
    );
}

fn pause(ns: &str, name: &str) {
    check(
        kubectl(&[
            "patch",
            "deployment",
            name,
            "-n",
            ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"paused":true}}"#,
        ]),
        "pause the Deployment",
    );
}

/// One rollout slot and a long rollout timeout: a paused Deployment and one past its progress
/// deadline give the slot back at once (with an event saying so) instead of holding it for the
/// timeout, so the third workload rolls within seconds.
///
/// Each release is its own event on the DsoSecret and on the workload, naming the workload
/// and why: kube's event recorder used to fold the second one into the first (same reason and
/// object) and keep the first note, so the stalled workload was never named.
#[tokio::test]
async fn paused_and_stalled_rollouts_give_their_slot_back_and_say_so() {
    let ns = operator_namespace("op-slot-release").await;
    let secret = unique("e2e/op/slot-release");
    create_secret(&secret, "canary-slot-1").await;
    let op = Operator::start_with(
        &ns,
        18544,
        &env("DSO_MOTO_ENDPOINT"),
        &["--max-concurrent-rollouts", "1", "--rollout-timeout", "10m"],
    );
    op.ready().await;
    apply(&ns, &refreshing("db", &secret, "10s", "Rollout"));
    apply(&ns, &slow_rollout_deployment("paused", "db", None));
    apply(&ns, &slow_rollout_deployment("stalled", "db", Some(5)));
    apply(
        &ns,
        &quick_deployment("quick", "db", app_container("app", "sleep 3600")),
    );
    for name in ["paused", "stalled", "quick"] {
        wait_available(&ns, name).await;
        wait_recorded(&ns, name).await;
    }
    pause(&ns, "paused");
    wait_ready(&ns, "db", "True", "Synced").await;

    put_secret_value(&secret, "canary-slot-2").await;
    let rotated = Instant::now();
    wait_for("all three rolled", Duration::from_secs(90), || {
        let ns = ns.to_string();
        async move {
            for name in ["paused", "stalled", "quick"] {
                if template_hash(&ns, name).await.is_none() {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let all_rolled = rotated.elapsed();
    let notes = wait_for("two RolloutSlotReleased events", TIMEOUT, || {
        let ns = ns.to_string();
        async move {
            let notes: Vec<String> = events(&ns, "db")
                .await
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("RolloutSlotReleased"))
                .filter_map(|e| e.message)
                .collect();
            Ok((notes.len() >= 2).then_some(notes))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("[slots] three workloads rolled through one slot in {all_rolled:?}: {notes:?}");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("Deployment/paused") && n.contains("paused")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("Deployment/stalled") && n.contains("ProgressDeadlineExceeded")),
        "{notes:?}"
    );
    // What the user sees: `kubectl events --for` the DsoSecret, and each workload's events.
    let seen = check(
        kubectl(&["events", "-n", &ns, "--for", "dsosecret/db"]),
        "kubectl events --for dsosecret/db",
    );
    for name in ["Deployment/paused", "Deployment/stalled"] {
        assert!(
            seen.lines()
                .any(|l| l.contains("RolloutSlotReleased") && l.contains(name)),
            "{name} in:\n{seen}"
        );
    }
    for (name, why) in [
        ("paused", "is paused"),
        ("stalled", "ProgressDeadlineExceeded"),
    ] {
        let on_workload: Vec<String> = events_for(&ns, "Deployment", name)
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("RolloutSlotReleased"))
            .filter_map(|e| e.message)
            .collect();
        assert!(
            on_workload.iter().any(|n| n.contains(why)),
            "Deployment/{name}: {on_workload:?}"
        );
    }
    op.stop();
}

/// `dso.dev/refresh` twice within `--refresh-min-interval`: the second forced check is refused
/// with an event, then made once the interval has passed.
#[tokio::test]
async fn a_refresh_sooner_than_the_minimum_interval_is_refused_with_an_event_then_made() {
    let ns = operator_namespace("op-refresh-limit").await;
    let secret = unique("e2e/op/refresh-limit");
    create_secret(&secret, "canary-refresh-1").await;
    let min = Duration::from_secs(20);
    let op = Operator::start_with(
        &ns,
        18545,
        &env("DSO_MOTO_ENDPOINT"),
        &["--refresh-min-interval", "20s"],
    );
    op.ready().await;
    apply(&ns, &refreshing("db", &secret, "1h", "Rollout"));
    wait_ready(&ns, "db", "True", "Synced").await;
    let dsos: Api<dso_api::DsoSecret> = Api::namespaced(client().await, &ns);
    let refresh = |v: &'static str| {
        let dsos = dsos.clone();
        async move {
            dsos.patch(
                "db",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"dso.dev/refresh": v}}})),
            )
            .await
            .expect("annotate dso.dev/refresh");
        }
    };
    let calls = op.describe_calls().await;
    refresh("1").await;
    wait_for("the first forced check", TIMEOUT, || async {
        Ok((op.describe_calls().await > calls).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let first = Instant::now();
    let calls = op.describe_calls().await;

    let v2 = put_secret_value(&secret, "canary-refresh-2").await;
    refresh("2").await;
    let note = wait_for("a RefreshRateLimited event", TIMEOUT, || {
        let ns = ns.to_string();
        async move {
            Ok(events(&ns, "db")
                .await
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("RefreshRateLimited"))
                .find_map(|e| e.message))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        note.contains("dso.dev/refresh=2") && note.contains("20s"),
        "{note}"
    );
    assert_eq!(
        op.describe_calls().await,
        calls,
        "no AWS call for the refused refresh"
    );
    wait_for("the deferred forced check", TIMEOUT, || {
        let (ns, v2) = (ns.to_string(), v2.clone());
        async move { Ok((version_of(&get_dso(&ns, "db").await?) == Some(v2)).then_some(())) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let made_after = first.elapsed();
    eprintln!(
        "[refresh] the second refresh was made {made_after:?} after the first (minimum {min:?})"
    );
    assert!(made_after >= min - Duration::from_secs(1), "{made_after:?}");
    assert!(!format!("{:?}", events(&ns, "db").await).contains("canary-refresh"));
    op.stop();
}
