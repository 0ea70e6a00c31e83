//! The `dso-init` init container: the plan in its environment, the volume read-write, the
//! identity's variables and mounts, a Pod Security `restricted` security context.

use super::identity::Credentials;
use super::settings::InjectConfig;
use dso_api::annotations as ann;
use dso_api::contract::{InitPlan, PLAN_ENV, POD_NAME_ENV, POD_NAMESPACE_ENV, POD_UID_ENV};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EnvVar, EnvVarSource,
    ObjectFieldSelector, PodSpec, SeccompProfile, SecurityContext, Volume, VolumeMount,
};

/// Prefix of the volume the in-tree ServiceAccount admission plugin adds for the API token.
pub const API_TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";
/// Where the ServiceAccount admission plugin mounts the API token in every container.
pub const API_TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// dso-init for `plan`, authenticating with `credentials`.
pub(super) fn init_container(
    spec: &PodSpec,
    plan: &InitPlan,
    credentials: Credentials,
    cfg: &InjectConfig,
) -> Container {
    let mut env = Vec::new();
    // Serializing the plan (strings, numbers, booleans) cannot fail.
    set_env(
        &mut env,
        PLAN_ENV,
        &serde_json::to_string(plan).unwrap_or_default(),
    );
    for (k, v) in credentials.env.iter().chain(&cfg.init_env) {
        set_env(&mut env, k, v);
    }
    if cfg.ca_bundle.is_some() {
        // rustls-native-certs reads SSL_CERT_DIR beside the image's SSL_CERT_FILE.
        set_env(&mut env, "SSL_CERT_DIR", ann::CA_BUNDLE_MOUNT_PATH);
    }
    // Who is fetching, for the IRSA role session name (CloudTrail shows it): from the
    // downward API, so a generated pod name is the real one.
    for (name, field) in [
        (POD_NAMESPACE_ENV, "metadata.namespace"),
        (POD_NAME_ENV, "metadata.name"),
    ] {
        env.retain(|e| e.name != name);
        env.push(field_env(name, field));
    }
    let mut mounts = vec![VolumeMount {
        name: ann::VOLUME_NAME.to_string(),
        mount_path: plan.mount_path.clone(),
        ..Default::default()
    }];
    mounts.extend(credentials.mounts);
    if cfg.ca_bundle.is_some() {
        mounts.push(VolumeMount {
            name: ann::CA_BUNDLE_VOLUME_NAME.to_string(),
            mount_path: ann::CA_BUNDLE_MOUNT_PATH.to_string(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let api_token = api_token_mount(spec, &mounts);
    mounts.extend(api_token);
    Container {
        name: ann::INIT_CONTAINER_NAME.to_string(),
        image: Some(cfg.image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        env: Some(env),
        volume_mounts: Some(mounts),
        resources: Some(cfg.resources.clone()),
        termination_message_policy: Some("File".to_string()),
        security_context: Some(security_context(spec, cfg)),
        ..Default::default()
    }
}

/// The `dso-refresh` native sidecar (an init container with `restartPolicy: Always`) for pods
/// that consume a `strategy: InPlace` DsoSecret: dso-init's image, plan, identity, volume and
/// security context, run as `dso-init refresh`, plus the downward-API file through which the
/// operator tells it the desired versions ([`desired_versions_volume`]). When it signals an app
/// (`signals`), it also gets the pod's UID ([`POD_UID_ENV`]), by which it recognises the target
/// container's processes.
pub(super) fn refresh_sidecar(init: &Container, signals: bool) -> Container {
    let mut c = init.clone();
    c.name = ann::REFRESH_CONTAINER_NAME.to_string();
    c.args = Some(vec!["refresh".to_string()]);
    c.restart_policy = Some("Always".to_string());
    if signals {
        c.env
            .get_or_insert_with(Vec::new)
            .push(field_env(POD_UID_ENV, "metadata.uid"));
    }
    c.volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            name: ann::REFRESH_VOLUME_NAME.to_string(),
            mount_path: ann::REFRESH_MOUNT_PATH.to_string(),
            read_only: Some(true),
            ..Default::default()
        });
    c
}

/// The downward-API volume holding the pod's `dso.dev/desired-versions` annotation (an empty
/// file until the operator writes it). The kubelet rewrites it when the annotation changes.
pub(super) fn desired_versions_volume() -> Volume {
    Volume {
        name: ann::REFRESH_VOLUME_NAME.to_string(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![DownwardAPIVolumeFile {
                path: ann::DESIRED_FILE.to_string(),
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.annotations['{}']", ann::DESIRED_VERSIONS),
                    api_version: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs `c` as `user` (`refresh.signal`: the signalled container's user).
pub(super) fn run_as(c: &mut Container, user: i64) {
    c.security_context
        .get_or_insert_with(Default::default)
        .run_as_user = Some(user);
}

/// A variable from the downward API.
fn field_env(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.to_string(),
                api_version: None,
            }),
            ..Default::default()
        }),
    }
}

fn set_env(env: &mut Vec<EnvVar>, name: &str, value: &str) {
    env.retain(|e| e.name != name);
    env.push(EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        value_from: None,
    });
}

/// Non-root (the pod's non-root `runAsUser`, else `--init-run-as-user`), no privilege
/// escalation, read-only root, no capabilities, the runtime's seccomp profile.
fn security_context(spec: &PodSpec, cfg: &InjectConfig) -> SecurityContext {
    let pod_user = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: match pod_user {
            Some(u) if u != 0 => None,
            _ => Some(cfg.run_as_user),
        },
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            add: None,
            drop: Some(vec!["ALL".to_string()]),
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// The mount the in-tree ServiceAccount admission plugin would add to dso-init, given now so
/// that the plugin has nothing to add when the apiserver re-runs it after DSO's patch: a
/// change there would make the apiserver call DSO a second time (`reinvocationPolicy:
/// IfNeeded`). The plugin (plugin/pkg/admission/serviceaccount/admission.go) acts when the
/// pod's or ServiceAccount's `automountServiceAccountToken` allows it; it uses the first volume
/// named `kube-api-access-*` and gives every init and regular container without a mount at
/// exactly [`API_TOKEN_MOUNT_PATH`] a read-only mount of it there. DSO sees the pod after the
/// plugin's first pass, so it mirrors that pass: no such volume mounted by a container at that
/// path means the plugin did not act (automount off) and dso-init gets nothing.
fn api_token_mount(spec: &PodSpec, init_mounts: &[VolumeMount]) -> Option<VolumeMount> {
    if spec.automount_service_account_token == Some(false)
        || init_mounts
            .iter()
            .any(|m| m.mount_path == API_TOKEN_MOUNT_PATH)
    {
        return None;
    }
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name.starts_with(API_TOKEN_VOLUME_PREFIX))?;
    let mounted_by_the_plugin = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .any(|m| m.name == volume.name && m.mount_path == API_TOKEN_MOUNT_PATH);
    mounted_by_the_plugin.then(|| VolumeMount {
        name: volume.name.clone(),
        mount_path: API_TOKEN_MOUNT_PATH.to_string(),
        read_only: Some(true),
        ..Default::default()
    })
}
