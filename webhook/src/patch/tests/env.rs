//! `dso://` env references: rewritten into `fileKeyRef`s, planned for dso-init, or refused.

use super::*;
use dso_api::contract::{PlanEnvFile, PlanEnvVar};
use rstest::rstest;

fn with_env(env: Value) -> Pod {
    pod(json!({"spec": {"containers": [
        {"name": "app", "image": "a", "command": ["/app", "--db", "dso://db/password"], "env": env}
    ]}}))
}

fn plan_of(p: &Pod) -> InitPlan {
    serde_json::from_str(env(init(p), PLAN_ENV).expect("plan")).expect("plan json")
}

#[test]
fn a_dso_reference_becomes_a_file_key_ref_and_a_planned_env_file() {
    let p = injected(&with_env(json!([
        {"name": "MODE", "value": "prod"},
        {"name": "DB_PASSWORD", "value": "dso://db/password"},
        {"name": "URL", "value": "postgres://not-a-dso-reference"}
    ])));
    let app = &spec(&p).containers[0];
    let got = serde_json::to_value(app.env.as_ref().expect("env")).expect("json");
    assert_eq!(
        got,
        json!([
            {"name": "MODE", "value": "prod"},
            {"name": "DB_PASSWORD", "valueFrom": {"fileKeyRef": {
                "volumeName": "dso-secrets", "path": ".dso-env/app.env", "key": "DB_PASSWORD"}}},
            {"name": "URL", "value": "postgres://not-a-dso-reference"}
        ])
    );
    assert_eq!(
        app.command.as_ref().expect("command")[2],
        "dso://db/password",
        "the command is never rewritten"
    );
    assert_eq!(
        plan_of(&p).env_files,
        vec![PlanEnvFile {
            container: "app".into(),
            vars: vec![PlanEnvVar {
                name: "DB_PASSWORD".into(),
                dso_secret: "db".into(),
                file: "password".into(),
            }],
        }]
    );
}

#[test]
fn each_container_gets_its_own_env_file_and_an_expand_entry_may_be_named_by_key() {
    let p = injected(&pod(json!({
        "metadata": {"annotations": {"dso.dev/secrets": "db,api"}},
        "spec": {"containers": [
            {"name": "app", "image": "a", "env": [{"name": "TOKEN", "value": "dso://api/token"}]},
            {"name": "worker", "image": "w", "env": [{"name": "PW", "value": "dso://db/password"}]},
            {"name": "plain", "image": "p"}
        ]}
    })));
    let plan = plan_of(&p);
    let containers: Vec<&str> = plan
        .env_files
        .iter()
        .map(|f| f.container.as_str())
        .collect();
    assert_eq!(containers, ["app", "worker"]);
    let worker = &spec(&p).containers[1].env.as_ref().expect("env")[0];
    let key_ref = worker
        .value_from
        .as_ref()
        .and_then(|v| v.file_key_ref.as_ref())
        .expect("fileKeyRef");
    assert_eq!(key_ref.path, ".dso-env/worker.env");
}

#[test]
fn the_pod_spec_never_holds_more_than_the_reference() {
    let p = with_env(json!([{"name": "DB_PASSWORD", "value": "dso://db/password"}]));
    let patch = serde_json::to_string(&inject(&p, &catalog()).patch).expect("json");
    assert!(!patch.contains("\"value\":\"dso://"), "{patch}");
}

#[test]
fn a_pod_without_references_gets_no_env_files_and_no_env_changes() {
    let p = injected(&with_env(json!([{"name": "A", "value": "b"}])));
    assert!(plan_of(&p).env_files.is_empty());
    assert_eq!(
        serde_json::to_value(&spec(&p).containers[0].env).expect("json"),
        json!([{"name": "A", "value": "b"}])
    );
}

#[rstest]
#[case::unmounted_dso_secret(
    json!({"spec": {"containers": [{"name": "app", "image": "a", "env": [{"name": "T", "value": "dso://api/token"}]}]}}),
    &["\"app\"", "env T", "dso://api/token", "does not mount DsoSecret \"api\"", "dso.dev/secrets"]
)]
#[case::unknown_path(
    json!({"spec": {"containers": [{"name": "app", "image": "a", "env": [{"name": "P", "value": "dso://db/pasword"}]}]}}),
    &["\"app\"", "env P", "dso://db/pasword", "does not write \"pasword\"", "password"]
)]
#[case::unselected_container(
    json!({"metadata": {"annotations": {"dso.dev/containers": "app"}},
           "spec": {"containers": [{"name": "app", "image": "a"},
                                   {"name": "side", "image": "s", "env": [{"name": "P", "value": "dso://db/password"}]}]}}),
    &["\"side\"", "env P", "dso://db/password", "dso.dev/containers"]
)]
#[case::init_container(
    json!({"spec": {"initContainers": [{"name": "setup", "image": "s", "env": [{"name": "P", "value": "dso://db/password"}]}]}}),
    &["\"setup\"", "env P", "dso://db/password", "init containers"]
)]
#[case::name_an_env_file_cannot_carry(
    json!({"spec": {"containers": [{"name": "app", "image": "a", "env": [{"name": "db.password", "value": "dso://db/password"}]}]}}),
    &["\"app\"", "env db.password", "dso://db/password", "cannot be carried"]
)]
#[case::malformed(
    json!({"spec": {"containers": [{"name": "app", "image": "a", "env": [{"name": "P", "value": "dso://db"}]}]}}),
    &["\"app\"", "env P", "dso://db", "dso://<DsoSecret>/<path>"]
)]
fn a_bad_reference_is_refused_naming_container_variable_and_reference(
    #[case] extra: Value,
    #[case] named: &[&str],
) {
    let e = mutate(&pod(extra), NS, &catalog(), &cfg()).expect_err("denied");
    assert_eq!(e.metric_label(), "env_reference");
    for n in named {
        assert!(e.to_string().contains(n), "{n}: {e}");
    }
}

#[test]
fn env_files_count_toward_the_size_check() {
    let tight = InjectConfig {
        size_limit: "128Ki".into(),
        size_limit_bytes: 128 * 1024,
        ..cfg()
    };
    let one = with_env(json!([{"name": "P", "value": "dso://db/password"}]));
    let e = mutate(
        &one,
        NS,
        &catalog(),
        &InjectConfig {
            size_limit_bytes: 64 * 1024,
            ..tight.clone()
        },
    )
    .expect_err("1 file + 1 env file > 64 KiB");
    assert_eq!(e.metric_label(), "too_large");
    assert!(mutate(&one, NS, &catalog(), &tight).is_ok());
}

#[test]
fn a_template_entry_is_planned_with_its_sources_and_can_feed_an_env_reference() {
    let p = injected(&pod(json!({
        "metadata": {"annotations": {"dso.dev/secrets": "tpl"}},
        "spec": {"containers": [{"name": "app", "image": "a",
            "env": [{"name": "DATABASE_URL", "value": "dso://tpl/url"}]}]}
    })));
    let plan = plan_of(&p);
    let file = &plan.secrets[0].files[0];
    assert_eq!(file.path.as_deref(), Some("url"));
    assert!(
        file.template
            .as_deref()
            .is_some_and(|t| t.contains("{{ db.password }}"))
    );
    assert_eq!(file.sources["db"].secret_id, "prod/db");
    assert_eq!(
        file.sources["db"].version_stage.as_deref(),
        Some("AWSPREVIOUS")
    );
    assert_eq!(plan.env_files[0].vars[0].file, "url");
}

#[test]
fn a_template_reading_an_undeclared_source_is_refused_naming_the_field() {
    let e = mutate(
        &pod(json!({"metadata": {"annotations": {"dso.dev/secrets": "tpl-broken"}}})),
        NS,
        &catalog(),
        &cfg(),
    )
    .expect_err("denied");
    assert_eq!(e.metric_label(), "invalid_dsosecret");
    let m = e.to_string();
    assert!(
        m.contains("spec.files[0].template") && m.contains("\"api\""),
        "{m}"
    );
}
