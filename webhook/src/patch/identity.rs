//! How dso-init authenticates to AWS. With a role (DsoSecret `spec.aws.roleArn`, else the
//! ServiceAccount's `eks.amazonaws.com/role-arn`): IRSA, through the token the EKS pod identity
//! webhook already put in the pod, else a projected token the webhook adds. Without one: EKS
//! Pod Identity copied from an app container when the EKS webhook set it up before DSO, else
//! the default credential chain, only when `--allow-default-credentials` allows it (on EKS it
//! is the node's role, shared by every pod of the node): otherwise the pod is refused.

use super::Catalog;
use super::settings::InjectConfig;
use crate::error::{Error, Result};
use dso_api::DsoSecret;
use dso_api::annotations as ann;
use k8s_openapi::api::core::v1::{
    Container, PodSpec, ProjectedVolumeSource, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use std::sync::Arc;

/// The EKS pod identity webhook's variable naming the token file.
pub const TOKEN_FILE_ENV: &str = "AWS_WEB_IDENTITY_TOKEN_FILE";
/// The role variable of web identity.
pub const ROLE_ENV: &str = "AWS_ROLE_ARN";
/// File name of the token inside [`ann::TOKEN_MOUNT_PATH`].
pub const TOKEN_FILE_NAME: &str = "token";
/// The EKS Pod Identity variables: the agent's credentials URL and the token file it needs.
pub const POD_IDENTITY_URI_ENV: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
pub const POD_IDENTITY_TOKEN_ENV: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE";
const REGION_ENV: &str = "AWS_REGION";
const STS_REGIONAL_ENV: &str = "AWS_STS_REGIONAL_ENDPOINTS";

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

/// What the identity adds to the pod: dso-init's AWS variables (in order) and mounts, and the
/// volumes they need.
#[derive(Debug, Default)]
pub(super) struct Credentials {
    pub env: Vec<(String, String)>,
    pub mounts: Vec<VolumeMount>,
    pub volumes: Vec<Volume>,
}

/// Decides dso-init's identity for a pod mounting `secrets`.
pub(super) fn credentials(
    spec: &PodSpec,
    namespace: &str,
    secrets: &[(String, Arc<DsoSecret>)],
    catalog: &(impl Catalog + ?Sized),
    cfg: &InjectConfig,
) -> Result<(Identity, Credentials)> {
    let existing = existing_token(spec);
    let pod_identity = existing_pod_identity(spec);
    let role_arn = match dsosecret_role(secrets)? {
        Some(r) => Some(r),
        None => {
            let sa_name = spec.service_account_name.as_deref().unwrap_or("default");
            match catalog.service_account_role(namespace, sa_name) {
                Some(r) => r,
                // The token or Pod Identity some other webhook injected carries its own role.
                None if existing.is_some() || pod_identity.is_some() => None,
                // The apiserver admits only pods whose ServiceAccount exists, so the cache
                // lags: refuse rather than start a pod without its role. Controllers retry.
                None => {
                    return Err(Error::UnknownServiceAccount {
                        namespace: namespace.to_string(),
                        name: sa_name.to_string(),
                    });
                }
            }
        }
    };

    let mut out = Credentials::default();
    // The region of entries whose DsoSecret and secret ARN name none. Never taken from a
    // DsoSecret: one DsoSecret's region would leak onto another's entries, which the operator
    // resolves in its own default region. `--default-region` must match the operator's.
    let region = cfg
        .default_region
        .clone()
        .or_else(|| existing.as_ref().and_then(|e| e.region.clone()))
        .or_else(|| pod_identity.as_ref().and_then(|p| p.region.clone()));
    if let Some(region) = region {
        out.set(REGION_ENV, region);
    }
    let identity = match (existing, role_arn) {
        (Some(t), role) => match role.or(t.role_arn) {
            Some(role_arn) => {
                out.set(ROLE_ENV, role_arn.clone());
                out.set(TOKEN_FILE_ENV, t.token_file);
                out.set(
                    STS_REGIONAL_ENV,
                    t.sts_regional.unwrap_or_else(|| "regional".into()),
                );
                let volume = t.mount.name.clone();
                out.mounts.push(t.mount);
                Identity::IrsaReused { role_arn, volume }
            }
            None => out.pod_identity_or_default(pod_identity),
        },
        (None, Some(role_arn)) => {
            out.set(ROLE_ENV, role_arn.clone());
            out.set(
                TOKEN_FILE_ENV,
                format!("{}/{TOKEN_FILE_NAME}", ann::TOKEN_MOUNT_PATH),
            );
            out.set(STS_REGIONAL_ENV, "regional".into());
            out.volumes
                .push(irsa_token_volume(cfg.token_expiration_seconds));
            out.mounts.push(VolumeMount {
                name: ann::TOKEN_VOLUME_NAME.to_string(),
                mount_path: ann::TOKEN_MOUNT_PATH.to_string(),
                read_only: Some(true),
                ..Default::default()
            });
            Identity::IrsaAdded { role_arn }
        }
        (None, None) => out.pod_identity_or_default(pod_identity),
    };
    if identity == Identity::DefaultChain && !cfg.allow_default_credentials {
        return Err(Error::NoIdentity {
            namespace: namespace.to_string(),
            service_account: spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into()),
        });
    }
    Ok((identity, out))
}

impl Credentials {
    fn set(&mut self, name: &str, value: String) {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_string(), value));
    }

    /// Without a role: EKS Pod Identity, when the EKS webhook already set it up in the pod (it
    /// did not see dso-init, which did not exist yet), else the default chain.
    fn pod_identity_or_default(&mut self, pod_identity: Option<ExistingPodIdentity>) -> Identity {
        let Some(p) = pod_identity else {
            return Identity::DefaultChain;
        };
        self.set(POD_IDENTITY_URI_ENV, p.uri);
        self.set(POD_IDENTITY_TOKEN_ENV, p.token_file);
        let volume = p.mount.name.clone();
        self.mounts.push(p.mount);
        Identity::PodIdentityReused { volume }
    }
}

/// The role the DsoSecrets name (`spec.aws.roleArn`); refused when two name different ones.
fn dsosecret_role(secrets: &[(String, Arc<DsoSecret>)]) -> Result<Option<String>> {
    let mut role: Option<(&str, &str)> = None;
    for (name, s) in secrets {
        let Some(r) = s.spec.aws.as_ref().and_then(|a| a.role_arn.as_deref()) else {
            continue;
        };
        match role {
            Some((first, first_role)) if first_role != r => {
                return Err(Error::ConflictingRoles {
                    first: first.to_string(),
                    first_role: first_role.to_string(),
                    second: name.clone(),
                    second_role: r.to_string(),
                });
            }
            Some(_) => {}
            None => role = Some((name.as_str(), r)),
        }
    }
    Ok(role.map(|(_, r)| r.to_string()))
}

/// The projected ServiceAccount token for STS that IRSA reads, mounted only in dso-init.
fn irsa_token_volume(expiration_seconds: i64) -> Volume {
    Volume {
        name: ann::TOKEN_VOLUME_NAME.to_string(),
        projected: Some(ProjectedVolumeSource {
            default_mode: None,
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(ann::IRSA_AUDIENCE.to_string()),
                    expiration_seconds: Some(expiration_seconds),
                    path: TOKEN_FILE_NAME.to_string(),
                }),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    }
}

pub(super) fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

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
            region: env_value(c, REGION_ENV).map(str::to_string),
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
            region: env_value(c, REGION_ENV).map(str::to_string),
            sts_regional: env_value(c, STS_REGIONAL_ENV).map(str::to_string),
        })
    })
}
