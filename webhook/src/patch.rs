//! The heart of the webhook: a pure function from a pod, the DsoSecrets and ServiceAccount it
//! refers to (through a [`Catalog`]) and the [`InjectConfig`] to a JSON patch, or to a denial
//! naming the problem. No I/O: the router feeds it from watch caches, tests from tables.
//!
//! What an injection adds:
//! - the `dso-secrets` volume, `emptyDir {medium: Memory, sizeLimit}`;
//! - the `dso-init` init container, first in `initContainers`, with the [`InitPlan`] as JSON in
//!   `DSO_PLAN` (secret ids, keys, paths, modes — never a value), the volume mounted
//!   read-write, a Pod Security `restricted` security context and small requests and limits;
//! - the volume mounted read-only in the selected containers (`dso.dev/containers`, default
//!   all regular containers) and nowhere else;
//! - IRSA for the init container when a role is known (DsoSecret `spec.aws.roleArn`, else the
//!   ServiceAccount's `eks.amazonaws.com/role-arn`): a projected token (audience
//!   `sts.amazonaws.com`) plus `AWS_ROLE_ARN` / `AWS_WEB_IDENTITY_TOKEN_FILE`, or, when the EKS
//!   pod identity webhook already injected a token into the pod, that token reused;
//! - without a role, EKS Pod Identity (`AWS_CONTAINER_CREDENTIALS_FULL_URI`,
//!   `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` and the token's mount) copied from an app
//!   container when the EKS webhook ran before DSO;
//! - `securityContext.fsGroup` when the pod has none (see below);
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
//! Idempotent: a pod carrying `dso.dev/injected`, the volume and the init container gets no
//! patch. A pod with only the annotation (copied from a live pod) is injected anew; one with
//! two of the three is refused as a copied, incomplete injection; one using a reserved name
//! alone is refused as a collision.

use crate::config::{FILE_CEILING_BYTES, InjectConfig};
use crate::error::{Error, Result};
use dso_api::DsoSecret;
use dso_api::annotations as ann;
use dso_api::contract::{InitPlan, PLAN_ENV, PLAN_VERSION, PlanSecret};
use json_patch::{AddOperation, Patch, PatchOperation};
use jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, PodSpec, ProjectedVolumeSource,
    SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{Value, json};
use std::sync::Arc;

/// The EKS pod identity webhook's variable naming the token file.
pub const TOKEN_FILE_ENV: &str = "AWS_WEB_IDENTITY_TOKEN_FILE";
/// The role variable of web identity.
pub const ROLE_ENV: &str = "AWS_ROLE_ARN";
/// File name of the token inside [`ann::TOKEN_MOUNT_PATH`].
pub const TOKEN_FILE_NAME: &str = "token";

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

/// How the init container authenticates to AWS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The default chain (EKS Pod Identity, node role, env given with --init-env).
    DefaultChain,
    /// IRSA through a token volume the webhook added.
    IrsaAdded { role_arn: String },
    /// IRSA through the token the EKS pod identity webhook already injected.
    IrsaReused { role_arn: String, volume: String },
    /// EKS Pod Identity the EKS webhook already set up in the pod: its variables and token.
    PodIdentityReused { volume: String },
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::DefaultChain => f.write_str("default-chain"),
            Identity::IrsaAdded { role_arn } => write!(f, "irsa({role_arn})"),
            Identity::IrsaReused { role_arn, volume } => {
                write!(f, "irsa({role_arn}, reused {volume})")
            }
            Identity::PodIdentityReused { volume } => {
                write!(f, "eks-pod-identity(reused {volume})")
            }
        }
    }
}

/// Checks a mount path: absolute, no `.`/`..`/empty segments, not `/`.
pub fn check_mount_path(path: &str) -> std::result::Result<(), String> {
    let trimmed = path.trim_end_matches('/');
    if !path.starts_with('/') {
        return Err(format!(
            "{path:?} must be an absolute path such as /run/secrets/dso"
        ));
    }
    if trimmed.is_empty() {
        return Err(
            "\"/\" cannot be the mount path: pick a directory such as /run/secrets/dso".into(),
        );
    }
    for seg in trimmed[1..].split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!(
                "{path:?} must not contain '..', '.' or empty segments"
            ));
        }
        if seg.chars().any(|c| c.is_control() || c == ':') {
            return Err(format!("{path:?} contains a control character or ':'"));
        }
    }
    Ok(())
}

/// True when `inner` is `outer` or lies below it.
fn is_within(inner: &str, outer: &str) -> bool {
    let (inner, outer) = (inner.trim_end_matches('/'), outer.trim_end_matches('/'));
    inner == outer
        || (inner.starts_with(outer) && inner.as_bytes().get(outer.len()) == Some(&b'/'))
        || outer.is_empty()
}

/// A DNS-1123 subdomain, the form of every object name.
fn is_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn parse_secret_names(value: Option<&String>) -> Result<Vec<String>> {
    let malformed = |message: String| Error::MalformedAnnotation {
        key: ann::SECRETS,
        message,
    };
    let value = value.ok_or_else(|| {
        malformed("missing: list the DsoSecrets to mount, such as \"db,api\"".into())
    })?;
    let items = ann::split_list(value);
    if items.is_empty() {
        return Err(malformed(
            "empty: list the DsoSecrets to mount, such as \"db,api\"".into(),
        ));
    }
    let mut names: Vec<String> = Vec::new();
    for item in items {
        if item.contains('/') {
            return Err(Error::OtherNamespace {
                reference: item.to_string(),
            });
        }
        if !is_object_name(item) {
            return Err(malformed(format!(
                "{item:?} is not a DsoSecret name (lowercase letters, digits, '-' and '.')"
            )));
        }
        if !names.iter().any(|n| n == item) {
            names.push(item.to_string());
        }
    }
    Ok(names)
}

fn select_containers(spec: &PodSpec, value: Option<&String>) -> Result<Vec<usize>> {
    let Some(value) = value else {
        return Ok((0..spec.containers.len()).collect());
    };
    let wanted = ann::split_list(value);
    if wanted.is_empty() {
        return Err(Error::MalformedAnnotation {
            key: ann::CONTAINERS,
            message: "empty: name the containers that get the mount, or remove the annotation to mount it in all of them".into(),
        });
    }
    let mut picked = Vec::new();
    for name in wanted {
        match spec.containers.iter().position(|c| c.name == name) {
            Some(i) => {
                if !picked.contains(&i) {
                    picked.push(i);
                }
            }
            None => {
                return Err(Error::UnknownContainer {
                    name: name.to_string(),
                    available: spec
                        .containers
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
    }
    picked.sort_unstable();
    Ok(picked)
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// The EKS Pod Identity variables: the agent's credentials URL and the token file it needs.
pub const POD_IDENTITY_URI_ENV: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
pub const POD_IDENTITY_TOKEN_ENV: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE";

/// The mount of a container that holds `file`, read-only, when its volume is the pod's.
fn mount_holding(spec: &PodSpec, c: &Container, file: &str) -> Option<VolumeMount> {
    let m = c.volume_mounts.iter().flatten().find(|m| {
        spec.volumes.iter().flatten().any(|v| v.name == m.name)
            && file.starts_with(&format!("{}/", m.mount_path.trim_end_matches('/')))
    })?;
    Some(VolumeMount {
        name: m.name.clone(),
        mount_path: m.mount_path.clone(),
        read_only: Some(true),
        ..Default::default()
    })
}

fn regular_and_init_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

/// EKS Pod Identity the EKS pod identity webhook already set up in a container of the pod.
struct ExistingPodIdentity {
    mount: VolumeMount,
    uri: String,
    token_file: String,
    region: Option<String>,
}

fn existing_pod_identity(spec: &PodSpec) -> Option<ExistingPodIdentity> {
    regular_and_init_containers(spec).find_map(|c| {
        let uri = env_value(c, POD_IDENTITY_URI_ENV)?;
        let token_file = env_value(c, POD_IDENTITY_TOKEN_ENV)?;
        Some(ExistingPodIdentity {
            mount: mount_holding(spec, c, token_file)?,
            uri: uri.to_string(),
            token_file: token_file.to_string(),
            region: env_value(c, "AWS_REGION").map(str::to_string),
        })
    })
}

/// A web-identity token some other webhook (EKS pod identity) already put in the pod.
struct ExistingToken {
    mount: VolumeMount,
    token_file: String,
    role_arn: Option<String>,
    region: Option<String>,
    sts_regional: Option<String>,
}

fn existing_token(spec: &PodSpec) -> Option<ExistingToken> {
    regular_and_init_containers(spec).find_map(|c| {
        let token_file = env_value(c, TOKEN_FILE_ENV)?;
        Some(ExistingToken {
            mount: mount_holding(spec, c, token_file)?,
            token_file: token_file.to_string(),
            role_arn: env_value(c, ROLE_ENV).map(str::to_string),
            region: env_value(c, "AWS_REGION").map(str::to_string),
            sts_regional: env_value(c, "AWS_STS_REGIONAL_ENDPOINTS").map(str::to_string),
        })
    })
}

fn ptr<I, T>(tokens: I) -> PointerBuf
where
    I: IntoIterator<Item = T>,
    T: AsRef<str>,
{
    let owned: Vec<String> = tokens.into_iter().map(|t| t.as_ref().to_string()).collect();
    PointerBuf::from_tokens(owned.iter())
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

/// Appends `items` to the array at `base`, creating it when the pod has none.
fn append(ops: &mut Vec<PatchOperation>, base: &[&str], exists: bool, items: Vec<Value>) {
    if items.is_empty() {
        return;
    }
    if exists {
        for item in items {
            ops.push(add(ptr(base.iter().copied().chain(["-"])), item));
        }
    } else {
        ops.push(add(ptr(base.iter().copied()), Value::Array(items)));
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    // Serializing k8s-openapi types into a Value cannot fail (string keys, no custom errors).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn set_env(env: &mut Vec<EnvVar>, name: &str, value: &str) {
    env.retain(|e| e.name != name);
    env.push(EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        value_from: None,
    });
}

/// The plan entry of a DsoSecret, with the region its entries are fetched from written in:
/// `spec.aws.region`, else the webhook's default region (the operator's). Left `None` when
/// neither is known (dso-init then uses its environment), or when a file's ARN names another
/// region than the default: dso-init prefers the entry's region over an ARN's, while the
/// operator, like AWS, looks an ARN up in its own region; `AWS_REGION` (the default) still
/// serves the entry's other files.
fn plan_secret(
    name: &str,
    spec: &dso_api::DsoSecretSpec,
    default_region: Option<&str>,
) -> PlanSecret {
    let mut entry = PlanSecret::from_spec(name, spec);
    if entry.region.is_none()
        && let Some(default) = default_region
        && spec
            .files
            .iter()
            .all(|f| dso_api::validate::arn_region(&f.secret_id).is_none_or(|r| r == default))
    {
        entry.region = Some(default.to_string());
    }
    entry
}

/// Without a role: EKS Pod Identity, when the EKS webhook already set it up in the pod (it
/// did not see dso-init, which did not exist yet), else the default chain.
fn pod_identity_or_default(
    pod_identity: Option<ExistingPodIdentity>,
    env: &mut Vec<EnvVar>,
    init_mounts: &mut Vec<VolumeMount>,
) -> Identity {
    let Some(p) = pod_identity else {
        return Identity::DefaultChain;
    };
    set_env(env, POD_IDENTITY_URI_ENV, &p.uri);
    set_env(env, POD_IDENTITY_TOKEN_ENV, &p.token_file);
    let volume = p.mount.name.clone();
    init_mounts.push(p.mount);
    Identity::PodIdentityReused { volume }
}

/// Decides what to do with `pod` (created in `namespace`).
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

    // A previous injection left all three of the annotation, the volume and the init
    // container. The annotation alone (copied from a live pod into a template) is overwritten
    // by a new injection; some but not all of them is a copied, incomplete injection; the
    // volume or container without the annotation is a name collision.
    let has_volume = |n: &str| spec.volumes.iter().flatten().any(|v| v.name == n);
    let init_named = spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.name == ann::INIT_CONTAINER_NAME);
    let marks = [
        (
            annotations.contains_key(ann::INJECTED),
            format!("the annotation {}", ann::INJECTED),
        ),
        (
            has_volume(ann::VOLUME_NAME),
            format!("the volume {:?}", ann::VOLUME_NAME),
        ),
        (
            init_named,
            format!("the init container {:?}", ann::INIT_CONTAINER_NAME),
        ),
    ];
    if marks.iter().all(|(present, _)| *present) {
        return Ok(Mutation::AlreadyInjected);
    }
    let present = |want: bool| {
        marks
            .iter()
            .filter(|(p, _)| *p == want)
            .map(|(_, what)| what.as_str())
            .collect::<Vec<_>>()
            .join(" and ")
    };
    if marks.iter().filter(|(p, _)| *p).count() >= 2 {
        return Err(Error::PartlyInjected {
            present: present(true),
            missing: present(false),
        });
    }
    let mut reserved = Vec::new();
    if has_volume(ann::VOLUME_NAME) {
        reserved.push(format!("a volume named {:?}", ann::VOLUME_NAME));
    }
    if has_volume(ann::TOKEN_VOLUME_NAME) {
        reserved.push(format!("a volume named {:?}", ann::TOKEN_VOLUME_NAME));
    }
    if init_named
        || spec
            .containers
            .iter()
            .any(|c| c.name == ann::INIT_CONTAINER_NAME)
    {
        reserved.push(format!("a container named {:?}", ann::INIT_CONTAINER_NAME));
    }
    if !reserved.is_empty() {
        return Err(Error::ReservedName {
            what: reserved.join(" and "),
        });
    }

    // The annotations.
    let names = parse_secret_names(annotations.get(ann::SECRETS))?;
    let mount_path = match annotations.get(ann::MOUNT_PATH) {
        Some(p) => {
            check_mount_path(p.trim()).map_err(|message| Error::MalformedAnnotation {
                key: ann::MOUNT_PATH,
                message,
            })?;
            p.trim().trim_end_matches('/').to_string()
        }
        None => cfg.default_mount_path.clone(),
    };
    if is_within(&mount_path, ann::TOKEN_MOUNT_PATH)
        || is_within(ann::TOKEN_MOUNT_PATH, &mount_path)
    {
        return Err(Error::MalformedAnnotation {
            key: ann::MOUNT_PATH,
            message: format!(
                "{mount_path:?} overlaps {}, where DSO mounts the IRSA token: pick another directory",
                ann::TOKEN_MOUNT_PATH
            ),
        });
    }
    let selected = select_containers(spec, annotations.get(ann::CONTAINERS))?;
    for &i in &selected {
        let c = &spec.containers[i];
        if let Some(m) = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| is_within(&m.mount_path, &mount_path))
        {
            return Err(Error::MountCollision {
                container: c.name.clone(),
                volume: m.name.clone(),
                existing: m.mount_path.clone(),
                mount_path,
            });
        }
    }

    // The DsoSecrets.
    let mut secrets = Vec::with_capacity(names.len());
    for name in &names {
        let secret = catalog
            .dso_secret(namespace, name)
            .ok_or_else(|| Error::UnknownDsoSecret {
                namespace: namespace.to_string(),
                name: name.clone(),
            })?
            .map_err(|problems| Error::InvalidDsoSecret {
                name: name.clone(),
                problems,
            })?;
        dso_api::validate::validate_spec(&secret.spec).map_err(|errors| {
            Error::InvalidDsoSecret {
                name: name.clone(),
                problems: errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        })?;
        secrets.push((name.clone(), secret));
    }
    let files: u64 = secrets.iter().map(|(_, s)| s.spec.files.len() as u64).sum();
    let needed = files.saturating_mul(FILE_CEILING_BYTES);
    if needed > cfg.size_limit_bytes {
        return Err(Error::TooLarge {
            secrets: names.join(", "),
            files,
            ceiling_kib: FILE_CEILING_BYTES / 1024,
            needed_kib: needed / 1024,
            limit: cfg.size_limit.clone(),
            limit_kib: cfg.size_limit_bytes / 1024,
        });
    }

    // Identity.
    let mut role: Option<(String, String)> = None;
    for (name, s) in &secrets {
        if let Some(r) = s.spec.aws.as_ref().and_then(|a| a.role_arn.as_ref()) {
            match &role {
                Some((first, first_role)) if first_role != r => {
                    return Err(Error::ConflictingRoles {
                        first: first.clone(),
                        first_role: first_role.clone(),
                        second: name.clone(),
                        second_role: r.clone(),
                    });
                }
                Some(_) => {}
                None => role = Some((name.clone(), r.clone())),
            }
        }
    }
    let sa_name = spec.service_account_name.as_deref().unwrap_or("default");
    let existing = existing_token(spec);
    let pod_identity = existing_pod_identity(spec);
    let role_arn = match role {
        Some((_, r)) => Some(r),
        None => match catalog.service_account_role(namespace, sa_name) {
            Some(r) => r,
            // The token or Pod Identity some other webhook injected carries its own role.
            None if existing.is_some() || pod_identity.is_some() => None,
            // The apiserver admits only pods whose ServiceAccount exists, so the cache lags:
            // refuse rather than start a pod without its role. Controllers retry.
            None => {
                return Err(Error::UnknownServiceAccount {
                    namespace: namespace.to_string(),
                    name: sa_name.to_string(),
                });
            }
        },
    };

    let mut env = Vec::new();
    let plan = InitPlan {
        version: PLAN_VERSION,
        mount_path: mount_path.clone(),
        size_limit_bytes: cfg.size_limit_bytes,
        secrets: secrets
            .iter()
            .map(|(name, s)| plan_secret(name, &s.spec, cfg.default_region.as_deref()))
            .collect(),
    };
    set_env(
        &mut env,
        PLAN_ENV,
        &serde_json::to_string(&plan).unwrap_or_default(),
    );
    let mut init_mounts = vec![VolumeMount {
        name: ann::VOLUME_NAME.to_string(),
        mount_path: mount_path.clone(),
        ..Default::default()
    }];
    let mut new_volumes = vec![Volume {
        name: ann::VOLUME_NAME.to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".to_string()),
            size_limit: Some(Quantity(cfg.size_limit.clone())),
        }),
        ..Default::default()
    }];
    // The region of entries whose DsoSecret and secret ARN name none. Never taken from a
    // DsoSecret: one DsoSecret's region would leak onto another's entries, which the operator
    // resolves in its own default region. `--default-region` must match the operator's.
    let region = cfg
        .default_region
        .clone()
        .or_else(|| existing.as_ref().and_then(|e| e.region.clone()))
        .or_else(|| pod_identity.as_ref().and_then(|p| p.region.clone()));
    if let Some(region) = &region {
        set_env(&mut env, "AWS_REGION", region);
    }
    let identity = match (existing, role_arn) {
        (Some(t), role) => match role.or(t.role_arn) {
            Some(role_arn) => {
                set_env(&mut env, ROLE_ENV, &role_arn);
                set_env(&mut env, TOKEN_FILE_ENV, &t.token_file);
                set_env(
                    &mut env,
                    "AWS_STS_REGIONAL_ENDPOINTS",
                    t.sts_regional.as_deref().unwrap_or("regional"),
                );
                let volume = t.mount.name.clone();
                init_mounts.push(t.mount);
                Identity::IrsaReused { role_arn, volume }
            }
            None => pod_identity_or_default(pod_identity, &mut env, &mut init_mounts),
        },
        (None, Some(role_arn)) => {
            set_env(&mut env, ROLE_ENV, &role_arn);
            set_env(
                &mut env,
                TOKEN_FILE_ENV,
                &format!("{}/{TOKEN_FILE_NAME}", ann::TOKEN_MOUNT_PATH),
            );
            set_env(&mut env, "AWS_STS_REGIONAL_ENDPOINTS", "regional");
            new_volumes.push(Volume {
                name: ann::TOKEN_VOLUME_NAME.to_string(),
                projected: Some(ProjectedVolumeSource {
                    default_mode: None,
                    sources: Some(vec![VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: Some(ann::IRSA_AUDIENCE.to_string()),
                            expiration_seconds: Some(cfg.token_expiration_seconds),
                            path: TOKEN_FILE_NAME.to_string(),
                        }),
                        ..Default::default()
                    }]),
                }),
                ..Default::default()
            });
            init_mounts.push(VolumeMount {
                name: ann::TOKEN_VOLUME_NAME.to_string(),
                mount_path: ann::TOKEN_MOUNT_PATH.to_string(),
                read_only: Some(true),
                ..Default::default()
            });
            Identity::IrsaAdded { role_arn }
        }
        (None, None) => pod_identity_or_default(pod_identity, &mut env, &mut init_mounts),
    };
    for (k, v) in &cfg.init_env {
        set_env(&mut env, k, v);
    }

    let pod_user = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    let init = Container {
        name: ann::INIT_CONTAINER_NAME.to_string(),
        image: Some(cfg.image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        env: Some(env),
        volume_mounts: Some(init_mounts),
        resources: Some(cfg.resources.clone()),
        termination_message_policy: Some("File".to_string()),
        security_context: Some(SecurityContext {
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
        }),
        ..Default::default()
    };

    // The patch.
    let mut ops = Vec::new();
    ops.push(add(
        ptr(["metadata", "annotations", ann::INJECTED]),
        Value::String(names.join(",")),
    ));
    append(
        &mut ops,
        &["spec", "volumes"],
        spec.volumes.is_some(),
        new_volumes.iter().map(to_value).collect(),
    );
    if spec.init_containers.is_some() {
        ops.push(add(ptr(["spec", "initContainers", "0"]), to_value(&init)));
    } else {
        ops.push(add(
            ptr(["spec", "initContainers"]),
            json!([to_value(&init)]),
        ));
    }
    let mount = to_value(&VolumeMount {
        name: ann::VOLUME_NAME.to_string(),
        mount_path: mount_path.clone(),
        read_only: Some(true),
        ..Default::default()
    });
    for &i in &selected {
        let index = i.to_string();
        append(
            &mut ops,
            &["spec", "containers", &index, "volumeMounts"],
            spec.containers[i].volume_mounts.is_some(),
            vec![mount.clone()],
        );
    }
    if let Some(group) = cfg.fs_group {
        match &spec.security_context {
            None => ops.push(add(
                ptr(["spec", "securityContext"]),
                json!({"fsGroup": group}),
            )),
            Some(sc) if sc.fs_group.is_none() => ops.push(add(
                ptr(["spec", "securityContext", "fsGroup"]),
                json!(group),
            )),
            Some(_) => {}
        }
    }

    Ok(Mutation::Inject(Injection {
        patch: Patch(ops),
        secrets: names,
        containers: selected
            .iter()
            .map(|&i| spec.containers[i].name.clone())
            .collect(),
        identity,
    }))
}

#[cfg(test)]
mod tests;
