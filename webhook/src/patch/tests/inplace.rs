//! `strategy: InPlace`: the dso-refresh native sidecar and the downward-API volume that tells it
//! the desired versions.

use super::*;

fn in_place_catalog() -> Fake {
    catalog().with_secret(
        NS,
        "live",
        json!({"files": [{"path": "password", "secretId": "prod/db", "jsonKey": "password"}],
               "refresh": {"strategy": "InPlace"}}),
    )
}

fn with(secrets: &str, extra: Value) -> Pod {
    pod(merge_into(
        json!({"metadata": {"annotations": {"dso.dev/secrets": secrets}}}),
        extra,
    ))
}

#[test]
fn an_in_place_dsosecret_adds_the_refresh_sidecar_right_after_dso_init() {
    for extra in [
        json!({}),
        json!({"spec": {"initContainers": [{"name": "migrate", "image": "m"}]}}),
    ] {
        let p = with("db,live", extra);
        let out = apply(&p, &inject(&p, &in_place_catalog()).patch);
        let inits = spec(&out).init_containers.clone().unwrap_or_default();
        let names: Vec<_> = inits.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(&names[..2], ["dso-init", "dso-refresh"]);
        let side = &inits[1];
        assert_eq!(
            side.restart_policy.as_deref(),
            Some("Always"),
            "native sidecar"
        );
        assert_eq!(side.args, Some(vec!["refresh".to_string()]));
        assert_eq!(side.image, init(&out).image);
        assert_eq!(
            env(side, PLAN_ENV),
            env(init(&out), PLAN_ENV),
            "the same plan"
        );
        assert_restricted(side);
        let plan: dso_api::contract::InitPlan =
            serde_json::from_str(env(side, PLAN_ENV).expect("plan")).expect("plan json");
        let flags: Vec<_> = plan
            .secrets
            .iter()
            .map(|s| (s.name.as_str(), s.in_place))
            .collect();
        assert_eq!(flags, [("db", false), ("live", true)]);
        let mounts = side.volume_mounts.clone().unwrap_or_default();
        let desired = mounts
            .iter()
            .find(|m| m.name == "dso-desired-versions")
            .expect("the desired-versions mount");
        assert_eq!(
            (desired.mount_path.as_str(), desired.read_only),
            ("/etc/dso-refresh", Some(true))
        );
        let volume = spec(&out)
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "dso-desired-versions")
            .expect("the downward-API volume");
        let item = &volume
            .downward_api
            .as_ref()
            .and_then(|d| d.items.clone())
            .expect("items")[0];
        assert_eq!(
            item.field_ref.as_ref().map(|f| f.field_path.as_str()),
            Some("metadata.annotations['dso.dev/desired-versions']")
        );
        // Only the sidecar sees it; the apps get the secrets volume only.
        assert!(
            spec(&out).containers[0]
                .volume_mounts
                .iter()
                .flatten()
                .all(|m| m.name != "dso-desired-versions")
        );
    }
}

#[test]
fn without_an_in_place_dsosecret_there_is_no_sidecar() {
    let out = injected(&pod(json!({})));
    let names: Vec<_> = spec(&out)
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["dso-init"]);
    assert!(
        spec(&out)
            .volumes
            .iter()
            .flatten()
            .all(|v| v.name != "dso-desired-versions")
    );
}

#[test]
fn a_reinvocation_of_an_injected_in_place_pod_changes_nothing() {
    let p = with("live", json!({}));
    let out = apply(&p, &inject(&p, &in_place_catalog()).patch);
    assert_eq!(
        mutate(&out, NS, &in_place_catalog(), &cfg()).expect("admitted"),
        Mutation::AlreadyInjected,
        "the sidecar's mounts of DSO's volumes are DSO's own"
    );
}

#[test]
fn an_in_place_dsosecret_counts_three_generations_against_the_size_limit() {
    // 22 files x 64 KiB fit 4Mi once; three generations of them do not.
    let big = |strategy: &str| {
        catalog().with_secret(
            NS,
            "big2",
            json!({"files": (0..22).map(|i| json!({"path": format!("f{i}"), "secretId": "s"})).collect::<Vec<_>>(),
                   "refresh": {"strategy": strategy}}),
        )
    };
    let p = with("big2", json!({}));
    assert!(mutate(&p, NS, &big("Rollout"), &cfg()).is_ok());
    let err = mutate(&p, NS, &big("InPlace"), &cfg()).expect_err("too large");
    assert!(err.to_string().contains("66 file entries"), "{err}");
}
