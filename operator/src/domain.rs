//! The pure core: no I/O, no Kubernetes client, no AWS client. Everything the operator decides
//! is decided here, from values, and tested with tables and property tests.
//!
//! - [`SecretMeta`] / [`ProblemKind`]: what an AWS lookup answers (filled in by [`crate::aws`]).
//! - [`invalid_spec`] / [`not_allowed`]: the InvalidSpec verdicts reached before any AWS call.
//! - [`resolve`]: a DsoSecret's entries + AWS metadata → the version each entry resolves to,
//!   the Ready reason, and the stage-following versions a rollout depends on.
//! - [`ready_condition`] / [`rotations`]: the status pieces.
//! - [`decide`]: whether a consuming workload must roll, only record, or is current.
//!
//! ## How "never restart what is already current" works
//!
//! A workload's pod template carries `dso.dev/versions-hash` (see [`dso_api::versions`]): the
//! hash of the stage-following versions of every `strategy: Rollout` DsoSecret the template
//! consumes. Writing it changes the template, so it is written only to roll. What the pods run is
//! recorded separately, on the workload's own metadata ([`dso_api::annotations::RECORDED_VERSIONS`], JSON
//! `{key: versionId}`), which rolls nothing. The decision, in order:
//!
//! 1. the template hash equals the hash of the current versions → current (an operator restart
//!    lands here: same versions, same hash, nothing to do);
//! 2. the record matches the current versions → current;
//! 3. pods of the workload report what `dso-init` fetched (termination message) → roll if any
//!    pod runs another version of a consumed secret, else only record;
//! 4. no pod reports: the record (if any) says which versions the pods got → roll if one of them
//!    changed; a template hash stamped by us for other versions → roll;
//! 5. otherwise the workload is seen for the first time: its pods started after the versions
//!    were current, so it is only recorded (the baseline for the next rotation).
//!
//! Pinned `versionId` entries and `strategy: None` DsoSecrets are never part of the hash, so
//! they never roll anything.

use crate::aws::AwsProblem;
use dso_api::contract::ReportedVersion;
use dso_api::{DsoSecretSpec, SecretVersionStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;

/// What AWS says about one secret: its versions and their staging labels. Never a value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretMeta {
    /// Full ARN.
    pub arn: Option<String>,
    /// Friendly name.
    pub name: Option<String>,
    /// Version id → staging labels (`VersionIdsToStages`).
    pub versions: BTreeMap<String, Vec<String>>,
    /// When the secret last changed.
    pub last_changed: Option<Timestamp>,
    /// Set when the secret is scheduled for deletion.
    pub deleted: bool,
}

/// What kind of failure an AWS call hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// The secret does not exist (or is scheduled for deletion).
    NotFound,
    /// The operator's identity may not describe or list this secret.
    AccessDenied,
    /// Throttling, timeouts, connection failures, 5xx: worth retrying soon.
    Transient,
    /// Anything else AWS refused (bad request, unknown region...): retrying will not help.
    Permanent,
}

/// The answer of one AWS lookup.
pub type Lookup = Result<SecretMeta, AwsProblem>;

/// The reason of the Ready condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Synced,
    SecretNotFound,
    AccessDenied,
    InvalidSpec,
    AwsError,
}

impl Reason {
    /// The reason as written in the condition (and used as the event reason).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Synced => "Synced",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::AccessDenied => "AccessDenied",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::AwsError => "AwsError",
        }
    }

    fn of(kind: ProblemKind) -> Reason {
        match kind {
            ProblemKind::NotFound => Reason::SecretNotFound,
            ProblemKind::AccessDenied => Reason::AccessDenied,
            ProblemKind::Transient | ProblemKind::Permanent => Reason::AwsError,
        }
    }
}

/// One secret as the operator looks it up: the region it lives in and its id (name or ARN).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretKey {
    pub region: String,
    pub secret_id: String,
}

/// The InvalidSpec resolution of a spec [`dso_api::validate::validate_spec`] refuses, with every
/// broken rule in the message; `None` for a valid spec. Checked before any AWS call: a refused
/// spec never reaches AWS (a malformed ARN could otherwise name the region, and with it the
/// endpoint host).
pub fn invalid_spec(spec: &DsoSecretSpec) -> Option<Resolution> {
    let errors = dso_api::validate::validate_spec(spec).err()?;
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Some(Resolution {
        problem: Some((Reason::InvalidSpec, message)),
        ..Resolution::default()
    })
}

/// The InvalidSpec resolution of a spec that names a secret outside `namespace`'s entries of
/// the admin's secret allowlist (every file's `secretId` and template source), naming each
/// refused field, file and secret id; `None` when all are allowed (or no allowlist is set).
/// Checked before any AWS call, so the operator's role never describes such a secret, in
/// `describe` or `sweep` mode.
pub fn not_allowed(
    spec: &DsoSecretSpec,
    namespace: &str,
    allowlist: &dso_api::allowlist::Allowlist,
) -> Option<Resolution> {
    let errors = allowlist.check_spec(namespace, spec).err()?;
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Some(Resolution {
        problem: Some((Reason::InvalidSpec, message)),
        ..Resolution::default()
    })
}

/// The lookup key of a secret: the ARN's region, else `spec.aws.region`, else the default.
pub fn secret_key(spec: &DsoSecretSpec, secret_id: &str, default_region: &str) -> SecretKey {
    let region = dso_api::validate::arn_region(secret_id)
        .map(str::to_string)
        .or_else(|| spec.aws.as_ref().and_then(|a| a.region.clone()))
        .unwrap_or_else(|| default_region.to_string());
    SecretKey {
        region,
        secret_id: secret_id.to_string(),
    }
}

/// The distinct secrets a DsoSecret needs looked up (template sources included).
pub fn secret_keys(spec: &DsoSecretSpec, default_region: &str) -> BTreeSet<SecretKey> {
    spec.secret_refs()
        .iter()
        .map(|r| secret_key(spec, r.secret_id, default_region))
        .collect()
}

/// A consumed version: the input of the versions hash.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Consumed {
    pub secret_id: String,
    pub version_id: String,
}

/// Stage-following versions, by hash key (`<dsosecret>/<secretId>`, plus `@<stage>` for a stage
/// other than AWSCURRENT).
pub type Versions = BTreeMap<String, Consumed>;

/// The hash key of a stage-following entry.
pub fn version_key(dso_name: &str, secret_id: &str, stage: &str) -> String {
    dso_api::versions::key(dso_name, secret_id, stage)
}

/// What a DsoSecret resolves to right now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolution {
    /// One status entry per distinct (secret, stage or pinned id).
    pub secrets: Vec<SecretVersionStatus>,
    /// The stage-following versions (what a rollout depends on).
    pub following: Versions,
    /// Why it is not Ready (first reason, every message).
    pub problem: Option<(Reason, String)>,
    /// True when the problem is worth a quick retry.
    pub transient: bool,
}

impl Resolution {
    /// The Ready reason.
    pub fn reason(&self) -> Reason {
        self.problem.as_ref().map_or(Reason::Synced, |p| p.0)
    }
}

/// Resolves every entry of a DsoSecret against the metadata `lookup` returns for its secret.
pub fn resolve<'a>(
    name: &str,
    spec: &DsoSecretSpec,
    default_region: &str,
    lookup: impl Fn(&SecretKey) -> Option<&'a Lookup>,
) -> Resolution {
    let mut out = Resolution::default();
    let mut seen = BTreeSet::new();
    let mut problems: Vec<(Reason, String)> = Vec::new();
    let mut failed_secrets = BTreeSet::new();
    for file in spec.secret_refs() {
        let stage = file.stage().map(str::to_string);
        if !seen.insert((
            file.secret_id.to_string(),
            stage.clone(),
            file.version_id.map(str::to_string),
        )) {
            continue;
        }
        let key = secret_key(spec, file.secret_id, default_region);
        let meta = match lookup(&key) {
            Some(Ok(meta)) => Some(meta),
            Some(Err(p)) => {
                if failed_secrets.insert(key.clone()) {
                    problems.push((Reason::of(p.kind), p.message.clone()));
                    out.transient |= p.is_transient();
                }
                None
            }
            None => {
                if failed_secrets.insert(key.clone()) {
                    problems.push((
                        Reason::AwsError,
                        format!("{}: not looked up yet", file.secret_id),
                    ));
                    out.transient = true;
                }
                None
            }
        };
        let mut entry = SecretVersionStatus {
            secret_id: file.secret_id.to_string(),
            version_stage: stage.clone(),
            version_id: file.version_id.map(str::to_string),
            last_changed_date: meta.and_then(|m| m.last_changed).map(Time),
        };
        if let (Some(stage), Some(meta)) = (&stage, meta) {
            match meta
                .versions
                .iter()
                .find(|(_, stages)| stages.iter().any(|s| s == stage))
            {
                Some((id, _)) => {
                    entry.version_id = Some(id.clone());
                    out.following.insert(
                        version_key(name, file.secret_id, stage),
                        Consumed {
                            secret_id: file.secret_id.to_string(),
                            version_id: id.clone(),
                        },
                    );
                }
                None => problems.push((
                    Reason::SecretNotFound,
                    format!(
                        "{}: no version has the staging label {stage}",
                        file.secret_id
                    ),
                )),
            }
        }
        out.secrets.push(entry);
    }
    if let Some((reason, _)) = problems.first() {
        let message = problems
            .iter()
            .map(|p| p.1.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        out.problem = Some((*reason, message));
    }
    out
}

/// The versions status shows: what this check resolved, and while AWS cannot be read (a transient
/// problem: endpoint down, throttling, timeouts), also the last versions read of every entry this
/// check could not resolve, so an outage does not empty `status.secrets` (the versions pods run
/// did not change). An invalid spec keeps the previous list as it was.
pub fn status_versions(
    previous: &[SecretVersionStatus],
    resolution: &Resolution,
) -> Vec<SecretVersionStatus> {
    if resolution.reason() == Reason::InvalidSpec {
        return previous.to_vec();
    }
    let mut out = resolution.secrets.clone();
    if resolution.transient {
        let same = |a: &SecretVersionStatus, b: &SecretVersionStatus| {
            a.secret_id == b.secret_id && a.version_stage == b.version_stage
        };
        for entry in out.iter_mut().filter(|e| e.version_id.is_none()) {
            if let Some(p) = previous.iter().find(|p| same(p, entry)) {
                *entry = p.clone();
            }
        }
        for p in previous {
            if !out.iter().any(|e| same(e, p)) {
                out.push(p.clone());
            }
        }
    }
    out
}

/// The Ready condition, keeping `lastTransitionTime` while the status does not change.
pub fn ready_condition(
    previous: &[Condition],
    reason: Reason,
    message: &str,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    let status = if reason == Reason::Synced {
        "True"
    } else {
        "False"
    };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == status)
        .map_or(now, |c| c.last_transition_time.clone());
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.as_str().into(),
        message: truncate(message, 1024),
        observed_generation: generation,
        last_transition_time,
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A stage-following entry whose version changed since the previous status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub secret_id: String,
    pub stage: String,
    pub from: String,
    pub to: String,
}

/// The stage-following entries whose version id changed between two statuses. Pinned entries
/// never rotate; entries new in `now` are not rotations.
pub fn rotations(previous: &[SecretVersionStatus], now: &[SecretVersionStatus]) -> Vec<Rotation> {
    now.iter()
        .filter_map(|n| {
            let stage = n.version_stage.as_ref()?;
            let to = n.version_id.as_ref()?;
            let from = previous
                .iter()
                .find(|p| p.secret_id == n.secret_id && p.version_stage.as_ref() == Some(stage))?
                .version_id
                .as_ref()?;
            (from != to).then(|| Rotation {
                secret_id: n.secret_id.clone(),
                stage: stage.clone(),
                from: from.clone(),
                to: to.clone(),
            })
        })
        .collect()
}

/// The versions hash written on pod templates.
pub fn hash(versions: &Versions) -> String {
    dso_api::versions::versions_hash(&record(versions))
}

/// The record written on the workload's metadata: key → version id.
pub fn record(versions: &Versions) -> BTreeMap<String, String> {
    versions
        .iter()
        .map(|(k, c)| (k.clone(), c.version_id.clone()))
        .collect()
}

/// The DsoSecrets whose versions differ between a workload's record (what its pods ran) and
/// the record `now`: the ones a rollout to `now` is for. Without a record, every one in `now`.
/// Keys are `<dsosecret>/<secretId>[@stage]` and a DsoSecret's name has no `/`.
pub fn changed_dsosecrets(
    recorded: Option<&BTreeMap<String, String>>,
    now: &BTreeMap<String, String>,
) -> std::collections::BTreeSet<String> {
    now.iter()
        .filter(|(k, v)| recorded.and_then(|r| r.get(*k)) != Some(*v))
        .filter_map(|(k, _)| k.split_once('/').map(|(dso, _)| dso.to_string()))
        .collect()
}

/// What to do with one consuming workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to write.
    Current,
    /// Its pods run the current versions: write the record only (restarts nothing).
    Record,
    /// Its pods run older versions: stamp the new hash on the template (rolls it) and record.
    Roll,
    /// Cannot tell without the pods' reports: call again with them.
    NeedPods,
}

/// Decides what a workload consuming `current` needs. `pods` holds the `dso-init` reports of
/// its pods that have one (`None`: not looked up yet). See the module documentation.
pub fn decide(
    current: &Versions,
    template_hash: Option<&str>,
    recorded: Option<&BTreeMap<String, String>>,
    pods: Option<&[Vec<ReportedVersion>]>,
) -> Decision {
    if current.is_empty() {
        return Decision::Current;
    }
    let want = record(current);
    let record_or_current = || {
        if recorded == Some(&want) {
            Decision::Current
        } else {
            Decision::Record
        }
    };
    if template_hash == Some(hash(current).as_str()) {
        return record_or_current();
    }
    if let Some(rec) = recorded
        && want.iter().all(|(k, v)| rec.get(k) == Some(v))
    {
        return record_or_current();
    }
    let Some(pods) = pods else {
        return Decision::NeedPods;
    };
    if !pods.is_empty() {
        let stale = pods.iter().any(|report| {
            current.values().any(|c| {
                let mut of_secret = report.iter().filter(|r| r.secret_id == c.secret_id);
                let mut any = false;
                let mut matches = false;
                for r in of_secret.by_ref() {
                    any = true;
                    matches |= r.version_id == c.version_id;
                }
                any && !matches
            })
        });
        return if stale {
            Decision::Roll
        } else {
            Decision::Record
        };
    }
    match recorded {
        Some(rec) if want.iter().any(|(k, v)| rec.get(k).is_some_and(|r| r != v)) => Decision::Roll,
        Some(_) => Decision::Record,
        None if template_hash.is_some() => Decision::Roll,
        None => Decision::Record,
    }
}

/// The DsoSecrets a pod template consumes: its `dso.dev/secrets`, when it opts in.
pub fn consumed_names(annotations: Option<&BTreeMap<String, String>>) -> Vec<String> {
    if !dso_api::annotations::wants_injection(annotations) {
        return Vec::new();
    }
    annotations
        .and_then(|a| a.get(dso_api::annotations::SECRETS))
        .map(|v| {
            dso_api::annotations::split_list(v)
                .into_iter()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Parses the record annotation; a malformed one counts as absent.
pub fn parse_record(value: Option<&String>) -> Option<BTreeMap<String, String>> {
    value.and_then(|v| serde_json::from_str(v).ok())
}

/// Parses a `dso-init` termination message; anything else (another tool's message, a
/// truncated one) counts as no report.
pub fn parse_report(message: &str) -> Option<Vec<ReportedVersion>> {
    serde_json::from_str::<dso_api::contract::InitReport>(message)
        .ok()
        .map(|r| r.versions)
}

#[cfg(test)]
mod tests;
