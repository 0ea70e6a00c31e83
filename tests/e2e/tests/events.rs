//! Event-driven detection on the real cluster: `dso-operator --events-queue-url` reading an SQS
//! queue in moto that an EventBridge rule (the one of `docs/aws/eventbridge-sqs.cfn.yaml`)
//! fills. moto has no CloudTrail, so the test hands EventBridge what CloudTrail would: the
//! `PutSecretValue` entry, right after the PutSecretValue call. The figure printed is the
//! operator's share (event → rollout started); CloudTrail's own delivery comes on top in AWS.
//!
//! Like the operator tests, each test runs its own operator process in its own namespace (ports
//! 18531-18532, 18535).

use dso_e2e::operator::{
    apply_consumer, get_dso, recorded_versions, replicasets, revision, template_hash,
    wait_available, wait_ready, wait_replicasets,
};
use dso_e2e::{
    Operator, app_container, apply, apply_crd, client, create_secret, env, moto, namespace,
    put_secret_value, quick_deployment, refreshing, unique, wait_for,
};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ACCOUNT: &str = "123456789012";

/// One AWS JSON-protocol call to moto (it does not check signatures).
async fn aws_json(target: &str, content_type: &str, body: Value) -> Value {
    let endpoint = env("DSO_MOTO_ENDPOINT");
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let service = if target.starts_with("AWSEvents") {
        "events"
    } else {
        "sqs"
    };
    let body = body.to_string();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nX-Amz-Target: {target}\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("moto");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 200"), "{target}: {response}");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

async fn eventbridge(action: &str, body: Value) -> Value {
    aws_json(
        &format!("AWSEvents.{action}"),
        "application/x-amz-json-1.1",
        body,
    )
    .await
}

/// The event pattern of the documented rule.
fn documented_pattern() -> Value {
    let path = dso_e2e::repo_root().join("docs/aws/eventbridge-sqs.cfn.yaml");
    let text = std::fs::read_to_string(&path).expect("read the CloudFormation example");
    let template: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("yaml");
    let template: Value = serde_json::to_value(template).expect("json");
    template["Resources"]["Rule"]["Properties"]["EventPattern"].clone()
}

/// A queue fed by the documented rule; its URL.
async fn events_queue() -> String {
    let name = unique("dso-events").replace('/', "-");
    let url = aws_json(
        "AmazonSQS.CreateQueue",
        "application/x-amz-json-1.0",
        json!({"QueueName": name}),
    )
    .await["QueueUrl"]
        .as_str()
        .expect("QueueUrl")
        .to_string();
    eventbridge(
        "PutRule",
        json!({"Name": name, "EventPattern": documented_pattern().to_string()}),
    )
    .await;
    eventbridge(
        "PutTargets",
        json!({"Rule": name, "Targets": [{"Id": "dso-operator", "Arn": format!("arn:aws:sqs:us-east-1:{ACCOUNT}:{name}")}]}),
    )
    .await;
    url
}

/// What CloudTrail hands EventBridge for a PutSecretValue of `secret_id` (ARN `arn`).
fn put_secret_value_entry(secret_id: &str, arn: &str) -> Value {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let detail = json!({
        "eventVersion": "1.09",
        "userIdentity": {"type": "AssumedRole", "accountId": ACCOUNT},
        "eventTime": now,
        "eventSource": "secretsmanager.amazonaws.com",
        "eventName": "PutSecretValue",
        "awsRegion": "us-east-1",
        "requestParameters": {"secretId": secret_id, "secretString": "HIDDEN_DUE_TO_SECURITY_REASONS"},
        "responseElements": {"arn": arn},
        "eventID": unique("event"),
        "readOnly": false,
        "eventType": "AwsApiCall",
        "managementEvent": true,
        "recipientAccountId": ACCOUNT,
        "eventCategory": "Management",
    });
    json!({
        "Source": "aws.secretsmanager",
        "DetailType": "AWS API Call via CloudTrail",
        "Detail": detail.to_string(),
        "Resources": [],
    })
}

/// The ARN moto gave the secret `id` (what the CloudTrail entry names).
async fn secret_arn(id: &str) -> String {
    moto()
        .describe_secret()
        .secret_id(id)
        .send()
        .await
        .expect("DescribeSecret")
        .arn
        .expect("ARN")
}

/// Waits until the operator reads the events queue.
async fn wait_queue_read(op: &Operator) {
    wait_for("the events queue read", Duration::from_secs(30), || async {
        Ok((op.try_metric("dso_events_queue_up").await? == 1.0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn a_put_secret_value_event_rolls_the_consumer_within_seconds_with_a_ten_minute_interval() {
    apply_crd();
    let ns = namespace(&client().await, "op-events", &[]).await;
    let secret = unique("e2e/op/events");
    create_secret(&secret, "canary-events-value").await;
    let arn = secret_arn(&secret).await;
    let url = events_queue().await;
    let op = Operator::start_with(
        &ns,
        18531,
        &env("DSO_MOTO_ENDPOINT"),
        &["--events-queue-url", &url],
    );
    op.ready().await;

    // A 10-minute interval: only the event can make the operator look within the test.
    apply(&ns, &refreshing("db", &secret, "10m", "Rollout"));
    let web = quick_deployment("web", "db", app_container("app", "sleep 3600"));
    apply_consumer(&ns, "db", &web).await;
    assert_eq!(
        template_hash(&ns, "web").await,
        None,
        "not rolled at first sight"
    );
    wait_queue_read(&op).await;
    let describes = op.describe_calls().await;

    let rotated = Instant::now();
    put_secret_value(&secret, "canary-events-rotated").await;
    let sent = Instant::now();
    eventbridge(
        "PutEvents",
        json!({"Entries": [put_secret_value_entry(&secret, &arn)]}),
    )
    .await;
    let rolled = loop {
        if template_hash(&ns, "web").await.is_some() {
            break Instant::now();
        }
        assert!(
            rotated.elapsed() < Duration::from_secs(30),
            "no rollout 30 s after the event:\n{}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    println!(
        "PutSecretValue → rollout started (template patched): {:?}; event put → rollout started: {:?}",
        rolled - rotated,
        rolled - sent
    );
    assert!(
        rolled - rotated <= Duration::from_secs(5),
        "rolled {:?} after PutSecretValue",
        rolled - rotated
    );
    assert_eq!(
        op.metric("dso_secret_events_total{outcome=\"reconciled\"}")
            .await,
        1.0
    );
    assert_eq!(
        op.describe_calls().await - describes,
        1.0,
        "one DescribeSecret for the event"
    );
    println!(
        "AWS calls: ReceiveMessage {}, DeleteMessageBatch {}",
        op.metric("dso_aws_calls_total{operation=\"ReceiveMessage\"}")
            .await,
        op.metric("dso_aws_calls_total{operation=\"DeleteMessageBatch\"}")
            .await
    );
    assert!(!op.log().contains("canary-events"), "no value in the log");
    op.stop();
}

/// A rotation as AWS reports it: PutSecretValue, then the CloudTrail entry on EventBridge.
async fn rotate_with_event(secret: &str, arn: &str, value: &str) -> String {
    let version = put_secret_value(secret, value).await;
    eventbridge(
        "PutEvents",
        json!({"Entries": [put_secret_value_entry(secret, arn)]}),
    )
    .await;
    version
}

#[tokio::test]
async fn two_rotations_a_second_apart_give_one_rollout_to_the_last_version() {
    apply_crd();
    let ns = namespace(&client().await, "op-coalesce", &[]).await;
    let secret = unique("e2e/op/coalesce");
    create_secret(&secret, "canary-coalesce-1").await;
    let arn = secret_arn(&secret).await;
    let url = events_queue().await;
    // The default settle time (--rollout-settle 2s): each event is reconciled at once, so only
    // coalescing keeps the second rotation from rolling the workload a second time.
    let op = Operator::start_with(
        &ns,
        18532,
        &env("DSO_MOTO_ENDPOINT"),
        &["--events-queue-url", &url],
    );
    op.ready().await;
    apply(&ns, &refreshing("db", &secret, "10m", "Rollout"));
    let web = quick_deployment("web", "db", app_container("app", "sleep 3600"));
    apply_consumer(&ns, "db", &web).await;
    wait_queue_read(&op).await;
    assert_eq!(replicasets(&ns, "web").await, 1);

    let first = Instant::now();
    rotate_with_event(&secret, &arn, "canary-coalesce-2").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let last = rotate_with_event(&secret, &arn, "canary-coalesce-3").await;
    let apart = first.elapsed();
    wait_replicasets(&ns, "web", 2, Duration::from_secs(30)).await;
    let rolled = first.elapsed();
    wait_available(&ns, "web").await;
    // Both events handled, and time for a second rollout to show if there were one.
    wait_for(
        "both events reconciled",
        Duration::from_secs(30),
        || async {
            Ok((op
                .try_metric("dso_secret_events_total{outcome=\"reconciled\"}")
                .await?
                >= 2.0)
                .then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let rollouts = op.metric("dso_rollouts_total{kind=\"Deployment\"}").await;
    let (rs, rev) = (replicasets(&ns, "web").await, revision(&ns, "web").await);
    let d = get_dso(&ns, "db").await.expect("DsoSecret");
    let status = d.status.clone().unwrap_or_default();
    println!(
        "[coalesce] two rotations {apart:?} apart: rolled {rolled:?} after the first; the operator counted {rollouts} rollout(s); ReplicaSets {rs}, revision {rev:?}"
    );
    assert_eq!(rollouts, 1.0, "one rollout for two rotations 1 s apart");
    assert_eq!(rs, 2, "one new ReplicaSet");
    assert_eq!(rev.as_deref(), Some("2"));
    assert_eq!(
        status.secrets.first().and_then(|s| s.version_id.as_deref()),
        Some(last.as_str()),
        "status shows the last version"
    );
    let rotation = status.last_rotation.expect("status.lastRotation");
    assert_eq!(rotation.workloads, vec!["Deployment/web".to_string()]);
    let recorded = recorded_versions(&ns, "web").await;
    assert!(
        recorded.contains(&last),
        "the one rollout is to the last version: {recorded}"
    );
    assert!(!op.log().contains("canary-coalesce"), "no value in the log");
    op.stop();
}

#[tokio::test]
async fn two_dsosecrets_rotating_together_give_one_rollout_that_each_lists() {
    apply_crd();
    let ns = namespace(&client().await, "op-credit", &[]).await;
    let (db, cache) = (unique("e2e/op/credit-db"), unique("e2e/op/credit-cache"));
    create_secret(&db, "canary-credit-db-1").await;
    create_secret(&cache, "canary-credit-cache-1").await;
    let (db_arn, cache_arn) = (secret_arn(&db).await, secret_arn(&cache).await);
    let url = events_queue().await;
    // A settle time longer than the two events can be apart on a loaded machine (the default
    // 2 s is the other test's subject): the rollout waits for both versions.
    let op = Operator::start_with(
        &ns,
        18535,
        &env("DSO_MOTO_ENDPOINT"),
        &["--events-queue-url", &url, "--rollout-settle", "10s"],
    );
    op.ready().await;
    apply(&ns, &refreshing("db", &db, "10m", "Rollout"));
    apply(&ns, &refreshing("cache", &cache, "10m", "Rollout"));
    let web = quick_deployment("web", "db,cache", app_container("app", "sleep 3600"));
    apply_consumer(&ns, "db", &web).await;
    wait_ready(&ns, "cache", "True", "Synced").await;
    wait_queue_read(&op).await;
    assert_eq!(replicasets(&ns, "web").await, 1);

    // Both rotated, then both CloudTrail entries in one batch: each event reconciles its own
    // DsoSecret, and the first to pass the settle gate rolls the workload for both.
    let db_version = put_secret_value(&db, "canary-credit-db-2").await;
    let cache_version = put_secret_value(&cache, "canary-credit-cache-2").await;
    eventbridge(
        "PutEvents",
        json!({"Entries": [put_secret_value_entry(&db, &db_arn), put_secret_value_entry(&cache, &cache_arn)]}),
    )
    .await;
    wait_replicasets(&ns, "web", 2, Duration::from_secs(30)).await;
    wait_available(&ns, "web").await;
    let ns_name = ns.to_string();
    let credited = |name: &'static str| {
        let ns = ns_name.clone();
        async move {
            get_dso(&ns, name)
                .await
                .ok()
                .and_then(|d| d.status)
                .and_then(|s| s.last_rotation)
                .map(|r| r.workloads)
                .unwrap_or_default()
        }
    };
    if let Err(e) = wait_for(
        "both DsoSecrets list the rollout in status.lastRotation",
        Duration::from_secs(30),
        || async {
            Ok(
                (!credited("db").await.is_empty() && !credited("cache").await.is_empty())
                    .then_some(()),
            )
        },
    )
    .await
    {
        panic!(
            "{e}: db {:?}, cache {:?}\n{}",
            credited("db").await,
            credited("cache").await,
            op.log()
        );
    }
    // Time for a second rollout to show if there were one.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let rollouts = op.metric("dso_rollouts_total{kind=\"Deployment\"}").await;
    println!(
        "[credit] two DsoSecrets rotated together: {rollouts} rollout(s), ReplicaSets {}; lastRotation.workloads db {:?}, cache {:?}",
        replicasets(&ns, "web").await,
        credited("db").await,
        credited("cache").await
    );
    assert_eq!(
        rollouts,
        1.0,
        "one rollout for both rotations\n{}",
        op.log()
    );
    assert_eq!(replicasets(&ns, "web").await, 2);
    for name in ["db", "cache"] {
        assert_eq!(
            credited(name).await,
            vec!["Deployment/web".to_string()],
            "{name}: status.lastRotation.workloads"
        );
    }
    let recorded = recorded_versions(&ns, "web").await;
    assert!(
        recorded.contains(&db_version) && recorded.contains(&cache_version),
        "the one rollout is to both new versions: {recorded}"
    );
    assert!(!op.log().contains("canary-credit"), "no value in the log");
    op.stop();
}
