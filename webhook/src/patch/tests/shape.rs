//! What an injection adds to pods of various shapes.

use super::*;

#[test]
fn a_pod_without_security_contexts_gets_the_volume_the_init_container_and_the_mount() {
    let p = injected(&pod(json!({})));
    let s = spec(&p);
    let vol = s
        .volumes
        .as_ref()
        .expect("volumes")
        .iter()
        .find(|v| v.name == "dso-secrets")
        .expect("volume");
    let ed = vol.empty_dir.as_ref().expect("emptyDir");
    assert_eq!(ed.medium.as_deref(), Some("Memory"));
    assert_eq!(ed.size_limit, Some(Quantity("4Mi".into())));
    let i = init(&p);
    assert_restricted(i);
    assert_eq!(
        i.security_context.as_ref().and_then(|s| s.run_as_user),
        Some(65532)
    );
    assert_eq!(
        s.security_context.as_ref().and_then(|s| s.fs_group),
        Some(65532)
    );
    let m = &i.volume_mounts.as_ref().expect("init mounts")[0];
    assert_eq!(
        (m.mount_path.as_str(), m.read_only),
        ("/run/secrets/dso", None)
    );
    let app = mounts_of(&p, "app");
    assert_eq!(app.len(), 1);
    assert_eq!(app[0].read_only, Some(true));
    assert_eq!(
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("dso.dev/injected"))
            .map(String::as_str),
        Some("db")
    );
    assert_eq!(env(i, "AWS_REGION"), Some("us-east-1"));
    assert_eq!(env(i, "AWS_ENDPOINT_URL"), Some("http://127.0.0.1:5000"));
    assert_eq!(env(i, "AWS_ROLE_ARN"), None, "no role known: default chain");
}

#[test]
fn the_plan_names_secrets_keys_and_paths_never_values() {
    let p = injected(&pod(
        json!({"metadata": {"annotations": {"dso.dev/secrets": "db, api"}}}),
    ));
    let plan: InitPlan =
        serde_json::from_str(env(init(&p), PLAN_ENV).expect("plan")).expect("plan json");
    assert_eq!(plan.mount_path, "/run/secrets/dso");
    assert_eq!(plan.size_limit_bytes, 4 << 20);
    let names: Vec<_> = plan.secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["db", "api"]);
    assert_eq!(
        plan.secrets[0].files[0].json_key.as_deref(),
        Some("password")
    );
    assert_eq!(plan.secrets[1].file_mode, 0o400);
    assert!(plan.secrets[1].files[0].expand);
}

#[test]
fn a_pod_level_user_is_inherited_and_its_security_context_kept() {
    let p = injected(&pod(
        json!({"spec": {"securityContext": {"runAsUser": 1000, "runAsNonRoot": true}}}),
    ));
    let sc = spec(&p)
        .security_context
        .as_ref()
        .expect("pod security context");
    assert_eq!(
        (sc.run_as_user, sc.run_as_non_root, sc.fs_group),
        (Some(1000), Some(true), Some(65532))
    );
    assert_eq!(
        init(&p)
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user),
        None
    );
}

#[test]
fn a_root_pod_level_user_is_not_inherited_by_the_init_container() {
    let p = injected(&pod(json!({"spec": {"securityContext": {"runAsUser": 0}}})));
    assert_eq!(
        init(&p)
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user),
        Some(65532)
    );
}

#[test]
fn an_existing_fs_group_is_kept() {
    let p = injected(&pod(
        json!({"spec": {"securityContext": {"fsGroup": 2000}}}),
    ));
    assert_eq!(
        spec(&p).security_context.as_ref().and_then(|s| s.fs_group),
        Some(2000)
    );
}

#[test]
fn container_level_users_keep_their_settings_and_read_through_the_fs_group() {
    let p = injected(&pod(json!({"spec": {"containers": [
        {"name": "app", "image": "a", "securityContext": {"runAsUser": 1000}},
        {"name": "side", "image": "b", "securityContext": {"runAsUser": 2000, "runAsGroup": 3000}}
    ]}})));
    let s = spec(&p);
    assert_eq!(
        s.containers[0]
            .security_context
            .as_ref()
            .and_then(|c| c.run_as_user),
        Some(1000)
    );
    assert_eq!(
        s.containers[1]
            .security_context
            .as_ref()
            .and_then(|c| c.run_as_group),
        Some(3000)
    );
    assert_eq!(
        s.security_context.as_ref().and_then(|c| c.fs_group),
        Some(65532)
    );
    assert_eq!(mounts_of(&p, "app").len() + mounts_of(&p, "side").len(), 2);
}

#[test]
fn only_the_selected_containers_get_the_mount() {
    let p = injected(&pod(json!({
        "metadata": {"annotations": {"dso.dev/containers": "side"}},
        "spec": {"containers": [
            {"name": "app", "image": "a", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            {"name": "side", "image": "b", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
        ], "volumes": [{"name": "data", "emptyDir": {}}]}
    })));
    assert!(mounts_of(&p, "app").is_empty());
    assert_eq!(mounts_of(&p, "side").len(), 1);
    let side = &spec(&p).containers[1];
    assert_eq!(
        side.volume_mounts.as_ref().map(Vec::len),
        Some(2),
        "the user's mount stays"
    );
    assert_eq!(spec(&p).volumes.as_ref().map(Vec::len), Some(2));
}

#[test]
fn existing_init_containers_run_after_dso_init() {
    let p = injected(&pod(json!({"spec": {"initContainers": [
        {"name": "migrate", "image": "m"}, {"name": "proxy", "image": "p", "restartPolicy": "Always"}
    ]}})));
    let names: Vec<_> = spec(&p)
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["dso-init", "migrate", "proxy"]);
}

#[test]
fn annotation_keys_with_a_slash_are_escaped_in_the_patch() {
    let inj = inject(&pod(json!({})), &catalog());
    let text = serde_json::to_string(&inj.patch).expect("json");
    assert!(
        text.contains("/metadata/annotations/dso.dev~1injected"),
        "{text}"
    );
}

#[test]
fn a_custom_mount_path_is_used_everywhere() {
    let p = injected(&pod(
        json!({"metadata": {"annotations": {"dso.dev/mount-path": "/etc/app/secrets/"}}}),
    ));
    assert_eq!(mounts_of(&p, "app")[0].mount_path, "/etc/app/secrets");
    let plan: InitPlan =
        serde_json::from_str(env(init(&p), PLAN_ENV).expect("plan")).expect("json");
    assert_eq!(plan.mount_path, "/etc/app/secrets");
}

#[test]
fn a_ca_bundle_configmap_is_mounted_into_dso_init_only_and_named_by_ssl_cert_dir() {
    let with_ca = InjectConfig {
        ca_bundle: Some(crate::patch::CaBundle {
            config_map: "corp-proxy-ca".into(),
            key: "bundle.pem".into(),
        }),
        ..cfg()
    };
    let p = pod(json!({}));
    let Mutation::Inject(i) = mutate(&p, NS, &catalog(), &with_ca).expect("admitted") else {
        panic!("expected an injection");
    };
    let p = apply(&p, &i.patch);
    let vol = spec(&p)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "dso-ca-bundle")
        .expect("the CA bundle volume");
    let cm = vol.config_map.as_ref().expect("a ConfigMap volume");
    assert_eq!(cm.name, "corp-proxy-ca");
    assert_eq!(
        serde_json::to_value(&cm.items).expect("json"),
        json!([{"key": "bundle.pem", "path": "ca.crt"}])
    );
    assert_eq!(
        cm.optional,
        Some(false),
        "no ConfigMap: the pod waits, naming it"
    );
    let c = init(&p);
    let m = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "dso-ca-bundle")
        .expect("dso-init mounts it");
    assert_eq!(
        (m.mount_path.as_str(), m.read_only),
        ("/etc/dso/ca-bundle", Some(true))
    );
    assert_eq!(env(c, "SSL_CERT_DIR"), Some("/etc/dso/ca-bundle"));
    assert_eq!(
        env(c, "SSL_CERT_FILE"),
        None,
        "the image's public roots stay"
    );
    let app_mounts: Vec<_> = spec(&p).containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(
        app_mounts,
        ["dso-secrets"],
        "the app container gets no CA mount"
    );

    // The injected pod, seen again (reinvocation), is left alone: dso-init's mount is DSO's own.
    assert_eq!(
        mutate(&p, NS, &catalog(), &with_ca).expect("admitted"),
        Mutation::AlreadyInjected
    );
}

#[test]
fn without_a_ca_bundle_nothing_about_it_is_added() {
    let p = injected(&pod(json!({})));
    assert!(
        !spec(&p)
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name == "dso-ca-bundle")
    );
    assert_eq!(env(init(&p), "SSL_CERT_DIR"), None);
}
