//! Pods refused, pods left alone, and pods injected before.

use super::*;
use rstest::rstest;

#[rstest]
#[case::our_volume_name(json!({"spec": {"volumes": [{"name": "dso-secrets", "emptyDir": {}}]}}), "a volume named \"dso-secrets\"")]
#[case::our_token_volume_name(json!({"spec": {"volumes": [{"name": "dso-aws-iam-token", "emptyDir": {}}]}}), "dso-aws-iam-token")]
#[case::our_ca_bundle_volume_name(json!({"spec": {"volumes": [{"name": "dso-ca-bundle", "emptyDir": {}}]}}), "a volume named \"dso-ca-bundle\"")]
#[case::our_container_name(json!({"spec": {"containers": [{"name": "dso-init", "image": "x"}]}}), "a container named \"dso-init\"")]
#[case::our_init_container_name(json!({"spec": {"initContainers": [{"name": "dso-init", "image": "x"}]}}), "a container named \"dso-init\"")]
fn a_pod_using_a_reserved_name_is_refused(#[case] extra: Value, #[case] names: &str) {
    let e = mutate(&pod(extra), NS, &catalog(), &cfg()).expect_err("denied");
    assert_eq!(e.metric_label(), "reserved_name");
    assert!(e.to_string().contains(names), "{e}");
}

#[test]
fn a_mount_already_at_the_mount_path_is_refused() {
    let e = mutate(
        &pod(json!({"spec": {"containers": [{"name": "app", "image": "a",
            "volumeMounts": [{"name": "mine", "mountPath": "/run/secrets/dso/"}]}]}})),
        NS,
        &catalog(),
        &cfg(),
    )
    .expect_err("denied");
    assert_eq!(e.metric_label(), "mount_collision");
    assert!(
        e.to_string().contains("\"app\"") && e.to_string().contains("\"mine\""),
        "{e}"
    );
}

#[test]
fn a_mount_below_the_mount_path_is_refused_but_one_above_is_fine() {
    let below = pod(json!({"spec": {"containers": [{"name": "app", "image": "a",
        "volumeMounts": [{"name": "x", "mountPath": "/run/secrets/dso/db"}]}]}}));
    assert!(mutate(&below, NS, &catalog(), &cfg()).is_err());
    let above = pod(json!({"spec": {"containers": [{"name": "app", "image": "a",
        "volumeMounts": [{"name": "x", "mountPath": "/run"}, {"name": "y", "mountPath": "/run/secrets/dsox"}]}]}}));
    assert!(mutate(&above, NS, &catalog(), &cfg()).is_ok());
}

#[test]
fn a_service_account_missing_from_the_cache_is_a_retryable_denial_unless_the_role_is_known() {
    let p = pod(json!({"spec": {"serviceAccountName": "not-yet-cached"}}));
    let e = mutate(&p, NS, &catalog(), &cfg()).expect_err("denied");
    assert_eq!(e.metric_label(), "unknown_serviceaccount");
    assert!(
        e.to_string()
            .contains("\"not-yet-cached\" of namespace shop is not in the webhook's cache yet"),
        "{e}"
    );
    let with_role = pod(
        json!({"metadata": {"annotations": {"dso.dev/secrets": "db-role"}},
        "spec": {"serviceAccountName": "not-yet-cached"}}),
    );
    assert!(mutate(&with_role, NS, &catalog(), &cfg()).is_ok());
}

#[test]
fn an_already_injected_pod_gets_no_patch() {
    let once = injected(&pod(json!({})));
    assert_eq!(
        mutate(&once, NS, &catalog(), &cfg()).expect("ok"),
        Mutation::AlreadyInjected
    );
}

const MARK: &str = "dso.dev/injected";
fn our_volume() -> Value {
    json!([{"name": "dso-secrets", "emptyDir": {"medium": "Memory"}}])
}
fn our_init() -> Value {
    json!([{"name": "dso-init", "image": "x"}])
}

/// What the webhook does with a pod carrying some of what an injection leaves behind.
#[derive(Debug, PartialEq)]
enum Seen {
    Injects,
    LeavesAlone,
    Denies(&'static str, &'static str),
}

#[rstest]
#[case::annotation_alone(true, false, false, Seen::Injects)]
#[case::all_three(true, true, true, Seen::LeavesAlone)]
#[case::annotation_and_volume(
    true,
    true,
    false,
    Seen::Denies(
        "partly_injected",
        "has the annotation dso.dev/injected and the volume \"dso-secrets\" but not the init container \"dso-init\""
    )
)]
#[case::annotation_and_init(
    true,
    false,
    true,
    Seen::Denies("partly_injected", "but not the volume \"dso-secrets\"")
)]
#[case::volume_and_init_without_annotation(
    false,
    true,
    true,
    Seen::Denies(
        "partly_injected",
        "but not the annotation dso.dev/injected, as if copied"
    )
)]
#[case::volume_alone(
    false,
    true,
    false,
    Seen::Denies("reserved_name", "a volume named \"dso-secrets\"")
)]
fn a_pod_is_left_alone_only_when_it_carries_everything_an_injection_adds(
    #[case] annotation: bool,
    #[case] volume: bool,
    #[case] init_container: bool,
    #[case] expected: Seen,
) {
    let mut extra = json!({"metadata": {"annotations": {}}, "spec": {}});
    if annotation {
        extra["metadata"]["annotations"][MARK] = json!("stale,copied");
    }
    if volume {
        extra["spec"]["volumes"] = our_volume();
    }
    if init_container {
        extra["spec"]["initContainers"] = our_init();
    }
    let p = pod(extra);
    match (mutate(&p, NS, &catalog(), &cfg()), expected) {
        (Ok(Mutation::Inject(inj)), Seen::Injects) => {
            let after = apply(&p, &inj.patch);
            assert_eq!(
                after
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(MARK))
                    .map(String::as_str),
                Some("db"),
                "the copied annotation is replaced"
            );
            assert_eq!(init(&after).name, "dso-init");
            assert_eq!(mounts_of(&after, "app").len(), 1, "the app gets its files");
        }
        (Ok(Mutation::AlreadyInjected), Seen::LeavesAlone) => {}
        (Err(e), Seen::Denies(label, message)) => {
            assert_eq!(e.metric_label(), label, "{e}");
            assert!(e.to_string().contains(message), "{e}");
        }
        (got, expected) => panic!("expected {expected:?}, got {got:?}"),
    }
}

#[rstest]
#[case::no_annotations(json!({"metadata": {"annotations": null}}))]
#[case::inject_false(json!({"metadata": {"annotations": {"dso.dev/inject": "false"}}}))]
fn a_pod_that_did_not_opt_in_is_untouched(#[case] extra: Value) {
    assert_eq!(
        mutate(&pod(extra), NS, &Fake::default(), &cfg()).expect("ok"),
        Mutation::NotRequested
    );
}

#[rstest]
#[case::unknown_dsosecret(json!({"dso.dev/secrets": "db,nope"}), "unknown_dsosecret", "\"nope\" not found in namespace shop")]
#[case::other_namespace(json!({"dso.dev/secrets": "other/db"}), "other_namespace", "\"other/db\" refers to another namespace")]
#[case::missing_list(json!({"dso.dev/secrets": null}), "malformed_annotation", "dso.dev/secrets: missing")]
#[case::empty_list(json!({"dso.dev/secrets": " , "}), "malformed_annotation", "dso.dev/secrets: empty")]
#[case::bad_name(json!({"dso.dev/secrets": "Db_1"}), "malformed_annotation", "\"Db_1\" is not a DsoSecret name")]
#[case::relative_mount(json!({"dso.dev/mount-path": "secrets"}), "malformed_annotation", "must be an absolute path")]
#[case::dotdot_mount(json!({"dso.dev/mount-path": "/run/../etc"}), "malformed_annotation", "must not contain '..'")]
#[case::root_mount(json!({"dso.dev/mount-path": "/"}), "malformed_annotation", "cannot be the mount path")]
#[case::token_mount(json!({"dso.dev/mount-path": "/var/run/secrets/dso.dev"}), "malformed_annotation", "IRSA token")]
#[case::unknown_container(json!({"dso.dev/containers": "app,ghost"}), "unknown_container", "\"ghost\", but the pod has no such container (its containers: app)")]
#[case::empty_containers(json!({"dso.dev/containers": ""}), "malformed_annotation", "dso.dev/containers: empty")]
#[case::invalid_spec(json!({"dso.dev/secrets": "broken"}), "invalid_dsosecret", "DsoSecret \"broken\" is invalid: spec.files[0].path")]
#[case::too_large(json!({"dso.dev/secrets": "big,db"}), "too_large", "65 file entries")]
#[case::conflicting_roles(json!({"dso.dev/secrets": "db-role,other-role"}), "conflicting_roles", "different IAM roles")]
fn bad_input_is_denied_with_a_message_naming_the_problem(
    #[case] annotations: Value,
    #[case] label: &str,
    #[case] message: &str,
) {
    let e = mutate(
        &pod(json!({"metadata": {"annotations": annotations}})),
        NS,
        &catalog(),
        &cfg(),
    )
    .expect_err("denied");
    assert_eq!(e.metric_label(), label, "{e}");
    assert!(
        e.to_string().contains(message),
        "{e:?} should contain {message:?}"
    );
}

#[rstest]
#[case::the_token_in_an_app_container(json!({"spec": {"containers": [{"name": "app", "image": "a",
    "volumeMounts": [{"name": "dso-aws-iam-token", "mountPath": "/token"}]}]}}), "container \"app\"", "dso-aws-iam-token")]
#[case::the_secrets_read_write_in_an_app_container(json!({"spec": {"containers": [{"name": "app", "image": "a",
    "volumeMounts": [{"name": "dso-secrets", "mountPath": "/elsewhere"}]}]}}), "container \"app\"", "dso-secrets")]
#[case::the_secrets_in_an_init_container(json!({"spec": {"initContainers": [{"name": "setup", "image": "a",
    "volumeMounts": [{"name": "dso-secrets", "mountPath": "/s", "readOnly": true}]}]}}), "init container \"setup\"", "dso-secrets")]
#[case::the_ca_bundle_in_an_app_container(json!({"spec": {"containers": [{"name": "app", "image": "a",
    "volumeMounts": [{"name": "dso-ca-bundle", "mountPath": "/ca"}]}]}}), "container \"app\"", "dso-ca-bundle")]
#[case::the_token_in_an_ephemeral_container(json!({"spec": {"ephemeralContainers": [{"name": "debug", "image": "a",
    "volumeMounts": [{"name": "dso-aws-iam-token", "mountPath": "/t"}]}]}}), "ephemeral container \"debug\"", "dso-aws-iam-token")]
fn a_pod_mounting_a_reserved_volume_itself_is_refused(
    #[case] extra: Value,
    #[case] container: &str,
    #[case] volume: &str,
) {
    let e = mutate(&pod(extra), NS, &catalog(), &cfg()).expect_err("denied");
    assert_eq!(e.metric_label(), "reserved_mount");
    let m = e.to_string();
    assert!(m.starts_with(container), "{m}");
    assert!(m.contains(&format!("{volume:?}")), "{m}");
}

#[test]
fn a_reserved_mount_added_to_an_injected_pod_is_refused_but_dsos_own_mounts_are_not() {
    // IRSA: dso-init gets the secrets read-write and the token; the app the secrets read-only.
    let cat = catalog().with_sa_role(NS, "default", ROLE_SA);
    let p0 = pod(json!({}));
    let once = apply(&p0, &inject(&p0, &cat).patch);
    assert_eq!(
        mutate(&once, NS, &cat, &cfg()).expect("ok"),
        Mutation::AlreadyInjected
    );
    let mut v = serde_json::to_value(&once).expect("json");
    v["spec"]["containers"][0]["volumeMounts"]
        .as_array_mut()
        .expect("the app's mounts")
        .push(json!({"name": "dso-aws-iam-token", "mountPath": "/stolen"}));
    let tampered: Pod = serde_json::from_value(v).expect("pod");
    let e = mutate(&tampered, NS, &cat, &cfg()).expect_err("denied");
    assert_eq!(e.metric_label(), "reserved_mount");
    assert!(e.to_string().contains("\"app\""), "{e}");

    let mut v = serde_json::to_value(&once).expect("json");
    v["spec"]["containers"][0]["volumeMounts"][0]["readOnly"] = json!(false);
    let writable: Pod = serde_json::from_value(v).expect("pod");
    let e = mutate(&writable, NS, &cat, &cfg()).expect_err("denied");
    assert!(e.to_string().contains("\"dso-secrets\""), "{e}");
}
