//! The ServiceAccount admission plugin's API token mount, given to dso-init beforehand.

use super::*;
use rstest::rstest;

/// What the ServiceAccount admission plugin gives a pod before DSO sees it: its projected API
/// token volume, mounted read-only in every container.
fn api_access(volume: &str) -> Value {
    json!({"spec": {
        "containers": [{"name": "app", "image": "a", "volumeMounts": [
            {"name": volume, "readOnly": true, "mountPath": API_TOKEN_MOUNT_PATH}]}],
        "volumes": [{"name": volume, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]}}]
    }})
}

/// The containers the ServiceAccount plugin would give a mount when re-run on `p`: those
/// without one at exactly the API token path (plugin/pkg/admission/serviceaccount).
fn plugin_would_mount(p: &Pod) -> Vec<String> {
    let s = spec(p);
    s.init_containers
        .iter()
        .flatten()
        .chain(&s.containers)
        .filter(|c| {
            !c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == API_TOKEN_MOUNT_PATH)
        })
        .map(|c| c.name.clone())
        .collect()
}

#[rstest]
#[case::the_plugin_mounted_its_token(
    api_access("kube-api-access-x7k2p"),
    Some("kube-api-access-x7k2p")
)]
#[case::the_plugin_mounted_it_in_an_init_container_only(
    merge_into(api_access("kube-api-access-x7k2p"), json!({"spec": {
        "initContainers": [{"name": "setup", "image": "s", "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": true, "mountPath": API_TOKEN_MOUNT_PATH}]}],
        "containers": [{"name": "app", "image": "a", "volumeMounts": [{"name": "own", "mountPath": API_TOKEN_MOUNT_PATH}]}]}})),
    Some("kube-api-access-x7k2p")
)]
#[case::no_token_volume(json!({}), None)]
#[case::automount_off_in_the_pod(
    merge_into(api_access("kube-api-access-x7k2p"), json!({"spec": {"automountServiceAccountToken": false}})),
    None
)]
#[case::a_look_alike_volume_nobody_mounts_at_the_api_path(
    json!({"spec": {"volumes": [{"name": "kube-api-access-mine", "emptyDir": {}}]}}),
    None
)]
fn dso_init_gets_the_api_token_mount_exactly_when_the_service_account_plugin_would_add_it(
    #[case] extra: Value,
    #[case] expected: Option<&str>,
) {
    let p0 = pod(extra);
    let p = injected(&p0);
    let token_mounts: Vec<_> = init(&p)
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.mount_path == API_TOKEN_MOUNT_PATH)
        .collect();
    match expected {
        Some(volume) => {
            assert_eq!(token_mounts.len(), 1, "{token_mounts:?}");
            let m = token_mounts[0];
            assert_eq!((m.name.as_str(), m.read_only), (volume, Some(true)));
            let last = init(&p).volume_mounts.iter().flatten().last();
            assert_eq!(last, Some(m), "last, where the plugin appends it");
            assert!(
                plugin_would_mount(&p).is_empty(),
                "a re-run of the plugin has nothing to add, so DSO is not called again"
            );
        }
        None => assert!(token_mounts.is_empty(), "{token_mounts:?}"),
    }
    assert_eq!(
        spec(&p)
            .volumes
            .iter()
            .flatten()
            .filter(|v| v.name.starts_with(API_TOKEN_VOLUME_PREFIX))
            .count(),
        spec(&p0)
            .volumes
            .iter()
            .flatten()
            .filter(|v| v.name.starts_with(API_TOKEN_VOLUME_PREFIX))
            .count(),
        "DSO never adds the plugin's volume"
    );
}

#[test]
fn the_api_token_mount_comes_after_the_identity_mounts() {
    let cat = catalog().with_sa_role(NS, "default", ROLE_SA);
    let p0 = pod(api_access("kube-api-access-x7k2p"));
    let p = apply(&p0, &inject(&p0, &cat).patch);
    let names: Vec<_> = init(&p)
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["dso-secrets", "dso-aws-iam-token", "kube-api-access-x7k2p"]
    );
}
