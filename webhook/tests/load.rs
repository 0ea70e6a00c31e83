//! The real `dso-webhook` binary on a loopback port, under abuse: slowloris clients that send
//! their headers one byte a second, and 32 concurrent 3 MiB reviews. Meanwhile a normal review
//! must be answered within 100 ms (the worst of several, each on a new TLS connection, as a
//! replica of the apiserver would open one), the slow clients must be cut off by the header
//! read timeout, and the process's peak resident memory (VmHWM of the child process) must stay
//! under the chart's 128 Mi memory limit.

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The chart's `webhook.resources.limits.memory`.
const CHART_MEMORY_LIMIT: u64 = 128 << 20;
const LATENCY_BUDGET: Duration = Duration::from_millis(100);
const BIG_BODIES: usize = 32;
const BIG_BODY_BYTES: usize = 3 << 20;
const SLOW_CLIENTS: usize = 8;

const OBJECTS: &str = r#"
apiVersion: dso.dev/v1alpha1
kind: DsoSecret
metadata: {name: db, namespace: shop}
spec:
  files: [{path: password, secretId: prod/db, jsonKey: password}]
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: default
  namespace: shop
  annotations: {eks.amazonaws.com/role-arn: "arn:aws:iam::123456789012:role/shop"}
"#;

/// The webhook process, killed when dropped.
struct Webhook {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    cert: CertificateDer<'static>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Webhook {
    fn start() -> Webhook {
        let dir = tempfile::tempdir().expect("tempdir");
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
        std::fs::write(dir.path().join("tls.crt"), ck.cert.pem()).expect("cert");
        std::fs::write(dir.path().join("tls.key"), ck.signing_key.serialize_pem()).expect("key");
        std::fs::write(dir.path().join("objects.yaml"), OBJECTS).expect("objects");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new(env!("CARGO_BIN_EXE_dso-webhook"))
            .arg(format!("--listen={addr}"))
            .arg(format!(
                "--tls-cert={}",
                dir.path().join("tls.crt").display()
            ))
            .arg(format!(
                "--tls-key={}",
                dir.path().join("tls.key").display()
            ))
            .arg(format!(
                "--static-objects={}",
                dir.path().join("objects.yaml").display()
            ))
            .arg("--init-image=dso-init:test")
            .arg("--header-read-timeout=2s")
            .env_clear()
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .expect("start dso-webhook");
        Webhook {
            child,
            addr,
            _dir: dir,
            cert: ck.cert.der().clone(),
        }
    }

    /// A line of /proc/<pid>/status, in bytes (`VmRSS`, `VmHWM`).
    fn memory(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a memory line");
        kib << 10
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).expect("root");
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }

    async fn tls(&self) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        self.connector()
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
    }

    /// POSTs `body` to /mutate on a new connection: the status and the JSON answer.
    async fn review(&self, body: Bytes) -> std::io::Result<(u16, Value)> {
        let tls = self.tls().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let req = hyper::Request::post("https://localhost/mutate")
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .body(Full::new(body))
            .expect("request");
        let resp = sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

fn review(padding: usize) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "6a1d3e2c-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "web-", "namespace": "shop", "annotations": {
                    "dso.dev/inject": "true", "dso.dev/secrets": "db", "padding": "x".repeat(padding)}},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]}},
            "dryRun": false
        }
    })
}

/// A review of exactly `size` bytes.
fn review_of_size(size: usize) -> Bytes {
    let base = review(0).to_string().len();
    let body = review(size - base).to_string();
    assert_eq!(body.len(), size);
    Bytes::from(body)
}

fn is_injection(status: u16, answer: &Value) -> bool {
    let patch = answer["response"]["patch"].as_str().unwrap_or_default();
    status == 200
        && answer["response"]["allowed"] == true
        && base64::engine::general_purpose::STANDARD
            .decode(patch)
            .is_ok_and(|p| String::from_utf8_lossy(&p).contains("dso-init"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_and_32_large_reviews_neither_delay_a_normal_review_nor_exhaust_memory() {
    dso_webhook::tls::install_crypto_provider();
    let webhook = Arc::new(Webhook::start());
    let started = Instant::now();
    while webhook.tls().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "dso-webhook never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let normal = Bytes::from(review(0).to_string());
    let (status, answer) = webhook.review(normal.clone()).await.expect("a review");
    assert!(is_injection(status, &answer), "{status} {answer}");
    let idle_rss = webhook.memory("VmRSS");

    // The load runs on a runtime of its own, so that its TLS work does not delay the
    // measuring client.
    let load_runtime = Load(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("load runtime"),
    ));
    let load = load_runtime.0.as_ref().expect("runtime");
    let sending = Arc::new(AtomicUsize::new(0));
    let slow = (0..SLOW_CLIENTS)
        .map(|_| {
            let (webhook, sending) = (webhook.clone(), sending.clone());
            load.spawn(async move {
                let mut tls = webhook.tls().await.expect("slow client connects");
                sending.fetch_add(1, Ordering::SeqCst);
                let started = Instant::now();
                for b in b"POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n" {
                    if tls.write_all(&[*b]).await.is_err() || tls.flush().await.is_err() {
                        return started.elapsed();
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                // Everything sent without being cut off: report the time it took.
                let mut rest = Vec::new();
                let _ = tls.read_to_end(&mut rest).await;
                started.elapsed()
            })
        })
        .collect::<Vec<_>>();
    let big = review_of_size(BIG_BODY_BYTES);
    let large = (0..BIG_BODIES)
        .map(|_| {
            let (webhook, sending, big) = (webhook.clone(), sending.clone(), big.clone());
            load.spawn(async move {
                sending.fetch_add(1, Ordering::SeqCst);
                webhook.review(big).await
            })
        })
        .collect::<Vec<_>>();
    while sending.load(Ordering::SeqCst) < SLOW_CLIENTS + BIG_BODIES {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let the large bodies get under way.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut latencies = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let (status, answer) = webhook.review(normal.clone()).await.expect("a review");
        latencies.push(t.elapsed());
        assert!(is_injection(status, &answer), "{status} {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut answered = [0usize; 2];
    for task in large {
        let (status, answer) = task
            .await
            .expect("join")
            .expect("a large review is answered");
        match status {
            200 => {
                assert!(is_injection(status, &answer), "{answer}");
                answered[0] += 1;
            }
            503 => answered[1] += 1,
            other => panic!("unexpected status {other}: {answer}"),
        }
    }
    let mut cut_off = Vec::new();
    for task in slow {
        cut_off.push(task.await.expect("join"));
    }
    let peak = webhook.memory("VmHWM");
    let max = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "normal review latencies under load: max {max:?}, all {latencies:?}; large reviews: {} injected, {} timed out (503); slow clients cut off after {cut_off:?}; RSS idle {} KiB, peak (VmHWM) {} KiB",
        answered[0],
        answered[1],
        idle_rss >> 10,
        peak >> 10
    );
    assert!(
        max < LATENCY_BUDGET,
        "a normal review took {max:?} under load (all: {latencies:?})"
    );
    assert!(
        peak < CHART_MEMORY_LIMIT,
        "peak RSS {} MiB is over the chart's limit",
        peak >> 20
    );
    for t in &cut_off {
        assert!(
            *t < Duration::from_secs(8),
            "a slow client was served for {t:?}, past the 2s header read timeout"
        );
    }
    assert!(answered[0] > 0, "no large review was served at all");
}

/// The load generators' runtime, shut down without blocking (the test runs in a runtime).
struct Load(Option<tokio::runtime::Runtime>);

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

async fn closed_within(
    tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), tls.read(&mut buf))
            .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// A client that completes the TLS handshake and then sends nothing, or keeps a connection idle
/// after a request, is cut off by the header read timeout (2s here) and frees its connection.
#[tokio::test]
async fn a_silent_or_idle_connection_is_closed_after_the_header_read_timeout() {
    dso_webhook::tls::install_crypto_provider();
    let webhook = Webhook::start();
    let started = Instant::now();
    while webhook.tls().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "dso-webhook never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut silent = webhook.tls().await.expect("TLS");
    let closed = closed_within(&mut silent, Duration::from_secs(6)).await;
    assert!(
        closed.is_some_and(|t| t >= Duration::from_millis(1500)),
        "a connection that sent nothing after the handshake: closed after {closed:?}"
    );
    let mut idle = webhook.tls().await.expect("TLS");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("send");
    let closed = closed_within(&mut idle, Duration::from_secs(6)).await;
    assert!(
        closed.is_some_and(|t| t >= Duration::from_millis(1500)),
        "an idle keep-alive connection: closed after {closed:?}"
    );
}
