//! The peer of the InPlace cost benchmark, run for real: the Secrets Store CSI driver with the
//! AWS provider and the CSI node-driver-registrar, as processes on the node (this host, in the
//! cluster's network namespace), the way their DaemonSets run them on a real node. Their
//! binaries come from tests/bench-peer-csi-build.sh (upstream sources at release tags, never
//! kept in this repository).
//!
//! - the registrar registers the driver's socket with the kubelet's plugin watcher
//!   (`<kubelet root>/plugins_registry`);
//! - the driver (`--enable-secret-rotation --rotation-poll-interval`) answers the kubelet's
//!   NodePublishVolume: it mounts a tmpfs at the pod's volume and asks the provider for the
//!   files; with `requiresRepublish` the kubelet calls it again on every pod sync, and it
//!   fetches again when the poll interval has passed since the last write;
//! - the provider gets a token for the pod's ServiceAccount (TokenRequest), exchanges it with
//!   STS AssumeRoleWithWebIdentity for the role of the ServiceAccount's IRSA annotation, and
//!   calls Secrets Manager (DescribeSecret, then GetSecretValue when the version changed).
//!
//! The provider reads its Kubernetes settings in-cluster only: it runs in a private mount
//! namespace whose `/run` holds a ServiceAccount token (nothing changes on the host). Mounts
//! made later on the host do not reach that namespace, so the provider returns the files and
//! the driver writes them (`--driver-writes-secrets`, a provider chart option) — the AWS calls
//! are the same either way.

use crate::process::{LogFile, http_get};
use crate::{check, kubectl, kubectl_best_effort, kubectl_stdin, wait_for};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The driver's name, as pods' `csi.driver` give it.
pub const DRIVER: &str = "secrets-store.csi.k8s.io";
/// The audience of the IRSA token the kubelet requests for the driver (`tokenRequests`).
const AUDIENCE: &str = "sts.amazonaws.com";
/// Where the provider's ServiceAccount lives, and its name.
const PROVIDER_NS: &str = "dso-bench-csi";
const PROVIDER_SA: &str = "csi-secrets-store-provider-aws";

/// Where the peer's pieces are.
pub struct Config {
    /// Directory of `secrets-store-csi`, `provider-aws`, `csi-node-driver-registrar`, `crds/`.
    pub bin_dir: PathBuf,
    /// The kubelet's root directory (`--root-dir`).
    pub kubelet_dir: PathBuf,
    /// A scratch directory for sockets, logs and the provider's `/run`.
    pub run_dir: PathBuf,
    /// AWS as the provider reaches it (`AWS_ENDPOINT_URL`).
    pub aws_endpoint: String,
    /// The driver's `--rotation-poll-interval`.
    pub poll: Duration,
    /// The driver's metrics port on 127.0.0.1.
    pub metrics_port: u16,
}

/// One running process of the peer, killed if dropped while still running.
struct Daemon {
    name: &'static str,
    child: Option<Child>,
    log: LogFile,
}

impl Daemon {
    fn spawn(name: &'static str, log_path: PathBuf, cmd: &mut Command) -> Daemon {
        let (log, stdout, stderr) = LogFile::create(log_path, name);
        let child = cmd
            .stdout(stdout)
            .stderr(stderr)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Daemon {
            name,
            child: Some(child),
            log,
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!("{} exited ({status})\n{}", self.name, self.log.tail());
        }
    }

    /// SIGTERM, up to 10 s for the exit, then SIGKILL.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            for _ in 0..100 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log.tail());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The running peer: registrar, driver, provider.
pub struct CsiPeer {
    daemons: Vec<Daemon>,
    metrics_port: u16,
}

/// `VmRSS` and `VmHWM` of a process, kB (0 when gone).
pub fn rss_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |f: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(f))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

impl CsiPeer {
    /// Installs the cluster-wide objects (the driver's CRDs from its tag, the CSIDriver, the
    /// provider's ServiceAccount and ClusterRole as its chart has them) and starts the three
    /// processes; returns once the kubelet lists the driver on the node.
    pub async fn start(client: &kube::Client, c: &Config) -> CsiPeer {
        for bin in [
            "secrets-store-csi",
            "provider-aws",
            "csi-node-driver-registrar",
        ] {
            assert!(
                c.bin_dir.join(bin).is_file(),
                "{} missing: build the peer with tests/bench-peer-csi-build.sh",
                c.bin_dir.join(bin).display()
            );
        }
        for crd in ["spc.yaml", "spcps.yaml"] {
            let f = c.bin_dir.join("crds").join(crd);
            check(
                kubectl(&["apply", "--server-side", "-f", &f.to_string_lossy()]),
                "kubectl apply of the driver's CRDs",
            );
        }
        check(
            kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/secretproviderclasses.secrets-store.csi.x-k8s.io",
                "crd/secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io",
            ]),
            "the driver's CRDs Established",
        );
        apply_cluster(&cluster_objects());

        let node = Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await
            .expect("nodes")
            .items
            .into_iter()
            .next()
            .and_then(|n| n.metadata.name)
            .expect("a node");
        let run = &c.run_dir;
        let providers = run.join("providers");
        std::fs::create_dir_all(&providers).expect("provider socket dir");
        provider_run_dir(client, run).await;
        // The driver's socket where a DaemonSet's hostPath puts it, under the kubelet's root.
        let plugin_dir = c.kubelet_dir.join("plugins/csi-secrets-store");
        std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
        let sock = plugin_dir.join("csi.sock");
        let kubeconfig = crate::env("KUBECONFIG");
        let server = client_server(&kubeconfig);
        let bin = |b: &str| c.bin_dir.join(b);

        let provider = Daemon::spawn(
            "provider-aws",
            run.join("provider-aws.log"),
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(r#"mount --bind "$1" /run && shift && exec "$@""#)
                .arg("sh")
                .arg(run.join("run"))
                .arg(bin("provider-aws"))
                .arg(format!("--provider-volume={}", providers.display()))
                .arg("--driver-writes-secrets=true")
                // The chart's defaults are 5 and 10; raised so that the API server's client
                // limit, not AWS, would never be what is measured at hundreds of pods.
                .args(["--qps=50", "--burst=100"])
                .env("KUBERNETES_SERVICE_HOST", &server.0)
                .env("KUBERNETES_SERVICE_PORT", &server.1)
                .env("AWS_ENDPOINT_URL", &c.aws_endpoint)
                .env("AWS_REGION", "us-east-1")
                .env("AWS_EC2_METADATA_DISABLED", "true"),
        );
        wait_file(&providers.join("aws.sock"), "the provider's socket").await;

        let driver = Daemon::spawn(
            "secrets-store-csi",
            run.join("secrets-store-csi.log"),
            Command::new(bin("secrets-store-csi"))
                .arg(format!("--endpoint=unix://{}", sock.display()))
                .arg(format!("--nodeid={node}"))
                .arg(format!("--provider-volume={}", providers.display()))
                .arg(format!(
                    "--additional-provider-volume-paths={}",
                    providers.display()
                ))
                .arg("--enable-secret-rotation=true")
                .arg(format!(
                    "--rotation-poll-interval={}s",
                    c.poll.as_secs().max(1)
                ))
                .arg(format!("--metrics-addr=127.0.0.1:{}", c.metrics_port))
                .env("KUBECONFIG", &kubeconfig),
        );
        wait_file(&sock, "the driver's socket").await;

        let registrar = Daemon::spawn(
            "csi-node-driver-registrar",
            run.join("registrar.log"),
            Command::new(bin("csi-node-driver-registrar"))
                .arg(format!("--csi-address={}", sock.display()))
                .arg(format!("--kubelet-registration-path={}", sock.display()))
                .arg(format!(
                    "--plugin-registration-path={}",
                    c.kubelet_dir.join("plugins_registry").display()
                )),
        );
        let mut peer = CsiPeer {
            daemons: vec![registrar, driver, provider],
            metrics_port: c.metrics_port,
        };
        // Registered: the kubelet writes the driver into the node's CSINode.
        let csinode = format!("csinode/{node}");
        let registered = wait_for(
            "the kubelet to register the driver (CSINode)",
            Duration::from_secs(60),
            || {
                let out = kubectl(&["get", &csinode, "-o", "jsonpath={.spec.drivers[*].name}"]);
                async move {
                    Ok(String::from_utf8_lossy(&out.stdout)
                        .contains(DRIVER)
                        .then_some(()))
                }
            },
        )
        .await;
        peer.assert_running();
        registered.unwrap_or_else(|e| panic!("{e}"));
        peer
    }

    /// Fails with the process's log if one of them exited.
    pub fn assert_running(&mut self) {
        for d in &mut self.daemons {
            d.assert_running();
        }
    }

    /// (name, `VmRSS` kB, `VmHWM` kB) of each process.
    pub fn rss(&self) -> Vec<(&'static str, u64, u64)> {
        self.daemons
            .iter()
            .map(|d| {
                let (rss, hwm) = d.pid().map(rss_kb).unwrap_or((0, 0));
                (d.name, rss, hwm)
            })
            .collect()
    }

    /// The driver's Prometheus page (empty if it does not answer).
    pub async fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// Stops the processes (registrar, driver, provider: the kubelet unregisters the driver
    /// when its registration socket goes) and removes the cluster-wide objects. Call after the
    /// pods are gone: the driver unmounts their volumes.
    pub fn stop(mut self) {
        for d in &mut self.daemons {
            d.stop();
        }
        for m in cluster_objects() {
            let kind = m["kind"].as_str().unwrap_or_default().to_lowercase();
            let name = m["metadata"]["name"].as_str().unwrap_or_default();
            match m["metadata"]["namespace"].as_str() {
                Some(ns) => kubectl_best_effort(&["delete", "-n", ns, &kind, name, "--wait=false"]),
                None => kubectl_best_effort(&["delete", &kind, name, "--wait=false"]),
            }
        }
    }
}

/// The CSIDriver (the driver's deploy/csidriver.yaml, plus the IRSA token request the AWS
/// provider's guide adds), and the provider's namespace, ServiceAccount and ClusterRole (its
/// chart's rbac.yaml with the region not set, which reads pods and nodes).
fn cluster_objects() -> Vec<Value> {
    vec![
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": DRIVER},
            "spec": {"podInfoOnMount": true, "attachRequired": false, "volumeLifecycleModes": ["Ephemeral"],
                     "requiresRepublish": true, "tokenRequests": [{"audience": AUDIENCE}]}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PROVIDER_NS}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": PROVIDER_SA, "namespace": PROVIDER_NS}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": PROVIDER_SA},
            "rules": [
                {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
                {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": PROVIDER_SA},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": PROVIDER_SA},
            "subjects": [{"kind": "ServiceAccount", "name": PROVIDER_SA, "namespace": PROVIDER_NS}]}),
    ]
}

fn apply_cluster(objects: &[Value]) {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    check(
        kubectl_stdin(&["apply", "-f", "-"], &list.to_string()),
        "kubectl apply of the peer's cluster objects",
    );
}

/// The provider's `/run`: `secrets/kubernetes.io/serviceaccount/{token,ca.crt,namespace}`,
/// a token of its ServiceAccount (24 h) and the cluster's CA.
async fn provider_run_dir(client: &kube::Client, run: &Path) {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), PROVIDER_NS);
    wait_for(
        "the provider's ServiceAccount",
        Duration::from_secs(30),
        || async { Ok(sas.get_opt(PROVIDER_SA).await?.map(|_| ())) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"expirationSeconds": 86400}})).expect("request");
    let token = sas
        .create_token_request(PROVIDER_SA, &PostParams::default(), &request)
        .await
        .expect("token for the provider")
        .status
        .and_then(|s| s.token)
        .expect("a token in the TokenRequest status");
    let kubeconfig = std::fs::read_to_string(crate::env("KUBECONFIG")).expect("KUBECONFIG");
    let ca_path = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority:"))
        .map(|p| p.trim().to_string())
        .expect("certificate-authority (a file) in KUBECONFIG");
    let dir = run.join("run/secrets/kubernetes.io/serviceaccount");
    std::fs::create_dir_all(&dir).expect("serviceaccount dir");
    std::fs::write(dir.join("token"), token).expect("token");
    std::fs::copy(ca_path, dir.join("ca.crt")).expect("ca.crt");
    std::fs::write(dir.join("namespace"), PROVIDER_NS).expect("namespace");
}

/// Host and port of the API server in KUBECONFIG (`server: https://HOST:PORT`).
fn client_server(kubeconfig: &str) -> (String, String) {
    let text = std::fs::read_to_string(kubeconfig).expect("KUBECONFIG");
    let url = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .map(|s| s.trim().trim_start_matches("https://").to_string())
        .expect("server: in KUBECONFIG");
    let (host, port) = url.rsplit_once(':').unwrap_or((&url, "443"));
    (host.to_string(), port.trim_end_matches('/').to_string())
}

async fn wait_file(path: &Path, what: &str) {
    wait_for(what, Duration::from_secs(30), || async {
        Ok(path.exists().then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e} ({})", path.display()));
}

/// A SecretProviderClass for one Secrets Manager secret: the whole secret as `secret.json` and
/// its JSON key `password` as `password` (what DSO's benchmark DsoSecret writes).
pub fn secret_provider_class(name: &str, secret_id: &str) -> Value {
    let objects = format!(
        "- objectName: \"{secret_id}\"\n  objectType: secretsmanager\n  objectAlias: secret.json\n  jmesPath:\n    - path: password\n      objectAlias: password\n"
    );
    json!({"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
        "metadata": {"name": name},
        "spec": {"provider": "aws", "parameters": {"region": "us-east-1", "objects": objects}}})
}

/// A pod template's volume of the driver for `spc`, named `secrets`, and its mount in the app.
pub fn add_volume(deployment: &mut Value, spc: &str) {
    let spec = &mut deployment["spec"]["template"]["spec"];
    spec["volumes"] = json!([{"name": "secrets", "csi": {"driver": DRIVER, "readOnly": true,
        "volumeAttributes": {"secretProviderClass": spc}}}]);
    if let Some(containers) = spec["containers"].as_array_mut() {
        for c in containers {
            c["volumeMounts"] =
                json!([{"name": "secrets", "mountPath": "/mnt/secrets", "readOnly": true}]);
        }
    }
}

/// The file `name` of a pod's `secrets` volume, read on the node (not asked of the driver).
pub fn mounted_file(kubelet_dir: &Path, pod_uid: &str, name: &str) -> Option<String> {
    std::fs::read_to_string(
        kubelet_dir
            .join("pods")
            .join(pod_uid)
            .join("volumes/kubernetes.io~csi/secrets/mount")
            .join(name),
    )
    .ok()
}
