//! Shared fixtures of the end-to-end suite: the cluster client and kubectl, namespaces that
//! delete themselves, moto, manifests, and the DSO processes a test starts on this host.
//!
//! The suite talks to whatever cluster `KUBECONFIG` names; `tests/run.sh` provides the local
//! one and these variables (a missing one fails the test with a hint, never skips it):
//!
//! | variable | meaning |
//! |---|---|
//! | `KUBECONFIG` | the cluster |
//! | `DSO_MOTO_ENDPOINT` | moto as this suite and the processes it starts reach it, e.g. `http://127.0.0.1:5055` |
//! | `DSO_POD_AWS_ENDPOINT` | moto as pods reach it, by name, e.g. `http://moto.aws.svc.cluster.local:5055` |
//! | `DSO_BIN_DIR` | directory holding the built `dso-webhook`, `dso-operator`, `dso-init` |
//! | `DSO_INIT_IMAGE` | the dso-init image, already on the node |
//! | `DSO_BUSYBOX_IMAGE` | a busybox image, already on the node |
//! | `DSO_POD_LOGS_DIR` | the kubelet's pod log directory (every instance of a container, restarts included) |
//! | `DSO_E2E_KEEP_FAILED` | optional: when set, a failing test's namespaces are kept for a look (and named) |
//!
//! Modules: [`manifests`] (pods, Deployments, DsoSecrets as JSON), [`process`] (log files and
//! plain HTTP of local processes), [`webhook`] (a `dso-webhook` process and its registration),
//! [`operator`] (a `dso-operator` process, and the status, events and ReplicaSets it leaves),
//! [`peer_csi`] (the Secrets Store CSI driver and its AWS provider, the cost benchmark's peer).
//! The AWS endpoint in front of moto that injects faults is `dso_test_support::FaultProxy`,
//! shared with dso-init's integration tests.

pub mod manifests;
pub mod operator;
pub mod peer_csi;
pub mod process;
pub mod webhook;

pub use manifests::{
    annotated, app_container, apply, deployment, dso_secret, pod, quick_deployment, refreshing,
};
pub use operator::Operator;
pub use process::{LogFile, http_get};
pub use webhook::{Webhook, create_once_cached};

use anyhow::{Context, Result, bail};
use dso_api::DsoSecret;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Reads a required variable, failing with a hint when it is missing.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite through tests/run.sh (or tests/e2e/kind.sh), which starts the cluster and sets it")
    })
}

/// A client for the cluster named by `KUBECONFIG`.
pub async fn client() -> kube::Client {
    env("KUBECONFIG");
    // Two rustls providers are linked (ring for kube, aws-lc for the AWS SDK): choose one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    kube::Client::try_default()
        .await
        .expect("cannot build a Kubernetes client from KUBECONFIG")
}

/// Runs kubectl (the one first on PATH: tests/run.sh puts the cluster's own version there).
pub fn kubectl(args: &[&str]) -> std::process::Output {
    std::process::Command::new("kubectl")
        .args(args)
        .output()
        .expect("kubectl not found on PATH: tests/run.sh puts the cluster's kubectl there")
}

/// Runs kubectl for a clean-up in a `Drop`, ignoring every failure: a panic there, while a
/// failing test unwinds, would abort the whole test binary.
pub fn kubectl_best_effort(args: &[&str]) {
    let _ = std::process::Command::new("kubectl").args(args).output();
}

/// Runs kubectl with `stdin` as input.
pub fn kubectl_stdin(args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new("kubectl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl not found on PATH: tests/run.sh puts the cluster's kubectl there");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write to kubectl");
    child.wait_with_output().expect("kubectl output")
}

/// Polls `check` until it returns `Ok(Some(v))`, failing after `timeout` with the last error.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last = String::from("condition not met");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A namespace made for one test; it reads as its name (`&ns`, `{ns}`).
///
/// Dropping it deletes the namespace without waiting, also when the test panics, so a failing
/// test leaves nothing in the cluster. With `DSO_E2E_KEEP_FAILED` set, a failing test's
/// namespaces are kept and named instead.
#[must_use = "the namespace is deleted when this is dropped"]
pub struct TestNamespace {
    name: String,
}

impl std::ops::Deref for TestNamespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("DSO_E2E_KEEP_FAILED").is_some() {
            eprintln!("kept namespace {} (DSO_E2E_KEEP_FAILED is set)", self.name);
            return;
        }
        kubectl_best_effort(&[
            "delete",
            "namespace",
            &self.name,
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
}

/// Creates a namespace with a unique name (`<prefix>-<n>`) and the given labels, and waits
/// for its default ServiceAccount (pods are refused until it exists).
pub async fn namespace(
    client: &kube::Client,
    prefix: &str,
    labels: &[(&str, &str)],
) -> TestNamespace {
    let name = unique(prefix);
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels}
    }))
    .expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    // Owned from here on: a failure below still deletes it.
    let ns = TestNamespace { name };
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    wait_for(
        "the default ServiceAccount",
        Duration::from_secs(30),
        || async { Ok(sas.get_opt("default").await?.map(|_| ())) },
    )
    .await
    .expect("default ServiceAccount");
    ns
}

/// Reads a container's log from the kubelet's pod log directory.
pub fn container_log(namespace: &str, pod: &str, container: &str) -> Result<String> {
    let dir = PathBuf::from(env("DSO_POD_LOGS_DIR"));
    let prefix = format!("{namespace}_{pod}_");
    let mut out = String::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let cdir = entry.path().join(container);
        if let Ok(files) = std::fs::read_dir(&cdir) {
            let mut files: Vec<_> = files.filter_map(|f| f.ok()).map(|f| f.path()).collect();
            files.sort();
            for f in files {
                // CRI log lines: "<time> <stream> <P|F> <message>"
                for line in std::fs::read_to_string(&f).unwrap_or_default().lines() {
                    let msg = line.splitn(4, ' ').nth(3).unwrap_or(line);
                    out.push_str(msg);
                    out.push('\n');
                }
            }
        }
    }
    Ok(out)
}

/// The repository's root (for crds/, charts/, examples/).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A name unlikely to collide with another test's, e.g. for AWS secrets or releases.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("{prefix}-{}", nanos % 1_000_000_000_000)
}

/// Asserts that a command succeeded and returns its stdout.
pub fn check(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Installs (or updates) the DsoSecret CRD from crds/ and waits until it is Established.
pub fn apply_crd() {
    let crd = repo_root().join("crds/dso.dev_dsosecrets.yaml");
    let crd = crd.to_string_lossy();
    check(
        kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &crd]),
        "kubectl apply of the CRD",
    );
    check(
        kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/dsosecrets.dso.dev",
        ]),
        "waiting for the CRD to be Established",
    );
}

/// A Secrets Manager client for moto (`DSO_MOTO_ENDPOINT`), with test credentials.
pub fn moto() -> aws_sdk_secretsmanager::Client {
    use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
    let conf = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(env("DSO_MOTO_ENDPOINT"))
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "e2e"))
        .build();
    aws_sdk_secretsmanager::Client::from_conf(conf)
}

/// Creates a secret in moto holding `value`; returns its version id.
pub async fn create_secret(id: &str, value: &str) -> String {
    moto()
        .create_secret()
        .name(id)
        .secret_string(value)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateSecret {id} in moto: {e}"))
        .version_id
        .expect("CreateSecret returns a version id")
}

/// Stores a new value in moto, as a rotation does; returns the new version id.
pub async fn put_secret_value(id: &str, value: &str) -> String {
    moto()
        .put_secret_value()
        .secret_id(id)
        .secret_string(value)
        .send()
        .await
        .unwrap_or_else(|e| panic!("PutSecretValue {id} in moto: {e}"))
        .version_id
        .expect("PutSecretValue returns a version id")
}

/// The DsoSecret's Ready condition as (status, reason), once the operator has written it.
pub fn ready(d: &DsoSecret) -> Option<(String, String)> {
    let c = d
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone()))
}
