//! The operator's one error type. Every variant has a stable [`Error::metric_label`] and a
//! message that says what to do; none carries a secret value (the operator never reads one).

use crate::aws::AwsProblem;

/// Why a reconcile (or the start-up) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a call.
    #[error("Kubernetes API call failed ({context}): {source}")]
    Kube {
        context: &'static str,
        #[source]
        source: kube::Error,
    },

    /// A transient AWS failure (throttling, timeout, 5xx): retried with backoff.
    #[error("AWS Secrets Manager is temporarily unavailable: {0}")]
    AwsTransient(AwsProblem),

    /// One or more workload rollouts failed; the rotation is retried with backoff.
    #[error("rolling {failed} workload(s) failed, first error: {first}")]
    Rollout { failed: usize, first: String },

    /// The DsoSecret CRD is not installed (start-up check: the API answered 404).
    #[error(
        "the DsoSecret CRD is not installed ({0}); install it with: kubectl apply --server-side -f crds/dso.dev_dsosecrets.yaml"
    )]
    CrdMissing(String),

    /// An object came from the API without a namespace (cannot happen for namespaced kinds).
    #[error("{0} has no namespace")]
    NoNamespace(String),

    /// This replica lost the leader Lease (or could not renew it in time): it writes nothing
    /// more; the new leader does the work.
    #[error("not the leader any more: the write is left to the replica holding the Lease")]
    NotLeader,
}

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short, stable label for metrics (`dso_reconcile_errors_total{error=...}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::AwsTransient(_) => "aws_transient",
            Error::Rollout { .. } => "rollout",
            Error::CrdMissing(_) => "crd_missing",
            Error::NoNamespace(_) => "no_namespace",
            Error::NotLeader => "not_leader",
        }
    }

    /// The start-up check's failure: the install hint only when the API does not know
    /// DsoSecrets (404); anything else (403, network) is reported as what it is.
    pub fn startup_check(source: kube::Error) -> Error {
        match &source {
            kube::Error::Api(s) if s.code == 404 => Error::CrdMissing(source.to_string()),
            _ => Error::Kube {
                context: "list DsoSecrets at start-up (check RBAC and the API server address)",
                source,
            },
        }
    }

    /// Wraps a kube error with what was being done.
    pub fn kube(context: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { context, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        let status: kube::core::Status =
            serde_json::from_value(serde_json::json!({"code": code, "message": "m"}))
                .expect("status");
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn only_a_404_at_start_up_gets_the_crd_install_hint() {
        let missing = Error::startup_check(api_error(404));
        assert_eq!(missing.metric_label(), "crd_missing");
        assert!(missing.to_string().contains("kubectl apply"), "{missing}");
        for code in [401, 403, 500] {
            let e = Error::startup_check(api_error(code));
            assert_eq!(e.metric_label(), "kube", "{code}");
            assert!(!e.to_string().contains("kubectl apply"), "{code}: {e}");
        }
    }
}
