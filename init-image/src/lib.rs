//! `dso-init`: the init container DSO injects into pods. It reads the plan the webhook wrote
//! into `DSO_PLAN` (secret ids, keys, paths, modes — never values), fetches every distinct secret
//! version once with the pod's own AWS identity, writes the files atomically into the pod's
//! memory volume at `<mountPath>/<DsoSecret name>/<path>`, and reports the version ids it wrote
//! in its termination message. Any failure ends the process with a non-zero exit code and one
//! line naming the DsoSecret, the file, the secret and the cause: the pod does not start
//! without its secrets (fail closed).
//!
//! - [`plan`]: reads and re-validates the plan; which calls serve which files.
//! - [`fetch`]: AWS clients from the default chain, concurrent fetches, retries, deadline, and
//!   the one classifier of SDK errors.
//! - [`extract`]: whole value, one JSON key, or one file per key (`expand`).
//! - [`envfile`]: the env files the kubelet reads for `dso://` env references.
//! - [`write`]: layout and size checks, then atomic writes with tight modes.
//! - [`swap`]: `strategy: InPlace` DsoSecrets — a generation directory behind a symbolic link,
//!   replaced at once.
//! - [`refresh`]: the `dso-refresh` sidecar (`dso-init refresh`): waits for the operator's
//!   word (a downward-API file) and swaps the InPlace DsoSecrets whose versions changed.
//! - [`signal`]: `refresh.signal` — the target container's main process in the shared process
//!   namespace, and the signal sent to it after a swap.
//! - [`report`]: the termination message (version ids per secret id; never a value or a key
//!   name that came from one).
//! - [`value`]: the value-holding types, whose `Debug` is redacted and which wipe their bytes
//!   when dropped.
//! - [`error`]: the error type, exit codes and labels.

pub mod envfile;
pub mod error;
pub mod extract;
pub mod fetch;
pub mod plan;
pub mod refresh;
pub mod report;
pub mod signal;
pub mod swap;
pub mod value;
pub mod write;

pub use error::{Error, Result};
pub use fetch::Settings;

use crate::error::{AwsErrorKind, AwsFailure, Target};
use crate::plan::FetchKey;
use dso_api::contract::{InitPlan, InitReport, ReportedVersion};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What a successful run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// For the termination message.
    pub report: InitReport,
    /// Files written.
    pub files: usize,
    /// GetSecretValue calls that succeeded (distinct secret versions).
    pub fetched: usize,
}

/// What fetching a plan's secrets gave, checked and ready to write.
struct Prepared {
    pending: Vec<write::Pending>,
    versions: BTreeSet<ReportedVersion>,
    /// InPlace DsoSecret → the versions hash of what was fetched for it.
    hashes: BTreeMap<String, String>,
    fetched: usize,
}

/// Fills the volume described by `plan` (already parsed with [`plan::parse`]).
pub async fn run(plan: &InitPlan, settings: Settings) -> Result<Outcome> {
    let prepared = prepare(plan, settings).await?;
    let mount = Path::new(&plan.mount_path);
    if !mount.is_dir() {
        return Err(Error::MountPath(mount.to_path_buf()));
    }
    write::write_under(
        mount,
        prepared
            .pending
            .iter()
            .filter(|f| !prepared.hashes.contains_key(&f.dso_secret)),
        |f| &f.dso_secret,
    )?;
    install_in_place(plan, &prepared)?;
    if !prepared.hashes.is_empty() {
        swap::write_state(mount, &prepared.hashes)?;
    }
    Ok(Outcome {
        report: InitReport {
            versions: prepared.versions.into_iter().collect(),
        },
        files: prepared.pending.len(),
        fetched: prepared.fetched,
    })
}

/// Fetches the InPlace DsoSecrets `names` of `plan` again and swaps each one's directory
/// ([`swap`]); returns the versions hash of what each now holds. Nothing is swapped unless
/// every one of them was fetched and extracted: a failure leaves every file as it was.
pub async fn refresh(
    plan: &InitPlan,
    names: &[String],
    settings: Settings,
) -> Result<BTreeMap<String, String>> {
    let sub = InitPlan {
        secrets: plan
            .secrets
            .iter()
            .filter(|s| s.in_place && names.contains(&s.name))
            .cloned()
            .collect(),
        env_files: Vec::new(),
        ..plan.clone()
    };
    let prepared = prepare(&sub, settings).await?;
    install_in_place(&sub, &prepared)?;
    Ok(prepared.hashes)
}

/// Writes each InPlace DsoSecret of `plan` as a new generation.
fn install_in_place(plan: &InitPlan, prepared: &Prepared) -> Result<()> {
    for s in plan.secrets.iter().filter(|s| s.in_place) {
        let files: Vec<&write::Pending> = prepared
            .pending
            .iter()
            .filter(|f| f.dso_secret == s.name)
            .collect();
        swap::install(Path::new(&plan.mount_path), &s.name, &files, s.file_mode)?;
    }
    Ok(())
}

/// Fetches every distinct secret version of `plan` once, extracts and renders the files, adds
/// the env files, and checks the layout and the size: nothing is written yet.
async fn prepare(plan: &InitPlan, settings: Settings) -> Result<Prepared> {
    // Every distinct call, and the first file that needs it (named in messages).
    let mut calls: BTreeMap<FetchKey, Target> = BTreeMap::new();
    for s in &plan.secrets {
        for f in &s.files {
            for (key, at) in plan::fetches(s, f) {
                calls.entry(key).or_insert(at);
            }
        }
    }
    let deadline = settings.deadline;
    let deadline_at = tokio::time::Instant::now() + deadline;
    let first = calls.values().next().cloned().unwrap_or_default();
    // The fetch ends by `deadline_at` on its own, with the failure of the secret it waited
    // for; this is the safety net should anything else (loading the configuration) hang.
    let fetched = tokio::time::timeout(
        deadline + SAFETY_MARGIN,
        fetch(&calls, settings, deadline_at),
    )
    .await
    .map_err(|_| Error::Aws {
        at: first,
        failure: AwsFailure::new(
            AwsErrorKind::Timeout,
            format!("nothing fetched before the {deadline:?} deadline"),
        ),
    })??;

    let mut pending = Vec::new();
    for s in &plan.secrets {
        for f in &s.files {
            let at = plan::target(s, f);
            if let Some(template) = &f.template {
                pending.push(write::Pending {
                    contents: render_template(s, f, template, &fetched)?,
                    at,
                    dso_secret: s.name.clone(),
                    path: f.path.clone().unwrap_or_default(),
                    mode: s.file_mode,
                    named_by_secret: false,
                });
                continue;
            }
            let Some(got) = fetched.get(&plan::fetch_key(s, f)) else {
                return Err(Error::Aws {
                    at,
                    failure: AwsFailure::new(AwsErrorKind::Other, "internal: no fetch result"),
                });
            };
            let Some(value) = &got.value else {
                return Err(Error::EmptyValue {
                    at,
                    version: plan::fetch_key(s, f).version.to_string(),
                });
            };
            for out in extract::files_for(&at, f, value)? {
                pending.push(write::Pending {
                    at: at.clone(),
                    dso_secret: s.name.clone(),
                    path: out.path,
                    contents: out.contents,
                    mode: s.file_mode,
                    named_by_secret: f.expand,
                });
            }
        }
    }
    // The report: version ids per secret id, nothing from a value (not even expand's keys).
    let versions: BTreeSet<ReportedVersion> = fetched
        .iter()
        .map(|(key, got)| ReportedVersion {
            secret_id: key.secret_id.clone(),
            version_id: got.version_id.clone(),
        })
        .collect();
    // InPlace DsoSecrets: the hash of the stage-following versions, as the operator computes it.
    let mut hashes = BTreeMap::new();
    for s in plan.secrets.iter().filter(|s| s.in_place) {
        let mut followed = BTreeMap::new();
        for f in &s.files {
            for (key, _) in plan::fetches(s, f) {
                if let (plan::VersionSel::Stage(stage), Some(got)) =
                    (&key.version, fetched.get(&key))
                {
                    followed.insert(
                        dso_api::versions::key(&s.name, &key.secret_id, stage),
                        got.version_id.clone(),
                    );
                }
            }
        }
        hashes.insert(s.name.clone(), dso_api::inplace::desired_hash(&followed));
    }
    let fetched_count = fetched.len();
    // Every holder of a value wipes it when dropped (see `value`): the fetched values now,
    // since the files' contents are all in `pending`; those once they are written (or when an
    // error returns early).
    drop(fetched);
    let env_files = env_files(plan, &pending)?;
    pending.extend(env_files);
    write::check_layout(&pending)?;
    write::check_size(&pending, plan.size_limit_bytes)?;
    Ok(Prepared {
        pending,
        versions,
        hashes,
        fetched: fetched_count,
    })
}

/// Renders a template entry from its sources' fetched values.
fn render_template(
    s: &dso_api::contract::PlanSecret,
    f: &dso_api::contract::PlanFile,
    template: &str,
    fetched: &BTreeMap<FetchKey, fetch::Fetched>,
) -> Result<value::Contents> {
    let mut sources = BTreeMap::new();
    for (name, src) in &f.sources {
        let key = plan::source_key(s, src);
        let mut at = plan::target(s, f);
        at.secret_id = src.secret_id.clone();
        let Some(got) = fetched.get(&key) else {
            return Err(Error::Aws {
                at,
                failure: AwsFailure::new(AwsErrorKind::Other, "internal: no fetch result"),
            });
        };
        let Some(value) = &got.value else {
            return Err(Error::EmptyValue {
                at,
                version: key.version.to_string(),
            });
        };
        sources.insert(name.clone(), extract::source_value(&at, src, value)?);
    }
    let file = f.path.as_deref().unwrap_or_default();
    dso_api::template::render(file, template, &sources)
        .map(|text| value::Contents::new(text.into_bytes()))
        .map_err(|e| Error::Template {
            at: plan::target(s, f),
            why: e.to_string(),
        })
}

/// Mode of the env files: owner and group read, like the default file mode. The kubelet may
/// check that the consuming container's user can read the env file (KEP-3721 lists "the
/// container's UID does not have permission to read the env file" as a start failure), and the
/// container reaches it through the pod's fsGroup, whatever user it runs as.
pub const ENV_FILE_MODE: u32 = 0o440;

/// The env file of every container that uses `dso://` references, from the files already
/// extracted: a variable's value is exactly the contents of the file it names.
fn env_files(plan: &InitPlan, files: &[write::Pending]) -> Result<Vec<write::Pending>> {
    let by_path: BTreeMap<(&str, &str), &write::Pending> = files
        .iter()
        .map(|f| ((f.dso_secret.as_str(), f.path.as_str()), f))
        .collect();
    let mut out = Vec::with_capacity(plan.env_files.len());
    for env in &plan.env_files {
        let path = dso_api::env::env_file_path(&env.container);
        let fail = |var: &dso_api::contract::PlanEnvVar, why: String| Error::EnvValue {
            container: env.container.clone(),
            var: var.name.clone(),
            dso_secret: var.dso_secret.clone(),
            file: var.file.clone(),
            why,
        };
        let mut values = Vec::with_capacity(env.vars.len());
        for var in &env.vars {
            let Some(f) = by_path.get(&(var.dso_secret.as_str(), var.file.as_str())) else {
                return Err(fail(
                    var,
                    "the DsoSecret wrote no such file (an expand entry's secret has no such key?)"
                        .into(),
                ));
            };
            values.push((var.name.as_str(), f.contents.as_bytes()));
        }
        let contents =
            envfile::render(&values).map_err(|(i, why)| fail(&env.vars[i], why.to_string()))?;
        let (dir, name) = path
            .split_once('/')
            .unwrap_or((dso_api::env::ENV_DIR, &path));
        out.push(write::Pending {
            at: Target {
                dso_secret: dir.to_string(),
                file: name.to_string(),
                secret_id: String::new(),
            },
            dso_secret: dir.to_string(),
            path: name.to_string(),
            contents: value::Contents::new(contents),
            mode: ENV_FILE_MODE,
            named_by_secret: false,
        });
    }
    Ok(out)
}

const SAFETY_MARGIN: std::time::Duration = std::time::Duration::from_millis(500);

async fn fetch(
    calls: &BTreeMap<FetchKey, Target>,
    settings: Settings,
    deadline_at: tokio::time::Instant,
) -> Result<BTreeMap<FetchKey, fetch::Fetched>> {
    let regions: Vec<Option<String>> = calls.keys().map(|k| k.region.clone()).collect();
    let fetcher = fetch::Fetcher::from_environment(settings, &regions).await;
    if fetcher.default_region().is_none()
        && let Some((_, at)) = calls.iter().find(|(k, _)| k.region.is_none())
    {
        return Err(Error::NoRegion { at: at.clone() });
    }
    fetcher
        .fetch_all(calls.keys().cloned().collect(), deadline_at)
        .await
        .map_err(|(key, failure)| Error::Aws {
            at: calls.get(&key).cloned().unwrap_or_default(),
            failure,
        })
}
