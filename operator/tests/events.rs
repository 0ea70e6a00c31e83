//! The events queue reader against moto over HTTP: EventBridge → SQS with the rule of
//! `docs/aws/eventbridge-sqs.cfn.yaml` (moto routes `PutEvents` to SQS targets), then
//! messages of the real event shape put on the queue directly (duplicates, out of order,
//! malformed, about unknown secrets), and a queue that cannot be read.
//!
//! Needs `DSO_MOTO_ENDPOINT` (e.g. `http://127.0.0.1:5140`, from `tests/moto.sh start 5140`).

use aws_sdk_sqs::config::{Credentials, Region};
use dso_operator::domain::SecretKey;
use dso_operator::metrics::Metrics;
use dso_operator::sqs::{EventMetrics, Queue, Reader, Watch};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const PUT: &str = include_str!("event-samples/put-secret-value.json");
const READ: &str = include_str!("event-samples/get-secret-value.json");
const RULE: &str = include_str!("../../docs/aws/eventbridge-sqs.cfn.yaml");
const ACCOUNT: &str = "123456789012";

fn moto() -> String {
    std::env::var("DSO_MOTO_ENDPOINT").unwrap_or_else(|_| {
        panic!("DSO_MOTO_ENDPOINT is not set: start moto with `tests/moto.sh start 5140` and export DSO_MOTO_ENDPOINT=http://127.0.0.1:5140")
    })
}

async fn config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("{prefix}-{n}")
}

fn key(id: &str) -> SecretKey {
    SecretKey {
        region: "us-east-1".into(),
        secret_id: id.into(),
    }
}

fn arn_of(name: &str) -> String {
    format!("arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:{name}-AbC123")
}

/// The PutSecretValue fixture about `name`, at `time`, with event id `id`.
fn put_event(name: &str, time: &str, id: &str) -> Value {
    let mut v: Value = serde_json::from_str(PUT).expect("fixture");
    v["id"] = id.into();
    v["time"] = time.into();
    v["detail"]["eventTime"] = time.into();
    v["detail"]["requestParameters"]["secretId"] = name.into();
    v["detail"]["responseElements"]["arn"] = arn_of(name).into();
    v
}

/// What the reader did, as a test sees it.
#[derive(Clone, Default)]
struct Seen {
    triggered: Arc<Mutex<Vec<(String, String)>>>,
    stale: Arc<Mutex<BTreeSet<SecretKey>>>,
    queue_up: Arc<Mutex<Vec<bool>>>,
    watched: Vec<((String, String), SecretKey)>,
}

impl Watch for Seen {
    fn watched(&self) -> Vec<((String, String), SecretKey)> {
        self.watched.clone()
    }
    async fn stale(&self, key: &SecretKey) {
        self.stale.lock().expect("lock").insert(key.clone());
    }
    fn trigger(&self, namespace: &str, name: &str) -> bool {
        self.triggered
            .lock()
            .expect("lock")
            .push((namespace.into(), name.into()));
        true
    }
    fn queue_up(&self, up: bool) {
        self.queue_up.lock().expect("lock").push(up);
    }
}

/// A reader of `url` watching `watched`, running until the returned sender says stop; and a
/// function reading one series of its metrics.
async fn start(
    url: &str,
    watched: Vec<((String, String), SecretKey)>,
) -> (Seen, watch::Sender<bool>, impl Fn(&str) -> f64) {
    let mut registry = Registry::default();
    let metrics = EventMetrics::register(&mut registry);
    let aws_metrics = Metrics::register(&mut registry);
    let seen = Seen {
        watched,
        ..Seen::default()
    };
    let queue = Queue::new(&config(&moto()).await, url, Duration::from_secs(5));
    let reader = Reader::new(queue, seen.clone(), metrics, aws_metrics);
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(reader.run(stop_rx));
    let read = move |series: &str| {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .map_or(-1.0, |v| v.trim().parse().expect("number"))
    };
    (seen, stop, read)
}

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&config(&moto()).await)
}

/// A new queue: its URL and ARN.
async fn queue(name: &str) -> (String, String) {
    let sqs = sqs().await;
    let url = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("url");
    let arn = format!("arn:aws:sqs:us-east-1:{ACCOUNT}:{name}");
    (url, arn)
}

/// Messages still on the queue, visible or being handled.
async fn left_on(url: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = sqs()
        .await
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes");
    let attrs = out.attributes.unwrap_or_default();
    [
        A::ApproximateNumberOfMessages,
        A::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|a| {
        attrs
            .get(a)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    })
    .sum()
}

/// Messages left on the queue once it is empty, or after 5 s.
async fn drained(url: &str) -> u64 {
    let start = Instant::now();
    loop {
        let left = left_on(url).await;
        if left == 0 || start.elapsed() > Duration::from_secs(5) {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn send(url: &str, body: &str) {
    sqs()
        .await
        .send_message()
        .queue_url(url)
        .message_body(body)
        .send()
        .await
        .expect("send message");
}

/// One EventBridge API call to moto (AWS JSON 1.1; moto does not check signatures).
async fn eventbridge(action: &str, body: Value) -> Value {
    let endpoint = moto();
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let body = body.to_string();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-amz-json-1.1\r\n\
         X-Amz-Target: AWSEvents.{action}\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/events/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("moto");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 200"), "{action}: {response}");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// The event pattern of the documented rule (docs/aws/eventbridge-sqs.cfn.yaml).
fn documented_pattern() -> Value {
    let template: Value = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(RULE)
        .ok()
        .and_then(|v| serde_json::to_value(v).ok())
        .expect("the CloudFormation example parses");
    let pattern = template["Resources"]["Rule"]["Properties"]["EventPattern"].clone();
    assert!(pattern.is_object(), "no EventPattern in the example");
    pattern
}

#[tokio::test]
async fn a_change_routed_by_the_documented_rule_reconciles_every_dsosecret_naming_the_secret() {
    let (url, arn) = queue(&unique("dso-events")).await;
    let rule = unique("dso-events");
    eventbridge(
        "PutRule",
        json!({"Name": rule, "EventPattern": documented_pattern().to_string()}),
    )
    .await;
    eventbridge(
        "PutTargets",
        json!({"Rule": rule, "Targets": [{"Id": "dso-operator", "Arn": arn}]}),
    )
    .await;
    let name = unique("e2e/events/db");
    let watched = vec![
        (("shop".into(), "db".into()), key(&name)),
        (("billing".into(), "db-by-arn".into()), key(&arn_of(&name))),
        (("shop".into(), "other".into()), key("prod/other")),
    ];
    let (seen, stop, metric) = start(&url, watched).await;
    wait_until("the queue read once", Duration::from_secs(10), || {
        seen.queue_up.lock().expect("lock").contains(&true)
    })
    .await;

    // What CloudTrail hands EventBridge for a PutSecretValue (EventBridge adds id, time,
    // region, account), and a read of the same secret, which the rule does not pass on.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let put = put_event(&name, &now, "unused");
    let read = {
        let mut v: Value = serde_json::from_str(READ).expect("fixture");
        v["detail"]["requestParameters"]["secretId"] = name.clone().into();
        v
    };
    let entry = |v: &Value| {
        json!({
            "Source": "aws.secretsmanager",
            "DetailType": v["detail-type"],
            "Detail": v["detail"].to_string(),
            "Resources": [],
        })
    };
    let sent = Instant::now();
    eventbridge("PutEvents", json!({"Entries": [entry(&read), entry(&put)]})).await;
    wait_until(
        "both DsoSecrets reconciled",
        Duration::from_secs(30),
        || seen.triggered.lock().expect("lock").len() >= 2,
    )
    .await;
    println!("event put → reconcile triggered: {:?}", sent.elapsed());

    let mut triggered = seen.triggered.lock().expect("lock").clone();
    triggered.sort();
    assert_eq!(
        triggered,
        [
            ("billing".to_string(), "db-by-arn".to_string()),
            ("shop".to_string(), "db".to_string())
        ]
    );
    assert_eq!(
        *seen.stale.lock().expect("lock"),
        BTreeSet::from([key(&arn_of(&name)), key(&name)]),
        "both cached forms of the secret are looked up again"
    );
    assert_eq!(
        metric("dso_secret_events_total{outcome=\"reconciled\"}"),
        1.0
    );
    assert_eq!(
        metric("dso_secret_events_total{outcome=\"irrelevant\"}"),
        0.0,
        "the rule keeps reads off the queue"
    );
    let left = drained(&url).await;
    assert_eq!(left, 0, "handled messages are deleted");
    assert_eq!(metric("dso_events_queue_up"), 1.0);
    let _ = stop.send(true);
}

#[tokio::test]
async fn duplicate_out_of_order_malformed_and_unknown_events_are_ignored_and_counted() {
    let (url, _) = queue(&unique("dso-events")).await;
    let name = unique("e2e/events/db");
    let newer = put_event(&name, "2026-11-29T22:10:05Z", "event-newer");
    let older = put_event(&name, "2026-11-29T22:09:00Z", "event-older");
    let unknown = put_event("prod/nobody-names-this", "2026-11-29T22:10:06Z", "event-x");
    let mut read: Value = serde_json::from_str(READ).expect("fixture");
    read["detail"]["requestParameters"]["secretId"] = name.clone().into();
    for body in [
        newer.to_string(),
        newer.to_string(), // SQS delivers at least once
        older.to_string(), // CloudTrail delivery is not ordered
        r#"{"not": "an event"}"#.to_string(),
        "PutSecretValue".to_string(),
        unknown.to_string(),
        read.to_string(),
    ] {
        send(&url, &body).await;
    }

    let watched = vec![(("shop".into(), "db".into()), key(&name))];
    let (seen, stop, metric) = start(&url, watched).await;
    let total = || {
        [
            "reconciled",
            "duplicate",
            "out_of_order",
            "malformed",
            "unknown_secret",
            "irrelevant",
        ]
        .iter()
        .map(|o| metric(&format!("dso_secret_events_total{{outcome=\"{o}\"}}")))
        .sum::<f64>()
    };
    wait_until("every message handled", Duration::from_secs(30), || {
        total() >= 7.0
    })
    .await;
    for (outcome, n) in [
        ("reconciled", 1.0),
        ("duplicate", 1.0),
        ("out_of_order", 1.0),
        ("malformed", 2.0),
        ("unknown_secret", 1.0),
        ("irrelevant", 1.0),
    ] {
        assert_eq!(
            metric(&format!("dso_secret_events_total{{outcome=\"{outcome}\"}}")),
            n,
            "{outcome}"
        );
    }
    assert_eq!(
        *seen.triggered.lock().expect("lock"),
        [("shop".to_string(), "db".to_string())],
        "one reconcile, for the one change"
    );
    let left = drained(&url).await;
    assert_eq!(
        left, 0,
        "ignored messages are deleted too, never read again"
    );
    let _ = stop.send(true);
}

#[tokio::test]
async fn an_unreadable_queue_is_reported_and_read_once_it_can_be() {
    let name = unique("dso-events-later");
    let url = format!("{}/{ACCOUNT}/{name}", moto().trim_end_matches('/'));
    let (seen, stop, metric) = start(&url, vec![(("shop".into(), "db".into()), key("db"))]).await;
    wait_until("a failed read", Duration::from_secs(10), || {
        metric("dso_events_queue_errors_total") >= 1.0
    })
    .await;
    assert_eq!(metric("dso_events_queue_up"), 0.0);
    assert_eq!(
        seen.queue_up.lock().expect("lock").first(),
        Some(&false),
        "reported unreadable"
    );

    // The queue appears (created late, or permissions fixed): the reader picks it up.
    let (created, _) = queue(&name).await;
    assert!(
        created.ends_with(&format!("/{ACCOUNT}/{name}")),
        "{created}"
    );
    send(
        &url,
        &put_event("db", "2026-11-29T22:10:05Z", "e1").to_string(),
    )
    .await;
    wait_until(
        "the event read once the queue exists",
        Duration::from_secs(30),
        || !seen.triggered.lock().expect("lock").is_empty(),
    )
    .await;
    assert_eq!(metric("dso_events_queue_up"), 1.0);
    let _ = stop.send(true);
}
