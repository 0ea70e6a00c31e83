//! `refresh.signal`: a shared process namespace, the target container in the plan, DSO's
//! containers as the target's user — and the pods that cannot have it, refused by name.

use super::*;
use rstest::rstest;

fn signal_catalog() -> Fake {
    catalog()
        .with_secret(
            NS,
            "hup",
            json!({"files": [{"path": "password", "secretId": "prod/db", "jsonKey": "password"}],
                   "refresh": {"strategy": "InPlace", "signal": "SIGHUP"}}),
        )
        .with_secret(
            NS,
            "live",
            json!({"files": [{"path": "password", "secretId": "prod/db"}],
                   "refresh": {"strategy": "InPlace"}}),
        )
}

/// A pod mounting `secrets`, with containers `app` (user 1001) and `proxy` (user 1002).
fn two_containers(secrets: &str, extra: Value) -> Pod {
    let base = json!({
        "metadata": {"annotations": {"dso.dev/secrets": secrets}},
        "spec": {"containers": [
            {"name": "app", "image": "a", "securityContext": {"runAsUser": 1001}},
            {"name": "proxy", "image": "p", "securityContext": {"runAsUser": 1002}}
        ]}
    });
    pod(merge_into(base, extra))
}

fn plan_of(c: &Container) -> dso_api::contract::InitPlan {
    serde_json::from_str(env(c, PLAN_ENV).expect("plan")).expect("plan json")
}

fn user(c: &Container) -> Option<i64> {
    c.security_context.as_ref().and_then(|s| s.run_as_user)
}

#[test]
fn a_signal_shares_the_process_namespace_and_runs_dso_as_the_first_containers_user() {
    let p = two_containers("hup", json!({}));
    let out = apply(&p, &inject(&p, &signal_catalog()).patch);
    assert_eq!(spec(&out).share_process_namespace, Some(true));
    let inits = spec(&out).init_containers.clone().unwrap_or_default();
    let (init, side) = (&inits[0], &inits[1]);
    assert_eq!(side.name, "dso-refresh");
    let plan = plan_of(side);
    assert_eq!(
        plan.signal_target.map(|t| t.container).as_deref(),
        Some("app")
    );
    assert_eq!(plan.secrets[0].signal, Some(dso_api::RefreshSignal::Sighup));
    assert_eq!((user(init), user(side)), (Some(1001), Some(1001)));
    assert_restricted(init);
    assert_restricted(side);
    let uid = side
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "DSO_POD_UID")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(uid, Some("metadata.uid"));
}

#[test]
fn the_annotation_picks_the_target_and_the_pods_user_serves_when_the_container_sets_none() {
    let p = two_containers(
        "hup",
        json!({"metadata": {"annotations": {"dso.dev/signal-container": "proxy"}}}),
    );
    let out = apply(&p, &inject(&p, &signal_catalog()).patch);
    let side = &spec(&out).init_containers.clone().unwrap_or_default()[1];
    assert_eq!(
        plan_of(side).signal_target.map(|t| t.container).as_deref(),
        Some("proxy")
    );
    assert_eq!(user(side), Some(1002));

    let p = pod(
        json!({"metadata": {"annotations": {"dso.dev/secrets": "hup"}},
                       "spec": {"securityContext": {"runAsUser": 2000}}}),
    );
    let out = apply(&p, &inject(&p, &signal_catalog()).patch);
    assert_eq!(user(init(&out)), Some(2000));
}

#[test]
fn without_a_signal_nothing_is_shared_and_dso_keeps_its_own_user() {
    for secrets in ["live", "db"] {
        let p = two_containers(
            secrets,
            json!({"metadata": {"annotations": {"dso.dev/signal-container": "proxy"}}}),
        );
        let out = apply(&p, &inject(&p, &signal_catalog()).patch);
        assert_eq!(spec(&out).share_process_namespace, None, "{secrets}");
        assert_eq!(user(init(&out)), Some(65532), "{secrets}");
        assert_eq!(plan_of(init(&out)).signal_target, None, "{secrets}");
        assert!(
            spec(&out)
                .init_containers
                .iter()
                .flatten()
                .flat_map(|c| c.env.iter().flatten())
                .all(|e| e.name != "DSO_POD_UID")
        );
    }
}

#[test]
fn a_pod_already_sharing_its_process_namespace_gets_no_second_operation() {
    let p = two_containers("hup", json!({"spec": {"shareProcessNamespace": true}}));
    let patch = inject(&p, &signal_catalog()).patch;
    let text = serde_json::to_string(&patch).expect("json");
    assert!(!text.contains("shareProcessNamespace"), "{text}");
    assert_eq!(spec(&apply(&p, &patch)).share_process_namespace, Some(true));
}

#[rstest]
#[case::isolation_asked_for(
    json!({"spec": {"shareProcessNamespace": false}}),
    "shareProcessNamespace: false"
)]
#[case::host_pid(
    json!({"spec": {"hostPID": true}}),
    "DsoSecret \"hup\" asks for refresh.signal SIGHUP, but the pod sets hostPID: true, and Kubernetes refuses hostPID together with the shareProcessNamespace: true"
)]
#[case::target_unknown(
    json!({"metadata": {"annotations": {"dso.dev/signal-container": "web"}}}),
    "dso.dev/signal-container: names \"web\", but the pod has no such container (its containers: app, proxy)"
)]
#[case::target_empty(
    json!({"metadata": {"annotations": {"dso.dev/signal-container": " "}}}),
    "dso.dev/signal-container: empty"
)]
#[case::target_without_the_mount(
    json!({"metadata": {"annotations": {"dso.dev/signal-container": "proxy", "dso.dev/containers": "app"}}}),
    "\"proxy\", which does not mount the secrets"
)]
#[case::target_as_root(
    json!({"spec": {"containers": [{"name": "app", "image": "a", "securityContext": {"runAsUser": 0}}, {"name": "proxy", "image": "p"}]}}),
    "container \"app\" runs as root"
)]
#[case::target_user_unknown(
    json!({"spec": {"containers": [{"name": "app", "image": "a"}, {"name": "proxy", "image": "p"}]}}),
    "container \"app\" sets no runAsUser"
)]
fn a_pod_that_cannot_be_signalled_is_refused_with_the_reason(
    #[case] extra: Value,
    #[case] reason: &str,
) {
    let p = two_containers("hup", extra);
    let e = mutate(&p, NS, &signal_catalog(), &cfg()).expect_err("denied");
    assert!(e.to_string().contains(reason), "{e}");
}

#[test]
fn a_refusal_names_the_dsosecret_and_its_signal() {
    let p = two_containers("hup", json!({"spec": {"shareProcessNamespace": false}}));
    let e = mutate(&p, NS, &signal_catalog(), &cfg()).expect_err("denied");
    assert_eq!(e.metric_label(), "signal");
    assert!(
        e.to_string()
            .starts_with("DsoSecret \"hup\" asks for refresh.signal SIGHUP, but the pod sets"),
        "{e}"
    );
}
