//! The webhook → `dso-init` contract.
//!
//! The webhook resolves the pod's annotations and DsoSecrets into an [`InitPlan`] and passes it,
//! as JSON, in the init container's [`PLAN_ENV`] variable. The plan names secrets, keys, paths
//! and modes — never a value. `dso-init` answers with an [`InitReport`] in its termination
//! message: the version id of every secret it wrote, so the operator can tell which version each
//! pod runs.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Environment variable that carries the JSON plan.
pub const PLAN_ENV: &str = "DSO_PLAN";
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
            }],
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

    #[test]
    fn unknown_plan_fields_are_refused() {
        let bad = r#"{"version":1,"mountPath":"/m","sizeLimitBytes":1,"secrets":[],"value":"x"}"#;
        assert!(serde_json::from_str::<InitPlan>(bad).is_err());
    }
}
