//! The settings the patch builder reads, checked once at start-up by `config` (which depends
//! on this module, never the reverse).

use k8s_openapi::api::core::v1::ResourceRequirements;

/// Upper bound DSO assumes for one file when it checks that a pod's DsoSecrets fit the tmpfs:
/// 64 KiB, the largest value AWS Secrets Manager stores. An `expand: true` entry counts once,
/// since all its keys together come from one secret value.
pub const FILE_CEILING_BYTES: u64 = 64 * 1024;

/// Everything the patch builder needs from the command line.
#[derive(Clone, Debug)]
pub struct InjectConfig {
    pub image: String,
    pub image_pull_policy: String,
    pub default_mount_path: String,
    /// The size limit as given (a Kubernetes quantity).
    pub size_limit: String,
    pub size_limit_bytes: u64,
    pub resources: ResourceRequirements,
    pub default_region: Option<String>,
    pub init_env: Vec<(String, String)>,
    pub fs_group: Option<i64>,
    pub run_as_user: i64,
    pub token_expiration_seconds: i64,
    /// Inject pods without an identity (dso-init then uses the AWS default chain).
    pub allow_default_credentials: bool,
    /// The secrets each namespace's DsoSecrets may name (`--secret-allowlist`; default: all).
    pub allowlist: std::sync::Arc<dso_api::allowlist::Allowlist>,
    /// Extra CA certificates dso-init trusts, from a ConfigMap of the pod's namespace.
    pub ca_bundle: Option<CaBundle>,
}

/// A ConfigMap, in the namespace of every injected pod, whose `key` holds PEM CA certificates
/// (a TLS-intercepting proxy's): mounted into dso-init only, trusted beside its image's roots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaBundle {
    pub config_map: String,
    pub key: String,
}
