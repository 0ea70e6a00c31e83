//! `dso://` env references: a container env entry whose literal `value` is
//! `dso://<DsoSecret>/<path>` becomes `valueFrom.fileKeyRef` on DSO's memory volume (KEP-3721
//! env files), and dso-init is told, through the plan, which env file to write with which
//! variables. The value never enters the pod spec; the command is never touched.
//!
//! Refused, with the container, the variable and the reference named: a reference in a container
//! that does not get the mount (`dso.dev/containers`) or in an init container, to a DsoSecret
//! the pod does not mount (`dso.dev/secrets`), to a path the DsoSecret does not write, or on a
//! variable name an env file cannot carry.

use crate::error::{Error, Result};
use dso_api::DsoSecret;
use dso_api::annotations as ann;
use dso_api::contract::{PlanEnvFile, PlanEnvVar};
use dso_api::env::{Reference, check_env_name, env_file_path, parse_reference};
use k8s_openapi::api::core::v1::{Container, EnvVar, EnvVarSource, FileKeySelector, PodSpec};
use std::sync::Arc;

/// One env entry to replace: container index, env index, the new entry.
pub(super) type Rewrite = (usize, usize, EnvVar);

/// The env files dso-init writes and the env entries the patch replaces.
#[derive(Default)]
pub(super) struct EnvPlan {
    pub files: Vec<PlanEnvFile>,
    pub rewrites: Vec<Rewrite>,
}

/// Finds every `dso://` reference of the pod and checks it against what the pod mounts.
pub(super) fn plan(
    spec: &PodSpec,
    selected: &[usize],
    secrets: &[(String, Arc<DsoSecret>)],
) -> Result<EnvPlan> {
    for c in spec.init_containers.iter().flatten() {
        if let Some((var, value)) = references(c).next() {
            return Err(denied(
                c,
                var,
                value,
                "only regular containers selected by dso.dev/containers may use dso:// references, not init containers: use it in a regular container",
            ));
        }
    }
    let mut out = EnvPlan::default();
    for (i, c) in spec.containers.iter().enumerate() {
        let mut vars = Vec::new();
        for (j, e) in c.env.iter().flatten().enumerate() {
            let Some(value) = e.value.as_deref() else {
                continue;
            };
            let Some(parsed) = parse_reference(value) else {
                continue;
            };
            let Reference { dso_secret, path } =
                parsed.map_err(|why| denied(c, &e.name, value, &why))?;
            if !selected.contains(&i) {
                return Err(denied(
                    c,
                    &e.name,
                    value,
                    &format!(
                        "the container does not get the DSO volume: add it to {}",
                        ann::CONTAINERS
                    ),
                ));
            }
            check_env_name(&e.name).map_err(|why| {
                denied(
                    c,
                    &e.name,
                    value,
                    &format!("the variable name cannot be carried: {why}"),
                )
            })?;
            let Some((_, secret)) = secrets.iter().find(|(n, _)| *n == dso_secret) else {
                return Err(denied(
                    c,
                    &e.name,
                    value,
                    &format!(
                        "the pod does not mount DsoSecret {dso_secret:?}: add it to {}",
                        ann::SECRETS
                    ),
                ));
            };
            if !writes(secret, &path) {
                return Err(denied(
                    c,
                    &e.name,
                    value,
                    &format!(
                        "DsoSecret {dso_secret:?} does not write {path:?} (it writes: {})",
                        written(secret)
                    ),
                ));
            }
            vars.push(PlanEnvVar {
                name: e.name.clone(),
                dso_secret,
                file: path,
            });
            out.rewrites.push((i, j, file_key_ref(&e.name, &c.name)));
        }
        if !vars.is_empty() {
            out.files.push(PlanEnvFile {
                container: c.name.clone(),
                vars,
            });
        }
    }
    Ok(out)
}

/// The env entries of `c` whose literal value is a `dso://` reference.
fn references(c: &Container) -> impl Iterator<Item = (&str, &str)> {
    c.env.iter().flatten().filter_map(|e| {
        let v = e.value.as_deref()?;
        parse_reference(v).map(|_| (e.name.as_str(), v))
    })
}

fn denied(c: &Container, var: &str, reference: &str, problem: &str) -> Error {
    Error::EnvReference {
        container: c.name.clone(),
        var: var.to_string(),
        reference: reference.to_string(),
        problem: problem.to_string(),
    }
}

/// True when the DsoSecret writes `path`: a declared path, or, when it has an `expand` entry
/// (whose file names are the secret's JSON keys, known only at run time), any single name.
fn writes(secret: &DsoSecret, path: &str) -> bool {
    secret
        .spec
        .files
        .iter()
        .any(|f| f.path.as_deref() == Some(path))
        || (!path.contains('/') && secret.spec.files.iter().any(|f| f.expands()))
}

fn written(secret: &DsoSecret) -> String {
    let mut names: Vec<&str> = secret
        .spec
        .files
        .iter()
        .filter_map(|f| f.path.as_deref())
        .collect();
    if secret.spec.files.iter().any(|f| f.expands()) {
        names.push("one file per top-level JSON key of its expand entry");
    }
    names.join(", ")
}

/// The entry the kubelet resolves from the container's env file, key = the variable's name.
fn file_key_ref(name: &str, container: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            file_key_ref: Some(FileKeySelector {
                volume_name: ann::VOLUME_NAME.to_string(),
                path: env_file_path(container),
                key: name.to_string(),
                optional: None,
            }),
            ..Default::default()
        }),
    }
}
