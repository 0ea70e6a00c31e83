//! Annotation keys. Users write the first five on pod templates; DSO writes the rest.

/// `"true"` opts a pod into injection.
pub const INJECT: &str = "dso.dev/inject";
/// Comma-separated DsoSecret names, in the pod's own namespace, to mount.
pub const SECRETS: &str = "dso.dev/secrets";
/// Where the tmpfs is mounted in the selected containers. Default [`DEFAULT_MOUNT_PATH`].
pub const MOUNT_PATH: &str = "dso.dev/mount-path";
/// Comma-separated container names that get the mount. Default: every container.
pub const CONTAINERS: &str = "dso.dev/containers";
/// The container whose main process gets a DsoSecret's `refresh.signal` after an in-place swap.
/// Default: the first container that gets the mount. Read only when a DsoSecret asks for a signal.
pub const SIGNAL_CONTAINER: &str = "dso.dev/signal-container";

/// Written by the webhook on pods it injected: the DsoSecrets it mounted.
pub const INJECTED: &str = "dso.dev/injected";
/// Written by the operator on a workload's pod template: hash of the consumed versions.
/// A change rolls the workload; the same versions always give the same value.
pub const VERSIONS_HASH: &str = "dso.dev/versions-hash";
/// Written by the operator on a workload's own metadata: the versions its pods run (JSON), as
/// last seen. Changing it restarts nothing; it lets the operator tell a rotation from first sight.
pub const RECORDED_VERSIONS: &str = "dso.dev/recorded-versions";
/// Written by the operator on running pods that consume a `strategy: InPlace` DsoSecret: JSON
/// `{"<DsoSecret>": "<versions hash>"}` ([`crate::inplace`]). The pod's `dso-refresh` sidecar
/// reads it through a downward-API volume and fetches when an entry changes. The only field the
/// operator may change on a pod (the chart's admission policy enforces it).
pub const DESIRED_VERSIONS: &str = "dso.dev/desired-versions";
/// Set to any new value on a DsoSecret to force an immediate check against AWS.
pub const REFRESH: &str = "dso.dev/refresh";

/// Default mount path of the secrets volume.
pub const DEFAULT_MOUNT_PATH: &str = "/run/secrets/dso";
/// Name of the injected tmpfs volume.
pub const VOLUME_NAME: &str = "dso-secrets";
/// Name of the injected init container.
pub const INIT_CONTAINER_NAME: &str = "dso-init";
/// Name of the injected refresh sidecar (a native sidecar: an init container with
/// `restartPolicy: Always`) of pods that consume a `strategy: InPlace` DsoSecret.
pub const REFRESH_CONTAINER_NAME: &str = "dso-refresh";
/// Name of the downward-API volume that gives the sidecar [`DESIRED_VERSIONS`].
pub const REFRESH_VOLUME_NAME: &str = "dso-desired-versions";
/// Where that volume is mounted in the sidecar.
pub const REFRESH_MOUNT_PATH: &str = "/etc/dso-refresh";
/// The file of that volume holding the annotation's value.
pub const DESIRED_FILE: &str = "desired-versions";
/// Name of the projected IRSA token volume the webhook adds when it sets up web identity.
pub const TOKEN_VOLUME_NAME: &str = "dso-aws-iam-token";
/// Where that token is mounted in the init container.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/dso.dev/serviceaccount";
/// Volume of the CA bundle ConfigMap dso-init trusts beside its image's roots (webhook flag
/// `--init-ca-bundle-configmap`; TLS-intercepting proxies).
pub const CA_BUNDLE_VOLUME_NAME: &str = "dso-ca-bundle";
/// Where dso-init gets that bundle, as the file [`CA_BUNDLE_FILE`]; the webhook points
/// `SSL_CERT_DIR` there (the image's `SSL_CERT_FILE` of public roots still applies).
pub const CA_BUNDLE_MOUNT_PATH: &str = "/etc/dso/ca-bundle";
/// The bundle's file name under [`CA_BUNDLE_MOUNT_PATH`].
pub const CA_BUNDLE_FILE: &str = "ca.crt";
/// ServiceAccount annotation naming the IAM role (the EKS IRSA convention).
pub const SA_ROLE_ARN: &str = "eks.amazonaws.com/role-arn";
/// Audience of IRSA tokens.
pub const IRSA_AUDIENCE: &str = "sts.amazonaws.com";

/// Parses a comma-separated annotation value into trimmed, non-empty items.
pub fn split_list(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// True when the annotations opt into injection (`dso.dev/inject: "true"`, case-insensitive).
pub fn wants_injection(annotations: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    annotations
        .and_then(|a| a.get(INJECT))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_list_trims_and_drops_empty_items() {
        assert_eq!(split_list(" db, api ,,"), vec!["db", "api"]);
        assert!(split_list("").is_empty());
    }

    #[test]
    fn only_true_opts_in() {
        let mut a = std::collections::BTreeMap::new();
        assert!(!wants_injection(Some(&a)));
        a.insert(INJECT.to_string(), "True".to_string());
        assert!(wants_injection(Some(&a)));
        a.insert(INJECT.to_string(), "yes".to_string());
        assert!(!wants_injection(Some(&a)));
        assert!(!wants_injection(None));
    }
}
