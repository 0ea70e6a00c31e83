//! Benchmark of `dso-webhook` (a program, not a test).
//!
//! Starts the release binary with `--static-objects` (no cluster needed), then sends
//! AdmissionReviews over TLS on loopback from `--concurrency` keep-alive connections and
//! prints throughput, p50 / p99 / max latency, the size of the answer and the number of JSON
//! patch operations in it, and the server's peak RSS (VmHWM).
//!
//! With `--apiserver` (and `KUBECONFIG`), it also measures what the apiserver sees: the
//! latency of dry-run pod creations (which run mutating admission but store nothing) with no
//! webhook, through the webhook answering "not opted in" (a do-nothing webhook call), and
//! through a real injection.
//!
//! ```text
//! cargo build --release -p dso-webhook --bin dso-webhook --example bench
//! target/release/examples/bench --bin target/release/dso-webhook --concurrency 16 --requests 20000 [--apiserver]
//! ```

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

struct Opts {
    bin: String,
    concurrency: usize,
    requests: usize,
    port: u16,
    apiserver: bool,
    api_samples: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        bin: "target/release/dso-webhook".into(),
        concurrency: 16,
        requests: 20_000,
        port: 18450,
        apiserver: false,
        api_samples: 200,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = || args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--bin" => o.bin = val(),
            "--concurrency" => o.concurrency = val().parse().expect("--concurrency N"),
            "--requests" => o.requests = val().parse().expect("--requests N"),
            "--port" => o.port = val().parse().expect("--port N"),
            "--api-samples" => o.api_samples = val().parse().expect("--api-samples N"),
            "--apiserver" => {
                o.apiserver = true;
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    o
}

const NS: &str = "dso-bench";

fn objects() -> String {
    format!(
        r#"apiVersion: dso.dev/v1alpha1
kind: DsoSecret
metadata: {{name: db, namespace: {NS}}}
spec:
  files:
    - {{path: password, secretId: prod/db, jsonKey: password}}
    - {{path: user, secretId: prod/db, jsonKey: username}}
    - {{path: db.json, secretId: prod/db}}
---
apiVersion: dso.dev/v1alpha1
kind: DsoSecret
metadata: {{name: api, namespace: {NS}}}
spec:
  files: [{{secretId: prod/api, expand: true}}]
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: default
  namespace: {NS}
  annotations: {{eks.amazonaws.com/role-arn: "arn:aws:iam::123456789012:role/bench"}}
"#
    )
}

fn pod(annotated: bool) -> Value {
    let annotations = if annotated {
        json!({"dso.dev/inject": "true", "dso.dev/secrets": "db,api"})
    } else {
        json!({"team": "bench"})
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "bench-", "namespace": NS, "annotations": annotations},
        "spec": {
            "serviceAccountName": "default",
            "containers": [
                {"name": "app", "image": "busybox", "command": ["sleep", "3600"],
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "sidecar", "image": "busybox", "command": ["sleep", "3600"]}
            ],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }
    })
}

fn review(annotated: bool) -> Bytes {
    Bytes::from(
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "00000000-0000-4000-8000-000000000000",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": NS, "operation": "CREATE",
                "userInfo": {"username": "bench"},
                "object": pod(annotated), "dryRun": false
            }
        })
        .to_string(),
    )
}

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn try_connect(port: u16, tls: &tokio_rustls::TlsConnector) -> std::io::Result<Sender> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
    let stream = tls.connect(name.to_owned(), tcp).await?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn connect(port: u16, tls: &tokio_rustls::TlsConnector) -> Sender {
    try_connect(port, tls)
        .await
        .expect("connect to the webhook")
}

async fn send(sender: &mut Sender, method: &str, path: &str, body: Bytes) -> (u16, Bytes) {
    sender.ready().await.expect("connection ready");
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, body)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Bytes of an AdmissionReview answer, and the JSON patch operations in it (the patch written
/// as base64, or as an array of byte values).
fn answer_size(answer: &[u8]) -> (usize, usize) {
    use base64::Engine;
    let v: Value = serde_json::from_slice(answer).expect("an AdmissionReview");
    let patch = match &v["response"]["patch"] {
        Value::String(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64"),
        Value::Array(bytes) => bytes
            .iter()
            .map(|b| b.as_u64().expect("a byte") as u8)
            .collect(),
        _ => b"[]".to_vec(),
    };
    let ops: Vec<Value> = serde_json::from_slice(&patch).expect("a JSON patch");
    (answer.len(), ops.len())
}

async fn load(o: &Opts, tls: &tokio_rustls::TlsConnector, body: Bytes, label: &str) {
    {
        let mut sender = connect(o.port, tls).await;
        let (_, answer) = send(&mut sender, "POST", "/mutate", body.clone()).await;
        let (bytes, ops) = answer_size(&answer);
        println!(
            "{label:<28} request {} bytes, answer {bytes} bytes, {ops} patch operations",
            body.len()
        );
    }
    let per_worker = o.requests / o.concurrency;
    let mut workers = Vec::new();
    let started = Instant::now();
    for _ in 0..o.concurrency {
        let (tls, body, port) = (tls.clone(), body.clone(), o.port);
        workers.push(tokio::spawn(async move {
            let mut sender = connect(port, &tls).await;
            let mut lat = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                let t = Instant::now();
                let (status, resp) = send(&mut sender, "POST", "/mutate", body.clone()).await;
                lat.push(t.elapsed());
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    let wall = started.elapsed();
    all.sort();
    println!(
        "{label:<28} {:>7} reqs  {:>9.0} req/s   p50 {}   p99 {}   max {}",
        all.len(),
        all.len() as f64 / wall.as_secs_f64(),
        ms(pct(&all, 0.50)),
        ms(pct(&all, 0.99)),
        ms(*all.last().expect("samples")),
    );
}

#[tokio::main]
async fn main() {
    let o = opts();
    dso_webhook::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    std::fs::write(dir.path().join("tls.crt"), ck.cert.pem()).expect("cert");
    std::fs::write(dir.path().join("tls.key"), ck.signing_key.serialize_pem()).expect("key");
    std::fs::write(dir.path().join("objects.yaml"), objects()).expect("objects");
    let p = |f: &str| dir.path().join(f).to_string_lossy().to_string();
    let child = Command::new(&o.bin)
        .args(["--listen", &format!("127.0.0.1:{}", o.port)])
        .args(["--tls-cert", &p("tls.crt"), "--tls-key", &p("tls.key")])
        .args([
            "--init-image",
            "dso.local/dso-init:dev",
            "--static-objects",
            &p("objects.yaml"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (build it: cargo build --release -p dso-webhook)",
                o.bin
            )
        });
    let server = Server { child };
    let pid = server.child.id();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).expect("root");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ));
    let ready = Instant::now();
    loop {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(1), try_connect(o.port, &tls)).await
            && send(&mut s, "GET", "/readyz", Bytes::new()).await.0 == 200
        {
            break;
        }
        assert!(
            ready.elapsed() < Duration::from_secs(10),
            "the webhook did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "dso-webhook pid {pid}: ready {} after spawn, RSS at rest {} KiB",
        ms(ready.elapsed()),
        status_kib(pid, "VmRSS:")
    );
    println!(
        "concurrency {} over TLS keep-alive connections on loopback",
        o.concurrency
    );
    // Warm-up, then the measured runs.
    load(
        &Opts {
            requests: 1_000.max(o.concurrency),
            ..opts()
        },
        &tls,
        review(true),
        "warm-up (injected)",
    )
    .await;
    load(&o, &tls, review(true), "injected pod (2 DsoSecrets)").await;
    load(&o, &tls, review(false), "not opted in (skipped)").await;
    println!(
        "server peak RSS (VmHWM) {} KiB, RSS now {} KiB",
        status_kib(pid, "VmHWM:"),
        status_kib(pid, "VmRSS:")
    );

    if o.apiserver {
        apiserver(&o, &ck.cert.pem()).await;
    }
    drop(server);
}

/// Dry-run pod creations timed at the client: without any webhook, through the webhook
/// answering "not opted in", and through a real injection.
async fn apiserver(o: &Opts, ca_pem: &str) {
    let client = kube::Client::try_default().await.expect("KUBECONFIG");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": NS, "labels": {"dso-bench": "on"}}}))
            .expect("ns");
    let _ = namespaces.create(&PostParams::default(), &ns).await;
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), NS);
    while sas.get_opt("default").await.ok().flatten().is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let name = "dso-bench";
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let measure = |annotated: bool| {
        let (pods, dry) = (pods.clone(), dry.clone());
        async move {
            let p: Pod = serde_json::from_value(pod(annotated)).expect("pod");
            for _ in 0..20 {
                pods.create(&dry, &p).await.expect("dry-run create");
            }
            let mut lat = Vec::new();
            for _ in 0..o.api_samples {
                let t = Instant::now();
                let created = pods.create(&dry, &p).await.expect("dry-run create");
                lat.push(t.elapsed());
                let injected = created.spec.and_then(|s| s.init_containers).is_some();
                assert_eq!(injected, annotated, "unexpected mutation state");
            }
            lat.sort();
            lat
        }
    };
    let show = |label: &str, lat: &[Duration], base: Option<Duration>| {
        let extra = base
            .map(|b| {
                format!(
                    "   (+{} at p50 over no webhook)",
                    ms(pct(lat, 0.5).saturating_sub(b))
                )
            })
            .unwrap_or_default();
        println!(
            "{label:<44} p50 {}   p99 {}{extra}",
            ms(pct(lat, 0.5)),
            ms(pct(lat, 0.99))
        );
    };
    println!(
        "\napiserver-measured dry-run pod create, {} samples each, sequential:",
        o.api_samples
    );
    let _ = configs.delete(name, &DeleteParams::default()).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // let the apiserver drop any old config
    let base = measure(false).await;
    show("no webhook", &base, None);

    let mut cfg: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "bench.dso.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "timeoutSeconds": 5, "failurePolicy": "Fail",
            "clientConfig": {"url": format!("https://127.0.0.1:{}/mutate", o.port)},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"dso-bench": "on"}}
        }]
    }))
    .expect("config");
    if let Some(w) = cfg.webhooks.as_mut().and_then(|w| w.first_mut()) {
        w.client_config.ca_bundle = Some(k8s_openapi::ByteString(ca_pem.as_bytes().to_vec()));
    }
    configs
        .create(&PostParams::default(), &cfg)
        .await
        .expect("create config");
    // Wait until an annotated dry run comes back injected.
    let probe: Pod = serde_json::from_value(pod(true)).expect("pod");
    loop {
        if let Ok(p) = pods.create(&dry, &probe).await
            && p.spec.and_then(|s| s.init_containers).is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let noop = measure(false).await;
    show(
        "webhook called, answers 'not opted in'",
        &noop,
        Some(pct(&base, 0.5)),
    );
    let inject = measure(true).await;
    show(
        "webhook called, injects (2 DsoSecrets, IRSA)",
        &inject,
        Some(pct(&base, 0.5)),
    );

    // The real registration adds matchConditions: pods not opted in are filtered by CEL in
    // the apiserver and never reach the webhook.
    let mut current = configs.get(name).await.expect("get config");
    if let Some(w) = current.webhooks.as_mut().and_then(|w| w.first_mut()) {
        w.match_conditions = Some(vec![serde_json::from_value(json!({
            "name": "opted-in",
            "expression": "has(object.metadata.annotations) && 'dso.dev/inject' in object.metadata.annotations && object.metadata.annotations['dso.dev/inject'].lowerAscii() == 'true'"
        }))
        .expect("match condition")]);
    }
    configs
        .replace(name, &PostParams::default(), &current)
        .await
        .expect("update config");
    tokio::time::sleep(Duration::from_secs(2)).await; // the apiserver reloads configurations within ~1s
    let filtered = measure(false).await;
    show(
        "matchConditions filter out 'not opted in'",
        &filtered,
        Some(pct(&base, 0.5)),
    );
    let _ = configs.delete(name, &DeleteParams::default()).await;
    let _ = namespaces.delete(NS, &DeleteParams::default()).await;
}
