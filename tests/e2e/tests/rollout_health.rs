//! The health of the rollouts DSO starts, on the real cluster against moto: a rollout whose new
//! pods never become Ready marks the DsoSecret `Degraded`, naming the workload, within
//! `--rollout-timeout` (set short here); an edit of the Deployment that is not of its template
//! leaves it; its new pods becoming Ready later complete the rollout and clear it. Jobs and CronJobs are never rolled: status says their next run gets
//! the new version.
//!
//! Each test runs its own operator process in its own namespace (ports 18533-18534).

use dso_api::DsoSecret;
use dso_e2e::operator::{apply_consumer, events, get_dso, slow_rollout_deployment, wait_ready};
use dso_e2e::{
    Operator, annotated, app_container, apply, apply_crd, client, create_secret, env, kubectl,
    namespace, put_secret_value, refreshing, unique, wait_for,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use serde_json::json;
use std::time::{Duration, Instant};

/// The rollout deadline of these tests' operators.
const DEADLINE: Duration = Duration::from_secs(15);

fn degraded(d: &DsoSecret) -> Option<Condition> {
    d.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .cloned()
}

/// Waits until the DsoSecret's Degraded condition has `status`; returns it.
async fn wait_degraded(ns: &str, name: &str, status: &str, timeout: Duration) -> Condition {
    wait_for(
        &format!("DsoSecret {name} Degraded={status}"),
        timeout,
        || async move { Ok(degraded(&get_dso(ns, name).await?).filter(|c| c.status == status)) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn a_rollout_whose_new_pods_never_become_ready_marks_the_dsosecret_degraded_naming_the_workload()
 {
    apply_crd();
    let ns = namespace(&client().await, "op-degraded", &[]).await;
    let secret = unique("e2e/op/degraded");
    create_secret(&secret, "canary-degraded-1").await;
    let op = Operator::start_with(
        &ns,
        18533,
        &env("DSO_MOTO_ENDPOINT"),
        &["--rollout-timeout", &format!("{}s", DEADLINE.as_secs())],
    );
    op.ready().await;
    apply(&ns, &refreshing("db", &secret, "10s", "Rollout"));
    // Its pods are Ready only without DSO's template annotation: the new version's pods never
    // are (a bad new version), and the old pod stays (maxUnavailable 0).
    apply_consumer(&ns, "db", &slow_rollout_deployment("web", "db", None)).await;
    let healthy = wait_degraded(&ns, "db", "False", Duration::from_secs(30)).await;
    assert_eq!(healthy.reason, "RolloutsHealthy");

    put_secret_value(&secret, "canary-degraded-2").await;
    let rotated = Instant::now();
    let patched = wait_for("the rollout", Duration::from_secs(40), || async {
        let out = kubectl(&[
            "get",
            "deploy",
            "web",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.template.metadata.annotations.dso\\.dev/versions-hash}",
        ]);
        Ok((!out.stdout.is_empty()).then(Instant::now))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let condition = wait_degraded(&ns, "db", "True", DEADLINE + Duration::from_secs(30)).await;
    let degraded_after = patched.elapsed();
    println!(
        "[degraded] rollout started {:?} after the rotation; Degraded {degraded_after:?} after the rollout started (--rollout-timeout {DEADLINE:?}): {}: {}",
        patched - rotated,
        condition.reason,
        condition.message
    );
    assert_eq!(condition.reason, "RolloutTimedOut");
    assert!(
        condition.message.starts_with("Deployment/web: "),
        "{}",
        condition.message
    );
    assert!(
        condition.message.contains("1 of 1 pods updated"),
        "{}",
        condition.message
    );
    assert!(
        degraded_after >= DEADLINE - Duration::from_secs(1)
            && degraded_after <= DEADLINE + Duration::from_secs(15),
        "Degraded {degraded_after:?} after the rollout started"
    );
    let d = get_dso(&ns, "db").await.expect("DsoSecret");
    assert_eq!(
        dso_e2e::ready(&d),
        Some(("True".into(), "Synced".into())),
        "the secret itself still resolves"
    );
    let columns = kubectl(&["get", "dsos", "db", "-n", &ns]);
    let columns = String::from_utf8_lossy(&columns.stdout);
    let (header, row) = columns.split_once('\n').expect("a header and a row");
    let at = header.find("DEGRADED").expect("a DEGRADED column");
    assert!(row[at..].starts_with("True"), "{columns}");
    let warned = events(&ns, "db").await.into_iter().any(|e| {
        e.reason.as_deref() == Some("RolloutTimedOut")
            && e.type_.as_deref() == Some("Warning")
            && e.message.is_some_and(|m| m.contains("Deployment/web"))
    });
    assert!(warned, "a RolloutTimedOut warning event on the DsoSecret");
    let status = serde_json::to_string(&d.status).expect("status");
    assert!(!status.contains("canary-degraded"), "no value in status");
    assert!(!op.log().contains("canary-degraded"), "no value in the log");

    // An edit of the Deployment that is not of its template (an annotation: it bumps
    // metadata.generation, as a scale does) does not take DSO's rollout over: still Degraded.
    kubectl(&["annotate", "deploy", "web", "-n", &ns, "team=shop"]);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let still = degraded(&get_dso(&ns, "db").await.expect("DsoSecret")).expect("Degraded");
    assert_eq!(
        (still.status.as_str(), still.reason.as_str()),
        ("True", "RolloutTimedOut"),
        "an edit that is not of the pod template leaves the rollout DSO's: {}",
        still.message
    );

    // The new pod becomes Ready later (what it waited for is fixed; here: its probe stops
    // failing), without any change to the template: the rollout completes, and only then the
    // condition clears.
    kubectl(&[
        "annotate",
        "pods",
        "-n",
        &ns,
        "-l",
        "app=web",
        "dso.dev/versions-hash-",
    ]);
    let cleared = wait_degraded(&ns, "db", "False", Duration::from_secs(90)).await;
    assert_eq!(cleared.reason, "RolloutsHealthy");
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client().await, &ns);
    let web = deployments.get("web").await.expect("Deployment web");
    let st = web.status.unwrap_or_default();
    assert!(
        st.updated_replicas == Some(1)
            && st.available_replicas == Some(1)
            && st.replicas == Some(1),
        "cleared because the rollout completed: {st:?}"
    );
    op.stop();
}

#[tokio::test]
async fn cronjobs_are_never_rolled_and_status_says_their_next_run_gets_the_new_version() {
    apply_crd();
    let ns = namespace(&client().await, "op-nextrun", &[]).await;
    let secret = unique("e2e/op/nextrun");
    create_secret(&secret, "canary-nextrun-1").await;
    let op = Operator::start(&ns, 18534, &env("DSO_MOTO_ENDPOINT"));
    op.ready().await;
    apply(&ns, &refreshing("db", &secret, "10s", "Rollout"));
    let pod_spec = json!({
        "restartPolicy": "Never",
        "containers": [app_container("app", "true")],
    });
    apply(
        &ns,
        &json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "nightly"},
            "spec": {"schedule": "0 3 * * *", "suspend": true, "jobTemplate": {"spec": {
                "template": {"metadata": {"annotations": annotated("db")}, "spec": pod_spec}
            }}}
        }),
    );
    apply(
        &ns,
        &json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "migrate"},
            "spec": {"suspend": true, "template": {"metadata": {"annotations": annotated("db")}, "spec": pod_spec}}
        }),
    );
    wait_ready(&ns, "db", "True", "Synced").await;

    let version = put_secret_value(&secret, "canary-nextrun-2").await;
    let d = wait_for("the rotation recorded", Duration::from_secs(40), || async {
        let d = get_dso(&ns, "db").await?;
        let seen = d
            .status
            .as_ref()
            .and_then(|s| s.secrets.first())
            .and_then(|s| s.version_id.clone());
        Ok((seen.as_deref() == Some(version.as_str())).then_some(d))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let rotation = d
        .status
        .and_then(|s| s.last_rotation)
        .expect("status.lastRotation");
    assert_eq!(rotation.workloads, Vec::<String>::new(), "nothing rolled");
    assert_eq!(
        rotation.next_run,
        vec!["CronJob/nightly".to_string(), "Job/migrate".to_string()]
    );
    let note = events(&ns, "db")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Rotated"))
        .find_map(|e| e.message)
        .expect("a Rotated event");
    assert!(
        note.contains("their next run gets the new versions: CronJob/nightly, Job/migrate"),
        "{note}"
    );
    for kind in ["cronjob/nightly", "job/migrate"] {
        let out = kubectl(&["get", kind, "-n", &ns, "-o", "json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && !text.is_empty(), "{kind}");
        assert!(!text.contains("dso.dev/versions-hash"), "{kind} patched");
    }
    op.stop();
}
