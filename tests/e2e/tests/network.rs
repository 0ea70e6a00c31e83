//! The local cluster is shaped like production: pods on their own network (no hostNetwork),
//! Services routed by kube-proxy, names served by CoreDNS, `kubectl exec`/`logs` reaching the
//! node — and no route by which a pod's traffic could leave the machine.
//!
//! Runs inside the cluster's network namespace (tests/run.sh does that); `DSO_POD_AWS_ENDPOINT`
//! is moto as pods reach it, by name.

use dso_e2e::{check, env, kubectl, kubectl_stdin, unique};
use std::time::Duration;

/// `kubectl exec` in a pod, retried until `want` is in its output (a Service's endpoints and
/// kube-proxy's rules follow a pod's readiness by a moment).
fn exec_until(ns: &str, pod: &str, script: &str, want: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = kubectl(&["-n", ns, "exec", pod, "--", "/bin/sh", "-c", script]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if text.contains(want) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`{script}` in {ns}/{pod} never printed {want:?}; last output: {text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn pod_yaml(name: &str, labels: &str, script: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{{labels}}}}}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {{runAsNonRoot: true, runAsUser: 1001, seccompProfile: {{type: RuntimeDefault}}}}
  containers:
    - name: app
      image: {image}
      imagePullPolicy: Never
      command: ["/bin/sh", "-c", {script:?}]
      securityContext: {{allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
"#,
        image = env("DSO_BUSYBOX_IMAGE")
    )
}

#[test]
fn a_pod_without_host_network_resolves_a_service_and_reaches_another_pod_through_it() {
    let ns = unique("e2e-net");
    check(kubectl(&["create", "namespace", &ns]), "create namespace");
    check(
        kubectl(&["label", "namespace", &ns, "pod-security.kubernetes.io/enforce=restricted"]),
        "label namespace",
    );
    let server = pod_yaml(
        "server",
        "app: echo",
        "while true; do echo \"pong from $(hostname)\" | nc -l -p 8080; done",
    );
    let service = r#"
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
"#;
    let client = pod_yaml("client", "app: client", "exec sleep 3600");
    check(
        kubectl_stdin(&["-n", &ns, "apply", "-f", "-"], &format!("{server}\n---\n{service}\n---\n{client}")),
        "apply pods and Service",
    );
    check(
        kubectl(&["-n", &ns, "wait", "pod/server", "pod/client", "--for=condition=Ready", "--timeout=90s"]),
        "pods Ready",
    );
    let ips = check(
        kubectl(&["-n", &ns, "get", "pods", "-o", "jsonpath={.items[*].status.podIP} {.items[*].spec.hostNetwork}"]),
        "pod IPs",
    );
    assert!(
        ips.split_whitespace().filter(|ip| ip.starts_with("10.244.")).count() == 2 && !ips.contains("true"),
        "both pods have their own address on the pod network: {ips}"
    );
    let svc_ip = check(
        kubectl(&["-n", &ns, "get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}"]),
        "Service IP",
    );
    let name = format!("echo.{ns}.svc.cluster.local");
    // DNS: CoreDNS answers the Service's name with its ClusterIP.
    let lookup = exec_until(&ns, "client", &format!("nslookup {name}"), &svc_ip);
    assert!(lookup.contains(&svc_ip), "{lookup}");
    // kube-proxy: the ClusterIP reaches the other pod, by name and by the short search-list name.
    let reply = exec_until(&ns, "client", &format!("nc -w 3 {name} 80 </dev/null"), "pong from server");
    assert!(reply.contains("pong from server"), "{reply}");
    exec_until(&ns, "client", "nc -w 3 echo 80 </dev/null", "pong from server");
    // The in-cluster `kubernetes` Service reaches the API server (anonymous /readyz is public).
    exec_until(
        &ns,
        "client",
        "printf 'GET /version HTTP/1.0\\r\\n\\r\\n' | nc -w 3 kubernetes.default.svc 443 | head -c 200; echo; nslookup kubernetes.default.svc.cluster.local",
        "10.0.0.1",
    );
    // moto, as DSO's pods reach it: by name through its Service.
    let endpoint = env("DSO_POD_AWS_ENDPOINT");
    let hostport = endpoint.trim_start_matches("http://");
    let (host, port) = hostport.split_once(':').expect("DSO_POD_AWS_ENDPOINT is http://host:port");
    exec_until(
        &ns,
        "client",
        &format!("printf 'GET /moto-api/ HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' | nc -w 3 {host} {port} | head -n 1"),
        "200",
    );
    // `kubectl logs` reaches the node (the apiserver refuses loopback node addresses).
    let logs = kubectl(&["-n", &ns, "logs", "client"]);
    assert!(logs.status.success(), "kubectl logs: {}", String::from_utf8_lossy(&logs.stderr));
    kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

#[test]
fn no_route_leads_out_of_the_machine_and_nothing_masquerades_the_pod_network() {
    let netns = env("DSO_NETNS");
    let run = |args: &[&str]| -> String {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // This test runs in the cluster's namespace: its routing table is the node's.
    let routes = run(&["ip", "route", "show"]);
    assert!(!routes.contains("default"), "the cluster namespace has a default route: {routes}");
    let links = run(&["ip", "-o", "link", "show"]);
    for line in links.lines() {
        let name = line.split(':').nth(1).unwrap_or("").trim();
        let name = name.split('@').next().unwrap_or("");
        assert!(
            name == "lo" || name == "dso-br0" || name.starts_with("veth"),
            "unexpected interface {name:?} in the cluster namespace (only lo, the pod bridge and pod veths): {links}"
        );
        if name.starts_with("veth") {
            assert!(line.contains("master dso-br0"), "a veth outside the pod bridge: {line}");
        }
    }
    // A packet to any address outside the cluster — from the node or forwarded from a pod, which
    // share this one routing table — has no route (nothing is sent: the kernel answers from
    // its tables), and no policy rule points to another table.
    let verdict = run(&["ip", "route", "get", "192.0.2.1"]);
    assert!(verdict.contains("unreachable"), "the cluster could route out: {verdict}");
    let rules = run(&["ip", "rule", "show"]);
    assert_eq!(rules.lines().count(), 3, "only the default policy rules: {rules}");
    // The host knows nothing of the pod network: no route to it, no NAT rule for it.
    let host = |args: &[&str]| {
        let mut all = vec!["nsenter", "--net=/proc/1/ns/net"];
        all.extend_from_slice(args);
        run(&all)
    };
    let host_routes = host(&["ip", "route", "show"]);
    assert!(!host_routes.contains("10.244."), "the host routes to the pod network: {host_routes}");
    let host_nat = host(&["iptables", "-t", "nat", "-S"]);
    assert!(!host_nat.contains("10.244."), "the host NATs the pod network: {host_nat}");
    let host_links = host(&["ip", "-o", "link", "show"]);
    assert!(!host_links.contains("dso-br0"), "the pod bridge is on the host: {host_links}");
    assert!(
        run(&["ip", "netns", "identify"]).trim() == netns,
        "the suite should run inside {netns} (tests/run.sh)"
    );
}
