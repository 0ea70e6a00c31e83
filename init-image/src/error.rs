//! The one error type of `dso-init`, its exit codes and its stable labels.
//!
//! Every message is one line that names where the failure happened — the DsoSecret, the file and
//! the secret id ([`Target`]) — and what a user can do about it. No message ever holds a secret
//! value: errors carry ids, key names, sizes and AWS error codes only.
//!
//! The line has two renderings. [`Error::line`] goes to stderr (the container's log).
//! [`Error::status_line`] goes to the termination message, which the kubelet copies into the
//! pod's status where anyone who may read the pod sees it: it leaves out every name that came
//! from a secret's value (the file names of an `expand` entry are the value's JSON keys).
//!
//! | exit | meaning |
//! |---:|---|
//! | 0 | every file written, report in the termination message |
//! | 1 | unexpected start-up failure (the async runtime could not start) |
//! | 2 | bad configuration: `DSO_PLAN` missing or invalid, no AWS region, bad flag |
//! | 3 | access: AccessDenied, DecryptionFailure (KMS), no or rejected credentials |
//! | 4 | not found: the secret or the requested version does not exist |
//! | 5 | content: missing JSON key or pointer, a value an env file cannot carry (`dso://`), a template that fails to render, value not JSON, key not usable as a file name, path collision, empty value |
//! | 6 | unavailable: timeout, endpoint unreachable or not trusted (TLS), throttling or 5xx until the deadline |
//! | 7 | volume: mount path missing, size limit exceeded, a write failed |
//! | 8 | AWS refused the request for another reason (InvalidRequest, InvalidParameter, …) |
//! | 9 | `dso-refresh` only: the files were swapped, but the app's process could not be signalled (`refresh.signal`) |

pub use dso_api::aws_error::AwsErrorKind;
use std::fmt;
use std::path::PathBuf;

/// Where a failure happened, as a user reads it in `kubectl describe pod`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Target {
    /// The DsoSecret's name.
    pub dso_secret: String,
    /// The file path (relative to the DsoSecret's directory), `(expand)` for an expanded entry.
    pub file: String,
    /// The Secrets Manager secret id.
    pub secret_id: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DsoSecret {:?}, file {:?}, secret {:?}",
            self.dso_secret, self.file, self.secret_id
        )
    }
}

/// The exit code of an AWS failure (see the module table).
fn aws_exit_code(kind: AwsErrorKind) -> u8 {
    use AwsErrorKind::*;
    match kind {
        AccessDenied | DecryptionFailure | Credentials => 3,
        ResourceNotFound => 4,
        Throttling | ServiceUnavailable | Timeout | Unreachable | Tls | BadResponse => 6,
        InvalidRequest | InvalidParameter | Other => 8,
    }
}

/// A classified AWS failure: the kind, a one-line detail (AWS's message, never a value) and how
/// many attempts were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsFailure {
    pub kind: AwsErrorKind,
    pub detail: String,
    pub attempts: u32,
}

impl AwsFailure {
    pub fn new(kind: AwsErrorKind, detail: impl Into<String>) -> Self {
        AwsFailure {
            kind,
            detail: one_line(&detail.into()),
            attempts: 1,
        }
    }
}

impl fmt::Display for AwsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.detail)?;
        if self.attempts > 1 {
            write!(f, " (after {} attempts)", self.attempts)?;
        }
        Ok(())
    }
}

/// Everything that makes `dso-init` exit non-zero.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "invalid plan in DSO_PLAN ({0}): the webhook writes it; recreate the pod or report a bug"
    )]
    Plan(String),

    #[error(
        "{at}: NoRegion: no AWS region; set spec.aws.region on the DsoSecret, use the secret's full ARN, or set AWS_REGION"
    )]
    NoRegion { at: Target },

    #[error("{at}: {failure}")]
    Aws { at: Target, failure: AwsFailure },

    #[error("{at}: MissingJsonKey: the secret's JSON object has no top-level key {key:?}")]
    MissingJsonKey { at: Target, key: String },

    #[error("{at}: MissingJsonKey: the secret's JSON has no value at jsonKey {pointer:?}: {why}")]
    MissingJsonPointer {
        at: Target,
        pointer: String,
        why: String,
    },

    #[error("container {container:?}, env {var} (dso://{dso_secret}/{file}): EnvValue: {why}")]
    EnvValue {
        container: String,
        var: String,
        dso_secret: String,
        file: String,
        why: String,
    },

    #[error("{at}: TemplateError: {why}")]
    Template { at: Target, why: String },

    #[error("{at}: NotJson: {why}")]
    NotJson { at: Target, why: String },

    #[error(
        "{at}: InvalidKeyName: expand writes one file per top-level JSON key, and key {key:?} is not a usable file name ({why})"
    )]
    BadKeyName {
        at: Target,
        key: String,
        why: String,
    },

    #[error("{at}: EmptyValue: {version} holds neither a SecretString nor a SecretBinary")]
    EmptyValue { at: Target, version: String },

    #[error("{at}: PathCollision: {why}")]
    PathCollision {
        at: Target,
        why: String,
        /// `why` names a file named after a JSON key of a secret's value (`expand`).
        names_from_secret: bool,
    },

    #[error(
        "{at}: SizeLimit: the files need {needed} bytes of the memory volume (page-rounded) but its sizeLimit is {limit} bytes; this file alone needs {file_bytes} bytes"
    )]
    SizeLimit {
        at: Target,
        needed: u64,
        limit: u64,
        file_bytes: u64,
    },

    #[error(
        "MountPathMissing: the volume mount path {0} does not exist or is not a directory: the webhook mounts it; recreate the pod"
    )]
    MountPath(PathBuf),

    #[error("{at}: WriteFailed: {path}: {source}")]
    Write {
        at: Target,
        path: PathBuf,
        source: std::io::Error,
        /// `path` ends in a file named after a JSON key of a secret's value (`expand`).
        names_from_secret: bool,
    },

    #[error("invalid setting: {0}")]
    Config(String),

    #[error(
        "SignalFailed: swapped {dso_secrets} but could not send {signal} to the main process of container {container:?}: {why}"
    )]
    Signal {
        dso_secrets: String,
        signal: &'static str,
        container: String,
        why: String,
    },
}

impl Error {
    /// The process exit code (see the module table).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Plan(_) | Error::NoRegion { .. } | Error::Config(_) => 2,
            Error::Aws { failure, .. } => aws_exit_code(failure.kind),
            Error::EmptyValue { .. }
            | Error::MissingJsonKey { .. }
            | Error::MissingJsonPointer { .. }
            | Error::EnvValue { .. }
            | Error::Template { .. }
            | Error::NotJson { .. }
            | Error::BadKeyName { .. }
            | Error::PathCollision { .. } => 5,
            Error::SizeLimit { .. } | Error::MountPath(_) | Error::Write { .. } => 7,
            Error::Signal { .. } => dso_api::inplace::SIGNAL_FAILED_EXIT,
        }
    }

    /// A stable name of the failure's kind, for tests to match on (dso-init exports no metrics:
    /// a user reads the exit code and the message).
    pub fn label(&self) -> &'static str {
        match self {
            Error::Plan(_) => "plan",
            Error::NoRegion { .. } => "no_region",
            Error::Config(_) => "config",
            Error::Aws { failure, .. } => failure.kind.label(),
            Error::EmptyValue { .. } => "empty_value",
            Error::MissingJsonKey { .. } | Error::MissingJsonPointer { .. } => "missing_json_key",
            Error::NotJson { .. } => "not_json",
            Error::EnvValue { .. } => "env_value",
            Error::Template { .. } => "template",
            Error::BadKeyName { .. } => "bad_key_name",
            Error::PathCollision { .. } => "path_collision",
            Error::SizeLimit { .. } => "size_limit",
            Error::MountPath(_) => "mount_path",
            Error::Write { .. } => "write",
            Error::Signal { .. } => "signal",
        }
    }

    /// The single line printed to stderr (the container's log).
    pub fn line(&self) -> String {
        self.framed(&self.to_string())
    }

    /// The single line written to the termination message, which ends up in the pod's status:
    /// [`Error::line`] without the names that came from a secret's value (`expand` keys), which
    /// it tells the reader to find in the container's log.
    pub fn status_line(&self) -> String {
        const SEE_LOG: &str = "the name comes from the secret's value, so only the log shows it: \
             kubectl logs <pod> -c dso-init";
        let redacted = match self {
            Error::BadKeyName { at, .. } => format!(
                "{at}: InvalidKeyName: expand writes one file per top-level JSON key, and a key \
                 is not a usable file name ({SEE_LOG})"
            ),
            Error::PathCollision {
                at,
                names_from_secret: true,
                ..
            } => format!(
                "{at}: PathCollision: a file named after a JSON key collides with another file \
                 of the same DsoSecret ({SEE_LOG})"
            ),
            Error::Write {
                at,
                source,
                names_from_secret: true,
                ..
            } => format!("{at}: WriteFailed: {source} ({SEE_LOG})"),
            _ => return self.line(),
        };
        self.framed(&redacted)
    }

    fn framed(&self, message: &str) -> String {
        format!(
            "dso-init: {} (exit {})",
            one_line(message),
            self.exit_code()
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Collapses whitespace runs (newlines included) so a message stays on one line, and bounds it.
pub fn one_line(s: &str) -> String {
    const MAX: usize = 600;
    let mut out = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.len() > MAX {
        let mut cut = MAX;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> Target {
        Target {
            dso_secret: "db".into(),
            file: "password".into(),
            secret_id: "prod/db".into(),
        }
    }

    #[test]
    fn an_aws_failure_names_the_dso_secret_the_file_the_secret_and_the_cause() {
        let e = Error::Aws {
            at: at(),
            failure: AwsFailure {
                attempts: 3,
                ..AwsFailure::new(AwsErrorKind::Timeout, "no answer\nin 5s")
            },
        };
        assert_eq!(
            e.line(),
            r#"dso-init: DsoSecret "db", file "password", secret "prod/db": Timeout: no answer in 5s (after 3 attempts) (exit 6)"#
        );
        assert_eq!(e.label(), "timeout");
    }

    #[test]
    fn exit_codes_group_causes_a_user_fixes_the_same_way() {
        let aws = |kind| Error::Aws {
            at: at(),
            failure: AwsFailure::new(kind, "x"),
        };
        assert_eq!(Error::Plan("x".into()).exit_code(), 2);
        assert_eq!(aws(AwsErrorKind::AccessDenied).exit_code(), 3);
        assert_eq!(aws(AwsErrorKind::DecryptionFailure).exit_code(), 3);
        assert_eq!(aws(AwsErrorKind::ResourceNotFound).exit_code(), 4);
        let missing = Error::MissingJsonKey {
            at: at(),
            key: "k".into(),
        };
        assert_eq!(missing.exit_code(), 5);
        assert_eq!(aws(AwsErrorKind::Unreachable).exit_code(), 6);
        assert_eq!(Error::MountPath("/x".into()).exit_code(), 7);
        assert_eq!(aws(AwsErrorKind::InvalidRequest).exit_code(), 8);
    }

    #[test]
    fn a_version_without_a_value_is_a_content_error() {
        let e = Error::EmptyValue {
            at: at(),
            version: "versionStage AWSCURRENT".into(),
        };
        assert_eq!(
            e.line(),
            r#"dso-init: DsoSecret "db", file "password", secret "prod/db": EmptyValue: versionStage AWSCURRENT holds neither a SecretString nor a SecretBinary (exit 5)"#
        );
        assert_eq!(e.label(), "empty_value");
    }

    #[test]
    fn the_status_line_names_no_key_that_came_from_a_secret() {
        let expanded = Target {
            file: "(expand)".into(),
            ..at()
        };
        let key = "customer-acme-corp-token";
        let cases = [
            Error::BadKeyName {
                at: expanded.clone(),
                key: format!("../{key}"),
                why: "must not contain '.' or '..' segments".into(),
            },
            Error::PathCollision {
                at: expanded.clone(),
                why: format!("{key:?} is also written by the entry for secret \"x\""),
                names_from_secret: true,
            },
            Error::Write {
                at: expanded,
                path: format!("/run/secrets/dso/db/{key}").into(),
                source: std::io::Error::other("No space left on device"),
                names_from_secret: true,
            },
        ];
        for e in cases {
            let (log, status) = (e.line(), e.status_line());
            assert!(log.contains(key), "the log keeps it: {log}");
            assert!(!status.contains(key), "{status}");
            assert!(status.contains(r#"DsoSecret "db""#), "{status}");
            assert!(
                status.contains("kubectl logs <pod> -c dso-init"),
                "{status}"
            );
            assert!(
                status.ends_with(&format!("(exit {})", e.exit_code())),
                "{status}"
            );
        }
    }

    #[test]
    fn names_from_the_plan_stay_in_the_status_line() {
        let planned = Error::Write {
            at: at(),
            path: "/run/secrets/dso/db/password".into(),
            source: std::io::Error::other("Read-only file system"),
            names_from_secret: false,
        };
        assert_eq!(planned.status_line(), planned.line());
        let missing = Error::MissingJsonKey {
            at: at(),
            key: "username".into(),
        };
        assert_eq!(missing.status_line(), missing.line());
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let s = "é".repeat(1000);
        let out = one_line(&s);
        assert!(out.len() <= 604);
        assert!(out.ends_with('…'));
    }
}
