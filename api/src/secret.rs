//! The `DsoSecret` custom resource: which AWS Secrets Manager secrets (and which JSON keys) the
//! pods of a namespace get, as which files.
//!
//! Doc comments here are what `kubectl explain dsosecret` prints. The `x-kubernetes-validations`
//! (CEL) rules and patterns make the apiserver reject bad objects with a message that names the
//! field; [`crate::validate`] implements the same rules for the webhook and the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The staging label an entry follows when it names neither `versionStage` nor `versionId`.
pub const DEFAULT_STAGE: &str = "AWSCURRENT";
/// Maximum number of entries in `spec.files` (bounds the cost of the CEL rules).
pub const MAX_FILES: usize = 64;
/// Maximum length of a file path.
pub const MAX_PATH_LEN: usize = 253;

/// Which AWS Secrets Manager secrets a namespace's pods receive, and as which files.
///
/// Pods opt in with the annotations `dso.dev/inject: "true"` and `dso.dev/secrets: <names>`;
/// each file appears at `<mount-path>/<DsoSecret name>/<path>` on a memory-backed volume.
/// Values never enter a Kubernetes Secret, etcd, the pod spec or environment variables.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "dso.dev",
    version = "v1alpha1",
    kind = "DsoSecret",
    plural = "dsosecrets",
    singular = "dsosecret",
    shortname = "dsos",
    category = "dso",
    namespaced,
    status = "DsoSecretStatus",
    doc = "A DsoSecret says which AWS Secrets Manager secrets (and which JSON keys) the pods of its namespace get, as which files on a memory-backed volume. Pods opt in with the annotations dso.dev/inject: \"true\" and dso.dev/secrets: <names>.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Degraded","type":"string","jsonPath":".status.conditions[?(@.type==\"Degraded\")].status"}"#,
    printcolumn = r#"{"name":"Secrets","type":"string","jsonPath":".spec.files[*].secretId"}"#,
    printcolumn = r#"{"name":"Strategy","type":"string","jsonPath":".spec.refresh.strategy","priority":1}"#,
    printcolumn = r#"{"name":"Current","type":"string","jsonPath":".status.propagation.current"}"#,
    printcolumn = r#"{"name":"Stale","type":"integer","jsonPath":".status.inPlace.stale","priority":1}"#,
    printcolumn = r#"{"name":"Last Rotation","type":"date","jsonPath":".status.lastRotation.at"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DsoSecretSpec {
    /// Where the secrets live in AWS. Optional: without it the region comes from the operator's
    /// and the pod's environment, and the role from the pod ServiceAccount's
    /// `eks.amazonaws.com/role-arn` annotation (IRSA) or EKS Pod Identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsSpec>,

    /// The files to write. Each entry takes one AWS secret (or one JSON key of it) and writes it
    /// as one file, or, with `expand: true`, one file per top-level JSON key. At most 64 entries;
    /// two entries may not write the same path.
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(f, !has(f.path) || self.filter(g, has(g.path) && g.path == f.path).size() == 1)",
        "message": "two entries write the same path: every path must be unique within a DsoSecret"
    }, {
        "rule": "self.all(f, !has(f.path) || !self.exists(g, has(g.path) && g.path.startsWith(f.path + '/')))",
        "message": "a path is used both as a file and as a directory (such as conf and conf/app.yaml)"
    }]))]
    pub files: Vec<FileSpec>,

    /// Permissions of the written files, as a 3- or 4-digit octal string such as "0440"
    /// (the default: readable by the owner and the pod's fsGroup, writable by nobody).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^0?[0-7]{3}$"))]
    pub file_mode: Option<String>,

    /// How DSO notices rotations in AWS and what it does then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshSpec>,
}

/// Where the secrets live in AWS.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsSpec {
    /// AWS region of the secrets, such as us-east-1. Applies to this DsoSecret only. Default:
    /// the region of a secret given by ARN, else the cluster-wide default region DSO is
    /// installed with (Helm value aws.region, used by both the operator and the webhook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"))]
    pub region: Option<String>,

    /// IAM role the pod assumes with its own service-account token (IRSA web identity) to read
    /// these secrets. Default: the ServiceAccount's `eks.amazonaws.com/role-arn` annotation;
    /// without either, the default credential chain (EKS Pod Identity, instance role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$"
    ))]
    pub role_arn: Option<String>,
}

/// One AWS secret (or one JSON key of it) written as a file.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.jsonKey) && has(self.expand) && self.expand)",
     "message": "jsonKey and expand are mutually exclusive: jsonKey writes one key, expand writes every key"},
    {"rule": "!(has(self.versionStage) && has(self.versionId))",
     "message": "versionStage and versionId are mutually exclusive: pin a versionId or follow a stage"},
    {"rule": "!(has(self.expand) && self.expand && has(self.path))",
     "message": "expand writes one file per top-level JSON key, named after the key: leave path unset"},
    {"rule": "has(self.path) || (has(self.expand) && self.expand)",
     "message": "path is required (unless expand is true)"},
    {"rule": "has(self.secretId) != has(self.template)",
     "message": "set exactly one of secretId (write one secret's value) and template (render from sources)"},
    {"rule": "has(self.template) == has(self.sources)",
     "message": "template and sources go together: sources names the secrets the template reads"},
    {"rule": "!has(self.template) || !(has(self.jsonKey) || has(self.versionStage) || has(self.versionId) || (has(self.expand) && self.expand))",
     "message": "a template entry reads its secrets through sources: set jsonKey, versionStage or versionId on a source; expand does not apply"}
]))]
pub struct FileSpec {
    /// File name under `<mount-path>/<DsoSecret name>/`. Relative, made of letters, digits,
    /// `.`, `_`, `-` and `/`; no `.` or `..` segment. Required unless `expand` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
    )]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "!self.matches('(^|/)[.][.]?(/|$)')",
         "message": "path must not contain '.' or '..' segments"}
    ]))]
    pub path: Option<String>,

    /// The AWS secret: its name (such as prod/shop/db) or its full ARN
    /// (arn:<partition>:secretsmanager:<region>:<12-digit account>:secret:<name>; a name cannot
    /// contain ':', so anything with ':' must be such an ARN). Required unless `template` is set
    /// (a template names its secrets in `sources`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^[A-Za-z0-9/_+=.@:-]+$")
    )]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "!self.contains(':') || self.matches('^arn:aws(-[a-z]+)*:secretsmanager:[a-z]{2}(-[a-z]+)+-[0-9]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+$')",
         "message": "a secretId with ':' must be a Secrets Manager ARN: arn:<partition>:secretsmanager:<region such as us-east-1>:<12-digit account>:secret:<name> (a secret name cannot contain ':')"}
    ]))]
    pub secret_id: String,

    /// Write only one value of a JSON SecretString: a top-level key (such as `password`), or,
    /// when it starts with `/`, a JSON Pointer (RFC 6901) to a nested value (such as
    /// `/db/primary/password`, or `/hosts/0` for an array element; write `~1` for a `/` and `~0`
    /// for a `~` inside a key). A string value is written as is; any other JSON value as its JSON
    /// text. Missing key or non-JSON secret: the pod fails to start, with the key or pointer (never
    /// the value) in the init container's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "!self.startsWith('/') || self.matches('^(/([^~/]|~[01])*)+$')",
         "message": "a jsonKey starting with '/' is a JSON Pointer (RFC 6901): '~' must be followed by 0 or 1 (~0 for '~', ~1 for '/')"}
    ]))]
    pub json_key: Option<String>,

    /// Staging label to read, such as AWSCURRENT (the default) or AWSPREVIOUS. A rotation moves
    /// the label, and DSO rolls the consuming workloads (see `refresh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub version_stage: Option<String>,

    /// Pin one version by id. A pinned entry never rotates. Exclusive with `versionStage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 32, max = 64), regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub version_id: Option<String>,

    /// Write one file per top-level key of a JSON SecretString, named after the key.
    /// Requires `path` to be unset; exclusive with `jsonKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expand: Option<bool>,

    /// Render the file from a template instead of writing one secret's value: Jinja syntax
    /// (the sandboxed minijinja engine: no file or network access), reading the secrets named
    /// in `sources`, such as `postgres://{{ db.username }}:{{ db.password }}@db:5432/app`. A
    /// source whose secret is a JSON object is that object (`{{ db.password }}`); otherwise its
    /// text. A key a template reads but the secret lacks stops the pod, with the template's line
    /// in the init container's log. Exclusive with `secretId`, `jsonKey`, `expand` and the
    /// version fields (set those per source). At most 16 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16384))]
    pub template: Option<String>,

    /// The secrets a `template` reads, by the name the template uses for each (letters, digits
    /// and `_`): `{db: {secretId: prod/shop/db}}` makes `{{ db.password }}` work. At most 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minProperties" = 1, "maxProperties" = 16))]
    pub sources: Option<std::collections::BTreeMap<String, TemplateSource>>,
}

/// One secret a template reads.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.versionStage) && has(self.versionId))",
     "message": "versionStage and versionId are mutually exclusive: pin a versionId or follow a stage"}
]))]
pub struct TemplateSource {
    /// The AWS secret: its name (such as prod/shop/db) or its full ARN.
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^[A-Za-z0-9/_+=.@:-]+$")
    )]
    pub secret_id: String,

    /// Give the template only this value of a JSON SecretString: a top-level key, or a JSON
    /// Pointer starting with `/` (as the entry's `jsonKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "!self.startsWith('/') || self.matches('^(/([^~/]|~[01])*)+$')",
         "message": "a jsonKey starting with '/' is a JSON Pointer (RFC 6901): '~' must be followed by 0 or 1 (~0 for '~', ~1 for '/')"}
    ]))]
    pub json_key: Option<String>,

    /// Staging label to read (default AWSCURRENT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub version_stage: Option<String>,

    /// Pin one version by id. Exclusive with `versionStage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 32, max = 64), regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub version_id: Option<String>,
}

/// One secret version a DsoSecret reads: an entry's own secret, or a template's source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecretRef<'a> {
    pub secret_id: &'a str,
    pub version_stage: Option<&'a str>,
    pub version_id: Option<&'a str>,
}

impl SecretRef<'_> {
    /// The stage followed, or `None` when a version id is pinned.
    pub fn stage(&self) -> Option<&str> {
        if self.version_id.is_some() {
            None
        } else {
            Some(self.version_stage.unwrap_or(DEFAULT_STAGE))
        }
    }
}

/// How DSO notices rotations in AWS and what it does then.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.signal) || (has(self.strategy) && self.strategy == 'InPlace')",
     "message": "signal requires strategy: InPlace (the dso-refresh sidecar sends it after it swaps the files; Rollout restarts the pods instead)"}
]))]
pub struct RefreshSpec {
    /// Upper bound on the time between a rotation in AWS and DSO noticing it, such as 5m
    /// (default), 30s or 1h. Between 10s and 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "duration(self) >= duration('10s') && duration(self) <= duration('24h')",
         "message": "interval must be between 10s and 24h"}
    ]))]
    pub interval: Option<String>,

    /// What to do when a consumed version changes. Rollout (default): restart the Deployments,
    /// StatefulSets and DaemonSets whose pods mount this DsoSecret. InPlace: a sidecar in each
    /// consuming pod swaps the files while the pod runs. None: only record it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<RefreshStrategy>,

    /// With `strategy: InPlace`: the signal (SIGHUP, SIGUSR1 or SIGUSR2) sent to the app after a
    /// swap; see [`RefreshSignal`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<RefreshSignal>,
}

/// With `strategy: InPlace`: the signal the `dso-refresh` sidecar sends to the main process of
/// one app container after it swapped this DsoSecret's files, so that the app reloads them:
/// SIGHUP, SIGUSR1 or SIGUSR2. One signal per swap that changed the files, never after a failed
/// fetch. The pod then shares one process namespace (its containers see each other's
/// processes) and DSO's containers run as the target's user; the target is the container named
/// by the pod annotation `dso.dev/signal-container`, default the first container that mounts
/// the secrets. Signals that end a process (SIGTERM, SIGINT, SIGQUIT, SIGKILL) are not offered:
/// they would restart the container, which is `Rollout`'s job.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RefreshSignal {
    /// Hang-up: the usual "reload your configuration" (nginx, HAProxy, PgBouncer, most daemons).
    #[serde(rename = "SIGHUP")]
    Sighup,
    /// User signal 1 (Apache httpd's graceful restart, for instance).
    #[serde(rename = "SIGUSR1")]
    Sigusr1,
    /// User signal 2.
    #[serde(rename = "SIGUSR2")]
    Sigusr2,
}

impl RefreshSignal {
    /// The name as written in the spec, such as `SIGHUP`.
    pub fn name(self) -> &'static str {
        match self {
            RefreshSignal::Sighup => "SIGHUP",
            RefreshSignal::Sigusr1 => "SIGUSR1",
            RefreshSignal::Sigusr2 => "SIGUSR2",
        }
    }
}

/// What to do when a consumed version changes. Rollout (default): restart the Deployments,
/// StatefulSets and DaemonSets whose pods mount this DsoSecret. InPlace: the `dso-refresh`
/// sidecar of each consuming pod fetches the new version and swaps the DsoSecret's directory
/// atomically; nothing restarts (values read through `dso://` env references keep their start
/// value). None: only record it in status.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RefreshStrategy {
    /// Roll the consuming workloads (a pod-template annotation derived from the versions).
    #[default]
    Rollout,
    /// Record the new version in status; restart nothing.
    None,
    /// Swap the files inside the running pods (the `dso-refresh` sidecar, told by the operator
    /// through the pod annotation `dso.dev/desired-versions`); restart nothing.
    InPlace,
}

/// Observed state. Never contains a secret value.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DsoSecretStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`: True when every referenced secret resolved (reason Synced); otherwise False
    /// with reason SecretNotFound, AccessDenied, InvalidSpec or AwsError and a message.
    /// `Degraded` (strategy Rollout): True when a rollout DSO started for this DsoSecret did
    /// not complete in time — reason RolloutTimedOut (its new pods not all Ready within the
    /// operator's --rollout-timeout) or RolloutStalled (the Deployment passed its
    /// progressDeadlineSeconds) — with the workloads named in the message; False (reason
    /// RolloutsHealthy) otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The version each referenced secret resolves to now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretVersionStatus>,

    /// The last rotation DSO acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation: Option<RotationStatus>,

    /// Under `strategy: InPlace`: how far the current versions have reached the consuming pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_place: Option<InPlaceStatus>,

    /// Under `strategy: InPlace`: how far the versions DSO follows now (those of the last
    /// rotation) have reached the consuming workloads and their pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<PropagationStatus>,
}

/// At most this many workloads are listed in `status.propagation.workloads`.
pub const MAX_PROPAGATION_WORKLOADS: usize = 10;

/// How far one set of versions (a rotation) has reached the pods that consume a DsoSecret.
/// Names and counts only: never a value.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PropagationStatus {
    /// The hash of the version ids being propagated (the one written on the pods in
    /// `dso.dev/desired-versions`).
    pub versions_hash: String,
    /// When DSO started propagating these versions (it noticed the rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// When every consuming pod was first seen current; absent while some are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<Time>,
    /// `<current pods>/<pods>`, as `kubectl get dsosecrets` shows it (column CURRENT).
    pub current: String,
    /// Running pods that mount this DsoSecret.
    pub pods: i32,
    /// Of those, pods that serve these versions: told them, and their `dso-refresh` sidecar
    /// runs without a failure to report (a sidecar that cannot fetch exits with the reason).
    /// Pods without the sidecar never count as current.
    pub current_pods: i32,
    /// The consuming workloads (`Kind/name`; a pod without a controller as `Pod/name`), the
    /// most stale first, at most 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadPropagation>,
    /// Consuming workloads not listed in `workloads` (beyond the first 10).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more_workloads: i32,
}

/// One consuming workload's pods, and how many serve the versions being propagated.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadPropagation {
    /// `Kind/name`, such as `Deployment/web`.
    pub workload: String,
    /// Its running pods that mount this DsoSecret.
    pub pods: i32,
    /// Of those, pods that serve the versions being propagated.
    pub current: i32,
}

/// How far the current versions of an `InPlace` DsoSecret have reached its consuming pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InPlaceStatus {
    /// Running pods that mount this DsoSecret with a `dso-refresh` sidecar.
    pub pods: i32,
    /// Of those, pods not known to serve the current versions: not told yet, or whose sidecar
    /// failed its last fetch (it keeps the previous files and exits with the reason).
    pub stale: i32,
    /// Pods that mount this DsoSecret without a `dso-refresh` sidecar (injected before the
    /// strategy became InPlace): they keep their files until restarted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub without_sidecar: i32,
    /// Pods that read this DsoSecret through `dso://` env references: the kubelet reads env
    /// files once, at container start, so those variables keep their start value (the files
    /// are refreshed) until the pod restarts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub env_var_pods: i32,
    /// Why pods are stale: up to three pods with their sidecar's last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// The version one referenced secret resolves to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretVersionStatus {
    /// The secret as written in the spec.
    pub secret_id: String,
    /// The stage followed, or absent for a pinned version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_stage: Option<String>,
    /// The version id the entry resolves to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// When AWS last changed the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_changed_date: Option<Time>,
}

/// A rotation DSO acted on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationStatus {
    /// When DSO noticed the new versions.
    pub at: Time,
    /// Workloads rolled, as Kind/name (empty under strategy None).
    #[serde(default)]
    pub workloads: Vec<String>,
    /// Jobs and CronJobs whose pod template consumes this DsoSecret, as Kind/name: DSO never
    /// restarts them; the pods they start from now on get the new versions (next run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next_run: Vec<String>,
}

impl DsoSecretSpec {
    /// The refresh strategy, defaulted.
    pub fn strategy(&self) -> RefreshStrategy {
        self.refresh
            .as_ref()
            .and_then(|r| r.strategy)
            .unwrap_or_default()
    }

    /// The signal to send after an in-place swap (`None` unless the strategy is InPlace).
    pub fn signal(&self) -> Option<RefreshSignal> {
        if self.strategy() != RefreshStrategy::InPlace {
            return None;
        }
        self.refresh.as_ref().and_then(|r| r.signal)
    }
}

impl FileSpec {
    /// The stage this entry follows, or `None` when it pins a version id.
    pub fn stage(&self) -> Option<&str> {
        if self.version_id.is_some() {
            None
        } else {
            Some(self.version_stage.as_deref().unwrap_or(DEFAULT_STAGE))
        }
    }

    /// True when `expand` is set.
    pub fn expands(&self) -> bool {
        self.expand.unwrap_or(false)
    }

    /// The secrets this entry reads: its own, or its template's sources.
    pub fn secret_refs(&self) -> Vec<SecretRef<'_>> {
        match &self.sources {
            Some(sources) if self.template.is_some() => sources
                .values()
                .map(|s| SecretRef {
                    secret_id: &s.secret_id,
                    version_stage: s.version_stage.as_deref(),
                    version_id: s.version_id.as_deref(),
                })
                .collect(),
            _ => vec![SecretRef {
                secret_id: &self.secret_id,
                version_stage: self.version_stage.as_deref(),
                version_id: self.version_id.as_deref(),
            }],
        }
    }
}

impl DsoSecretSpec {
    /// Every secret version the DsoSecret reads, entry by entry (with repeats).
    pub fn secret_refs(&self) -> Vec<SecretRef<'_>> {
        self.files.iter().flat_map(FileSpec::secret_refs).collect()
    }
}
