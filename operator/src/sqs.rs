//! The events queue reader: long-polls the SQS queue EventBridge feeds with Secrets Manager
//! change events, lets [`crate::events`] decide about each message, marks the named secrets
//! stale in the [`crate::cache::VersionCache`], triggers a reconcile of the DsoSecrets that name
//! them, and deletes the messages it handled.
//!
//! A queue that cannot be read (network, permissions, deleted queue) never stops the operator:
//! the reader logs it once, sets `dso_events_queue_up` to 0 and retries with backoff, while the
//! periodic check goes back to its normal default ([`crate::events::Detection`]).

use crate::controller::Context;
use crate::domain::SecretKey;
use crate::events::{self, Inbox, Outcome};
use crate::metrics::Metrics;
use dso_api::DsoSecret;
use futures::channel::mpsc::UnboundedSender;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// How long one ReceiveMessage waits for a message (SQS's longest long poll).
pub const WAIT: Duration = Duration::from_secs(20);
/// Messages per ReceiveMessage (SQS's most).
const BATCH: i32 = 10;
/// First and longest delay between attempts to read an unreadable queue.
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The reader's metrics (registered only when a queue is configured).
#[derive(Clone)]
pub struct EventMetrics {
    events: Family<OutcomeLabel, Counter>,
    queue_up: Gauge,
    receive_errors: Counter,
    delay: Histogram,
}

impl EventMetrics {
    /// Registers the metrics under the `dso` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = EventMetrics {
            events: Family::default(),
            queue_up: Gauge::default(),
            receive_errors: Counter::default(),
            delay: Histogram::new(exponential_buckets(0.5, 2.0, 12)),
        };
        for o in Outcome::ALL {
            let _ = m.events.get_or_create(&OutcomeLabel {
                outcome: o.as_str(),
            });
        }
        let r = registry.sub_registry_with_prefix("dso");
        r.register(
            "secret_events",
            "Messages read from the events queue, by outcome: reconciled, or why ignored (duplicate, out_of_order, unknown_secret, irrelevant, malformed)",
            m.events.clone(),
        );
        r.register(
            "events_queue_up",
            "1 while the events queue can be read (else rotations are found by the periodic check only)",
            m.queue_up.clone(),
        );
        r.register(
            "events_queue_errors",
            "Failed attempts to read the events queue",
            m.receive_errors.clone(),
        );
        r.register(
            "event_delay_seconds",
            "From a change in AWS (the event's time) to the operator reading its event",
            m.delay.clone(),
        );
        m
    }

    fn counted(&self, outcome: Outcome) {
        self.events
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
    }
}

/// An SQS queue of Secrets Manager change events.
pub struct Queue {
    client: aws_sdk_sqs::Client,
    url: String,
}

/// The region in an SQS queue URL (`https://sqs.<region>.amazonaws.com/<account>/<name>`).
fn url_region(url: &str) -> Option<&str> {
    let host = url.split("://").nth(1)?.split('/').next()?;
    let region = host.strip_prefix("sqs.")?.split('.').next()?;
    (!region.is_empty()).then_some(region)
}

impl Queue {
    /// A client for `url` from the operator's AWS configuration (region from the URL when it
    /// names one); each attempt may last the long poll plus `aws_timeout`.
    pub fn new(base: &aws_config::SdkConfig, url: &str, aws_timeout: Duration) -> Self {
        let mut conf = aws_sdk_sqs::config::Builder::from(base).timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(WAIT + aws_timeout)
                .build(),
        );
        if let Some(region) = url_region(url) {
            conf = conf.region(aws_config::Region::new(region.to_string()));
        }
        Queue {
            client: aws_sdk_sqs::Client::from_conf(conf.build()),
            url: url.to_string(),
        }
    }

    /// The queue URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// A received message: what is needed to read and delete it.
struct Message {
    id: Option<String>,
    receipt: Option<String>,
    body: String,
}

/// What the reader acts on: the secrets DsoSecrets watch, and what an accepted event does.
pub trait Watch: Send + Sync + 'static {
    /// `(DsoSecret namespace and name, secret it looks up)` for every valid DsoSecret.
    fn watched(&self) -> Vec<((String, String), SecretKey)>;
    /// Drops cached metadata of a secret an event says changed.
    fn stale(&self, key: &SecretKey) -> impl std::future::Future<Output = ()> + Send;
    /// Reconciles a DsoSecret now; false once nothing takes triggers any more (shutdown).
    fn trigger(&self, namespace: &str, name: &str) -> bool;
    /// Records whether the queue can be read.
    fn queue_up(&self, up: bool);
}

/// The controller's side: the DsoSecret watch cache, the version cache, and kube-runtime's
/// reconcile trigger.
pub struct ControllerWatch {
    pub ctx: Arc<Context>,
    pub trigger: UnboundedSender<ObjectRef<DsoSecret>>,
}

impl Watch for ControllerWatch {
    fn watched(&self) -> Vec<((String, String), SecretKey)> {
        let region = self.ctx.cache.default_region();
        self.ctx
            .stores
            .dsosecrets
            .state()
            .iter()
            .filter(|d| dso_api::validate::validate_spec(&d.spec).is_ok())
            .flat_map(|d| {
                let target = (d.namespace().unwrap_or_default(), d.name_any());
                crate::domain::secret_keys(&d.spec, &region)
                    .into_iter()
                    .map(move |k| (target.clone(), k))
            })
            .collect()
    }

    async fn stale(&self, key: &SecretKey) {
        self.ctx.cache.forget(key).await;
    }

    fn trigger(&self, namespace: &str, name: &str) -> bool {
        self.trigger
            .unbounded_send(ObjectRef::new(name).within(namespace))
            .is_ok()
    }

    fn queue_up(&self, up: bool) {
        self.ctx.settings.detection.set_queue_up(up);
    }
}

/// Reads the queue and acts on what it says, until `stop`.
pub struct Reader<W> {
    queue: Queue,
    watch: W,
    metrics: EventMetrics,
    aws_metrics: Metrics,
    inbox: Inbox,
    /// Whether the last read worked (`None` before the first).
    up: Option<bool>,
}

impl<W: Watch> Reader<W> {
    pub fn new(queue: Queue, watch: W, metrics: EventMetrics, aws_metrics: Metrics) -> Self {
        Reader {
            queue,
            watch,
            metrics,
            aws_metrics,
            inbox: Inbox::default(),
            up: None,
        }
    }

    /// Polls until `stop` turns true (or the controller is gone). Call once the DsoSecret cache
    /// is synced, so that "no DsoSecret names this secret" is true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        info!(queue = self.queue.url(), "reading Secrets Manager events");
        let mut failures: u32 = 0;
        loop {
            let received = tokio::select! {
                r = self.receive() => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            match received {
                Ok(messages) => {
                    failures = 0;
                    self.queue_up(true, None);
                    if !self.handle(messages).await {
                        return;
                    }
                }
                Err(problem) => {
                    failures = failures.saturating_add(1);
                    self.metrics.receive_errors.inc();
                    self.queue_up(false, Some(&problem));
                    let delay =
                        dso_api::backoff::delay(failures, RETRY_BASE, RETRY_MAX, fastrand::u64(..));
                    debug!(queue = self.queue.url(), error = %problem, retry_in = ?delay, "cannot read the events queue");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }

    fn queue_up(&mut self, up: bool, problem: Option<&str>) {
        self.metrics.queue_up.set(i64::from(up));
        self.watch.queue_up(up);
        if self.up.replace(up) == Some(up) {
            return;
        }
        match problem {
            None => info!(
                queue = self.queue.url(),
                "events queue readable: rotations are detected from events; the periodic check is the fallback"
            ),
            Some(problem) => warn!(
                queue = self.queue.url(),
                error = %problem,
                "cannot read the events queue: rotations are detected by the periodic check only until it can (grant sqs:ReceiveMessage and sqs:DeleteMessage on the queue, check its URL and region)"
            ),
        }
    }

    async fn receive(&self) -> Result<Vec<Message>, String> {
        self.aws_metrics.aws_call("ReceiveMessage");
        let out = self
            .queue
            .client
            .receive_message()
            .queue_url(&self.queue.url)
            .max_number_of_messages(BATCH)
            // Until a read has worked, do not wait: whether the queue can be read shows at once.
            .wait_time_seconds(if self.up == Some(true) {
                WAIT.as_secs() as i32
            } else {
                0
            })
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| Message {
                id: m.message_id,
                receipt: m.receipt_handle,
                body: m.body.unwrap_or_default(),
            })
            .collect())
    }

    /// Handles a batch, then deletes it; false once the controller no longer takes triggers
    /// (shutting down: the messages stay for the next leader).
    async fn handle(&mut self, messages: Vec<Message>) -> bool {
        if messages.is_empty() {
            return true;
        }
        let watched = self.watch.watched();
        let mut done = Vec::new();
        for m in messages {
            let outcome = match self.decide(&m, &watched).await {
                Some(outcome) => outcome,
                None => return false,
            };
            self.metrics.counted(outcome);
            if outcome == Outcome::Malformed {
                warn!(
                    message_id = m.id.as_deref().unwrap_or(""),
                    "ignored a message of the events queue that is no Secrets Manager event (check the EventBridge rule that targets the queue)"
                );
            }
            done.extend(m.receipt);
        }
        self.delete(done).await;
        true
    }

    /// The outcome of one message, after acting on it; `None` when the controller is gone.
    async fn decide(
        &mut self,
        m: &Message,
        watched: &[((String, String), SecretKey)],
    ) -> Option<Outcome> {
        let event = match events::parse(&m.body) {
            Ok(event) => event,
            Err(outcome) => return Some(outcome),
        };
        if let Some(t) = event.time {
            let age = k8s_openapi::jiff::Timestamp::now().duration_since(t);
            if let Ok(age) = Duration::try_from(age) {
                self.metrics.delay.observe(age.as_secs_f64());
            }
        }
        let accepted = match self.inbox.accept(&event, m.id.as_deref(), watched) {
            Ok(a) => a,
            Err(outcome) => {
                debug!(event = %event.name, secret = ?event.secret_ids, outcome = outcome.as_str(), "ignored an event");
                return Some(outcome);
            }
        };
        for key in &accepted.keys {
            self.watch.stale(key).await;
        }
        for (ns, name) in &accepted.targets {
            if !self.watch.trigger(ns, name) {
                return None;
            }
        }
        info!(
            event = %event.name,
            secret = ?event.secret_ids,
            dsosecrets = ?accepted.targets.iter().map(|(ns, n)| format!("{ns}/{n}")).collect::<Vec<_>>(),
            "secret changed in AWS: reconciling"
        );
        Some(Outcome::Reconciled)
    }

    /// Deletes handled messages, ten per call. A failure only means they come back (and are
    /// then recognised as duplicates).
    async fn delete(&self, receipts: Vec<String>) {
        use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
        for chunk in receipts.chunks(BATCH as usize) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .build()
                        .ok()
                })
                .collect();
            self.aws_metrics.aws_call("DeleteMessageBatch");
            match self
                .queue
                .client
                .delete_message_batch()
                .queue_url(&self.queue.url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) if !out.failed().is_empty() => warn!(
                    queue = self.queue.url(),
                    failed = out.failed().len(),
                    "could not delete some handled events; they will be read again and ignored"
                ),
                Ok(_) => {}
                Err(e) => warn!(
                    queue = self.queue.url(),
                    error = %aws_sdk_sqs::error::DisplayErrorContext(e),
                    "could not delete handled events (grant sqs:DeleteMessage); they will be read again and ignored"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_comes_from_an_sqs_queue_url() {
        assert_eq!(
            url_region("https://sqs.eu-west-3.amazonaws.com/123456789012/dso-events"),
            Some("eu-west-3")
        );
        assert_eq!(url_region("http://127.0.0.1:4566/123456789012/q"), None);
        assert_eq!(url_region("not a url"), None);
    }
}
