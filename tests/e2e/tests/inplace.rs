//! Issue 15, item 1, end to end on the real cluster: `refresh.strategy: InPlace`. The webhook
//! adds the `dso-refresh` native sidecar; the operator (which alone asks AWS about rotations)
//! writes `dso.dev/desired-versions` on the consuming pods; the kubelet hands it to the sidecar
//! through a downward-API file; the sidecar fetches with the pod's identity and swaps the
//! DsoSecret's directory at once. The app reads the new value in the same pod (same UID, no
//! restart), a reader of two files never sees a mix, and a failed fetch keeps the old files and
//! shows up in the DsoSecret's status.
//!
//! The webhook and the operator run as processes; dso-init and the sidecar run in the pods and
//! reach moto by name (`DSO_POD_AWS_ENDPOINT`).

use dso_e2e::operator::{get_dso, wait_ready};
use dso_e2e::{
    Operator, Webhook, annotated, app_container, apply, client, container_log, create_once_cached,
    create_secret, deployment, env, pod, put_secret_value, unique, wait_for,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);
const ROLE: &str = "arn:aws:iam::123456789012:role/e2e-inplace";

async fn webhook(port: u16) -> Webhook {
    let moto = format!("AWS_ENDPOINT_URL={}", env("DSO_POD_AWS_ENDPOINT"));
    Webhook::start(port, &["--init-env", &moto]).await
}

fn in_place(name: &str, files: Value) -> Value {
    json!({"apiVersion": "dso.dev/v1alpha1", "kind": "DsoSecret", "metadata": {"name": name},
           "spec": {"aws": {"roleArn": ROLE}, "files": files,
                    "refresh": {"interval": "10s", "strategy": "InPlace"}}})
}

/// Creates the pod; waits until it runs and its app printed a line starting with `prefix`.
async fn start(ns: &str, manifest: Value, prefix: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client().await, ns);
    let sent: Pod = serde_json::from_value(manifest).expect("pod");
    let name = sent.metadata.name.clone().expect("name");
    create_once_cached(&pods, &PostParams::default(), &sent)
        .await
        .expect("the pod is admitted");
    wait_printed(ns, &name, prefix).await;
    pods.get(&name).await.expect("pod")
}

async fn wait_printed(ns: &str, pod: &str, line: &str) {
    wait_for(&format!("{pod} printing {line}"), TIMEOUT, || async {
        Ok(container_log(ns, pod, "app")?
            .lines()
            .any(|l| l.starts_with(line))
            .then_some(()))
    })
    .await
    .unwrap_or_else(|e| {
        let side = container_log(ns, pod, "dso-refresh").unwrap_or_default();
        let init = container_log(ns, pod, "dso-init").unwrap_or_default();
        panic!("{e:#}; dso-init said: {init}; dso-refresh said: {side}")
    });
}

fn restarts(p: &Pod, container: &str) -> i32 {
    p.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .chain(
            p.status
                .iter()
                .flat_map(|s| s.init_container_statuses.iter().flatten()),
        )
        .find(|c| c.name == container)
        .map(|c| c.restart_count)
        .unwrap_or(-1)
}

async fn desired(ns: &str, pod: &str) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(client().await, ns);
    pods.get(pod)
        .await
        .ok()?
        .metadata
        .annotations?
        .get("dso.dev/desired-versions")
        .cloned()
}

/// The app reads `user` and `pass` (one JSON secret, `expand`) in a tight loop, each time after
/// one `cd` into the DsoSecret's directory, and prints `now=<user>/<pass>` on every change: a
/// mix would print two different versions on one line.
const READER: &str = r#"last=""; n=0
while true; do
  cd /run/secrets/dso/pair && u=$(cat user) && p=$(cat pass); cd /
  if [ "$u/$p" != "$last" ]; then echo "now=$u/$p"; last="$u/$p"; fi
  n=$((n+1)); if [ $((n % 500)) = 0 ]; then echo "reads=$n"; fi
  sleep 0.01
done"#;

#[tokio::test]
async fn the_app_reads_the_new_value_in_the_same_pod_and_never_a_mix_of_two_versions() {
    let mut wh = webhook(18470).await;
    let ns = wh.namespace(&[]).await;
    let secret = unique("e2e/inplace/pair");
    let (v1, v2) = (unique("one"), unique("two"));
    create_secret(&secret, &json!({"user": v1, "pass": v1}).to_string()).await;
    apply(
        &ns,
        &in_place("pair", json!([{"secretId": secret, "expand": true}])),
    );
    let mut manifest = pod("reader", &annotated("pair"));
    manifest["spec"]["containers"] = json!([app_container("app", READER)]);
    let before = start(&ns, manifest, &format!("now={v1}/{v1}")).await;
    let init_containers: Vec<String> = before
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .map(|c| format!("{}:{:?}", c.name, c.restart_policy))
        .collect();
    assert_eq!(
        init_containers,
        [
            "dso-init:None".to_string(),
            "dso-refresh:Some(\"Always\")".to_string()
        ],
        "the webhook added the native sidecar after dso-init"
    );

    let op = Operator::start(&ns, 18570, &env("DSO_MOTO_ENDPOINT"));
    op.ready().await;
    wait_ready(&ns, "pair", "True", "Synced").await;
    wait_for("the pod told its versions", TIMEOUT, || async {
        Ok(desired(&ns, "reader").await)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let describes_before = op.describe_calls().await;

    let rotated = Instant::now();
    put_secret_value(&secret, &json!({"user": v2, "pass": v2}).to_string()).await;
    wait_printed(&ns, "reader", &format!("now={v2}/{v2}")).await;
    let latency = rotated.elapsed();
    println!(
        "InPlace: PutSecretValue -> app reads the new value in {:.1} s (refresh.interval 10s)",
        latency.as_secs_f64()
    );
    // Readers keep going after the swap (the generation they were in stays until the next one).
    let reads_at_swap = container_log(&ns, "reader", "app")
        .expect("log")
        .matches("reads=")
        .count();
    wait_for("the reader to keep reading", TIMEOUT, || async {
        Ok((container_log(&ns, "reader", "app")?
            .matches("reads=")
            .count()
            > reads_at_swap)
            .then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));

    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let after = pods.get("reader").await.expect("pod");
    assert_eq!(after.metadata.uid, before.metadata.uid, "the same pod");
    assert_eq!(restarts(&after, "app"), 0, "the app never restarted");
    assert_eq!(
        restarts(&after, "dso-refresh"),
        0,
        "the sidecar never failed"
    );
    let log = container_log(&ns, "reader", "app").expect("log");
    let seen: Vec<&str> = log.lines().filter(|l| l.starts_with("now=")).collect();
    assert_eq!(
        seen,
        [format!("now={v1}/{v1}"), format!("now={v2}/{v2}")],
        "every read saw one version: the old or the new, never a mix"
    );
    let reads: usize = log
        .lines()
        .filter_map(|l| l.strip_prefix("reads="))
        .filter_map(|n| n.parse().ok())
        .max()
        .unwrap_or(0);
    println!("InPlace: the reader made {reads}+ consistent reads of two files across the swap");

    // Detection stayed central: the operator's DescribeSecret calls follow its interval, for
    // the one secret, not the pods.
    let describes = op.describe_calls().await - describes_before;
    println!(
        "InPlace: operator DescribeSecret calls during the rotation: {describes} in {:.1} s",
        latency.as_secs_f64()
    );
    assert!(
        describes <= (latency.as_secs_f64() / 10.0).ceil() + 1.0,
        "{describes} DescribeSecret calls in {latency:?}: more than one per interval"
    );
    let status = wait_for("the status to count no stale pod", TIMEOUT, || async {
        let d = get_dso(&ns, "pair").await?;
        Ok(d.status
            .and_then(|s| s.in_place)
            .filter(|s| s.pods == 1 && s.stale == 0))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(status.message, None);
    // The values stay out of what the apiserver stores.
    let stored = serde_json::to_string(&after).expect("json");
    assert!(
        !stored.contains(&v1) && !stored.contains(&v2),
        "a value in the pod object"
    );
}

#[tokio::test]
async fn a_failed_fetch_keeps_the_old_files_and_the_status_counts_the_pod_stale() {
    let mut wh = webhook(18472).await;
    let ns = wh.namespace(&[]).await;
    let secret = unique("e2e/inplace/bad");
    let old = unique("canary-inplace-old");
    create_secret(&secret, &json!({"password": old}).to_string()).await;
    apply(
        &ns,
        &in_place(
            "db",
            json!([{"path": "password", "secretId": secret, "jsonKey": "password"}]),
        ),
    );
    let mut manifest = pod("app", &annotated("db"));
    manifest["spec"]["containers"] = json!([app_container(
        "app",
        "while true; do echo \"pw=$(cat /run/secrets/dso/db/password)\"; sleep 1; done"
    )]);
    let before = start(&ns, manifest, &format!("pw={old}")).await;
    let op = Operator::start(&ns, 18572, &env("DSO_MOTO_ENDPOINT"));
    op.ready().await;
    wait_ready(&ns, "db", "True", "Synced").await;

    // A rotation to a value without the key the DsoSecret reads: the sidecar cannot extract it.
    let canary = unique("canary-inplace-new");
    put_secret_value(&secret, &json!({"other": canary}).to_string()).await;
    let status = wait_for("the pod counted stale", TIMEOUT, || async {
        let d = get_dso(&ns, "db").await?;
        Ok(d.status
            .and_then(|s| s.in_place)
            .filter(|s| s.stale == 1 && s.message.is_some()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}; operator log: {}", op.log()));
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("app: dso-refresh failed") && message.contains("MissingJsonKey"),
        "{message}"
    );
    assert!(!message.contains(&canary) && !message.contains(&old));

    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let after = pods.get("app").await.expect("pod");
    assert_eq!(after.metadata.uid, before.metadata.uid);
    assert_eq!(restarts(&after, "app"), 0, "the app never restarted");
    assert!(restarts(&after, "dso-refresh") >= 1, "the sidecar exited");
    let log = container_log(&ns, "app", "app").expect("log");
    let last = log
        .lines()
        .rev()
        .find(|l| l.starts_with("pw="))
        .unwrap_or("");
    assert_eq!(
        last,
        format!("pw={old}"),
        "the app still reads the old file"
    );
    let events = dso_e2e::kubectl(&["-n", &ns, "get", "events", "-o", "json"]);
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(events.contains("RefreshFailed"), "no RefreshFailed event");
    assert!(!events.contains(&canary), "a value in an event");
}

#[tokio::test]
async fn after_a_rotation_current_goes_from_no_pod_to_every_pod_and_the_histogram_counts_it_once() {
    let mut wh = webhook(18474).await;
    let ns = wh.namespace(&[]).await;
    let secret = unique("e2e/inplace/propagation");
    create_secret(&secret, &json!({"password": unique("one")}).to_string()).await;
    apply(
        &ns,
        &in_place(
            "db",
            json!([{"path": "password", "secretId": secret, "jsonKey": "password"}]),
        ),
    );
    let mut web = deployment(
        "web",
        &annotated("db"),
        vec![app_container("app", "sleep 3600")],
    );
    web["spec"]["replicas"] = json!(2);
    apply(&ns, &web);
    let op = Operator::start(&ns, 18574, &env("DSO_MOTO_ENDPOINT"));
    op.ready().await;
    wait_ready(&ns, "db", "True", "Synced").await;
    let propagation = |ns: String| async move {
        let d = get_dso(&ns, "db").await?;
        Ok::<_, anyhow::Error>(d.status.and_then(|s| s.propagation))
    };
    let first = wait_for("both pods current on the first versions", TIMEOUT, || {
        let p = propagation(ns.to_string());
        async move { Ok(p.await?.filter(|p| p.current == "2/2")) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}; operator log: {}", op.log()));
    assert_eq!(
        first.since, None,
        "the versions a DsoSecret starts with are no rotation"
    );
    let observed = "dso_rotation_propagation_seconds_count";
    assert_eq!(
        op.metric(observed).await,
        0.0,
        "nothing observed before a rotation"
    );

    put_secret_value(&secret, &json!({"password": unique("two")}).to_string()).await;
    // Every CURRENT value the new versions go through, in order.
    let seen = std::sync::Mutex::new(Vec::<String>::new());
    let seen_ref = &seen;
    let before = first.versions_hash.clone();
    let done = wait_for("the rotation to reach both pods", TIMEOUT, || {
        let p = propagation(ns.to_string());
        let before = before.clone();
        async move {
            let Some(p) = p.await?.filter(|p| p.versions_hash != before) else {
                return Ok(None);
            };
            let mut seen = seen_ref.lock().unwrap_or_else(|e| e.into_inner());
            if seen.last() != Some(&p.current) {
                seen.push(p.current.clone());
            }
            Ok((p.current == "2/2").then_some(p))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}; operator log: {}", op.log()));
    let seen = seen.into_inner().unwrap_or_else(|e| e.into_inner());
    assert_eq!(
        (
            seen.first().map(String::as_str),
            seen.last().map(String::as_str)
        ),
        (Some("0/2"), Some("2/2")),
        "CURRENT went from no pod to both: {seen:?}"
    );
    assert_eq!(
        done.workloads,
        [dso_api::WorkloadPropagation {
            workload: "Deployment/web".into(),
            pods: 2,
            current: 2
        }]
    );
    let (since, completed) = (
        done.since.expect("since"),
        done.completed.expect("completed"),
    );
    assert!(completed.0 >= since.0, "{since:?} .. {completed:?}");
    let table = dso_e2e::kubectl(&["-n", &ns, "get", "dsos", "db"]);
    let table = String::from_utf8_lossy(&table.stdout);
    let (header, row) = table.split_once('\n').expect("a header and a row");
    // By the header's character position: an empty column (DEGRADED, Rollout only) prints
    // nothing, so counting words would shift.
    let start = header
        .find("CURRENT")
        .unwrap_or_else(|| panic!("no CURRENT column: {table}"));
    let cell = row.get(start..).and_then(|r| r.split_whitespace().next());
    assert_eq!(cell, Some("2/2"), "{table}");
    wait_for(
        "one observation of the propagation time",
        TIMEOUT,
        || async { Ok((op.metric(observed).await == 1.0).then_some(())) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    // Once: the passes after the one that saw both pods current (every `interval`, and the
    // rechecks after telling pods) observe nothing more, and keep `completed`.
    let passes = op.reconciles().await;
    wait_for("two more reconciles of the DsoSecret", TIMEOUT, || async {
        Ok((op.reconciles().await >= passes + 2.0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}; operator log: {}", op.log()));
    assert_eq!(
        op.metric(observed).await,
        1.0,
        "the propagation time was observed again by a later pass"
    );
    let later = propagation(ns.to_string())
        .await
        .expect("status")
        .expect("propagation");
    assert_eq!(
        (later.completed, later.current.as_str()),
        (Some(completed.clone()), "2/2"),
        "completed is kept"
    );
    println!(
        "InPlace: rotation noticed at {since:?}, both pods current at {completed:?}; seen {seen:?}"
    );
}
