//! The heart of the webhook: a pure function from a pod, the DsoSecrets and ServiceAccount it
//! refers to (through a [`Catalog`]) and the [`InjectConfig`] to a JSON patch, or to a denial
//! naming the problem. No I/O: the router feeds it from watch caches, tests from tables.
//!
//! What an injection adds:
//! - the `dso-secrets` volume, `emptyDir {medium: Memory, sizeLimit}`;
//! - the `dso-init` init container, first in `initContainers`, with the [`InitPlan`] as JSON in
//!   `DSO_PLAN` (secret ids, keys, paths, modes — never a value), the volume mounted
//!   read-write, a Pod Security `restricted` security context and small requests and limits;
//! - when a DsoSecret has `refresh.strategy: InPlace`, the `dso-refresh` native sidecar right
//!   after dso-init (same image, plan and identity, `dso-init refresh`, `restartPolicy:
//!   Always`) and the `dso-desired-versions` downward-API volume through which the operator
//!   tells it the versions to serve (see `dso_api::inplace`);
//! - when such a DsoSecret also has `refresh.signal`, `shareProcessNamespace: true`, the target
//!   container (`dso.dev/signal-container`, default the first that gets the mount) in the plan,
//!   `DSO_POD_UID` on the sidecar, and DSO's containers run as the target's user (`signal`);
//! - the volume mounted read-only in the selected containers (`dso.dev/containers`, default
//!   all regular containers) and nowhere else;
//! - IRSA for the init container when a role is known (DsoSecret `spec.aws.roleArn`, else the
//!   ServiceAccount's `eks.amazonaws.com/role-arn`): a projected token (audience
//!   `sts.amazonaws.com`) plus `AWS_ROLE_ARN` / `AWS_WEB_IDENTITY_TOKEN_FILE`, or, when the EKS
//!   pod identity webhook already injected a token into the pod, that token reused;
//! - without a role, EKS Pod Identity (`AWS_CONTAINER_CREDENTIALS_FULL_URI`,
//!   `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` and the token's mount) copied from an app
//!   container when the EKS webhook ran before DSO;
//! - in `dso-init`, the read-only API token mount the in-tree ServiceAccount admission plugin
//!   gave the app containers (volume `kube-api-access-*`), which the plugin would otherwise add
//!   after DSO's patch, making the apiserver call DSO a second time;
//! - `securityContext.fsGroup` when the pod has none (see below);
//! - each container env entry whose value is `dso://<DsoSecret>/<path>` replaced by a
//!   `valueFrom.fileKeyRef` on the volume's env file of that container (`env`), which dso-init
//!   writes;
//! - the `dso.dev/injected` annotation listing the mounted DsoSecrets.
//!
//! File access: dso-init runs as a non-root user (65532 unless the pod sets a non-root
//! `runAsUser`) and writes files with the DsoSecret's `fileMode` (default 0440) in directories
//! the group can traverse. The kubelet gives the memory volume the pod's `fsGroup` (set-gid, so
//! new files inherit it) and adds `fsGroup` to every container's groups, so target containers
//! read the files through the group whatever user they run as; other pods cannot reach the
//! volume at all. When the pod has no `fsGroup`, the webhook sets the configured one (65532 by
//! default). Note that `fsGroup` applies to every volume of the pod that supports ownership
//! management.
//!
//! Steps, one module each: `previous` (a previous injection), `reserved` (mounts of DSO's
//! volumes), `annotations`, `secrets` (the DsoSecrets, their size), `env` (`dso://`
//! references), `identity`, `init` (the init container), `ops` (the JSON patch);
//! `settings` holds what they read from the command line.
//!
//! Idempotent: a pod carrying `dso.dev/injected`, the volume and the init container gets no
//! patch. A pod with only the annotation (copied from a live pod) is injected anew; one with
//! two of the three is refused as a copied, incomplete injection; one using a reserved name
//! alone is refused as a collision, and so is a container mounting a reserved volume that DSO
//! did not add (`reserved`).

mod annotations;
mod env;
mod identity;
mod init;
mod ops;
mod previous;
mod reserved;
mod secrets;
mod settings;
mod signal;

pub use annotations::check_mount_path;
pub use identity::{
    Identity, POD_IDENTITY_TOKEN_ENV, POD_IDENTITY_URI_ENV, ROLE_ENV, TOKEN_FILE_ENV,
    TOKEN_FILE_NAME,
};
pub use init::{API_TOKEN_MOUNT_PATH, API_TOKEN_VOLUME_PREFIX};
pub use reserved::RESERVED_VOLUMES;
pub use settings::{CaBundle, FILE_CEILING_BYTES, InjectConfig};

use crate::error::Result;
use dso_api::DsoSecret;
use dso_api::annotations as ann;
use dso_api::contract::{InitPlan, PLAN_VERSION};
use json_patch::Patch;
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, EmptyDirVolumeSource, KeyToPath, Pod, PodSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::sync::Arc;

/// Where the patch builder looks up what a pod refers to (the watch caches in production).
pub trait Catalog {
    /// The DsoSecret `name` in `namespace`; `Some(Err(why))` when it exists but cannot be read
    /// (written for a newer version of the CRD, say).
    fn dso_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<std::result::Result<Arc<DsoSecret>, String>>;
    /// The `eks.amazonaws.com/role-arn` annotation of a ServiceAccount: `None` when the
    /// ServiceAccount is not known (yet), `Some(None)` when it has no role.
    fn service_account_role(&self, namespace: &str, name: &str) -> Option<Option<String>>;
}

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// No `dso.dev/inject: "true"`: untouched.
    NotRequested,
    /// Injected before (reinvocation, or a second pass): untouched.
    AlreadyInjected,
    /// Apply this.
    Inject(Injection),
}

/// A patch and a summary for logs.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    pub patch: Patch,
    /// DsoSecrets mounted.
    pub secrets: Vec<String>,
    /// Containers that got the mount.
    pub containers: Vec<String>,
    pub identity: Identity,
}

/// Decides what to do with `pod` (created in `namespace`): the steps below, each in its module.
pub fn mutate(
    pod: &Pod,
    namespace: &str,
    catalog: &(impl Catalog + ?Sized),
    cfg: &InjectConfig,
) -> Result<Mutation> {
    let annotations = pod.metadata.annotations.as_ref();
    if !ann::wants_injection(annotations) {
        return Ok(Mutation::NotRequested);
    }
    let annotations = annotations.cloned().unwrap_or_default();
    let default_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);

    let injected = previous::already_injected(spec, &annotations)?;
    reserved::check_mounts(spec, injected)?;
    if injected {
        return Ok(Mutation::AlreadyInjected);
    }
    let wanted = annotations::wanted(spec, &annotations, &cfg.default_mount_path)?;
    let signal_container = signal::annotated_target(spec, &annotations)?;
    let secrets = secrets::resolve(catalog, namespace, &wanted.names, &cfg.allowlist)?;
    let signalling = signal::plan(spec, &secrets, signal_container, &wanted.selected)?;
    let env = env::plan(spec, &wanted.selected, &secrets)?;
    secrets::check_size(&secrets, env.files.len(), cfg)?;
    let (identity, credentials) = identity::credentials(spec, namespace, &secrets, catalog, cfg)?;

    let plan = InitPlan {
        version: PLAN_VERSION,
        mount_path: wanted.mount_path.clone(),
        size_limit_bytes: cfg.size_limit_bytes,
        secrets: secrets
            .iter()
            .map(|(name, s)| secrets::plan_secret(name, &s.spec, cfg.default_region.as_deref()))
            .collect(),
        env_files: env.files,
        signal_target: signalling.as_ref().map(|s| s.target.clone()),
    };
    let mut volumes = vec![secrets_volume(cfg)];
    volumes.extend(credentials.volumes.iter().cloned());
    volumes.extend(cfg.ca_bundle.as_ref().map(ca_bundle_volume));
    let mut init = init::init_container(spec, &plan, credentials, cfg);
    if let Some(s) = &signalling {
        init::run_as(&mut init, s.run_as_user);
    }
    let sidecar = plan
        .secrets
        .iter()
        .any(|s| s.in_place)
        .then(|| init::refresh_sidecar(&init, signalling.is_some()));
    if sidecar.is_some() {
        volumes.push(init::desired_versions_volume());
    }
    let operations = ops::operations(
        spec,
        &ops::Additions {
            injected: wanted.names.join(","),
            volumes: &volumes,
            init: &init,
            sidecar: sidecar.as_ref(),
            mount: VolumeMount {
                name: ann::VOLUME_NAME.to_string(),
                mount_path: wanted.mount_path.clone(),
                read_only: Some(true),
                ..Default::default()
            },
            selected: &wanted.selected,
            env: &env.rewrites,
            fs_group: cfg.fs_group,
            share_process_namespace: signalling
                .as_ref()
                .is_some_and(|s| s.share_process_namespace),
        },
    );
    Ok(Mutation::Inject(Injection {
        patch: Patch(operations),
        containers: wanted
            .selected
            .iter()
            .map(|&i| spec.containers[i].name.clone())
            .collect(),
        secrets: wanted.names,
        identity,
    }))
}

/// The memory-backed volume the files are written to.
fn secrets_volume(cfg: &InjectConfig) -> Volume {
    Volume {
        name: ann::VOLUME_NAME.to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".to_string()),
            size_limit: Some(Quantity(cfg.size_limit.clone())),
        }),
        ..Default::default()
    }
}

/// The CA bundle ConfigMap, its one key as [`ann::CA_BUNDLE_FILE`]. Not optional: without the
/// ConfigMap the pod waits in ContainerCreating with an event naming it, rather than dso-init
/// failing on an untrusted proxy.
fn ca_bundle_volume(ca: &CaBundle) -> Volume {
    Volume {
        name: ann::CA_BUNDLE_VOLUME_NAME.to_string(),
        config_map: Some(ConfigMapVolumeSource {
            name: ca.config_map.clone(),
            items: Some(vec![KeyToPath {
                key: ca.key.clone(),
                path: ann::CA_BUNDLE_FILE.to_string(),
                mode: None,
            }]),
            default_mode: Some(0o444),
            optional: Some(false),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
