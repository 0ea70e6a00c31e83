//! Cost benchmark of `strategy: InPlace` on the real cluster (not a test: it prints figures).
//! Issue 15: "N pods InPlace on S secrets, one rotation: AWS calls for detection (goal: 1 per
//! distinct secret, not per pod), GetSecretValue calls (1 per pod, only on rotation), operator
//! RSS, time to all pods current."
//!
//! S secrets in moto, S InPlace DsoSecrets (one secret each) and S Deployments sharing N pods
//! (each pod: the app, dso-init, the `dso-refresh` native sidecar). The operator and every pod
//! reach AWS through tests/aws-fault-proxy.py, whose log (one line per request) is the count of
//! AWS calls — not the operator's own counters, which are printed beside it. Whether a pod
//! serves the new versions is read from its volume on the node (`..dso/state.json` under the
//! kubelet's pod directory: the hash of the versions its files were built from), next to what
//! the DsoSecret's `status.propagation` says.
//!
//! `--peer csi` runs, after DSO and through the same proxy, the same pods and secrets with a
//! peer that polls per pod: the Secrets Store CSI driver with the AWS provider (rotation on,
//! `--rotation-poll-interval` = the DsoSecrets' `refresh.interval`), its processes on the node
//! (dso_e2e::peer_csi); each pod's mounted file is read on the node. Both are printed side by
//! side at the end. `--systems csi` runs the peer alone.
//!
//! Run it with tests/bench-inplace.sh (it brings the cluster up, builds the images and the
//! peer, and runs this in the cluster's network namespace); see tests/e2e/README-bench.md.

use dso_api::DsoSecret;
use dso_e2e::operator::series_value;
use dso_e2e::peer_csi::{self, CsiPeer};
use dso_e2e::{
    Operator, Webhook, annotated, app_container, apply, client, create_secret, deployment, kubectl,
    put_secret_value, unique,
};
use dso_test_support::FaultProxy;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Args {
    pods: usize,
    secrets: usize,
    interval_s: u64,
    proxy_port: u16,
    pod_aws_endpoint: String,
    kubelet_dir: PathBuf,
    timeout: Duration,
    /// Which systems, in order: "dso", "csi".
    systems: Vec<String>,
    /// The steady-state window (no rotation).
    steady: Duration,
    /// The peer's binaries (tests/bench-peer-csi-build.sh) and scratch directory.
    peer_bin_dir: PathBuf,
    peer_run_dir: PathBuf,
    init_cpu_request: String,
    batch: usize,
}

fn args() -> Args {
    let mut given: HashMap<String, String> = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        given.insert(k.trim_start_matches("--").to_string(), v);
    }
    let num = |k: &str, d: u64| -> u64 {
        given
            .get(k)
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("--{k}: not a number: {v}"))
            })
            .unwrap_or(d)
    };
    let proxy_port = num("proxy-port", 15099) as u16;
    let systems: Vec<String> = match (given.get("systems"), given.get("peer")) {
        (Some(s), _) => s.split(',').map(str::to_string).collect(),
        (None, Some(p)) => vec!["dso".into(), p.clone()],
        (None, None) => vec!["dso".into()],
    };
    for s in &systems {
        assert!(
            s == "dso" || s == "csi",
            "--systems/--peer: unknown system {s:?} (dso, csi)"
        );
    }
    let interval_s = num("interval", 10);
    // The peer's effective poll is the kubelet's pod sync (about a minute) when that is
    // longer than its poll interval: with it, the window covers two of those.
    let steady_default = if systems.iter().any(|s| s == "csi") {
        (2 * interval_s).max(150)
    } else {
        2 * interval_s
    };
    Args {
        pods: num("pods", 50) as usize,
        secrets: num("secrets", 5) as usize,
        interval_s,
        proxy_port,
        pod_aws_endpoint: given
            .get("pod-aws-endpoint")
            .cloned()
            .unwrap_or_else(|| format!("http://10.250.0.2:{proxy_port}")),
        kubelet_dir: PathBuf::from(given.get("kubelet-dir").cloned().unwrap_or_else(|| {
            format!(
                "{}/kubelet",
                std::env::var("DSO_CLUSTER_DIR").unwrap_or("/tmp/dso-cluster".into())
            )
        })),
        // Pods start at 0.2–1.5 per second on the 2-core node, slower as it fills (990 took
        // 2,299 s): 900 s, or 3 s per pod when more.
        timeout: Duration::from_secs(num("timeout", 900.max(3 * num("pods", 50)))),
        steady: Duration::from_secs(num("steady", steady_default)),
        // The injected containers' CPU request (the webhook's --init-cpu-request, 10m by
        // default): 1,000 pods at 10m do not fit the 2 CPUs of the test node; the scheduler
        // leaves the rest Pending with "Insufficient cpu". 1m fits, and changes nothing else.
        init_cpu_request: given
            .get("init-cpu-request")
            .cloned()
            .unwrap_or_else(|| "1m".into()),
        batch: num("batch", 100) as usize,
        peer_bin_dir: PathBuf::from(given.get("peer-bin-dir").cloned().unwrap_or_default()),
        peer_run_dir: PathBuf::from(given.get("peer-run-dir").cloned().unwrap_or_else(|| {
            std::env::temp_dir()
                .join("dso-bench-peer-csi")
                .to_string_lossy()
                .into()
        })),
        systems,
    }
}

fn mem_available_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

fn proc_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// AWS calls in the proxy log from line `from` on, by operation.
fn calls(proxy: &FaultProxy, from: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in proxy
        .log()
        .lines()
        .filter(|l| l.ends_with(" pass"))
        .skip(from)
    {
        *out.entry(line.trim_end_matches(" pass").to_string())
            .or_default() += 1;
    }
    out
}

fn log_len(proxy: &FaultProxy) -> usize {
    proxy.log().lines().filter(|l| l.ends_with(" pass")).count()
}

async fn metrics(op: &Operator) -> String {
    op.metrics().await.unwrap_or_default()
}

fn metric(page: &str, series: &str) -> f64 {
    series_value(page, series).unwrap_or(0.0)
}

/// The DsoSecret each pod mounts, and the versions hash its volume holds now (from the node).
fn served(kubelet: &std::path::Path, pods: &[Pod]) -> Vec<(String, Option<String>)> {
    pods.iter()
        .map(|p| {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            let dso = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("dso.dev/secrets"))
                .cloned()
                .unwrap_or_default();
            let state = kubelet
                .join("pods")
                .join(&uid)
                .join("volumes/kubernetes.io~empty-dir/dso-secrets/..dso/state.json");
            let hash = std::fs::read_to_string(state)
                .ok()
                .and_then(|s| dso_api::inplace::parse(&s).get(&dso).cloned());
            (dso, hash)
        })
        .collect()
}

fn running(p: &Pod) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Running")
            && s.container_statuses.iter().flatten().all(|c| c.ready)
    })
}

/// The 1-minute load average of the machine, sampled every 5 s while a system runs.
struct Load {
    samples: Arc<Mutex<Vec<f64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start() -> Load {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let s = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                let one = std::fs::read_to_string("/proc/loadavg")
                    .ok()
                    .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok());
                if let (Some(v), Ok(mut s)) = (one, s.lock()) {
                    s.push(v);
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        Load { samples, task }
    }

    /// (min, mean, max) so far.
    fn summary(&self) -> (f64, f64, f64) {
        let s = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        if s.is_empty() {
            return (0.0, 0.0, 0.0);
        }
        let min = s.iter().copied().fold(f64::MAX, f64::min);
        let max = s.iter().copied().fold(0.0, f64::max);
        (min, s.iter().sum::<f64>() / s.len() as f64, max)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one system's run measured, for the side-by-side table.
#[derive(Default)]
struct Figures {
    system: &'static str,
    all_running: Duration,
    node_mem_mb: u64,
    steady: Duration,
    steady_calls: BTreeMap<String, usize>,
    window: Duration,
    rotation_calls: BTreeMap<String, usize>,
    first_swap: Duration,
    all_swapped: Duration,
    /// DSO only: when `status.propagation` said every pod is current.
    status_all: Option<Duration>,
    /// (process, RSS before the rotation, after, peak), kB.
    memory: Vec<(String, u64, u64, u64)>,
    load: (f64, f64, f64),
}

/// Waits until at least `n` of the namespace's pods are running and ready (of `total`);
/// returns the time since `since`.
async fn wait_running(
    pods_api: &Api<Pod>,
    n: usize,
    total: usize,
    since: Instant,
    timeout: Duration,
) -> Duration {
    let mut last_print = Instant::now();
    loop {
        let pods = list_pods(pods_api).await;
        let running = pods.iter().filter(|p| running(p)).count();
        if running >= n {
            return since.elapsed();
        }
        if last_print.elapsed() > Duration::from_secs(30) {
            println!(
                "   ... {running}/{total} pods running after {:.0} s",
                since.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        assert!(
            since.elapsed() < timeout,
            "only {running}/{total} pods running after {timeout:?}",
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Pod LISTs this program made (the API server's counters include them).
static OWN_POD_LISTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn list_pods(pods_api: &Api<Pod>) -> Vec<Pod> {
    OWN_POD_LISTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    pods_api
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items
}

/// What the API server counted for pods (its /metrics), and the CPU time of the operator and
/// of the API server: what the pods cost on the Kubernetes side.
#[derive(Clone, Copy, Default)]
struct KubeCosts {
    pod_lists: f64,
    pod_list_bytes: f64,
    own_lists: usize,
    patched: f64,
    conflicts: f64,
    operator_cpu_s: f64,
    apiserver_cpu_s: f64,
}

/// utime + stime of `pid`, in seconds (clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of /proc/PID/stat; `after` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

fn kube_costs(operator_pid: u32) -> KubeCosts {
    let page = String::from_utf8_lossy(&kubectl(&["get", "--raw", "/metrics"]).stdout).to_string();
    let sum = |prefix: &str, must: &[&str]| -> f64 {
        page.lines()
            .filter(|l| l.starts_with(prefix) && must.iter().all(|m| l.contains(m)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let pods = r#"resource="pods""#;
    let apiserver_pid = std::env::var("DSO_CLUSTER_DIR")
        .ok()
        .and_then(|d| std::fs::read_to_string(format!("{d}/pids/kube-apiserver")).ok())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0);
    KubeCosts {
        pod_lists: sum(
            "apiserver_request_total{",
            &[pods, r#"scope="namespace""#, r#"verb="LIST""#],
        ),
        pod_list_bytes: sum(
            "apiserver_response_sizes_sum{",
            &[pods, r#"scope="namespace""#, r#"verb="LIST""#],
        ),
        own_lists: OWN_POD_LISTS.load(std::sync::atomic::Ordering::Relaxed),
        patched: sum(
            "apiserver_request_total{",
            &[
                pods,
                r#"code="200""#,
                r#"subresource="""#,
                r#"verb="PATCH""#,
            ],
        ),
        conflicts: sum(
            "apiserver_request_total{",
            &[
                pods,
                r#"code="409""#,
                r#"subresource="""#,
                r#"verb="PATCH""#,
            ],
        ),
        operator_cpu_s: cpu_seconds(operator_pid),
        apiserver_cpu_s: cpu_seconds(apiserver_pid),
    }
}

/// The Kubernetes side of a window: the operator's pod LISTs (the API server's count less this
/// program's), their bytes, pod PATCHes, CPU seconds.
fn print_kube_costs(what: &str, from: KubeCosts, to: KubeCosts) {
    let own = (to.own_lists - from.own_lists) as f64;
    let lists = to.pod_lists - from.pod_lists;
    let bytes = to.pod_list_bytes - from.pod_list_bytes;
    let per_list = if lists > 0.0 { bytes / lists } else { 0.0 };
    println!(
        "  kube, {what}: pod LISTs by the operator {:.0} (API server {lists:.0} less {own:.0} of this program's; {:.1} MB answered in all, {:.0} kB each); pod PATCHes {:.0} ok + {:.0} conflicts; CPU s: operator {:.1}, API server {:.1}",
        lists - own,
        bytes / 1e6,
        per_list / 1e3,
        to.patched - from.patched,
        to.conflicts - from.conflicts,
        to.operator_cpu_s - from.operator_cpu_s,
        to.apiserver_cpu_s - from.apiserver_cpu_s,
    );
}

/// Deletes nothing itself: waits until the namespace's pods are gone (after its delete).
async fn wait_pods_gone(pods_api: &Api<Pod>) -> Duration {
    let gone = Instant::now();
    while gone.elapsed() < Duration::from_secs(600) {
        match pods_api.list(&ListParams::default()).await {
            Ok(l) if !l.items.is_empty() => tokio::time::sleep(Duration::from_secs(3)).await,
            _ => break,
        }
    }
    gone.elapsed()
}

#[tokio::main]
async fn main() {
    let a = args();
    let per = a.pods.div_ceil(a.secrets);
    println!(
        "== InPlace cost: {} pods on {} secrets ({} Deployments x {per} replicas), interval {}s, steady-state window {}s, DSO's injected CPU request {}, systems {}",
        a.pods,
        a.secrets,
        a.secrets,
        a.interval_s,
        a.steady.as_secs(),
        a.init_cpu_request,
        a.systems.join(", ")
    );
    let proxy = FaultProxy::start_on(
        "0.0.0.0",
        &dso_e2e::env("DSO_MOTO_ENDPOINT"),
        Some(a.proxy_port),
    );
    let mut all = Vec::new();
    for system in a.systems.clone() {
        let f = match system.as_str() {
            "dso" => run_dso(&a, &proxy).await,
            _ => run_csi(&a, &proxy).await,
        };
        all.push(f);
    }
    side_by_side(&a, &all);
}

async fn run_dso(a: &Args, proxy: &FaultProxy) -> Figures {
    let load = Load::start();
    let per = a.pods.div_ceil(a.secrets);
    println!(
        "== DSO (strategy: InPlace, refresh.interval {}s)",
        a.interval_s
    );
    let moto_env = format!("AWS_ENDPOINT_URL={}", a.pod_aws_endpoint);
    let mut wh = Webhook::start(
        18490,
        &[
            "--init-env",
            &moto_env,
            "--init-cpu-request",
            &a.init_cpu_request,
        ],
    )
    .await;
    let ns = wh.namespace(&[]).await;
    let kube = client().await;
    let dsos: Api<DsoSecret> = Api::namespaced(kube.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(kube.clone(), &ns);

    let mut ids = Vec::new();
    for i in 0..a.secrets {
        let id = unique(&format!("bench/inplace/s{i:03}"));
        create_secret(&id, &json!({"password": unique("v1")}).to_string()).await;
        ids.push(id);
    }
    let mem_before = mem_available_mb();
    let created = Instant::now();
    let mut left = a.pods;
    for (i, id) in ids.iter().enumerate() {
        let name = format!("s{i:03}");
        let dso: DsoSecret = serde_json::from_value(json!({
            "apiVersion": "dso.dev/v1alpha1", "kind": "DsoSecret", "metadata": {"name": name},
            "spec": {"aws": {"roleArn": "arn:aws:iam::123456789012:role/bench-inplace"},
                     "files": [{"path": "password", "secretId": id, "jsonKey": "password"}],
                     "refresh": {"interval": format!("{}s", a.interval_s), "strategy": "InPlace"}}
        }))
        .expect("DsoSecret");
        dsos.create(&PostParams::default(), &dso)
            .await
            .expect("create DsoSecret");
        let replicas = per.min(left);
        left -= replicas;
        let mut d = deployment(
            &name,
            &annotated(&name),
            vec![app_container("app", "sleep 360000")],
        );
        d["spec"]["replicas"] = json!(replicas);
        d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(1);
        let d: Deployment = serde_json::from_value(d).expect("Deployment");
        deployments
            .create(&PostParams::default(), &d)
            .await
            .expect("create Deployment");
        // At most --batch pods starting at once: the kubelet starts every pod it is given in
        // parallel, and 1,000 at once on 2 cores (load average 300) made runc time out
        // (RunContainerError); starting them is not what is measured.
        let asked = a.pods - left;
        wait_running(
            &pods_api,
            asked.saturating_sub(a.batch),
            a.pods,
            created,
            a.timeout,
        )
        .await;
    }

    // One replica: under the load of hundreds of starting pods a Lease renewal can miss its
    // deadline, and losing the Lease ends the operator (by design); not what is measured here.
    let op = Operator::start_with(&ns, 18590, &proxy.url, &["--leader-election", "false"]);
    op.ready().await;

    let all_running = wait_running(&pods_api, a.pods, a.pods, created, a.timeout).await;
    let mem_after = mem_available_mb();
    let node_mem_mb = mem_before.saturating_sub(mem_after);
    println!(
        "pods: {} running and ready {:.1} s after the Deployments were created; node memory used by them ~{} MB ({} kB per pod)",
        a.pods,
        all_running.as_secs_f64(),
        node_mem_mb,
        node_mem_mb * 1024 / a.pods as u64
    );

    // Every DsoSecret reports every pod current (told, sidecar running) on the first versions.
    let first: HashMap<String, String> = loop {
        let list = dsos.list(&ListParams::default()).await.expect("dsos");
        let done: HashMap<String, String> = list
            .items
            .iter()
            .filter_map(|d| {
                let p = d.status.as_ref()?.propagation.as_ref()?;
                let name = d.metadata.name.clone()?;
                (p.pods > 0 && p.current_pods == p.pods).then(|| (name, p.versions_hash.clone()))
            })
            .collect();
        let pods: i32 = list
            .items
            .iter()
            .filter_map(|d| d.status.as_ref()?.propagation.as_ref().map(|p| p.pods))
            .sum();
        if done.len() == a.secrets && pods as usize == a.pods {
            break done;
        }
        assert!(
            created.elapsed() < a.timeout,
            "status never showed every pod current"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    // Steady state: nothing rotating.
    let steady_from = log_len(proxy);
    let steady_page = metrics(&op).await;
    let op_pid = op.pid().unwrap_or(0);
    let steady_kube = kube_costs(op_pid);
    tokio::time::sleep(a.steady).await;
    let steady_kube_after = kube_costs(op_pid);
    let steady_calls = calls(proxy, steady_from);
    let steady_page_after = metrics(&op).await;
    let ours = |before: &str, after: &str, op: &str| {
        let s = format!("dso_aws_calls_total{{operation=\"{op}\"}}");
        metric(after, &s) - metric(before, &s)
    };
    println!(
        "steady state, {} s, no rotation: AWS calls seen by the proxy {:?}; operator's own count: DescribeSecret {}",
        a.steady.as_secs(),
        steady_calls,
        ours(&steady_page, &steady_page_after, "DescribeSecret")
    );
    print_kube_costs("steady state", steady_kube, steady_kube_after);

    // One rotation of every secret at once.
    let rss_before = op.pid().map(|p| proc_kb(p, "VmRSS:")).unwrap_or(0);
    let from = log_len(proxy);
    let page_before = metrics(&op).await;
    let rotation_kube = kube_costs(op_pid);
    let t0 = Instant::now();
    for id in &ids {
        put_secret_value(id, &json!({"password": unique("v2")}).to_string()).await;
    }
    let puts = t0.elapsed();
    let (mut swapped_all, mut status_all, mut first_swap) = (None, None, None);
    let mut last_print = Instant::now();
    while swapped_all.is_none() || status_all.is_none() {
        let pods = list_pods(&pods_api).await;
        let list = dsos.list(&ListParams::default()).await.expect("dsos");
        let new: HashMap<String, (String, i32, i32)> = list
            .items
            .iter()
            .filter_map(|d| {
                let name = d.metadata.name.clone()?;
                let p = d.status.as_ref()?.propagation.as_ref()?;
                (first.get(&name) != Some(&p.versions_hash))
                    .then(|| (name, (p.versions_hash.clone(), p.current_pods, p.pods)))
            })
            .collect();
        let serving = served(&a.kubelet_dir, &pods);
        let swapped = serving
            .iter()
            .filter(|(dso, hash)| hash.is_some() && hash.as_ref() != first.get(dso))
            .count();
        if swapped > 0 && first_swap.is_none() {
            first_swap = Some(t0.elapsed());
        }
        if swapped >= a.pods && swapped_all.is_none() {
            swapped_all = Some(t0.elapsed());
        }
        let reported: i32 = new.values().map(|(_, c, _)| *c).sum();
        if new.len() == a.secrets && reported as usize >= a.pods && status_all.is_none() {
            status_all = Some(t0.elapsed());
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            println!(
                "   ... {:.0} s: {} DsoSecrets on new versions, status says {reported}/{} current, {swapped} pods swapped (node)",
                t0.elapsed().as_secs_f64(),
                new.len(),
                a.pods
            );
            last_print = Instant::now();
        }
        assert!(
            t0.elapsed() < a.timeout,
            "rotation not propagated in {:?}",
            a.timeout
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let window = t0.elapsed();
    let rotation_kube_after = kube_costs(op_pid);
    let rotation_calls = calls(proxy, from);
    let page = metrics(&op).await;
    let pid = op.pid().unwrap_or(0);
    let get = |op: &str| rotation_calls.get(op).copied().unwrap_or(0);
    println!(
        "rotation of {} secrets (PutSecretValue x{} took {:.1} s):",
        a.secrets,
        a.secrets,
        puts.as_secs_f64()
    );
    println!(
        "  first pod swapped (node) {:.1} s; all {} pods swapped (node) {:.1} s; status all current {:.1} s",
        first_swap.unwrap_or_default().as_secs_f64(),
        a.pods,
        swapped_all.unwrap_or_default().as_secs_f64(),
        status_all.unwrap_or_default().as_secs_f64()
    );
    println!(
        "  AWS calls in the {:.1} s window (proxy): {:?}",
        window.as_secs_f64(),
        rotation_calls
    );
    println!(
        "  detection: DescribeSecret {} + ListSecrets {} for {} secrets over {:.1} intervals = {:.2} per secret per interval; operator's own count: DescribeSecret {}",
        get("DescribeSecret"),
        get("ListSecrets"),
        a.secrets,
        window.as_secs_f64() / a.interval_s as f64,
        (get("DescribeSecret") + get("ListSecrets")) as f64
            / a.secrets as f64
            / (window.as_secs_f64() / a.interval_s as f64).max(1.0),
        ours(&page_before, &page, "DescribeSecret")
    );
    println!(
        "  values: GetSecretValue {} for {} pods = {:.2} per pod; BatchGetSecretValue {}; STS AssumeRoleWithWebIdentity {}",
        get("GetSecretValue"),
        a.pods,
        get("GetSecretValue") as f64 / a.pods as f64,
        get("BatchGetSecretValue"),
        get("AssumeRoleWithWebIdentity")
    );
    let memory = vec![(
        "dso-operator".to_string(),
        rss_before,
        proc_kb(pid, "VmRSS:"),
        proc_kb(pid, "VmHWM:"),
    )];
    println!(
        "  operator: RSS {} kB before the rotation, {} kB after, peak {} kB; histogram dso_rotation_propagation_seconds count {} sum {}",
        rss_before,
        memory[0].2,
        memory[0].3,
        metric(&page, "dso_rotation_propagation_seconds_count"),
        metric(&page, "dso_rotation_propagation_seconds_sum")
    );
    print_kube_costs("rotation window", rotation_kube, rotation_kube_after);
    let load_summary = load.summary();
    op.stop();
    // Delete and wait for the pods to go, so the next run starts on an idle node.
    drop(wh);
    let gone = wait_pods_gone(&pods_api).await;
    println!(
        "cleanup: pods gone {:.0} s after the namespace delete",
        gone.as_secs_f64()
    );
    Figures {
        system: "DSO",
        all_running,
        node_mem_mb,
        steady: a.steady,
        steady_calls,
        window,
        rotation_calls,
        first_swap: first_swap.unwrap_or_default(),
        all_swapped: swapped_all.unwrap_or_default(),
        status_all,
        memory,
        load: load_summary,
    }
}

/// The same pods and secrets through the Secrets Store CSI driver and its AWS provider: one
/// SecretProviderClass per secret, one CSI volume per pod; the pods' ServiceAccount carries the
/// IRSA role annotation the provider reads.
async fn run_csi(a: &Args, proxy: &FaultProxy) -> Figures {
    let load = Load::start();
    let per = a.pods.div_ceil(a.secrets);
    println!(
        "== Secrets Store CSI driver + AWS provider (--enable-secret-rotation --rotation-poll-interval={}s)",
        a.interval_s
    );
    let kube = client().await;
    let mut peer = CsiPeer::start(
        &kube,
        &peer_csi::Config {
            bin_dir: a.peer_bin_dir.clone(),
            kubelet_dir: a.kubelet_dir.clone(),
            run_dir: a.peer_run_dir.clone(),
            // The provider is a process on the node, in the cluster's network namespace.
            aws_endpoint: format!("http://127.0.0.1:{}", a.proxy_port),
            poll: Duration::from_secs(a.interval_s),
            metrics_port: 18595,
        },
    )
    .await;
    let ns = dso_e2e::namespace(&kube, "bench-csi", &[]).await;
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(kube.clone(), &ns);
    apply(
        &ns,
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bench",
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/bench-inplace"}}}),
    );

    let mut ids = Vec::new();
    for i in 0..a.secrets {
        let id = unique(&format!("bench/csi/s{i:03}"));
        create_secret(&id, &json!({"password": unique("v1")}).to_string()).await;
        ids.push(id);
    }
    let mem_before = mem_available_mb();
    let created = Instant::now();
    let mut left = a.pods;
    for (i, id) in ids.iter().enumerate() {
        let name = format!("s{i:03}");
        apply(&ns, &peer_csi::secret_provider_class(&name, id));
        let replicas = per.min(left);
        left -= replicas;
        let mut d = deployment(
            &name,
            &json!({}),
            vec![app_container("app", "sleep 360000")],
        );
        d["spec"]["replicas"] = json!(replicas);
        d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(1);
        d["spec"]["template"]["spec"]["serviceAccountName"] = json!("bench");
        peer_csi::add_volume(&mut d, &name);
        let d: Deployment = serde_json::from_value(d).expect("Deployment");
        deployments
            .create(&PostParams::default(), &d)
            .await
            .expect("create Deployment");
        // At most --batch pods starting at once: the kubelet starts every pod it is given in
        // parallel, and 1,000 at once on 2 cores (load average 300) made runc time out
        // (RunContainerError); starting them is not what is measured.
        let asked = a.pods - left;
        wait_running(
            &pods_api,
            asked.saturating_sub(a.batch),
            a.pods,
            created,
            a.timeout,
        )
        .await;
    }
    let all_running = wait_running(&pods_api, a.pods, a.pods, created, a.timeout).await;
    peer.assert_running();
    let mem_after = mem_available_mb();
    let node_mem_mb = mem_before.saturating_sub(mem_after);
    println!(
        "pods: {} running and ready {:.1} s after the Deployments were created; node memory used by them (and the peer's growth) ~{} MB ({} kB per pod)",
        a.pods,
        all_running.as_secs_f64(),
        node_mem_mb,
        node_mem_mb * 1024 / a.pods as u64
    );

    // Steady state: nothing rotating.
    let steady_from = log_len(proxy);
    tokio::time::sleep(a.steady).await;
    let steady_calls = calls(proxy, steady_from);
    peer.assert_running();
    let steady_s = a.steady.as_secs_f64();
    println!(
        "steady state, {} s, no rotation: AWS calls seen by the proxy {:?} = {:.2} per pod per {}s interval",
        a.steady.as_secs(),
        steady_calls,
        steady_calls.values().sum::<usize>() as f64
            / a.pods as f64
            / (steady_s / a.interval_s as f64),
        a.interval_s
    );

    // One rotation of every secret at once; a pod is current when its mounted file (on the
    // node) holds the new value.
    let rss_before = peer.rss();
    let from = log_len(proxy);
    let page_before = peer.metrics().await;
    let mut new_values: HashMap<String, String> = HashMap::new();
    let t0 = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let v = unique("v2");
        put_secret_value(id, &json!({"password": v}).to_string()).await;
        new_values.insert(format!("s{i:03}"), v);
    }
    let puts = t0.elapsed();
    let (mut swapped_all, mut first_swap) = (None, None);
    let mut last_print = Instant::now();
    while swapped_all.is_none() {
        let pods = pods_api.list(&ListParams::default()).await.expect("pods");
        let swapped = pods
            .items
            .iter()
            .filter(|p| {
                let app = p.metadata.labels.as_ref().and_then(|l| l.get("app"));
                let uid = p.metadata.uid.as_deref().unwrap_or_default();
                let file = peer_csi::mounted_file(&a.kubelet_dir, uid, "password");
                matches!((app.and_then(|n| new_values.get(n)), file), (Some(want), Some(got)) if got.trim() == want)
            })
            .count();
        if swapped > 0 && first_swap.is_none() {
            first_swap = Some(t0.elapsed());
        }
        if swapped >= a.pods {
            swapped_all = Some(t0.elapsed());
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            println!(
                "   ... {:.0} s: {swapped}/{} pods' files hold the new value (node)",
                t0.elapsed().as_secs_f64(),
                a.pods
            );
            last_print = Instant::now();
            peer.assert_running();
        }
        assert!(
            t0.elapsed() < a.timeout,
            "rotation not propagated in {:?}: {swapped}/{} pods",
            a.timeout,
            a.pods
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let window = t0.elapsed();
    let rotation_calls = calls(proxy, from);
    let page = peer.metrics().await;
    let get = |op: &str| rotation_calls.get(op).copied().unwrap_or(0);
    println!(
        "rotation of {} secrets (PutSecretValue x{} took {:.1} s):",
        a.secrets,
        a.secrets,
        puts.as_secs_f64()
    );
    println!(
        "  first pod's file new (node) {:.1} s; all {} pods' files new (node) {:.1} s",
        first_swap.unwrap_or_default().as_secs_f64(),
        a.pods,
        window.as_secs_f64()
    );
    println!(
        "  AWS calls in the {:.1} s window (proxy): {:?}; GetSecretValue {:.2} per pod",
        window.as_secs_f64(),
        rotation_calls,
        get("GetSecretValue") as f64 / a.pods as f64
    );
    println!(
        "  driver's own count: node publish calls {} -> {}, rotations {} -> {} (series *node_publish_total, *rotation_reconcile_total)",
        sum_series(&page_before, "node_publish_total"),
        sum_series(&page, "node_publish_total"),
        sum_series(&page_before, "rotation_reconcile_total"),
        sum_series(&page, "rotation_reconcile_total"),
    );
    let after = peer.rss();
    let memory: Vec<(String, u64, u64, u64)> = rss_before
        .iter()
        .zip(&after)
        .map(|((name, before, _), (_, now, peak))| (name.to_string(), *before, *now, *peak))
        .collect();
    for (name, before, now, peak) in &memory {
        println!("  {name}: RSS {before} kB before the rotation, {now} kB after, peak {peak} kB");
    }
    let load_summary = load.summary();
    // Pods first (the driver unmounts their volumes), then the peer.
    drop(ns);
    let gone = wait_pods_gone(&pods_api).await;
    println!(
        "cleanup: pods gone {:.0} s after the namespace delete",
        gone.as_secs_f64()
    );
    peer.stop();
    Figures {
        system: "CSI driver + AWS provider",
        all_running,
        node_mem_mb,
        steady: a.steady,
        steady_calls,
        window,
        rotation_calls,
        first_swap: first_swap.unwrap_or_default(),
        all_swapped: window,
        status_all: None,
        memory,
        load: load_summary,
    }
}

/// The sum of every series whose metric name ends with `suffix` in a Prometheus text page.
fn sum_series(page: &str, suffix: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, _) = l.split_once(['{', ' '])?;
            let value = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            name.ends_with(suffix).then_some(value)
        })
        .sum()
}

fn fmt_calls(c: &BTreeMap<String, usize>) -> String {
    if c.is_empty() {
        return "none".into();
    }
    c.iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The figures of every system run, as one Markdown table.
fn side_by_side(a: &Args, all: &[Figures]) {
    if all.is_empty() {
        return;
    }
    println!(
        "\n== side by side: {} pods on {} secrets, interval {} s (DSO refresh.interval; the peer's --rotation-poll-interval), one rotation of every secret\n",
        a.pods, a.secrets, a.interval_s
    );
    let row = |label: &str, f: &dyn Fn(&Figures) -> String| {
        let cells: Vec<String> = all.iter().map(f).collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    let names: Vec<&str> = all.iter().map(|f| f.system).collect();
    println!("| | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(all.len()));
    row(
        "pods running and ready after the Deployments were created",
        &|f| format!("{:.0} s", f.all_running.as_secs_f64()),
    );
    row(
        "node memory taken (MemAvailable drop while pods start; noisy)",
        &|f| format!("~{} MB", f.node_mem_mb),
    );
    row("steady state: AWS calls in the window (proxy)", &|f| {
        format!("{} in {} s", fmt_calls(&f.steady_calls), f.steady.as_secs())
    });
    row("= AWS calls per hour at this rate", &|f| {
        format!(
            "{:.0}",
            f.steady_calls.values().sum::<usize>() as f64 * 3600.0 / f.steady.as_secs_f64()
        )
    });
    row("rotation: first pod's files new (node)", &|f| {
        format!("{:.1} s", f.first_swap.as_secs_f64())
    });
    row("rotation: every pod's files new (node)", &|f| {
        format!("{:.1} s", f.all_swapped.as_secs_f64())
    });
    row("rotation: status says every pod current", &|f| {
        f.status_all
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| "n/a".into())
    });
    row("AWS calls in the rotation window (proxy)", &|f| {
        format!(
            "{} in {:.0} s",
            fmt_calls(&f.rotation_calls),
            f.window.as_secs_f64()
        )
    });
    row("GetSecretValue per pod in that window", &|f| {
        format!(
            "{:.2}",
            f.rotation_calls.get("GetSecretValue").copied().unwrap_or(0) as f64 / a.pods as f64
        )
    });
    row(
        "processes' RSS before → after the rotation (peak)",
        &|f| {
            f.memory
                .iter()
                .map(|(n, b, now, peak)| {
                    format!("{n} {} → {} MB ({})", b / 1024, now / 1024, peak / 1024)
                })
                .collect::<Vec<_>>()
                .join("; ")
        },
    );
    row(
        "load average (1 min) during the run: min / mean / max",
        &|f| format!("{:.0} / {:.0} / {:.0}", f.load.0, f.load.1, f.load.2),
    );
}
