//! `dso-api`: the vocabulary every DSO component shares, with no I/O and no async.
//!
//! - [`secret`]: the `DsoSecret` custom resource (group `dso.dev`, version `v1alpha1`), whose
//!   doc comments are the `kubectl explain` text and whose schema carries the validation rules.
//! - [`validate`]: the same rules as plain functions (plus the ones a schema cannot say), so the
//!   webhook and the operator judge a spec exactly as the apiserver does.
//! - [`allowlist`]: the admin-set secret allowlist, per namespace, and how it matches.
//! - [`annotations`]: the pod and workload annotation keys users and components write.
//! - [`contract`]: what the webhook hands the `dso-init` container (the resolved file list) and
//!   what `dso-init` reports back (version ids) — never a secret value.
//! - [`inplace`]: `strategy: InPlace` — the pod annotation the operator writes and the sidecar
//!   reads, and the layout that lets a DsoSecret's directory be swapped at once.
//! - [`env`]: `dso://` env references and the env files (KEP-3721) that carry them.
//! - [`template`]: file templates (sandboxed minijinja), checked at admission, rendered by
//!   `dso-init`.
//! - [`duration`]: the `5m` / `1h30m` interval format.
//! - [`aws_error`]: what an AWS call's failure means (its kind, whether to retry it).
//! - [`backoff`]: the retry delay, exponential with jitter.
//! - [`versions`]: the stable hash of consumed versions that drives rollouts.

pub mod allowlist;
pub mod annotations;
pub mod aws_error;
pub mod backoff;
pub mod contract;
pub mod duration;
pub mod env;
pub mod inplace;
pub mod secret;
pub mod template;
pub mod validate;
pub mod versions;

pub use secret::{
    AwsSpec, DsoSecret, DsoSecretSpec, DsoSecretStatus, FileSpec, InPlaceStatus, PropagationStatus,
    RefreshSignal, RefreshSpec, RefreshStrategy, RotationStatus, SecretRef, SecretVersionStatus,
    TemplateSource, WorkloadPropagation,
};
