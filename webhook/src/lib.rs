//! `dso-webhook`: the mutating admission server of DSO. For pods annotated
//! `dso.dev/inject: "true"` it adds a memory-backed volume, the `dso-init` init container
//! (which fetches the secrets from AWS Secrets Manager into that volume) and read-only mounts,
//! or denies the pod with a message naming the problem. Everything it reads comes from watch
//! caches: no Kubernetes or AWS call per admission.
//!
//! - [`config`]: command line (clap, env fallbacks) and the checked [`config::InjectConfig`].
//! - [`patch`]: the pure patch builder, pod + DsoSecrets + ServiceAccount → JSON patch or denial.
//! - [`store`]: kube-runtime reflectors of DsoSecrets and ServiceAccounts (the [`patch::Catalog`]).
//! - [`router`]: axum routes `/mutate`, `/healthz`, `/readyz`, `/metrics` ([`router::router`]).
//! - [`tls`]: rustls configuration from PEM files (reloaded when they change) or from the Secret.
//! - [`certs`]: run-time TLS, pure: when to issue, what the caBundle holds, issuing with rcgen.
//! - [`runtime_tls`]: run-time TLS, the shell: the leader issues and patches, every replica follows.
//! - [`lease`]: leader election on a Lease (the `dso-lease` crate, shared with the operator).
//! - [`server`]: TLS serving with graceful shutdown.
//! - [`limits`]: timeouts, connection and concurrency caps, body size limit.
//! - [`metrics`]: Prometheus metrics, prefix `dso_webhook`.
//! - [`error`]: the crate's error type.

pub mod certs;
pub mod config;
pub mod error;
pub use dso_lease as lease;
pub mod limits;
pub mod metrics;
pub mod patch;
pub mod router;
pub mod runtime_tls;
pub mod server;
pub mod store;
pub mod tls;

pub use error::{Error, Result};
pub use router::{AppState, router, router_with};
