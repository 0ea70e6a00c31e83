//! DSO against the Vault agent injector, through the real API server (a program, not a test).
//!
//! Times dry-run pod creations (`POST /api/v1/namespaces/NS/pods?dryRun=All`: all of
//! admission, nothing stored) from the client, sequentially, for these cases interleaved request
//! by request, so that a change of machine load hits every case alike:
//!
//! | case         | namespace          | webhooks that match                        | pod                    |
//! |--------------|--------------------|--------------------------------------------|------------------------|
//! | `none`       | `versus-none`      | none                                       | plain                  |
//! | `noop`       | `versus-noop`      | DSO, registered *without* matchConditions  | plain (DSO skips it)   |
//! | `dso`        | `versus-dso`       | DSO as the chart registers it              | `dso.dev/inject: true` |
//! | `dso-skip`   | `versus-dso`       | DSO as the chart registers it              | plain (never called)   |
//! | `dso-never`  | `versus-dso-never` | DSO, chart's registration but `reinvocationPolicy: Never` | `dso.dev/inject: true` |
//! | `minimal`    | `versus-minimal`   | a trivial webhook adding one annotation    | plain                  |
//! | `replay`     | `versus-replay`    | a trivial webhook answering DSO's patch for this pod, base64 | `dso.dev/inject: true` |
//! | `replay-array` | `versus-replay-array` | the same, the patch as kube-core writes it (an array of numbers) | `dso.dev/inject: true` |
//! | `vault`      | `versus-vault`     | vault-k8s as vault-helm registers it       | `vault.hashicorp.com/agent-inject: true` |
//!
//! The no-op webhook is DSO's own release binary answering a pod that is not opted in (it is
//! called because that registration has no matchConditions). `dso-never`, `minimal` and
//! `replay*` are diagnostics: what reinvocation costs, what any mutation costs, and what DSO's
//! patch costs without DSO, in either encoding (the trivial webhook is this program started
//! again with `--trivial-webhook DIR`, a process of its own on 127.0.0.1:18462).
//! The two real webhooks run as processes of this program, on 127.0.0.1 in the cluster's
//! network namespace, registered by URL with their own self-signed TLS pair as caBundle:
//!
//! - `dso-webhook` with the chart's defaults (watching DsoSecrets and ServiceAccounts through
//!   `KUBECONFIG`; `RUST_LOG=info` unless `DSO_BENCH_DSO_RUST_LOG` says otherwise, JSON logs),
//!   and the chart's registration:
//!   `reinvocationPolicy: IfNeeded`, `failurePolicy: Fail`, `timeoutSeconds: 5`, the
//!   `dso-inject-requested` matchCondition;
//! - `vault-k8s agent-inject` (hashicorp/vault-k8s, binary from `DSO_BENCH_VAULT_K8S_BIN`),
//!   given in-cluster settings: a ServiceAccount token, `ca.crt` and `namespace` bind-mounted at
//!   `/var/run/secrets/kubernetes.io/serviceaccount` in a private mount namespace (`unshare -m`;
//!   nothing changes on the host), `KUBERNETES_SERVICE_HOST/PORT` = the API server,
//!   `AGENT_INJECT_USE_LEADER_ELECTOR=false`, its TLS pair from files; registered as vault-helm
//!   does (no reinvocation, `failurePolicy: Ignore`, `matchPolicy: Exact`). Without the binary,
//!   the `vault` case is left out and the program says so.
//!
//! It prints, per round and case, p50/p90/p99 and the p50 above `none`; admission reviews per
//! pod (from `dso_webhook_admissions_total` and vault-k8s's
//! `vault_agent_injector_request_processing_duration_ms_count`, before/after each case run
//! alone) with each webhook's mean handler time; the size of each injecting webhook's response
//! to the same pod; each webhook's RSS (VmRSS, VmHWM); and the load average.
//!
//! Run it on the node of the local cluster (tests/cluster/up.sh), as root:
//!
//! ```text
//! export CARGO_TARGET_DIR=/var/cache/dso/cargo-target
//! cargo build --release -p dso-webhook --bin dso-webhook --example versus
//! export KUBECONFIG=/tmp/dso-cluster/kubeconfig DSO_BENCH_VAULT_K8S_BIN=/var/cache/dso/peer-vault-k8s-v1.7.6
//! nsenter --net=/run/netns/$(cat /tmp/dso-cluster/netns) \
//!   $CARGO_TARGET_DIR/release/examples/versus --bin $CARGO_TARGET_DIR/release/dso-webhook \
//!   [--rounds 3] [--pods 300] [--count-pods 50]
//! ```
//!
//! It creates namespaces `versus-*`, the DsoSecret CRD (if absent), ClusterRole/Binding
//! `versus-vault-injector` and MutatingWebhookConfigurations `versus-*`, and deletes all but the
//! CRD at the end.

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::config::Kubeconfig;
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const DSO_PORT: u16 = 18460;
const VAULT_PORT: u16 = 18461;
const TRIVIAL_PORT: u16 = 18462;
const MANAGER: &str = "dso-versus";
const VAULT_SA_NS: &str = "versus-vault";
const VAULT_SA: &str = "vault-agent-injector";

struct Opts {
    bin: String,
    vault_bin: Option<String>,
    rounds: usize,
    pods: usize,
    count_pods: usize,
    warmup: usize,
}

fn opts() -> Opts {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let mut o = Opts {
        bin: format!("{target}/release/dso-webhook"),
        vault_bin: std::env::var("DSO_BENCH_VAULT_K8S_BIN")
            .ok()
            .filter(|s| !s.is_empty()),
        rounds: 3,
        pods: 300,
        count_pods: 50,
        warmup: 30,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let val = pair.get(1).cloned().unwrap_or_default();
        let num = |flag: &str| -> usize {
            val.parse()
                .unwrap_or_else(|_| panic!("{flag} takes a number"))
        };
        match pair[0].as_str() {
            "--bin" => o.bin = val,
            "--rounds" => o.rounds = num("--rounds"),
            "--pods" => o.pods = num("--pods"),
            "--count-pods" => o.count_pods = num("--count-pods"),
            "--warmup" => o.warmup = num("--warmup"),
            other => {
                panic!("unknown argument {other} (see the header of webhook/examples/versus.rs)")
            }
        }
    }
    o
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    None,
    Noop,
    Dso,
    DsoSkip,
    DsoNever,
    Minimal,
    Replay,
    ReplayArray,
    Vault,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::None => "none",
            Case::Noop => "noop",
            Case::Dso => "dso",
            Case::DsoSkip => "dso-skip",
            Case::DsoNever => "dso-never",
            Case::Minimal => "minimal",
            Case::Replay => "replay",
            Case::ReplayArray => "replay-array",
            Case::Vault => "vault",
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Case::None => "no webhook",
            Case::Noop => "no-op webhook (DSO called, pod not opted in)",
            Case::Dso => "DSO injecting",
            Case::DsoSkip => "DSO, pod not opted in (matchConditions)",
            Case::DsoNever => "DSO injecting, reinvocationPolicy Never",
            Case::Minimal => "trivial webhook, 1-operation patch",
            Case::Replay => "trivial webhook replaying DSO's patch (base64)",
            Case::ReplayArray => "trivial webhook replaying DSO's patch (array of numbers)",
            Case::Vault => "vault-k8s v1.7.6 injecting",
        }
    }
    fn namespace(self) -> &'static str {
        match self {
            Case::None => "versus-none",
            Case::Noop => "versus-noop",
            Case::Dso | Case::DsoSkip => "versus-dso",
            Case::DsoNever => "versus-dso-never",
            Case::Minimal => "versus-minimal",
            Case::Replay => "versus-replay",
            Case::ReplayArray => "versus-replay-array",
            Case::Vault => VAULT_SA_NS,
        }
    }
    fn injects(self) -> bool {
        matches!(
            self,
            Case::Dso | Case::DsoNever | Case::Replay | Case::ReplayArray | Case::Vault
        )
    }
    fn annotations(self) -> Value {
        match self {
            Case::Dso | Case::DsoNever | Case::Replay | Case::ReplayArray => {
                json!({"dso.dev/inject": "true", "dso.dev/secrets": "db"})
            }
            Case::Vault => json!({
                "vault.hashicorp.com/agent-inject": "true",
                "vault.hashicorp.com/role": "shop",
                "vault.hashicorp.com/agent-inject-secret-db": "secret/data/shop/db"
            }),
            _ => json!({"team": "bench"}),
        }
    }
    fn pod(self) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "versus-", "namespace": self.namespace(),
                         "annotations": self.annotations()},
            "spec": {
                "containers": [
                    {"name": "app", "image": "dso.local/busybox:1", "command": ["sleep", "3600"],
                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                    {"name": "sidecar", "image": "dso.local/busybox:1", "command": ["sleep", "3600"]}
                ],
                "volumes": [{"name": "data", "emptyDir": {}}]
            }
        })
    }
}

// ---- child processes ----

/// The webhooks' pids: the release profile aborts on panic (no unwinding, no `Drop`), so a
/// panic hook stops them.
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn kill_children_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if let Ok(pids) = CHILDREN.lock() {
            for pid in pids.iter() {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        }
        eprintln!(
            "(the MutatingWebhookConfigurations versus-* may remain: they only match namespaces versus-*, and the next run replaces them)"
        );
    }));
}

fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> std::io::Result<Proc> {
    let child = cmd.spawn()?;
    if let Ok(mut pids) = CHILDREN.lock() {
        pids.push(child.id());
    }
    Ok(Proc { name, child, log })
}

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); its log {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
    }
}

impl Drop for Proc {
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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---- HTTPS to the webhooks (metrics, direct reviews) ----

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(port: u16, tls: &tokio_rustls::TlsConnector) -> std::io::Result<Sender> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
    let stream = tls.connect(name.to_owned(), tcp).await?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn https(
    port: u16,
    tls: &tokio_rustls::TlsConnector,
    method: &str,
    path: &str,
    body: Bytes,
) -> std::io::Result<(u16, Bytes)> {
    let mut sender = connect(port, tls).await?;
    sender.ready().await.map_err(std::io::Error::other)?;
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(std::io::Error::other)?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(std::io::Error::other)?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok((status, body))
}

async fn wait_ready(p: &mut Proc, port: u16, path: &str, tls: &tokio_rustls::TlsConnector) {
    let started = Instant::now();
    loop {
        p.check_alive();
        if let Ok(Ok((200 | 204, _))) = tokio::time::timeout(
            Duration::from_secs(1),
            https(port, tls, "GET", path, Bytes::new()),
        )
        .await
        {
            println!(
                "{} (pid {}) ready after {:.1} s",
                p.name,
                p.pid(),
                started.elapsed().as_secs_f64()
            );
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} not ready on 127.0.0.1:{port}{path} after 60 s; its log:\n{}",
            p.name,
            p.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sum of the samples of `name` (exact metric name) whose labels contain `labels`.
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) || !rest.contains(labels) {
                return None;
            }
            rest.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

#[derive(Clone, Copy, Default, Debug)]
struct Counts {
    injected: f64,
    unchanged: f64,
    skipped: f64,
    other: f64,
    dso_seconds: f64,
    dso_observed: f64,
    vault_reviews: f64,
    vault_ms: f64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, b: Counts) -> Counts {
        Counts {
            injected: self.injected - b.injected,
            unchanged: self.unchanged - b.unchanged,
            skipped: self.skipped - b.skipped,
            other: self.other - b.other,
            dso_seconds: self.dso_seconds - b.dso_seconds,
            dso_observed: self.dso_observed - b.dso_observed,
            vault_reviews: self.vault_reviews - b.vault_reviews,
            vault_ms: self.vault_ms - b.vault_ms,
        }
    }
}

async fn counts(tls: &tokio_rustls::TlsConnector, vault: bool) -> Counts {
    let get = |port| https(port, tls, "GET", "/metrics", Bytes::new());
    let (_, dso) = get(DSO_PORT).await.expect("DSO /metrics");
    let dso = String::from_utf8_lossy(&dso);
    let total = metric(&dso, "dso_webhook_admissions_total", "");
    let mut c = Counts {
        injected: metric(&dso, "dso_webhook_admissions_total", "outcome=\"injected\""),
        unchanged: metric(
            &dso,
            "dso_webhook_admissions_total",
            "outcome=\"unchanged\"",
        ),
        skipped: metric(&dso, "dso_webhook_admissions_total", "outcome=\"skipped\""),
        dso_seconds: metric(&dso, "dso_webhook_admission_duration_seconds_sum", ""),
        dso_observed: metric(&dso, "dso_webhook_admission_duration_seconds_count", ""),
        ..Counts::default()
    };
    c.other = total - c.injected - c.unchanged - c.skipped;
    if vault {
        let (_, v) = get(VAULT_PORT).await.expect("vault-k8s /metrics");
        let v = String::from_utf8_lossy(&v);
        c.vault_reviews = metric(
            &v,
            "vault_agent_injector_request_processing_duration_ms_count",
            "",
        );
        c.vault_ms = metric(
            &v,
            "vault_agent_injector_request_processing_duration_ms_sum",
            "",
        );
    }
    c
}

// ---- the cluster ----

async fn apply<K>(api: &Api<K>, name: &str, obj: Value)
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}

async fn delete<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + DeserializeOwned + Debug,
{
    let _ = api.delete(name, &DeleteParams::default()).await;
}

fn ca_bundle(pem: &str) -> Value {
    json!(base64::engine::general_purpose::STANDARD.encode(pem))
}

fn rules() -> Value {
    json!([{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
            "operations": ["CREATE"], "scope": "Namespaced"}])
}

/// The chart's registration (charts/dso/templates/webhook-admission.yaml), by URL; without
/// matchConditions for the no-op case.
fn dso_registration(
    name: &str,
    case: &str,
    ca: &str,
    match_conditions: bool,
    reinvocation: &str,
) -> Value {
    let mut hook = json!({
        "name": "inject.dso.dev",
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        "timeoutSeconds": 5,
        "reinvocationPolicy": reinvocation,
        "matchPolicy": "Equivalent",
        "clientConfig": {"url": format!("https://127.0.0.1:{DSO_PORT}/mutate"), "caBundle": ca_bundle(ca)},
        "rules": rules(),
        "namespaceSelector": {
            "matchLabels": {"dso-versus": case},
            "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                  "values": ["dso-system", "kube-system"]}]
        }
    });
    if match_conditions {
        hook["matchConditions"] = json!([{
            "name": "dso-inject-requested",
            "expression": "has(object.metadata.annotations) && 'dso.dev/inject' in object.metadata.annotations && object.metadata.annotations['dso.dev/inject'].trim().lowerAscii() == 'true'"
        }]);
    }
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
           "metadata": {"name": name}, "webhooks": [hook]})
}

/// vault-helm's registration (injector-mutating-webhook.yaml with its default values), by URL.
fn vault_registration(ca: &str) -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
    "metadata": {"name": "versus-vault"},
    "webhooks": [{
        "name": "vault.hashicorp.com",
        "admissionReviewVersions": ["v1", "v1beta1"],
        "sideEffects": "None",
        "failurePolicy": "Ignore",
        "matchPolicy": "Exact",
        "timeoutSeconds": 30,
        "clientConfig": {"url": format!("https://127.0.0.1:{VAULT_PORT}/mutate"), "caBundle": ca_bundle(ca)},
        "rules": rules(),
        "namespaceSelector": {"matchLabels": {"dso-versus": "vault"}},
        "objectSelector": {"matchExpressions": [{"key": "app.kubernetes.io/name",
                           "operator": "NotIn", "values": ["vault-agent-injector"]}]}
    }]})
}

const WEBHOOK_CONFIGS: [&str; 7] = [
    "versus-dso",
    "versus-dso-never",
    "versus-noop",
    "versus-minimal",
    "versus-replay",
    "versus-replay-array",
    "versus-vault",
];
const NAMESPACES: [(&str, &str); 8] = [
    ("versus-none", "none"),
    ("versus-noop", "noop"),
    ("versus-dso", "dso"),
    ("versus-dso-never", "dso-never"),
    ("versus-minimal", "minimal"),
    ("versus-replay", "replay"),
    ("versus-replay-array", "replay-array"),
    (VAULT_SA_NS, "vault"),
];
const DSO_NAMESPACES: [&str; 2] = ["versus-dso", "versus-dso-never"];

async fn setup_cluster(client: &kube::Client) {
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    for name in WEBHOOK_CONFIGS {
        delete(&configs, name).await;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // A previous run's namespaces may still be terminating.
    let started = Instant::now();
    for (ns, _) in NAMESPACES {
        while let Ok(Some(old)) = namespaces.get_opt(ns).await {
            if old.metadata.deletion_timestamp.is_none() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "namespace {ns} still terminating after 180 s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for (ns, case) in NAMESPACES {
        apply(
            &namespaces,
            ns,
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": ns, "labels": {"dso-versus": case}}}),
        )
        .await;
    }
    // The CRD, then a DsoSecret and the pods' ServiceAccount (with an IRSA role) for DSO.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: Value = serde_yaml_ng::from_str(include_str!("../../crds/dso.dev_dsosecrets.yaml"))
        .expect("crds/dso.dev_dsosecrets.yaml");
    apply(&crds, "dsosecrets.dso.dev", crd).await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("dso.dev", "v1alpha1", "DsoSecret"),
        "dsosecrets",
    );
    for ns in DSO_NAMESPACES {
        let secrets: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        let secret = json!({"apiVersion": "dso.dev/v1alpha1", "kind": "DsoSecret",
            "metadata": {"name": "db", "namespace": ns},
            "spec": {"aws": {"region": "us-east-1"},
                     "files": [{"path": "password", "secretId": "demo/shop/db", "jsonKey": "password"},
                               {"path": "db.json", "secretId": "demo/shop/db"}]}});
        let started = Instant::now();
        while let Err(e) = secrets
            .patch(
                "db",
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(secret.clone()),
            )
            .await
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "DsoSecret: {e}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for (ns, _) in NAMESPACES {
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        let mut sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                            "metadata": {"name": "default", "namespace": ns}});
        if DSO_NAMESPACES.contains(&ns) {
            sa["metadata"]["annotations"] =
                json!({"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/shop"});
        }
        apply(&sas, "default", sa).await;
    }
}

async fn teardown_cluster(client: &kube::Client) {
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    for name in WEBHOOK_CONFIGS {
        delete(&configs, name).await;
    }
    delete(
        &Api::<ClusterRoleBinding>::all(client.clone()),
        "versus-vault-injector",
    )
    .await;
    delete(
        &Api::<ClusterRole>::all(client.clone()),
        "versus-vault-injector",
    )
    .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for (ns, _) in NAMESPACES {
        delete(&namespaces, ns).await;
    }
}

/// What vault-k8s reads in a pod: a token (of a ServiceAccount allowed what vault-helm's
/// ClusterRole allows), the cluster CA and the namespace, under `dir/secrets/...`.
async fn vault_service_account(client: &kube::Client, run_dir: &Path, ca_crt: &[u8]) {
    apply(
        &Api::<ClusterRole>::all(client.clone()),
        "versus-vault-injector",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": "versus-vault-injector"},
               "rules": [{"apiGroups": ["admissionregistration.k8s.io"],
                          "resources": ["mutatingwebhookconfigurations"],
                          "verbs": ["get", "list", "watch", "patch"]}]}),
    )
    .await;
    apply(
        &Api::<ClusterRoleBinding>::all(client.clone()),
        "versus-vault-injector",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "versus-vault-injector"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": "versus-vault-injector"},
               "subjects": [{"kind": "ServiceAccount", "name": VAULT_SA, "namespace": VAULT_SA_NS}]}),
    )
    .await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), VAULT_SA_NS);
    apply(
        &sas,
        VAULT_SA,
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": VAULT_SA, "namespace": VAULT_SA_NS}}),
    )
    .await;
    let request: TokenRequest = serde_json::from_value(
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"audiences": [], "expirationSeconds": 3600}}),
    )
    .expect("token request");
    let token = sas
        .create_token_request(VAULT_SA, &PostParams::default(), &request)
        .await
        .expect("token for vault-k8s")
        .status
        .and_then(|s| s.token)
        .expect("a token in the TokenRequest status");
    let sa_dir = run_dir.join("secrets/kubernetes.io/serviceaccount");
    std::fs::create_dir_all(&sa_dir).expect("serviceaccount dir");
    std::fs::write(sa_dir.join("token"), token).expect("token");
    std::fs::write(sa_dir.join("ca.crt"), ca_crt).expect("ca.crt");
    std::fs::write(sa_dir.join("namespace"), VAULT_SA_NS).expect("namespace");
}

// ---- a trivial webhook, to split the cost of a mutation ----

/// Registration of the trivial webhook at `path`: like the no-op one, without reinvocation.
fn trivial_registration(name: &str, case: &str, path: &str, ca: &str) -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
    "metadata": {"name": name},
    "webhooks": [{
        "name": "trivial.versus.dso.dev",
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        "timeoutSeconds": 5,
        "matchPolicy": "Equivalent",
        "clientConfig": {"url": format!("https://127.0.0.1:{TRIVIAL_PORT}{path}"), "caBundle": ca_bundle(ca)},
        "rules": rules(),
        "namespaceSelector": {"matchLabels": {"dso-versus": case}}
    }]})
}

/// Writes what the trivial webhook serves into `dir`: its TLS pair (DER) and one JSON patch per
/// path (`dir/patches/NAME.json` is served at `/NAME`). Returns its caBundle.
fn prepare_trivial_webhook(dir: &Path, patches: &[(&str, &[u8])]) -> String {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    std::fs::create_dir_all(dir.join("patches")).expect("dir");
    std::fs::write(dir.join("cert.der"), ck.cert.der()).expect("cert");
    std::fs::write(dir.join("key.der"), ck.signing_key.serialize_der()).expect("key");
    for (name, patch) in patches {
        std::fs::write(dir.join(format!("patches/{name}.json")), patch).expect("patch");
    }
    ck.cert.pem()
}

/// The trivial webhook, a process of its own like the real ones (this program run with
/// `--trivial-webhook DIR`): answers every review on `/NAME` with the fixed JSON patch
/// `DIR/patches/NAME.json`, base64-encoded as the API defines `patch` (or, on a path ending in
/// `-array`, as an array of numbers); other paths get a plain allow. HTTP/2 or 1.1 over TLS.
/// The one thing that differs between pods, the name of the ServiceAccount token volume
/// (`kube-api-access-xxxxx`, which DSO mounts in dso-init), is replaced by the reviewed pod's.
async fn trivial_webhook(dir: &Path) {
    let cert = rustls::pki_types::CertificateDer::from(
        std::fs::read(dir.join("cert.der")).expect("cert.der"),
    );
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
        std::fs::read(dir.join("key.der")).expect("key.der").into(),
    );
    let mut patches = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("patches")).expect("patches") {
        let path = entry.expect("entry").path();
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .expect("a name")
            .to_string();
        patches.insert(format!("/{name}"), std::fs::read(&path).expect("patch"));
    }
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server TLS");
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", TRIVIAL_PORT))
        .await
        .expect("bind the trivial webhook");
    let token_volume = |text: &str| -> Option<String> {
        let start = text.find("kube-api-access-")?;
        let len = text[start..].find('"')?;
        Some(text[start..start + len].to_string())
    };
    let patches: Arc<BTreeMap<String, (String, Option<String>)>> = Arc::new(
        patches
            .into_iter()
            .map(|(k, v)| {
                let text = String::from_utf8(v).expect("a JSON patch");
                let volume = token_volume(&text);
                (k, (text, volume))
            })
            .collect(),
    );
    {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, patches) = (acceptor.clone(), patches.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let patches = patches.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await?.to_bytes();
                            let review: Value = serde_json::from_slice(&body).unwrap_or_default();
                            let mut response =
                                json!({"uid": review["request"]["uid"], "allowed": true});
                            if let Some((text, volume)) = patches.get(&path) {
                                let pod_volume = review["request"]["object"]["spec"]["volumes"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .filter_map(|v| v["name"].as_str())
                                    .find(|n| n.starts_with("kube-api-access-"));
                                let patch = match (volume, pod_volume) {
                                    (Some(old), Some(new)) => text.replace(old.as_str(), new),
                                    _ => text.clone(),
                                };
                                response["patchType"] = json!("JSONPatch");
                                response["patch"] = if path.ends_with("-array") {
                                    json!(patch.as_bytes())
                                } else {
                                    json!(base64::engine::general_purpose::STANDARD.encode(patch))
                                };
                            }
                            let out = json!({"apiVersion": "admission.k8s.io/v1",
                                             "kind": "AdmissionReview", "response": response});
                            let mut resp =
                                hyper::Response::new(Full::new(Bytes::from(out.to_string())));
                            resp.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, hyper::Error>(resp)
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    }
}

/// A TLS client trusting only `pem`.
fn tls_trivial(pem: &str) -> tokio_rustls::TlsConnector {
    let ck = rustls::pki_types::CertificateDer::from(
        base64::engine::general_purpose::STANDARD
            .decode(
                pem.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .expect("PEM"),
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck).expect("root");
    tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

// ---- measurement ----

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn create(client: &kube::Client, case: Case, body: &[u8]) -> (Duration, String) {
    let req = http::Request::post(format!(
        "/api/v1/namespaces/{}/pods?dryRun=All",
        case.namespace()
    ))
    .header("content-type", "application/json")
    .body(body.to_vec())
    .expect("request");
    let t = Instant::now();
    let text = client
        .request_text(req)
        .await
        .unwrap_or_else(|e| panic!("dry-run create, case {}: {e}", case.label()));
    (t.elapsed(), text)
}

/// Checks a created pod: injected by the right webhook exactly when the case injects.
fn check(case: Case, text: &str) {
    let pod: Value = serde_json::from_str(text).expect("pod JSON");
    let inits: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    let want = match case {
        Case::Dso | Case::DsoNever | Case::Replay | Case::ReplayArray => Some("dso-init"),
        Case::Vault => Some("vault-agent-init"),
        _ => None,
    };
    assert_eq!(
        inits.first().copied(),
        want,
        "case {}: unexpected init containers {inits:?}",
        case.label()
    );
}

struct Direct {
    patch: Vec<u8>,
    bytes: usize,
    patch_bytes: usize,
    ops: usize,
    encoding: &'static str,
}

/// One AdmissionReview sent straight to a webhook, with the pod as the API server would send
/// it (from a dry-run create where no webhook matches): the size of the answer.
async fn direct(
    client: &kube::Client,
    tls: &tokio_rustls::TlsConnector,
    case: Case,
    port: u16,
) -> Direct {
    let mut pod = case.pod();
    pod["metadata"]["namespace"] = json!("versus-none");
    let (_, text) = create(client, Case::None, pod.to_string().as_bytes()).await;
    let mut object: Value = serde_json::from_str(&text).expect("pod");
    object["metadata"]["namespace"] = json!(case.namespace());
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-4000-8000-000000000000",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": case.namespace(), "operation": "CREATE",
            "userInfo": {"username": "kubernetes-admin"},
            "object": object, "dryRun": true,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions", "dryRun": ["All"]}
        }
    });
    let (status, body) = https(
        port,
        tls,
        "POST",
        "/mutate",
        Bytes::from(review.to_string()),
    )
    .await
    .expect("direct review");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let resp: Value = serde_json::from_slice(&body).expect("AdmissionReview");
    // JSON has no bytes: the API (Go) encodes `patch` as a base64 string, but Go also reads
    // an array of numbers into a []byte, which is what kube-core's `AdmissionResponse` writes.
    let (patch, encoding) = match &resp["response"]["patch"] {
        Value::String(b64) => (
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64 patch"),
            "a base64 string",
        ),
        Value::Array(numbers) => (
            numbers
                .iter()
                .map(|n| {
                    n.as_u64()
                        .and_then(|n| u8::try_from(n).ok())
                        .expect("a byte")
                })
                .collect(),
            "an array of numbers",
        ),
        _ => (Vec::new(), "absent"),
    };
    let ops = serde_json::from_slice::<Vec<Value>>(&patch)
        .map(|v| v.len())
        .unwrap_or(0);
    Direct {
        patch: patch.clone(),
        bytes: body.len(),
        patch_bytes: patch.len(),
        ops,
        encoding,
    }
}

/// A self-signed pair for 127.0.0.1 in `dir/name.{crt,key}`: the PEM (the caBundle) and the DER.
fn self_signed(dir: &Path, name: &str) -> (String, rustls::pki_types::CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    std::fs::write(dir.join(format!("{name}.crt")), ck.cert.pem()).expect("cert");
    std::fs::write(
        dir.join(format!("{name}.key")),
        ck.signing_key.serialize_pem(),
    )
    .expect("key");
    (ck.cert.pem(), ck.cert.der().clone())
}

#[tokio::main]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("--trivial-webhook") {
        let dir = std::env::args().nth(2).expect("--trivial-webhook DIR");
        dso_webhook::tls::install_crypto_provider();
        trivial_webhook(Path::new(&dir)).await;
        return;
    }
    let o = opts();
    dso_webhook::tls::install_crypto_provider();
    kill_children_on_panic();
    println!(
        "dso versus vault-k8s, {} round(s) x {} dry-run creates per case, interleaved; load average at start: {}",
        o.rounds,
        o.pods,
        loadavg()
    );
    let kubeconfig = Kubeconfig::read().expect("KUBECONFIG");
    let cluster = kubeconfig
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .expect("a cluster in KUBECONFIG");
    let server: http::Uri = cluster
        .server
        .clone()
        .expect("server")
        .parse()
        .expect("server URL");
    let ca_crt = cluster
        .certificate_authority_data
        .as_ref()
        .map(|d| {
            base64::engine::general_purpose::STANDARD
                .decode(d)
                .expect("certificate-authority-data")
        })
        .or_else(|| {
            cluster
                .certificate_authority
                .as_ref()
                .map(|p| std::fs::read(p).expect("certificate-authority"))
        })
        .expect("the cluster CA in KUBECONFIG");
    let client = kube::Client::try_default().await.expect("KUBECONFIG");

    let dir = tempfile::tempdir().expect("tempdir");
    let (dso_ca, dso_der) = self_signed(dir.path(), "dso");
    let (vault_ca, vault_der) = self_signed(dir.path(), "vault");
    let mut roots = rustls::RootCertStore::empty();
    for der in [dso_der, vault_der] {
        roots.add(der).expect("root");
    }
    let tls = tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ));
    let p = |f: &str| dir.path().join(f).to_string_lossy().to_string();

    setup_cluster(&client).await;

    let dso_log = dir.path().join("dso-webhook.log");
    let mut dso = spawn(
        "dso-webhook",
        Command::new(&o.bin)
            .args(["--listen", &format!("127.0.0.1:{DSO_PORT}")])
            .args(["--tls-cert", &p("dso.crt"), "--tls-key", &p("dso.key")])
            .args(["--init-image", "dso.local/dso-init:dev"])
            .args(["--log-format", "json"])
            .env(
                "RUST_LOG",
                std::env::var("DSO_BENCH_DSO_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&dso_log).expect("log")),
        dso_log.clone(),
    )
    .unwrap_or_else(|e| {
        panic!(
            "cannot start {}: {e} (cargo build --release -p dso-webhook, or --bin PATH)",
            o.bin
        )
    });
    wait_ready(&mut dso, DSO_PORT, "/readyz", &tls).await;

    let mut vault = match &o.vault_bin {
        None => {
            println!(
                "\n*** DSO_BENCH_VAULT_K8S_BIN is not set: the vault-k8s case is LEFT OUT ***\n"
            );
            None
        }
        Some(bin) if !Path::new(bin).is_file() => {
            println!(
                "\n*** DSO_BENCH_VAULT_K8S_BIN={bin} does not exist: the vault-k8s case is LEFT OUT ***\n"
            );
            None
        }
        Some(bin) => {
            let run_dir = dir.path().join("run");
            vault_service_account(&client, &run_dir, &ca_crt).await;
            let log = dir.path().join("vault-k8s.log");
            // A private mount namespace in which /run (= /var/run) is our directory; the host
            // sees no change. `unshare` execs, so the pid is vault-k8s's own.
            let mut v = spawn(
                "vault-k8s",
                Command::new("unshare")
                    .args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(r#"mount --bind "$1" /run && exec "$2" agent-inject"#)
                    .args(["sh", &run_dir.to_string_lossy(), bin])
                    .env(
                        "KUBERNETES_SERVICE_HOST",
                        server.host().expect("server host"),
                    )
                    .env(
                        "KUBERNETES_SERVICE_PORT",
                        server.port_u16().unwrap_or(443).to_string(),
                    )
                    .env("AGENT_INJECT_LISTEN", format!("127.0.0.1:{VAULT_PORT}"))
                    .env("AGENT_INJECT_TLS_CERT_FILE", p("vault.crt"))
                    .env("AGENT_INJECT_TLS_KEY_FILE", p("vault.key"))
                    .env("AGENT_INJECT_USE_LEADER_ELECTOR", "false")
                    .env("AGENT_INJECT_VAULT_ADDR", "https://vault.vault.svc:8200")
                    .env("AGENT_INJECT_VAULT_AUTH_PATH", "auth/kubernetes")
                    .env("AGENT_INJECT_VAULT_IMAGE", "hashicorp/vault:1.20.4")
                    .env("AGENT_INJECT_LOG_LEVEL", "info")
                    .env("AGENT_INJECT_LOG_FORMAT", "standard")
                    .env("AGENT_INJECT_TELEMETRY_PATH", "/metrics")
                    .stdout(std::fs::File::create(&log).expect("log"))
                    .stderr(
                        std::fs::File::options()
                            .append(true)
                            .open(&log)
                            .expect("log"),
                    ),
                log.clone(),
            )
            .expect("unshare (util-linux) to start vault-k8s");
            wait_ready(&mut v, VAULT_PORT, "/health/ready", &tls).await;
            Some(v)
        }
    };
    let with_vault = vault.is_some();

    // DSO's answer for the injected pod, replayed by the trivial webhook; and a one-annotation
    // patch: what any mutation costs, whatever its size.
    let dso_direct = direct(&client, &tls, Case::Dso, DSO_PORT).await;
    let trivial_dir = dir.path().join("trivial");
    let minimal = br#"[{"op":"add","path":"/metadata/annotations/versus~1mutated","value":"yes"}]"#;
    let trivial_ca = prepare_trivial_webhook(
        &trivial_dir,
        &[
            ("minimal", minimal),
            ("replay", &dso_direct.patch),
            ("replay-array", &dso_direct.patch),
        ],
    );
    let trivial_log = dir.path().join("trivial.log");
    let mut trivial = spawn(
        "trivial webhook",
        Command::new(std::env::current_exe().expect("this program"))
            .arg("--trivial-webhook")
            .arg(&trivial_dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&trivial_log).expect("log")),
        trivial_log,
    )
    .expect("start the trivial webhook");
    wait_ready(
        &mut trivial,
        TRIVIAL_PORT,
        "/ready",
        &tls_trivial(&trivial_ca),
    )
    .await;

    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    apply(
        &configs,
        "versus-minimal",
        trivial_registration("versus-minimal", "minimal", "/minimal", &trivial_ca),
    )
    .await;
    apply(
        &configs,
        "versus-replay",
        trivial_registration("versus-replay", "replay", "/replay", &trivial_ca),
    )
    .await;
    apply(
        &configs,
        "versus-replay-array",
        trivial_registration(
            "versus-replay-array",
            "replay-array",
            "/replay-array",
            &trivial_ca,
        ),
    )
    .await;
    apply(
        &configs,
        "versus-dso",
        dso_registration("versus-dso", "dso", &dso_ca, true, "IfNeeded"),
    )
    .await;
    apply(
        &configs,
        "versus-noop",
        dso_registration("versus-noop", "noop", &dso_ca, false, "IfNeeded"),
    )
    .await;
    apply(
        &configs,
        "versus-dso-never",
        dso_registration("versus-dso-never", "dso-never", &dso_ca, true, "Never"),
    )
    .await;
    if with_vault {
        apply(&configs, "versus-vault", vault_registration(&vault_ca)).await;
    }
    let mut cases = vec![
        Case::None,
        Case::Noop,
        Case::Dso,
        Case::DsoSkip,
        Case::DsoNever,
        Case::Minimal,
        Case::Replay,
        Case::ReplayArray,
    ];
    if with_vault {
        cases.push(Case::Vault);
    }
    let bodies: Vec<Vec<u8>> = cases
        .iter()
        .map(|c| c.pod().to_string().into_bytes())
        .collect();

    // The API server picks registrations up from a watch: wait until each case behaves.
    let started = Instant::now();
    'settle: loop {
        let mut all = true;
        for (case, body) in cases.iter().zip(&bodies) {
            let (_, text) = create(&client, *case, body).await;
            let pod: Value = serde_json::from_str(&text).expect("pod");
            let injected = pod["spec"]["initContainers"].is_array();
            all &= injected == case.injects();
        }
        if all {
            break 'settle;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the registrations did not take effect in 30 s (run this on the node: nsenter --net=...)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (case, body) in cases.iter().zip(&bodies) {
        for _ in 0..o.warmup {
            let (_, text) = create(&client, *case, body).await;
            check(*case, &text);
        }
    }

    // Reviews per pod: each case alone.
    println!(
        "\n## Admission reviews per pod ({} pods per case, each case alone)\n",
        o.count_pods
    );
    println!(
        "| case | DSO reviews per pod (injected / unchanged / skipped / other) | DSO mean handler | vault-k8s reviews per pod | vault-k8s mean handler (it records whole ms, truncated) |"
    );
    println!("|---|---|---|---|---|");
    for (case, body) in cases.iter().zip(&bodies) {
        let before = counts(&tls, with_vault).await;
        for _ in 0..o.count_pods {
            let (_, text) = create(&client, *case, body).await;
            check(*case, &text);
        }
        let d = counts(&tls, with_vault).await - before;
        let n = o.count_pods as f64;
        let dso_reviews = d.injected + d.unchanged + d.skipped + d.other;
        let dso_mean = if d.dso_observed > 0.0 {
            format!("{:.3} ms", d.dso_seconds / d.dso_observed * 1e3)
        } else {
            "–".into()
        };
        let vault_col = if with_vault {
            format!("{:.2}", d.vault_reviews / n)
        } else {
            "(not run)".into()
        };
        let vault_mean = if d.vault_reviews > 0.0 {
            format!("{:.3} ms", d.vault_ms / d.vault_reviews)
        } else {
            "–".into()
        };
        println!(
            "| {} | {:.2} ({:.2} / {:.2} / {:.2} / {:.2}) | {dso_mean} | {vault_col} | {vault_mean} |",
            case.label(),
            dso_reviews / n,
            d.injected / n,
            d.unchanged / n,
            d.skipped / n,
            d.other / n
        );
    }

    // The timed rounds, interleaved request by request (the starting case rotates).
    let mut all: BTreeMap<usize, Vec<Duration>> = BTreeMap::new();
    let mut sizes = vec![0; cases.len()];
    println!(
        "\n## Dry-run pod create through the API server, ms ({} per case per round, sequential)\n",
        o.pods
    );
    println!("| round | case | p50 | p90 | p99 | p50 − none | load avg after |");
    println!("|---|---|--:|--:|--:|--:|---|");
    for round in 1..=o.rounds {
        let mut lat: Vec<Vec<Duration>> = vec![Vec::with_capacity(o.pods); cases.len()];
        for i in 0..o.pods {
            for k in 0..cases.len() {
                let c = (i + k) % cases.len();
                let (d, text) = create(&client, cases[c], &bodies[c]).await;
                lat[c].push(d);
                sizes[c] = text.len();
            }
        }
        dso.check_alive();
        if let Some(v) = vault.as_mut() {
            v.check_alive();
        }
        let load = loadavg();
        let base = {
            let mut b = lat[0].clone();
            b.sort();
            pct(&b, 0.5)
        };
        for (c, l) in lat.iter_mut().enumerate() {
            l.sort();
            all.entry(c).or_default().extend(l.iter().copied());
            println!(
                "| {round} | {} | {:.2} | {:.2} | {:.2} | {:+.2} | {load} |",
                cases[c].describe(),
                ms(pct(l, 0.5)),
                ms(pct(l, 0.9)),
                ms(pct(l, 0.99)),
                ms(pct(l, 0.5)) - ms(base),
            );
        }
    }
    let base = {
        let mut b = all[&0].clone();
        b.sort();
        pct(&b, 0.5)
    };
    for (c, l) in all.iter_mut() {
        l.sort();
        println!(
            "| all | {} | {:.2} | {:.2} | {:.2} | {:+.2} | |",
            cases[*c].describe(),
            ms(pct(l, 0.5)),
            ms(pct(l, 0.9)),
            ms(pct(l, 0.99)),
            ms(pct(l, 0.5)) - ms(base),
        );
    }
    println!("\nThe API server's answer (the created pod) to each case, bytes:");
    for (case, size) in cases.iter().zip(&sizes) {
        println!("  {:<10} {size}", case.label());
    }

    println!("\n## What each injecting webhook answers for the same two-container pod\n");
    let mut direct_cases = vec![(Case::Dso, DSO_PORT)];
    if with_vault {
        direct_cases.push((Case::Vault, VAULT_PORT));
    }
    for (case, port) in direct_cases {
        let d = direct(&client, &tls, case, port).await;
        println!(
            "{}: AdmissionReview response {} bytes; JSON patch of {} bytes in {} operations, sent as {}",
            case.describe(),
            d.bytes,
            d.patch_bytes,
            d.ops,
            d.encoding
        );
    }

    println!("\n## Memory\n");
    let mut procs = vec![&dso];
    if let Some(v) = vault.as_ref() {
        procs.push(v);
    }
    for p in procs {
        println!(
            "{}: VmRSS {} KiB, VmHWM (peak) {} KiB",
            p.name,
            status_kib(p.pid(), "VmRSS:"),
            status_kib(p.pid(), "VmHWM:")
        );
    }
    println!("\nload average at end: {}", loadavg());

    teardown_cluster(&client).await;
    drop(trivial);
    drop(vault);
    drop(dso);
}
