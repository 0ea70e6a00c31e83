//! Benchmark of `dso-operator` against moto and a real cluster (not a test: it prints figures).
//!
//! Creates N secrets in moto and N DsoSecrets (one per secret) in a fresh namespace, plus W
//! Deployments (0 replicas) consuming the first W DsoSecrets, then starts the operator binary
//! on that namespace and prints:
//! - reconcile throughput: time until all N DsoSecrets are Ready, reconciles per second;
//! - AWS calls of the initial pass and of one steady-state refresh interval, by operation;
//! - time from PutSecretValue to the rollout patch (the template's versions hash changing),
//!   for W secrets rotated at the same instant;
//! - the operator's peak RSS (VmHWM).
//!
//! ```text
//! DSO_MOTO_ENDPOINT=http://127.0.0.1:5140 KUBECONFIG=/tmp/dso-cluster/kubeconfig \
//!   cargo run --release -p dso-operator --example bench -- \
//!   --operator target/x86_64-unknown-linux-gnu/release/dso-operator --count 1000 --lookup describe
//! ```

use anyhow::{Context, Result, bail};
use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use clap::Parser;
use dso_api::{DsoSecret, DsoSecretSpec, FileSpec, RefreshSpec};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Debug)]
struct Args {
    /// The operator binary.
    #[arg(long, env = "DSO_OPERATOR_BIN")]
    operator: PathBuf,
    /// Secrets and DsoSecrets to create.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Deployments consuming the first DsoSecrets (each its own), rotated together.
    #[arg(long, default_value_t = 10)]
    workloads: usize,
    /// `describe` or `sweep`.
    #[arg(long, default_value = "describe")]
    lookup: String,
    /// Refresh interval of every DsoSecret.
    #[arg(long, default_value = "30s")]
    interval: String,
    /// The operator's reconcile concurrency.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Port of the operator's metrics.
    #[arg(long, default_value_t = 18520)]
    port: u16,
    /// moto endpoint.
    #[arg(long, env = "DSO_MOTO_ENDPOINT")]
    moto: String,
}

fn moto(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::from_conf(
        aws_sdk_secretsmanager::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
            .build(),
    )
}

async fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    if !text.starts_with("HTTP/1.1 200") {
        bail!("{path}: {}", text.lines().next().unwrap_or_default());
    }
    Ok(text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default())
}

async fn metrics(port: u16) -> HashMap<String, f64> {
    http_get(port, "/metrics")
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn calls(m: &HashMap<String, f64>, op: &str) -> f64 {
    m.get(&format!("dso_aws_calls_total{{operation=\"{op}\"}}"))
        .copied()
        .unwrap_or(0.0)
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn hash_of(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get("dso.dev/versions-hash")
        .cloned()
}

fn recorded(d: &Deployment) -> bool {
    d.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("dso.dev/recorded-versions"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sm = moto(&args.moto);
    let kube = kube::Client::try_default()
        .await
        .context("KUBECONFIG: the local cluster (tests/cluster/up.sh)")?;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis()
        % 100_000_000;
    let ns = format!("dso-bench-{run}");
    let n = args.count;
    println!(
        "dso-operator benchmark: {n} DsoSecrets over {n} secrets, lookup={}, interval={}, {} workloads, namespace {ns}",
        args.lookup, args.interval, args.workloads
    );

    // 1. Secrets in moto.
    let t = Instant::now();
    let names: Vec<String> = (0..n).map(|i| format!("bench/{run}/s{i}")).collect();
    futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let sm = sm.clone();
            async move {
                sm.create_secret()
                    .name(&name)
                    .secret_string("bench-value")
                    .send()
                    .await
                    .map(drop)
                    .with_context(|| format!("CreateSecret {name}"))
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    println!(
        "setup: {n} secrets created in moto in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // 2. Namespace, DsoSecrets, Deployments.
    Api::<Namespace>::all(kube.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let dsos: Api<DsoSecret> = Api::namespaced(kube.clone(), &ns);
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (dsos, name, interval) = (dsos.clone(), names[i].clone(), args.interval.clone());
            async move {
                let spec = DsoSecretSpec {
                    aws: None,
                    files: vec![FileSpec {
                        path: Some("value".into()),
                        secret_id: name,
                        ..FileSpec::default()
                    }],
                    file_mode: None,
                    refresh: Some(RefreshSpec {
                        interval: Some(interval),
                        ..Default::default()
                    }),
                };
                dsos.create(
                    &PostParams::default(),
                    &DsoSecret::new(&format!("s{i}"), spec),
                )
                .await
                .map(drop)
                .context("create DsoSecret")
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), &ns);
    for i in 0..args.workloads.min(n) {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": format!("w{i}")},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": format!("w{i}")}},
                "template": {"metadata": {"labels": {"app": format!("w{i}")},
                    "annotations": {"dso.dev/inject": "true", "dso.dev/secrets": format!("s{i}")}},
                    "spec": {"containers": [{"name": "app", "image": "busybox"}]}}}
        }))?;
        deployments.create(&PostParams::default(), &d).await?;
    }
    println!(
        "setup: {n} DsoSecrets and {} Deployments created in {:.1}s",
        args.workloads,
        t.elapsed().as_secs_f64()
    );

    // 3. The operator.
    let log = std::env::temp_dir().join(format!("{ns}-operator.log"));
    let mut child = Command::new(&args.operator)
        .args([
            "--namespace",
            &ns,
            "--lease-namespace",
            &ns,
            "--http-addr",
            &format!("127.0.0.1:{}", args.port),
            "--aws-lookup",
            &args.lookup,
            "--reconcile-concurrency",
            &args.concurrency.to_string(),
        ])
        .env("AWS_ENDPOINT_URL", &args.moto)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("start the operator")?;
    let pid = child.id();
    let started = Instant::now();

    // 4. Initial pass: every DsoSecret Ready.
    let all_ready = loop {
        let list = dsos.list(&ListParams::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|d| {
                d.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        if ready == n {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(900) {
            bail!(
                "only {ready}/{n} Ready after 15 min; log: {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let m = metrics(args.port).await;
    let reconciles = m
        .get("dso_reconcile_duration_seconds_count")
        .copied()
        .unwrap_or(0.0);
    let reconcile_sum = m
        .get("dso_reconcile_duration_seconds_sum")
        .copied()
        .unwrap_or(0.0);
    println!(
        "\ninitial pass (operator start → all {n} Ready): {:.2}s, {:.0} DsoSecrets/s; {reconciles} reconciles, mean {:.1} ms each",
        all_ready.as_secs_f64(),
        n as f64 / all_ready.as_secs_f64(),
        1000.0 * reconcile_sum / reconciles.max(1.0)
    );
    println!(
        "  AWS calls in the initial pass: DescribeSecret {}, ListSecrets {}",
        calls(&m, "DescribeSecret"),
        calls(&m, "ListSecrets"),
    );

    // 5. Steady state: calls during one refresh interval.
    let interval = dso_api::duration::parse(&args.interval).map_err(|e| anyhow::anyhow!("{e}"))?;
    let before = metrics(args.port).await;
    tokio::time::sleep(interval).await;
    let after = metrics(args.port).await;
    println!(
        "one refresh interval ({}) in steady state: DescribeSecret {}, ListSecrets {}, reconciles {}",
        args.interval,
        calls(&after, "DescribeSecret") - calls(&before, "DescribeSecret"),
        calls(&after, "ListSecrets") - calls(&before, "ListSecrets"),
        after
            .get("dso_reconcile_duration_seconds_count")
            .copied()
            .unwrap_or(0.0)
            - before
                .get("dso_reconcile_duration_seconds_count")
                .copied()
                .unwrap_or(0.0)
    );

    // 6. Rotation → rollout patch latency.
    let w = args.workloads.min(n);
    if w > 0 {
        let t = Instant::now();
        loop {
            let list = deployments.list(&ListParams::default()).await?;
            if list.items.iter().filter(|d| recorded(d)).count() == w {
                break;
            }
            if t.elapsed() > Duration::from_secs(120) {
                bail!("workloads never recorded");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut stream = watcher(deployments.clone(), watcher::Config::default())
            .applied_objects()
            .boxed();
        // Drain the initial list so only later changes count.
        let mut initial: HashMap<String, Option<String>> = HashMap::new();
        while initial.len() < w {
            if let Some(d) = stream.try_next().await? {
                initial.insert(d.metadata.name.clone().unwrap_or_default(), hash_of(&d));
            }
        }
        let rotated = Instant::now();
        futures::future::try_join_all((0..w).map(|i| {
            let sm = sm.clone();
            let name = names[i].clone();
            async move {
                sm.put_secret_value()
                    .secret_id(name)
                    .secret_string("rotated")
                    .send()
                    .await
            }
        }))
        .await?;
        let mut latencies = Vec::new();
        let deadline = interval + Duration::from_secs(60);
        while latencies.len() < w {
            let next = tokio::time::timeout(
                deadline.saturating_sub(rotated.elapsed()),
                stream.try_next(),
            )
            .await;
            let Ok(Ok(Some(d))) = next else {
                bail!("only {}/{w} rollouts seen", latencies.len())
            };
            let name = d.metadata.name.clone().unwrap_or_default();
            if initial.get(&name).is_some_and(|h| *h != hash_of(&d)) {
                initial.remove(&name);
                latencies.push(rotated.elapsed().as_secs_f64());
            }
        }
        latencies.sort_by(f64::total_cmp);
        println!(
            "PutSecretValue → rollout patch ({w} secrets rotated at once, interval {}): min {:.2}s, p50 {:.2}s, p90 {:.2}s, max {:.2}s",
            args.interval,
            latencies[0],
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.9),
            latencies[w - 1]
        );
    }

    // 7. Memory, stop, clean up.
    println!(
        "operator memory: peak RSS (VmHWM) {} MiB, RSS now {} MiB",
        rss_kb(pid, "VmHWM:") / 1024,
        rss_kb(pid, "VmRSS:") / 1024
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    let _ = Api::<Namespace>::all(kube.clone())
        .delete(&ns, &Default::default())
        .await;
    futures::stream::iter(names)
        .map(|name| {
            let sm = sm.clone();
            async move {
                let _ = sm
                    .delete_secret()
                    .secret_id(name)
                    .force_delete_without_recovery(true)
                    .send()
                    .await;
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    println!(
        "cleaned up (namespace {ns}, {n} secrets); operator log: {}",
        log.display()
    );
    Ok(())
}
