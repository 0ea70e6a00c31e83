//! Issue 15, item 2, end to end on the real cluster: `refresh.strategy: InPlace` with
//! `refresh.signal: SIGHUP`. The webhook gives the pod a shared process namespace and runs
//! DSO's containers as the app's user; after each swap the `dso-refresh` sidecar finds the app
//! container's main process and sends it SIGHUP. The app — a shell whose HUP trap counts and
//! reads the file — sees exactly one SIGHUP per rotation, each after the new file is in place,
//! in the same pod with no restart. A pod that asks for process isolation is refused by name.
//!
//! The webhook and the operator run as processes; dso-init and the sidecar run in the pods and
//! reach moto by name (`DSO_POD_AWS_ENDPOINT`).

use dso_e2e::operator::{get_dso, wait_ready};
use dso_e2e::{
    Operator, Webhook, annotated, app_container, apply, client, container_log, create_once_cached,
    create_secret, env, pod, put_secret_value, unique, wait_for,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);
const ROLE: &str = "arn:aws:iam::123456789012:role/e2e-signal";

/// The app: a shell (the container's main process) whose SIGHUP handler counts and prints the
/// file it then reads. `sleep & wait` lets the trap run at once.
const APP: &str = r#"n=0
trap 'n=$((n+1)); echo "hup=$n pw=$(cat /run/secrets/dso/db/password)"' HUP
echo "started pw=$(cat /run/secrets/dso/db/password)"
while true; do sleep 1 & wait $!; done"#;

fn restarts(p: &Pod, container: &str) -> i32 {
    p.status
        .iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .find(|c| c.name == container)
        .map(|c| c.restart_count)
        .unwrap_or(-1)
}

fn hups(ns: &str, pod: &str) -> Vec<String> {
    container_log(ns, pod, "app")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("hup="))
        .map(String::from)
        .collect()
}

async fn wait_line(ns: &str, pod: &str, line: &str) {
    wait_for(&format!("{pod} printing {line}"), TIMEOUT, || async {
        Ok(container_log(ns, pod, "app")?
            .lines()
            .any(|l| l == line)
            .then_some(()))
    })
    .await
    .unwrap_or_else(|e| {
        let side = container_log(ns, pod, "dso-refresh").unwrap_or_default();
        let app = container_log(ns, pod, "app").unwrap_or_default();
        panic!("{e:#}; app said: {app}; dso-refresh said: {side}")
    });
}

/// The sidecar's own figure: milliseconds from the start of the fetch to the signal.
fn sidecar_ms(ns: &str, pod: &str) -> Vec<String> {
    container_log(ns, pod, "dso-refresh")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(", ").nth(1))
        .filter_map(|rest| rest.strip_suffix(" ms after the fetch began"))
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn the_apps_sighup_handler_runs_once_per_rotation_in_the_same_pod() {
    dso_e2e::apply_crd();
    let mut wh = Webhook::start(
        18480,
        &[
            "--init-env",
            &format!("AWS_ENDPOINT_URL={}", env("DSO_POD_AWS_ENDPOINT")),
        ],
    )
    .await;
    let ns = wh.namespace(&[]).await;
    let secret = unique("e2e/signal/db");
    let (v1, v2, v3) = (
        unique("canary-sig-one"),
        unique("canary-sig-two"),
        unique("canary-sig-three"),
    );
    create_secret(&secret, &json!({"password": v1}).to_string()).await;
    apply(
        &ns,
        &json!({"apiVersion": "dso.dev/v1alpha1", "kind": "DsoSecret", "metadata": {"name": "db"},
                "spec": {"aws": {"roleArn": ROLE},
                         "files": [{"path": "password", "secretId": secret, "jsonKey": "password"}],
                         "refresh": {"interval": "10s", "strategy": "InPlace", "signal": "SIGHUP"}}}),
    );
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);

    // A pod that asked for separate process namespaces is refused, not silently changed.
    let mut isolated = pod("isolated", &annotated("db"));
    isolated["spec"]["shareProcessNamespace"] = json!(false);
    let refused = create_once_cached(
        &pods,
        &PostParams::default(),
        &serde_json::from_value(isolated).expect("pod"),
    )
    .await
    .expect_err("refused");
    assert!(
        refused.to_string().contains(
            "DsoSecret \"db\" asks for refresh.signal SIGHUP, but the pod sets shareProcessNamespace: false"
        ),
        "{refused}"
    );

    let mut manifest = pod("app", &annotated("db"));
    manifest["spec"]["containers"] = json!([app_container("app", APP)]);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(manifest).expect("pod"),
    )
    .await
    .expect("the pod is admitted");
    wait_line(&ns, "app", &format!("started pw={v1}")).await;
    let before = pods.get("app").await.expect("pod");
    let spec = before.spec.clone().expect("spec");
    assert_eq!(spec.share_process_namespace, Some(true));
    let users: Vec<(String, Option<i64>)> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| {
            (
                c.name.clone(),
                c.security_context.as_ref().and_then(|s| s.run_as_user),
            )
        })
        .collect();
    assert_eq!(
        users,
        [
            ("dso-init".to_string(), Some(1001)),
            ("dso-refresh".to_string(), Some(1001))
        ],
        "DSO's containers run as the app's user"
    );

    let op = Operator::start(&ns, 18580, &env("DSO_MOTO_ENDPOINT"));
    op.ready().await;
    wait_ready(&ns, "db", "True", "Synced").await;
    wait_for("the pod told its versions", TIMEOUT, || async {
        Ok(pods
            .get("app")
            .await?
            .metadata
            .annotations
            .and_then(|a| a.get("dso.dev/desired-versions").cloned()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(hups(&ns, "app").is_empty(), "no signal without a rotation");

    let mut latencies = Vec::new();
    for (n, value) in [(1, &v2), (2, &v3)] {
        let rotated = Instant::now();
        put_secret_value(&secret, &json!({"password": value}).to_string()).await;
        wait_line(&ns, "app", &format!("hup={n} pw={value}")).await;
        latencies.push(rotated.elapsed());
    }
    for (i, l) in latencies.iter().enumerate() {
        println!(
            "Signal: PutSecretValue {} -> the app's SIGHUP handler read the new value in {:.2} s (refresh.interval 10s)",
            i + 1,
            l.as_secs_f64()
        );
    }
    println!(
        "Signal: dso-refresh fetch start -> signal sent (ms): {:?}",
        sidecar_ms(&ns, "app")
    );

    // Settled: the status counts no stale pod; then nothing more has arrived.
    wait_for("the status to count no stale pod", TIMEOUT, || async {
        let d = get_dso(&ns, "db").await?;
        Ok(d.status
            .and_then(|s| s.in_place)
            .filter(|s| s.pods == 1 && s.stale == 0))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}; operator log: {}", op.log()));
    assert_eq!(
        hups(&ns, "app"),
        [format!("hup=1 pw={v2}"), format!("hup=2 pw={v3}")],
        "one SIGHUP per rotation, each after the new file was in place"
    );
    let after = pods.get("app").await.expect("pod");
    assert_eq!(after.metadata.uid, before.metadata.uid, "the same pod");
    assert_eq!(restarts(&after, "app"), 0, "the app never restarted");
    assert_eq!(
        restarts(&after, "dso-refresh"),
        0,
        "the sidecar never failed"
    );
    let stored = serde_json::to_string(&after).expect("json");
    assert!(
        ![&v1, &v2, &v3].iter().any(|v| stored.contains(v.as_str())),
        "a value in the pod object"
    );
    let side = container_log(&ns, "app", "dso-refresh").expect("log");
    assert!(
        ![&v1, &v2, &v3].iter().any(|v| side.contains(v.as_str())),
        "a value in the sidecar's log"
    );
}
