//! The webhook → `dso-init` contract.
//!
//! The webhook resolves the pod's annotations and DsoSecrets into an [`InitPlan`] and passes it,
//! as JSON, in the init container's [`PLAN_ENV`] variable. The plan names secrets, keys, paths
//! and modes — never a value. `dso-init` answers with an [`InitReport`] in its termination
//! message: the version id of every secret it wrote, so the operator can tell which version each
//! pod runs.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Environment variable that carries the JSON plan.
pub const PLAN_ENV: &str = "DSO_PLAN";

/// Environment variable the webhook sets on `dso-init` from the downward API
/// (`fieldRef: metadata.namespace`): the pod's namespace, for the STS role session name.
pub const POD_NAMESPACE_ENV: &str = "DSO_POD_NAMESPACE";
/// Environment variable the webhook sets on `dso-init` from the downward API
/// (`fieldRef: metadata.name`, resolved by the kubelet, so a generated name is known): the pod's
/// name, for the STS role session name.
pub const POD_NAME_ENV: &str = "DSO_POD_NAME";

/// Environment variable the webhook sets on the `dso-refresh` sidecar from the downward API
/// (`fieldRef: metadata.uid`) when it signals an app: the pod's UID, with which it recognises
/// the target container's processes (see [`PlanSignal`]).
pub const POD_UID_ENV: &str = "DSO_POD_UID";

/// STS accepts role session names of 2 to 64 characters.
pub const ROLE_SESSION_NAME_MAX: usize = 64;
/// Hex digits of SHA-256 that end a shortened role session name.
const SESSION_HASH_HEX: usize = 8;

/// The role session name `dso-init` uses for `AssumeRoleWithWebIdentity` (IRSA), so that
/// CloudTrail shows which pod read a secret: `<namespace>.<pod>` (a namespace has no `.`, so
/// the first `.` separates them). Characters STS refuses (outside `[A-Za-z0-9_+=,.@-]`) become
/// `-`. Longer than 64 characters: the first 55, `-`, and the first 8 hex digits of the SHA-256
/// of the whole `<namespace>.<pod>`, so two long names that share a prefix still differ, and
/// anyone can recompute the name of a pod. `None` when either part is empty (the SDK's default
/// session name is used then).
pub fn role_session_name(namespace: &str, pod: &str) -> Option<String> {
    if namespace.is_empty() || pod.is_empty() {
        return None;
    }
    let full: String = format!("{namespace}.{pod}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if full.len() <= ROLE_SESSION_NAME_MAX {
        return Some(full);
    }
    let digest = hex::encode(Sha256::digest(full.as_bytes()));
    let keep = ROLE_SESSION_NAME_MAX - 1 - SESSION_HASH_HEX;
    // Only ASCII is left, so any byte index is a character boundary.
    Some(format!("{}-{}", &full[..keep], &digest[..SESSION_HASH_HEX]))
}
/// Current plan format.
pub const PLAN_VERSION: u32 = 1;

/// Everything `dso-init` needs to fill the volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InitPlan {
    /// Format version ([`PLAN_VERSION`]).
    pub version: u32,
    /// Where the tmpfs is mounted in the init container.
    pub mount_path: String,
    /// The tmpfs size limit; the total written must fit.
    pub size_limit_bytes: u64,
    /// One entry per DsoSecret the pod mounts.
    pub secrets: Vec<PlanSecret>,
    /// One env file per container that uses `dso://` env references (see [`crate::env`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_files: Vec<PlanEnvFile>,
    /// Where the `dso-refresh` sidecar sends the signals of the DsoSecrets that ask for one
    /// ([`PlanSecret::signal`]); set exactly when one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_target: Option<PlanSignal>,
}

/// The app container the `dso-refresh` sidecar signals after a swap. The pod shares one process
/// namespace; the sidecar recognises the container's processes by the kubelet's bind mount of
/// its termination-message file (`.../pods/<pod uid>/containers/<container>/...` in
/// `/proc/<pid>/mountinfo`, readable without privileges) and signals the oldest one, the
/// container's main process.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanSignal {
    /// The container's name.
    pub container: String,
}

/// The env file of one container, at [`crate::env::env_file_path`] of its name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanEnvFile {
    /// The container whose `fileKeyRef`s read it.
    pub container: String,
    /// Its variables, one key each.
    pub vars: Vec<PlanEnvVar>,
}

/// One variable: its name (the key in the env file) and the file whose contents are its value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanEnvVar {
    pub name: String,
    /// The DsoSecret of `dso://<dsoSecret>/<file>`.
    pub dso_secret: String,
    /// The path of `dso://<dsoSecret>/<file>`.
    pub file: String,
}

/// One DsoSecret, resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanSecret {
    /// The DsoSecret's name: the directory under the mount path.
    pub name: String,
    /// AWS region, when the DsoSecret names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// File mode for every file (e.g. 0o440).
    pub file_mode: u32,
    /// The files.
    pub files: Vec<PlanFile>,
    /// `strategy: InPlace`: the files live in a generation directory that `<name>` links to
    /// ([`crate::inplace`]), so that the `dso-refresh` sidecar can swap them all at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_place: bool,
    /// The signal (such as `SIGHUP`) the `dso-refresh` sidecar sends to
    /// [`InitPlan::signal_target`] after it swapped this DsoSecret (`refresh.signal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<crate::RefreshSignal>,
}

/// One file (or, with `expand`, one file per JSON key).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanFile {
    /// Relative path under `<mount>/<name>/`; absent with `expand`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Empty for a template entry (its secrets are its `sources`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expand: bool,
    /// A template to render (see [`crate::template`]), reading `sources`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, PlanSource>,
}

/// One secret a template reads, under its name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanSource {
    pub secret_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

impl PlanSecret {
    /// Builds the plan entry of a DsoSecret. Call after [`crate::validate::validate_spec`].
    pub fn from_spec(name: &str, spec: &crate::DsoSecretSpec) -> Self {
        PlanSecret {
            name: name.to_string(),
            region: spec.aws.as_ref().and_then(|a| a.region.clone()),
            file_mode: crate::validate::file_mode(spec),
            in_place: spec.strategy() == crate::RefreshStrategy::InPlace,
            signal: spec.signal(),
            files: spec
                .files
                .iter()
                .map(|f| PlanFile {
                    path: f.path.clone(),
                    secret_id: f.secret_id.clone(),
                    json_key: f.json_key.clone(),
                    version_stage: f.version_stage.clone(),
                    version_id: f.version_id.clone(),
                    expand: f.expands(),
                    template: f.template.clone(),
                    sources: f
                        .sources
                        .iter()
                        .flatten()
                        .map(|(name, src)| {
                            (
                                name.clone(),
                                PlanSource {
                                    secret_id: src.secret_id.clone(),
                                    json_key: src.json_key.clone(),
                                    version_stage: src.version_stage.clone(),
                                    version_id: src.version_id.clone(),
                                },
                            )
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// What `dso-init` writes to its termination message on success.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InitReport {
    /// One entry per distinct secret fetched.
    pub versions: Vec<ReportedVersion>,
}

/// A secret and the version id `dso-init` wrote.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ReportedVersion {
    pub secret_id: String,
    pub version_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_round_trips_through_json() {
        let plan = InitPlan {
            version: PLAN_VERSION,
            mount_path: "/run/secrets/dso".into(),
            size_limit_bytes: 1 << 20,
            secrets: vec![PlanSecret {
                name: "db".into(),
                region: Some("us-east-1".into()),
                file_mode: 0o440,
                files: vec![PlanFile {
                    path: Some("password".into()),
                    secret_id: "prod/db".into(),
                    json_key: Some("password".into()),
                    version_stage: None,
                    version_id: None,
                    expand: false,
                    template: None,
                    sources: BTreeMap::new(),
                }],
                in_place: true,
                signal: Some(crate::RefreshSignal::Sighup),
            }],
            signal_target: Some(PlanSignal {
                container: "app".into(),
            }),
            env_files: vec![PlanEnvFile {
                container: "app".into(),
                vars: vec![PlanEnvVar {
                    name: "DB_PASSWORD".into(),
                    dso_secret: "db".into(),
                    file: "password".into(),
                }],
            }],
        };
        let json = serde_json::to_string(&plan).expect("serialize");
        assert!(!json.contains("expand"), "false flags are left out: {json}");
        assert_eq!(
            serde_json::from_str::<InitPlan>(&json).expect("parse"),
            plan
        );
    }

    #[rstest::rstest]
    #[case::usual("shop", "web-7d9c8b6f4d-x2x9k", "shop.web-7d9c8b6f4d-x2x9k")]
    #[case::dotted_pod("shop", "web.v2-0", "shop.web.v2-0")]
    #[case::exactly_64(
        "ns",
        "p123456789012345678901234567890123456789012345678901234567890",
        "ns.p123456789012345678901234567890123456789012345678901234567890"
    )]
    #[case::refused_characters("team a", "pod/1:x", "team-a.pod-1-x")]
    #[case::non_ascii("équipe", "pod", "-quipe.pod")]
    #[case::too_long(
        "payments-production-eu",
        "checkout-api-with-a-very-long-deployment-name-5f7b9c8d6e-abcde",
        "payments-production-eu.checkout-api-with-a-very-long-de-41e5ff17"
    )]
    fn role_session_names_identify_the_pod_within_sts_limits(
        #[case] namespace: &str,
        #[case] pod: &str,
        #[case] want: &str,
    ) {
        assert_eq!(role_session_name(namespace, pod).as_deref(), Some(want));
    }

    #[test]
    fn without_a_namespace_or_a_pod_name_there_is_no_session_name() {
        assert_eq!(role_session_name("", "web"), None);
        assert_eq!(role_session_name("shop", ""), None);
    }

    proptest::proptest! {
        #[test]
        fn every_role_session_name_is_one_sts_accepts(ns in "\\PC{1,80}", pod in "\\PC{1,300}") {
            let name = role_session_name(&ns, &pod).expect("both parts given");
            proptest::prop_assert!((2..=ROLE_SESSION_NAME_MAX).contains(&name.len()), "{}", name);
            proptest::prop_assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)),
                "{}", name
            );
            proptest::prop_assert_eq!(Some(name), role_session_name(&ns, &pod));
        }

        #[test]
        fn long_names_that_share_their_first_55_characters_still_differ(
            a in "[a-z0-9]{60,100}", b in "[a-z0-9]{60,100}"
        ) {
            proptest::prop_assume!(a != b);
            proptest::prop_assert_ne!(role_session_name("ns", &a), role_session_name("ns", &b));
        }
    }

    #[test]
    fn unknown_plan_fields_are_refused() {
        let bad = r#"{"version":1,"mountPath":"/m","sizeLimitBytes":1,"secrets":[],"value":"x"}"#;
        assert!(serde_json::from_str::<InitPlan>(bad).is_err());
    }
}
