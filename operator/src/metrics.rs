//! Prometheus metrics (`dso_` prefix), owned by a registry passed around — no globals.

use dso_api::DsoSecret;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Buckets of `dso_rotation_propagation_seconds`: from a second (status times are whole
/// seconds) to an hour.
const PROPAGATION_BUCKETS: [f64; 13] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

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

/// A DsoSecret's identity: its namespace and name (never anything of its secrets). Not
/// `namespace`: Prometheus would rename it `exported_namespace`, beside the target's own.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DsoSecretLabels {
    dsosecret_namespace: String,
    dsosecret: String,
}

/// `dso_dsosecret_ready`, read from the DsoSecret watch cache at each scrape: one series per
/// live DsoSecret, so a deleted one leaves no stale series behind. Empty until this replica
/// leads (only the leader watches).
#[derive(Clone, Debug, Default)]
struct ReadyCollector {
    store: Arc<OnceLock<Store<DsoSecret>>>,
}

impl Collector for ReadyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(store) = self.store.get() else {
            return Ok(());
        };
        let family = Family::<DsoSecretLabels, Gauge>::default();
        for dso in store.state() {
            let ready = dso.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            let labels = DsoSecretLabels {
                dsosecret_namespace: dso.metadata.namespace.clone().unwrap_or_default(),
                dsosecret: dso.metadata.name.clone().unwrap_or_default(),
            };
            family.get_or_create(&labels).set(i64::from(ready));
        }
        let metric = encoder.encode_descriptor(
            "dsosecret_ready",
            "1 while the DsoSecret's Ready condition is True, else 0 (leader only)",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
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
    rollout_timeouts: Family<KindLabel, Counter>,
    propagation: Histogram,
    leader: Gauge,
    ready: ReadyCollector,
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
            rollout_timeouts: Family::default(),
            propagation: Histogram::new(PROPAGATION_BUCKETS),
            leader: Gauge::default(),
            ready: ReadyCollector::default(),
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
            "rollout_timeouts",
            "Rollouts DSO started that were not complete within --rollout-timeout, or stalled, by kind",
            m.rollout_timeouts.clone(),
        );
        r.register(
            "rotation_propagation_seconds",
            "Time from DSO noticing a rotation of an InPlace DsoSecret to every consuming pod serving it",
            m.propagation.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        r.register_collector(Box::new(m.ready.clone()));
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

    /// Counts one rollout not complete in time, or stalled.
    pub fn rollout_timed_out(&self, kind: &str) {
        self.rollout_timeouts
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Observes one rotation that reached every consuming pod.
    pub fn propagated(&self, took: std::time::Duration) {
        self.propagation.observe(took.as_secs_f64());
    }

    /// Publishes `dso_dsosecret_ready` from this watch cache (once this replica leads).
    pub fn watch_readiness(&self, store: Store<DsoSecret>) {
        let _ = self.ready.store.set(store);
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

    fn dsosecret(name: &str, ready: Option<&str>) -> DsoSecret {
        let conditions = match ready {
            Some(status) => {
                serde_json::json!([{"type": "Ready", "status": status, "reason": "Synced",
                "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}])
            }
            None => serde_json::json!([]),
        };
        serde_json::from_value(serde_json::json!({
            "apiVersion": "dso.dev/v1alpha1", "kind": "DsoSecret",
            "metadata": {"name": name, "namespace": "shop", "uid": name},
            "spec": {"files": [{"path": "p", "secretId": "canary-secret-id-7f3a"}]},
            "status": {"conditions": conditions},
        }))
        .expect("a DsoSecret")
    }

    #[test]
    fn readiness_is_one_series_per_live_dsosecret_read_at_scrape_time() {
        use kube::runtime::reflector::store::Writer;
        use kube::runtime::watcher::Event;
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let encode = |registry: &Registry| {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
            text
        };
        assert!(
            !encode(&registry).contains("dso_dsosecret_ready"),
            "a standby has no series"
        );

        let mut writer = Writer::<DsoSecret>::default();
        m.watch_readiness(writer.as_reader());
        for d in [
            dsosecret("db", Some("True")),
            dsosecret("api", Some("False")),
            dsosecret("new", None),
        ] {
            writer.apply_watcher_event(&Event::Apply(d));
        }
        let text = encode(&registry);
        assert!(text.contains("# TYPE dso_dsosecret_ready gauge"), "{text}");
        assert!(
            text.contains("dso_dsosecret_ready{dsosecret_namespace=\"shop\",dsosecret=\"db\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("dso_dsosecret_ready{dsosecret_namespace=\"shop\",dsosecret=\"api\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("dso_dsosecret_ready{dsosecret_namespace=\"shop\",dsosecret=\"new\"} 0"),
            "never reconciled is not Ready: {text}"
        );
        assert!(!text.contains("canary-secret-id-7f3a"), "{text}");

        writer.apply_watcher_event(&Event::Delete(dsosecret("api", Some("False"))));
        let text = encode(&registry);
        assert!(
            !text.contains("dsosecret=\"api\""),
            "a deleted DsoSecret leaves no series: {text}"
        );
    }

    #[test]
    fn rollout_timeouts_are_counted_by_kind() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.rollout_timed_out("Deployment");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("dso_rollout_timeouts_total{kind=\"Deployment\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn every_metric_is_documented_in_monitoring_md_with_its_type() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let writer = kube::runtime::reflector::store::Writer::<DsoSecret>::default();
        m.watch_readiness(writer.as_reader());
        // Families declare themselves once they have a series.
        m.aws_call("DescribeSecret");
        m.reconcile_failed("kube");
        m.rolled("Deployment");
        m.rollout_timed_out("Deployment");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let exposed = dso_test_support::metrics::exposed_metrics(&text);
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/monitoring.md"
        ))
        .expect("docs/monitoring.md");
        let documented: std::collections::BTreeSet<_> =
            dso_test_support::metrics::documented_metrics(&doc)
                .into_iter()
                .filter(|(n, _)| n.starts_with("dso_") && !n.starts_with("dso_webhook_"))
                .collect();
        assert_eq!(
            exposed, documented,
            "docs/monitoring.md's table and /metrics differ:\n{text}"
        );
    }
}
