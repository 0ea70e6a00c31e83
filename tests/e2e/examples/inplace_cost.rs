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
//! Run it with tests/bench-inplace.sh (it brings the cluster up, builds the images, and runs
//! this in the cluster's network namespace); see tests/e2e/README-bench.md.

use dso_api::DsoSecret;
use dso_e2e::operator::series_value;
use dso_e2e::{
    Operator, Webhook, annotated, app_container, client, create_secret, deployment, kubectl,
    put_secret_value, unique,
};
use dso_test_support::FaultProxy;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Args {
    pods: usize,
    secrets: usize,
    interval_s: u64,
    proxy_port: u16,
    pod_aws_endpoint: String,
    kubelet_dir: PathBuf,
    timeout: Duration,
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
    Args {
        pods: num("pods", 50) as usize,
        secrets: num("secrets", 5) as usize,
        interval_s: num("interval", 10),
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
        timeout: Duration::from_secs(num("timeout", 900)),
        // The injected containers' CPU request (the webhook's --init-cpu-request, 10m by
        // default): 1,000 pods at 10m do not fit the 2 CPUs of the test node; the scheduler
        // leaves the rest Pending with "Insufficient cpu". 1m fits, and changes nothing else.
        init_cpu_request: given
            .get("init-cpu-request")
            .cloned()
            .unwrap_or_else(|| "1m".into()),
        batch: num("batch", 100) as usize,
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

fn running(p: &Pod) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Running")
            && s.container_statuses.iter().flatten().all(|c| c.ready)
    })
}

#[tokio::main]
async fn main() {
    let a = args();
    let per = a.pods.div_ceil(a.secrets);
    println!(
        "== InPlace cost: {} pods on {} secrets ({} Deployments x {per} replicas), refresh.interval {}s, injected CPU request {}",
        a.pods, a.secrets, a.secrets, a.interval_s, a.init_cpu_request
    );
    let proxy = FaultProxy::start_on(
        "0.0.0.0",
        &dso_e2e::env("DSO_MOTO_ENDPOINT"),
        Some(a.proxy_port),
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

    // Every pod running and ready.
    let all_running = wait_running(&pods_api, a.pods, a.pods, created, a.timeout).await;
    let mem_after = mem_available_mb();
    println!(
        "pods: {} running and ready {:.1} s after the Deployments were created; node memory used by them ~{} MB ({} kB per pod)",
        a.pods,
        all_running.as_secs_f64(),
        mem_before.saturating_sub(mem_after),
        mem_before.saturating_sub(mem_after) * 1024 / a.pods as u64
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

    // Steady state: two refresh intervals with nothing rotating.
    let steady_from = log_len(&proxy);
    let steady_page = metrics(&op).await;
    let op_pid = op.pid().unwrap_or(0);
    let steady_kube = kube_costs(op_pid);
    let steady = Duration::from_secs(2 * a.interval_s);
    tokio::time::sleep(steady).await;
    let steady_kube_after = kube_costs(op_pid);
    let steady_calls = calls(&proxy, steady_from);
    let steady_page_after = metrics(&op).await;
    let ours = |before: &str, after: &str, op: &str| {
        let s = format!("dso_aws_calls_total{{operation=\"{op}\"}}");
        metric(after, &s) - metric(before, &s)
    };
    println!(
        "steady state, {} s (2 intervals), no rotation: AWS calls seen by the proxy {:?}; operator's own count: DescribeSecret {}",
        steady.as_secs(),
        steady_calls,
        ours(&steady_page, &steady_page_after, "DescribeSecret")
    );
    print_kube_costs("steady state", steady_kube, steady_kube_after);

    // One rotation of every secret at once.
    let rss_before = op.pid().map(|p| proc_kb(p, "VmRSS:")).unwrap_or(0);
    let from = log_len(&proxy);
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
    let rotation_calls = calls(&proxy, from);
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
    println!(
        "  operator: RSS {} kB before the rotation, {} kB after, peak {} kB; histogram dso_rotation_propagation_seconds count {} sum {}",
        rss_before,
        proc_kb(pid, "VmRSS:"),
        proc_kb(pid, "VmHWM:"),
        metric(&page, "dso_rotation_propagation_seconds_count"),
        metric(&page, "dso_rotation_propagation_seconds_sum")
    );
    print_kube_costs("rotation window", rotation_kube, rotation_kube_after);
    // A peer with per-pod polling, computed (not measured): the Secrets Store CSI driver with
    // the AWS provider polls every mount each --rotation-poll-interval (default 2m, when
    // rotation is enabled), one GetSecretValue per secret object per pod per poll.
    let csi_per_hour = a.pods as f64 * 3600.0 / 120.0;
    let ours_per_hour = a.secrets as f64 * 3600.0 / a.interval_s as f64;
    println!(
        "  computed peer (CSI driver + AWS provider, poll 2m): {csi_per_hour:.0} GetSecretValue per hour whether or not anything rotates, up to 120 s to notice; DSO here: {ours_per_hour:.0} DescribeSecret per hour at {}s (S x 3600/interval, independent of pods) + {} GetSecretValue per rotation",
        a.interval_s, a.pods
    );
    op.stop();
    // Delete and wait for the pods to go, so the next run starts on an idle node.
    drop(wh);
    let gone = Instant::now();
    while gone.elapsed() < Duration::from_secs(600) {
        match pods_api.list(&ListParams::default()).await {
            Ok(l) if !l.items.is_empty() => tokio::time::sleep(Duration::from_secs(3)).await,
            _ => break,
        }
    }
    println!(
        "cleanup: pods gone {:.0} s after the namespace delete",
        gone.elapsed().as_secs_f64()
    );
}
