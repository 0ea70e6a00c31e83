//! Prometheus metrics (`dso_` prefix), owned by a registry passed around — no globals.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// The operator's metrics. Cheap to clone (every metric is shared).
#[derive(Clone)]
pub struct Metrics {
    reconciles: Counter,
    reconcile_errors: Family<ErrorLabel, Counter>,
    reconcile_duration: Histogram,
    aws_calls: Family<OperationLabel, Counter>,
    rotations: Counter,
    rollouts: Family<KindLabel, Counter>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            aws_calls: Family::default(),
            rotations: Counter::default(),
            rollouts: Family::default(),
            leader: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `dso` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("dso");
        r.register("reconciles", "DsoSecret reconciles", m.reconciles.clone());
        r.register(
            "reconcile_errors",
            "Failed reconciles, by error",
            m.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            m.reconcile_duration.clone(),
        );
        r.register(
            "aws_calls",
            "Calls to AWS, by operation: Secrets Manager metadata (never GetSecretValue) and the events queue",
            m.aws_calls.clone(),
        );
        r.register(
            "rotations",
            "Secret versions seen changing in AWS",
            m.rotations.clone(),
        );
        r.register(
            "rollouts",
            "Workloads rolled after a rotation, by kind",
            m.rollouts.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        m
    }

    /// Counts a reconcile and times it until the guard drops.
    pub fn reconcile_started(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: self.reconcile_duration.clone(),
        }
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, label: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabel {
                error: label.to_string(),
            })
            .inc();
    }

    /// Counts one AWS API call.
    pub fn aws_call(&self, operation: &str) {
        self.aws_calls
            .get_or_create(&OperationLabel {
                operation: operation.to_string(),
            })
            .inc();
    }

    /// Counts rotated secret versions.
    pub fn rotated(&self, n: usize) {
        self.rotations.inc_by(n as u64);
    }

    /// Counts one rolled workload.
    pub fn rolled(&self, kind: &str) {
        self.rollouts
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Records leadership.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }
}

/// Observes a reconcile's duration when dropped.
pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_with_the_dso_prefix() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.aws_call("DescribeSecret");
        m.aws_call("DescribeSecret");
        m.reconcile_failed("kube");
        drop(m.reconcile_started());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("dso_aws_calls_total{operation=\"DescribeSecret\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("dso_reconcile_errors_total{error=\"kube\"} 1"),
            "{text}"
        );
        assert!(text.contains("dso_reconciles_total 1"), "{text}");
    }
}
