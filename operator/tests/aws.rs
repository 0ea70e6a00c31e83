//! AWS integration tests: the metadata client and the shared cache against moto over HTTP,
//! plus a tiny local endpoint that answers like a denying / throttling Secrets Manager.
//!
//! Needs `DSO_MOTO_ENDPOINT` (e.g. `http://127.0.0.1:5140`, from `tests/moto.sh start 5140`).

use aws_sdk_secretsmanager::config::{Credentials, Region};
use dso_operator::aws::Aws;
use dso_operator::cache::{LookupMode, VersionCache};
use dso_operator::domain::{ProblemKind, SecretKey, SecretMeta};
use dso_operator::metrics::Metrics;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(5))
                .build(),
        )
        .load()
        .await
}

/// An `Aws` on `endpoint`, and a function reading its call counters.
async fn aws(endpoint: &str) -> (Arc<Aws>, impl Fn(&str) -> u64 + use<>) {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let aws = Arc::new(Aws::new(config(endpoint).await, metrics));
    let calls = move |op: &str| {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let prefix = format!("dso_aws_calls_total{{operation=\"{op}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse().expect("number"))
    };
    (aws, calls)
}

async fn admin() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&config(&moto()).await)
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("dso-test/{prefix}-{n}")
}

async fn create(sm: &aws_sdk_secretsmanager::Client, name: &str) -> String {
    sm.create_secret()
        .name(name)
        .secret_string("canary-value-never-logged")
        .send()
        .await
        .expect("create secret")
        .version_id()
        .expect("version")
        .to_string()
}

fn key(id: &str) -> SecretKey {
    SecretKey {
        region: "us-east-1".into(),
        secret_id: id.into(),
    }
}

fn current(meta: &SecretMeta) -> String {
    meta.versions
        .iter()
        .find(|(_, s)| s.iter().any(|s| s == "AWSCURRENT"))
        .map(|(id, _)| id.clone())
        .expect("an AWSCURRENT version")
}

#[tokio::test]
async fn describe_reports_the_version_holding_awscurrent_and_follows_a_rotation() {
    let sm = admin().await;
    let name = unique("describe");
    let v1 = create(&sm, &name).await;
    let (aws, _) = aws(&moto()).await;
    let meta = aws.describe("us-east-1", &name).await.expect("describe");
    assert_eq!(current(&meta), v1);
    assert!(meta.last_changed.is_some());

    let v2 = sm
        .put_secret_value()
        .secret_id(&name)
        .secret_string("rotated-canary")
        .send()
        .await
        .expect("put")
        .version_id()
        .expect("version")
        .to_string();
    let meta = aws.describe("us-east-1", &name).await.expect("describe");
    assert_eq!(current(&meta), v2);
    assert!(meta.versions[&v1].iter().any(|s| s == "AWSPREVIOUS"));
    assert!(
        !format!("{meta:?}").contains("canary"),
        "metadata never holds a value"
    );
}

#[tokio::test]
async fn a_missing_secret_is_not_found_with_a_hint() {
    let (aws, _) = aws(&moto()).await;
    let p = aws
        .describe("us-east-1", &unique("missing"))
        .await
        .expect_err("missing");
    assert_eq!(p.kind, ProblemKind::NotFound);
    assert!(
        p.message.contains("ResourceNotFoundException"),
        "{}",
        p.message
    );
    assert!(p.message.contains("check the secretId"), "{}", p.message);
}

#[tokio::test]
async fn two_lookups_of_one_secret_within_the_interval_cost_one_call() {
    let sm = admin().await;
    let name = unique("shared");
    create(&sm, &name).await;
    let (aws, calls) = aws(&moto()).await;
    let cache = VersionCache::new(aws, LookupMode::Describe);
    let not_before = Instant::now().checked_sub(Duration::from_secs(60));
    let k = key(&name);
    let (a, b) = tokio::join!(cache.get(&k, not_before), cache.get(&k, not_before));
    assert_eq!(a.expect("a"), b.expect("b"));
    cache.get(&key(&name), not_before).await.expect("c");
    assert_eq!(calls("DescribeSecret"), 1);
    // A forced check (dso.dev/refresh) bypasses the cache.
    cache
        .get(&key(&name), Some(Instant::now()))
        .await
        .expect("forced");
    assert_eq!(calls("DescribeSecret"), 2);
}

#[tokio::test]
async fn entries_no_dsosecret_names_and_idle_region_clients_are_forgotten() {
    let sm = admin().await;
    let (kept, dropped) = (unique("kept"), unique("dropped"));
    create(&sm, &kept).await;
    create(&sm, &dropped).await;
    let (aws, calls) = aws(&moto()).await;
    let cache = VersionCache::new(aws.clone(), LookupMode::Describe);
    let any = None;
    cache.get(&key(&kept), any).await.expect("kept");
    cache.get(&key(&dropped), any).await.expect("dropped");
    assert_eq!(calls("DescribeSecret"), 2);
    assert_eq!(cache.len(), 2);

    // Only `kept` is still named by a DsoSecret; its region's client was just used.
    let live = std::collections::HashSet::from([key(&kept)]);
    assert_eq!(
        cache.forget_unused(&live, Duration::from_secs(3600)),
        (1, 0)
    );
    assert_eq!(cache.len(), 1);
    assert_eq!(aws.regions(), ["us-east-1"]);
    cache.get(&key(&kept), any).await.expect("kept, cached");
    assert_eq!(calls("DescribeSecret"), 2, "the kept entry is still cached");
    cache
        .get(&key(&dropped), any)
        .await
        .expect("dropped, fetched again");
    assert_eq!(
        calls("DescribeSecret"),
        3,
        "the forgotten entry costs a call again"
    );

    // A client unused for the idle time is dropped; the next lookup builds one again.
    assert_eq!(
        aws.forget_idle(
            Instant::now() + Duration::from_secs(61),
            Duration::from_secs(60)
        ),
        1
    );
    assert!(aws.regions().is_empty());
    cache
        .get(&key(&kept), Some(Instant::now()))
        .await
        .expect("a new client works");
    assert_eq!(aws.regions(), ["us-east-1"]);
}

#[tokio::test]
async fn a_sweep_lists_by_pages_of_100_and_describes_only_what_the_list_misses() {
    let sm = admin().await;
    let names: Vec<String> = (0..120).map(|i| unique(&format!("sweep{i}"))).collect();
    for n in &names {
        create(&sm, n).await;
    }
    let total = {
        let mut total = 0usize;
        let mut token = None;
        loop {
            let page = sm
                .list_secrets()
                .max_results(100)
                .set_next_token(token)
                .send()
                .await
                .expect("list");
            total += page.secret_list().len();
            match page.next_token() {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        total
    };
    let (aws, calls) = aws(&moto()).await;
    let cache = VersionCache::new(aws, LookupMode::Sweep);
    let not_before = Instant::now().checked_sub(Duration::from_secs(60));
    for n in &names {
        cache.get(&key(n), not_before).await.expect("listed");
    }
    let lists = calls("ListSecrets");
    assert!(lists >= 2, "120+ secrets take at least two pages");
    assert!(
        lists as usize <= total.div_ceil(100) + 1,
        "{lists} ListSecrets calls for {total} secrets: one pass, not one per DsoSecret"
    );
    assert_eq!(calls("DescribeSecret"), 0, "every secret was in the list");

    let missing = cache
        .get(&key(&unique("absent")), not_before)
        .await
        .expect_err("absent");
    assert_eq!(missing.kind, ProblemKind::NotFound);
    assert_eq!(calls("DescribeSecret"), 1, "only the miss is described");
    assert_eq!(calls("ListSecrets"), lists, "a fresh sweep is not repeated");
}

/// A local endpoint answering every request with `status` and an AWS JSON error `code`.
async fn failing_endpoint(status: u16, code: &'static str) -> String {
    failing_endpoint_saying(status, code, "denied by the test endpoint").await
}

/// [`failing_endpoint`] with the error's `message`.
async fn failing_endpoint_saying(status: u16, code: &'static str, message: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                // Read headers and the (small) body.
                loop {
                    let Ok(n) = sock.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let body = format!(r#"{{"__type":"{code}","message":"{message}"}}"#);
                let resp = format!(
                    "HTTP/1.1 {status} Error\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-ErrorType: {code}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn access_denied_is_permanent_and_cached_for_the_interval() {
    let endpoint = failing_endpoint(400, "AccessDeniedException").await;
    let (aws, calls) = aws(&endpoint).await;
    let cache = VersionCache::new(aws, LookupMode::Describe);
    let not_before = Instant::now().checked_sub(Duration::from_secs(60));
    let p = cache
        .get(&key("prod/db"), not_before)
        .await
        .expect_err("denied");
    assert_eq!(p.kind, ProblemKind::AccessDenied);
    assert!(
        p.message.contains("secretsmanager:DescribeSecret"),
        "{}",
        p.message
    );
    cache
        .get(&key("prod/db"), not_before)
        .await
        .expect_err("denied");
    assert_eq!(calls("DescribeSecret"), 1, "a permanent answer is cached");
}

/// The role ARN AWS names in an AccessDenied message: the operator's own, never to be shown to
/// the DsoSecret's namespace.
const CANARY_ROLE: &str = "arn:aws:sts::123456789012:assumed-role/dso-operator-canary/i-0canary";

#[tokio::test]
async fn access_denied_text_never_names_the_operators_role() {
    let endpoint = failing_endpoint_saying(
        400,
        "AccessDeniedException",
        "User: arn:aws:sts::123456789012:assumed-role/dso-operator-canary/i-0canary is not authorized to perform: secretsmanager:DescribeSecret on resource: prod/db because no identity-based policy allows the secretsmanager:DescribeSecret action",
    )
    .await;
    let (aws, _) = aws(&endpoint).await;
    let p = aws
        .describe("us-east-1", "prod/db")
        .await
        .expect_err("denied");
    assert_eq!(p.kind, ProblemKind::AccessDenied);
    // This message is the status condition's message and the event's note, as is.
    for canary in [CANARY_ROLE, "dso-operator-canary", "123456789012"] {
        assert!(!p.message.contains(canary), "{canary} in {}", p.message);
    }
    assert!(
        p.message
            .contains("is not authorized to perform: secretsmanager:DescribeSecret"),
        "still says what was refused: {}",
        p.message
    );
}

#[tokio::test]
async fn an_expired_token_is_denied_with_a_hint_about_credentials_not_policies() {
    let endpoint = failing_endpoint(400, "ExpiredTokenException").await;
    let (aws, _) = aws(&endpoint).await;
    let p = aws
        .describe("us-east-1", "prod/db")
        .await
        .expect_err("expired");
    assert_eq!(p.kind, ProblemKind::AccessDenied);
    assert!(p.message.contains("credentials"), "{}", p.message);
    assert!(!p.message.contains("DescribeSecret and"), "{}", p.message);
}

#[tokio::test]
async fn throttling_and_server_errors_are_transient_and_never_cached() {
    for (status, code) in [
        (400, "ThrottlingException"),
        (500, "InternalServiceError"),
        (429, "SomeNewThrottlingCode"),
    ] {
        let endpoint = failing_endpoint(status, code).await;
        let (aws, calls) = aws(&endpoint).await;
        let cache = VersionCache::new(aws, LookupMode::Describe);
        let p = cache.get(&key("prod/db"), None).await.expect_err("fails");
        assert_eq!(p.kind, ProblemKind::Transient, "{code}: {}", p.message);
        cache.get(&key("prod/db"), None).await.expect_err("fails");
        assert_eq!(calls("DescribeSecret"), 2, "{code}: retried, not cached");
    }
}

#[tokio::test]
async fn an_unreachable_endpoint_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let (aws, _) = aws(&format!("http://{addr}")).await;
    let p = aws
        .describe("us-east-1", "prod/db")
        .await
        .expect_err("refused");
    assert_eq!(p.kind, ProblemKind::Transient, "{}", p.message);
}
