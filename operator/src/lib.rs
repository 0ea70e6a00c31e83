//! `dso-operator`: reconciles DsoSecrets against AWS Secrets Manager **metadata** (never a
//! value), records the version each entry resolves to, and rolls the Deployments, StatefulSets
//! and DaemonSets that consume a rotated secret — only those not already running it.
//!
//! - [`domain`]: the pure core — what AWS answers, resolution, status, rotations, the rollout
//!   decision.
//! - [`aws`]: DescribeSecret / ListSecrets and the one classifier of AWS errors.
//! - [`cache`]: the version cache shared by every DsoSecret (describe or sweep mode).
//! - [`events`]: Secrets Manager change events — what they name, which are worth a reconcile.
//! - [`sqs`]: the events queue reader (EventBridge → SQS), triggering reconciles at once.
//! - [`workload`]: the three workload kinds in one shape, and the annotation-only patch.
//! - [`controller`]: reconcile / error_policy: lookups, backoff, when to look again.
//! - [`inplace`]: `strategy: InPlace` — the pod annotation that tells consuming pods' sidecars
//!   which versions to serve, and the count of stale pods.
//! - [`propagation`]: how far a rotation has reached the consuming workloads' pods (status and
//!   the propagation histogram).
//! - [`rollout`]: acting on consuming workloads, with a bound on rollouts in progress.
//! - [`coalesce`]: one rollout per settled set of versions, and the health (`Degraded`) of the
//!   rollouts DSO started.
//! - [`slots`]: the rollout slots, shared fairly between namespaces.
//! - [`status`]: the DsoSecret's status and events.
//! - [`lease`]: leader election on a coordination.k8s.io Lease, and the leader's renewal task
//!   (the `dso-lease` crate, shared with the webhook).
//! - [`metrics`], [`http`]: Prometheus metrics; /metrics, /healthz, /readyz and readiness.
//! - [`args`]: configuration (one clap struct).
//! - [`run`]: the wiring `main` runs: clients, leader election, watches, shutdown.
//! - [`crd`]: the generated CustomResourceDefinition (also printed by the `crdgen` binary).
//! - [`error`]: the crate's error type.

pub mod args;
pub mod aws;
pub mod cache;
pub mod coalesce;
pub mod controller;
pub mod crd;
pub mod domain;
pub mod error;
pub mod events;
pub mod http;
pub mod inplace;
pub use dso_lease as lease;
pub mod metrics;
pub mod pod_lists;
pub mod propagation;
pub mod rollout;
pub mod run;
pub mod slots;
pub mod sqs;
pub mod status;
pub mod workload;

pub use error::{Error, Result};
