//! The chart's webhook NetworkPolicy (`webhook.networkPolicy`) on a cluster that enforces it:
//! the local cluster runs SIG Network's kube-network-policies (tests/cluster/up.sh). With the
//! policy on, a pod in another namespace cannot open a connection to the webhook's port, and
//! the API server's admission calls still reach the webhook (an opted-in pod is injected);
//! with it off, the same pod connects — so the refusal is the policy's doing.
//!
//! In the local cluster the API server is a root process on the node, whose traffic
//! kube-network-policies never filters (upstream's rule, like the kubelet's probes): the
//! `from` given here (the node's address) is what a user writes, but it is not what admits the
//! API server locally. On EKS the control plane sits outside the nodes and `from` decides
//! (docs/security.md).
//!
//! Needs, besides the variables of `dso_e2e`, `helm` on PATH and the images of
//! tests/images.sh --import.

use dso_e2e::{
    TestNamespace, annotated, apply, apply_crd, check, client, dso_secret, kubectl, kubectl_stdin,
    namespace, pod, repo_root, unique,
};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

/// The label the local values' webhook selects namespaces by.
const INJECTION_LABEL: (&str, &str) = ("dso.dev/injection", "enabled");
/// The `from` of the policy: the node's address (tests/cluster/common.sh NODE_IP), where the
/// local control plane runs.
const CONTROL_PLANE_CIDR: &str = "10.250.0.2/32";

fn helm(args: &[&str]) -> std::process::Output {
    Command::new("helm").args(args).output().expect(
        "helm not found on PATH: tests/run.sh puts it there (tests/cluster/deps.sh installs it)",
    )
}

/// A release of the chart; uninstalled when dropped (the webhook registration is cluster-wide).
struct Release {
    name: String,
    ns: TestNamespace,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = Command::new("helm")
            .args(["uninstall", &self.name, "-n", &self.ns, "--wait"])
            .output();
    }
}

/// What a busybox pod sees when it opens a TCP connection to `ip:port`: `CONNECTED` or
/// `REFUSED` (a policy drops the SYN: the connection times out).
fn probe_script(ip: &str, port: u16) -> String {
    format!(
        "out=$(printf 'hello\\r\\n\\r\\n' | timeout 5 nc -w 2 {ip} {port} 2>&1); \
         case \"$out\" in *'timed out'*) echo REFUSED;; *) echo CONNECTED;; esac"
    )
}

/// Runs the probe in `ns/pod` until it prints `want` (a policy takes effect, or goes, within
/// moments); returns how long that took.
fn probe_until(ns: &str, pod: &str, ip: &str, port: u16, want: &str) -> Duration {
    let start = Instant::now();
    let script = probe_script(ip, port);
    loop {
        let out = kubectl(&["-n", ns, "exec", pod, "--", "/bin/sh", "-c", &script]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{ns}/{pod} never saw {want} on {ip}:{port}; last: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The init containers the API server's admission chain gives an opted-in pod (a server-side
/// dry run: the webhook is called, nothing runs).
fn injected_init_containers(ns: &str) -> Vec<String> {
    let mut p = pod("probe-injected", &annotated("db"));
    p["metadata"]["namespace"] = ns.into();
    let out = kubectl_stdin(
        &["create", "--dry-run=server", "-o", "json", "-f", "-"],
        &p.to_string(),
    );
    let created: Value = serde_json::from_str(&check(out, "dry-run create of an opted-in pod"))
        .expect("the created pod as JSON");
    created["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

#[tokio::test]
async fn the_webhook_network_policy_refuses_other_pods_and_the_api_server_still_injects() {
    let c = client().await;
    apply_crd();
    let rel_ns = namespace(&c, "e2e-np", &[]).await;
    let app_ns = namespace(&c, "e2e-np-app", &[INJECTION_LABEL]).await;
    let other_ns = namespace(&c, "e2e-np-other", &[]).await;
    let release = Release {
        name: unique("dso-np"),
        ns: rel_ns,
    };
    let rel_ns = release.ns.to_string();
    let chart = repo_root().join("charts/dso");
    let values = repo_root().join("charts/dso/values-local.yaml");
    let values = std::env::var("DSO_CHART_VALUES").unwrap_or_else(|_| values.display().to_string());
    // One replica each: only the webhook's port is under test.
    check(
        helm(&[
            "install",
            &release.name,
            chart.to_str().expect("path"),
            "-n",
            &rel_ns,
            "-f",
            &values,
            "--set",
            "webhook.replicas=1",
            "--set",
            "operator.replicas=1",
            "--set",
            &format!("operator.watchNamespace={app_ns}"),
            "--wait",
            "--timeout",
            "120s",
        ]),
        "helm install",
    );
    let webhook_ip = check(
        kubectl(&[
            "-n",
            &rel_ns,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=webhook",
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ]),
        "the webhook pod's address",
    );
    assert!(
        webhook_ip.starts_with("10.244."),
        "the webhook runs on the pod network: {webhook_ip:?}"
    );
    let port = 8443; // webhook.port
    apply(
        &app_ns,
        &dso_secret(
            "db",
            "e2e/np-db",
            serde_json::json!({"aws": {"roleArn": "arn:aws:iam::123456789012:role/dso-e2e-np"}}),
        ),
    );

    // A pod of another namespace on the pod network.
    let mut other = pod("other", &serde_json::json!({}));
    other["metadata"]["namespace"] = other_ns.to_string().into();
    other["spec"]["terminationGracePeriodSeconds"] = 1.into();
    check(
        kubectl_stdin(&["apply", "-f", "-"], &other.to_string()),
        "the other namespace's pod",
    );
    check(
        kubectl(&[
            "-n",
            &other_ns,
            "wait",
            "pod/other",
            "--for=condition=Ready",
            "--timeout=90s",
        ]),
        "the other namespace's pod Ready",
    );

    // Policy off: the other pod connects (the probe can see an open port).
    probe_until(&other_ns, "other", &webhook_ip, port, "CONNECTED");
    assert_eq!(injected_init_containers(&app_ns), vec!["dso-init"]);

    // Policy on: refused, and admission still injects.
    check(
        helm(&[
            "upgrade",
            &release.name,
            chart.to_str().expect("path"),
            "-n",
            &rel_ns,
            "--reuse-values",
            "--set",
            "webhook.networkPolicy.enabled=true",
            "--set",
            &format!("webhook.networkPolicy.from[0].ipBlock.cidr={CONTROL_PLANE_CIDR}"),
            "--wait",
            "--timeout",
            "120s",
        ]),
        "helm upgrade enabling the NetworkPolicy",
    );
    let took = probe_until(&other_ns, "other", &webhook_ip, port, "REFUSED");
    eprintln!(
        "[netpol] refused {:.1}s after helm upgrade",
        took.as_secs_f64()
    );
    for _ in 0..3 {
        let out = kubectl(&[
            "-n",
            &other_ns,
            "exec",
            "other",
            "--",
            "/bin/sh",
            "-c",
            &probe_script(&webhook_ip, port),
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("REFUSED"),
            "the policy let a probe through: {text}"
        );
    }
    let t = Instant::now();
    assert_eq!(
        injected_init_containers(&app_ns),
        vec!["dso-init"],
        "the API server's admission call must still reach the webhook"
    );
    eprintln!(
        "[netpol] injected through the policy in {:.2}s",
        t.elapsed().as_secs_f64()
    );

    // Policy off again: the same pod connects again.
    check(
        helm(&[
            "upgrade",
            &release.name,
            chart.to_str().expect("path"),
            "-n",
            &rel_ns,
            "--reuse-values",
            "--set",
            "webhook.networkPolicy.enabled=false",
            "--wait",
            "--timeout",
            "120s",
        ]),
        "helm upgrade disabling the NetworkPolicy",
    );
    probe_until(&other_ns, "other", &webhook_ip, port, "CONNECTED");
}
