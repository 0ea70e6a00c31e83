//! The crate's one error type. Denials (the pod is refused, the message goes back to whoever
//! created it) and server failures share it; [`Error::metric_label`] gives each a stable label.

/// Everything that can go wrong, with a message a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- denials: the pod is refused with this message ----
    #[error(
        "DsoSecret {name:?} not found in namespace {namespace}: create it there or fix the dso.dev/secrets annotation"
    )]
    UnknownDsoSecret { namespace: String, name: String },

    #[error(
        "dso.dev/secrets: {reference:?} refers to another namespace; a pod can only use DsoSecrets of its own namespace: create the DsoSecret in this namespace and list it by name"
    )]
    OtherNamespace { reference: String },

    #[error("annotation {key}: {message}")]
    MalformedAnnotation { key: &'static str, message: String },

    #[error(
        "dso.dev/containers names {name:?}, but the pod has no such container (its containers: {available})"
    )]
    UnknownContainer { name: String, available: String },

    #[error(
        "container {container:?} already mounts volume {volume:?} at {existing}, which collides with the DSO mount path {mount_path}: set dso.dev/mount-path to another directory"
    )]
    MountCollision {
        container: String,
        volume: String,
        existing: String,
        mount_path: String,
    },

    #[error("container {container:?}, env {var}: {reference}: {problem}")]
    EnvReference {
        container: String,
        var: String,
        reference: String,
        problem: String,
    },

    #[error("the pod already has {what}: DSO reserves that name for what it injects; rename it")]
    ReservedName { what: String },

    #[error(
        "{kind} {container:?} mounts volume {volume:?}, which DSO reserves for what it injects: remove that volumeMount (the containers named in dso.dev/containers get the secrets read-only)"
    )]
    ReservedMount {
        container: String,
        kind: &'static str,
        volume: String,
    },

    #[error(
        "the pod has {present} but not {missing}, as if copied from an already injected pod: remove DSO's annotation, volume and init container from the pod template and let DSO inject them"
    )]
    PartlyInjected { present: String, missing: String },

    #[error(
        "the DsoSecrets {secrets} list {files} file entries; at up to {ceiling_kib} KiB each (the largest AWS secret) they may need {needed_kib} KiB, more than the volume's size limit {limit} ({limit_kib} KiB): split them across pods or raise the webhook's --size-limit"
    )]
    TooLarge {
        secrets: String,
        files: u64,
        ceiling_kib: u64,
        needed_kib: u64,
        limit: String,
        limit_kib: u64,
    },

    #[error("DsoSecret {name:?} is invalid: {problems}")]
    InvalidDsoSecret { name: String, problems: String },

    #[error(
        "DsoSecret {name:?} of namespace {namespace} names secrets outside the namespace's secret allowlist, set by the cluster admin: {problems}"
    )]
    NotAllowed {
        namespace: String,
        name: String,
        problems: String,
    },

    #[error(
        "DsoSecrets {first:?} and {second:?} name different IAM roles ({first_role} and {second_role}); a pod has one identity: mount them in different pods or use one role"
    )]
    ConflictingRoles {
        first: String,
        first_role: String,
        second: String,
        second_role: String,
    },

    #[error(
        "ServiceAccount {name:?} of namespace {namespace} is not in the webhook's cache yet (just created?): retry; if this persists, check that the webhook may list and watch serviceaccounts"
    )]
    UnknownServiceAccount { namespace: String, name: String },

    #[error(
        "no AWS identity for dso-init: ServiceAccount {service_account:?} of namespace {namespace} has no eks.amazonaws.com/role-arn annotation, no DsoSecret of the pod sets spec.aws.roleArn, and the pod has no EKS Pod Identity: annotate the ServiceAccount with its IAM role, set spec.aws.roleArn, or create an EKS Pod Identity association (the node's role, which every pod of the node shares, is used only when the webhook runs with --allow-default-credentials)"
    )]
    NoIdentity {
        namespace: String,
        service_account: String,
    },

    #[error("DsoSecret {dso_secret:?} asks for refresh.signal {signal}, but {problem}")]
    Signal {
        dso_secret: String,
        signal: &'static str,
        problem: String,
    },

    #[error(
        "the pod has no namespace, neither in the admission request nor in its metadata: DSO looks its DsoSecrets up in the pod's namespace"
    )]
    NoNamespace,

    // ---- requests that are not admission reviews of a pod ----
    #[error("not an AdmissionReview request: {0}")]
    InvalidReview(String),

    // ---- server failures ----
    #[error("cannot build the JSON patch: {0}")]
    Patch(#[from] kube::core::admission::SerializePatchError),

    #[error("configuration: {0}")]
    Config(String),

    #[error("TLS: {0}")]
    Tls(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Stable label for metrics (`reason`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::UnknownDsoSecret { .. } => "unknown_dsosecret",
            Error::OtherNamespace { .. } => "other_namespace",
            Error::MalformedAnnotation { .. } => "malformed_annotation",
            Error::UnknownContainer { .. } => "unknown_container",
            Error::MountCollision { .. } => "mount_collision",
            Error::ReservedName { .. } => "reserved_name",
            Error::EnvReference { .. } => "env_reference",
            Error::ReservedMount { .. } => "reserved_mount",
            Error::PartlyInjected { .. } => "partly_injected",
            Error::TooLarge { .. } => "too_large",
            Error::InvalidDsoSecret { .. } => "invalid_dsosecret",
            Error::NotAllowed { .. } => "not_allowed",
            Error::ConflictingRoles { .. } => "conflicting_roles",
            Error::UnknownServiceAccount { .. } => "unknown_serviceaccount",
            Error::NoIdentity { .. } => "no_identity",
            Error::Signal { .. } => "signal",
            Error::NoNamespace => "no_namespace",
            Error::InvalidReview(_) => "invalid",
            Error::Patch(_) => "patch",
            Error::Config(_) => "config",
            Error::Tls(_) => "tls",
            Error::Io { .. } => "io",
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
