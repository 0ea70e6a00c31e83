//! Prometheus metrics (`prometheus-client`, prefix `dso_webhook`): admissions by outcome and
//! reason, and admission latency. No globals: one [`Metrics`] lives in the router state.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Instant;

/// How an admission ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Mutated.
    Injected,
    /// Already injected: allowed, no patch.
    Unchanged,
    /// Not opted in, or not a pod CREATE: allowed, no patch.
    Skipped,
    /// A valid DsoSecret (`/validate`): allowed.
    Valid,
    /// Refused with a message.
    Denied,
    /// Not a readable AdmissionReview.
    Invalid,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Unchanged => "unchanged",
            Outcome::Skipped => "skipped",
            Outcome::Valid => "valid",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    outcome: &'static str,
    reason: &'static str,
}

/// The webhook's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    admissions: Family<AdmissionLabels, Counter>,
    duration: Histogram,
    ready: Gauge,
    refused: Family<RefusedLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dso_webhook");
        let admissions = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admissions",
            "Admission reviews answered, by outcome and denial reason",
            admissions.clone(),
        );
        let duration = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
        ]);
        registry.register(
            "admission_duration_seconds",
            "Time to answer an admission review, from parsed request to serialized response",
            duration.clone(),
        );
        let ready = Gauge::default();
        registry.register("ready", "1 when the watch caches are synced", ready.clone());
        let refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "requests_refused",
            "Reviews answered 503 by the limits: overloaded (--max-concurrent-reviews) or timeout (--request-timeout)",
            refused.clone(),
        );
        Metrics {
            registry,
            admissions,
            duration,
            ready,
            refused,
        }
    }
}

impl Metrics {
    /// Records one answered admission.
    pub fn admission(&self, outcome: Outcome, reason: &'static str, started: Instant) {
        self.admissions
            .get_or_create(&AdmissionLabels {
                outcome: outcome.as_str(),
                reason,
            })
            .inc();
        self.duration.observe(started.elapsed().as_secs_f64());
    }

    /// Records a review refused by the limits (`overloaded` or `timeout`).
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { reason }).inc();
    }

    /// Publishes readiness.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_documented_in_monitoring_md_with_its_type() {
        let m = Metrics::default();
        // Families declare themselves once they have a series.
        m.admission(Outcome::Denied, "no_identity", Instant::now());
        m.refused("overloaded");
        let text = m.encode();
        let exposed = dso_test_support::metrics::exposed_metrics(&text);
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/monitoring.md"
        ))
        .expect("docs/monitoring.md");
        let documented: std::collections::BTreeSet<_> =
            dso_test_support::metrics::documented_metrics(&doc)
                .into_iter()
                .filter(|(n, _)| n.starts_with("dso_webhook_"))
                .collect();
        assert_eq!(
            exposed, documented,
            "docs/monitoring.md's table and /metrics differ:\n{text}"
        );
    }
}
