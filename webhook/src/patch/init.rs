//! The `dso-init` init container: the plan in its environment, the volume read-write, the
//! identity's variables and mounts, a Pod Security `restricted` security context.

use super::identity::Credentials;
use super::settings::InjectConfig;
use dso_api::annotations as ann;
use dso_api::contract::{InitPlan, PLAN_ENV};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, PodSpec, SeccompProfile, SecurityContext, VolumeMount,
};

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
    let mut mounts = vec![VolumeMount {
        name: ann::VOLUME_NAME.to_string(),
        mount_path: plan.mount_path.clone(),
        ..Default::default()
    }];
    mounts.extend(credentials.mounts);
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
