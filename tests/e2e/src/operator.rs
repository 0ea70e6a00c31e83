//! `dso-operator` as a process on this host ([`Operator`]), and what tests read of its work:
//! a DsoSecret's status and events, a Deployment's ReplicaSets, recorded versions and pods'
//! output.

use crate::process::{LogFile, http_get};
use crate::{client, container_log, env, ready, wait_for};
use anyhow::Context;
use dso_api::DsoSecret;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

/// A running `dso-operator`. Killed (SIGKILL) if the test panics before stopping it, and the
/// tail of its log (stdout and stderr) printed.
pub struct Operator {
    child: Option<Child>,
    port: u16,
    log: LogFile,
}

impl Operator {
    /// Starts `$DSO_BIN_DIR/dso-operator` watching `ns` (its Lease there too), its HTTP on
    /// 127.0.0.1:`port`, AWS at `aws_endpoint` with test credentials.
    pub fn start(ns: &str, port: u16, aws_endpoint: &str) -> Operator {
        Operator::start_with(ns, port, aws_endpoint, &[])
    }

    /// Starts one with extra flags.
    pub fn start_with(ns: &str, port: u16, aws_endpoint: &str, flags: &[&str]) -> Operator {
        let bin = PathBuf::from(env("DSO_BIN_DIR")).join("dso-operator");
        assert!(
            bin.exists(),
            "{} missing: build it (tests/images.sh)",
            bin.display()
        );
        let (log, stdout, stderr) = LogFile::create(
            std::env::temp_dir().join(format!("dso-operator-{ns}-{port}.log")),
            "dso-operator",
        );
        let child = Command::new(bin)
            .args([
                "--namespace",
                ns,
                "--lease-namespace",
                ns,
                "--http-addr",
                &format!("127.0.0.1:{port}"),
                "--backoff-max-seconds",
                "5",
            ])
            .args(flags)
            .env("KUBECONFIG", env("KUBECONFIG"))
            .env("AWS_ENDPOINT_URL", aws_endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("RUST_LOG", "info,dso_operator=debug")
            .stdout(stdout)
            .stderr(stderr)
            .stdin(Stdio::null())
            .spawn()
            .expect("start dso-operator");
        Operator {
            child: Some(child),
            port,
            log,
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits until its /readyz answers 200.
    pub async fn ready(&self) {
        let port = self.port;
        wait_for("the operator's /readyz", TIMEOUT, || async move {
            Ok(http_get(port, "/readyz")
                .await
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| ()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Everything the operator logged so far.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// The /metrics page.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = http_get(self.port, "/metrics").await?;
        anyhow::ensure!(status == 200, "GET /metrics: {status}");
        Ok(body)
    }

    /// One series (a name and its labels) from /metrics; an error when it is absent, so that a
    /// renamed or unregistered metric never reads as 0.
    pub async fn try_metric(&self, series: &str) -> anyhow::Result<f64> {
        let body = self.metrics().await?;
        series_value(&body, series).with_context(|| format!("no series {series} in:\n{body}"))
    }

    /// [`Operator::try_metric`], failing the test when the series is absent.
    pub async fn metric(&self, series: &str) -> f64 {
        self.try_metric(series)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// DescribeSecret calls it made, by its own count.
    pub async fn describe_calls(&self) -> f64 {
        self.metric("dso_aws_calls_total{operation=\"DescribeSecret\"}")
            .await
    }

    /// SIGKILL, as a crash: no release of the Lease. Waits for the exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill the operator");
            child.wait().expect("reap the operator");
        }
    }

    /// Waits up to `timeout` for the operator to exit by itself (it does when it loses its
    /// Lease); its exit status, or `None` while it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = std::time::Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("poll the operator") {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() > end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reconciles it has finished, by its own count (0 before the first).
    pub async fn reconciles(&self) -> f64 {
        self.try_metric("dso_reconcile_duration_seconds_count")
            .await
            .unwrap_or(0.0)
    }

    /// SIGTERM (a graceful stop releases the Lease), then waits for the exit.
    pub fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let status = child.wait().expect("wait for the operator");
            assert!(status.success(), "operator exit {status}");
        }
    }
}

impl Drop for Operator {
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

/// The value of one series in a Prometheus text page, if the page has it.
pub fn series_value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// The DsoSecret `name`.
pub async fn get_dso(ns: &str, name: &str) -> anyhow::Result<DsoSecret> {
    Ok(Api::<DsoSecret>::namespaced(client().await, ns)
        .get(name)
        .await?)
}

/// Waits until the DsoSecret's Ready condition has this status and reason.
pub async fn wait_ready(ns: &str, name: &str, status: &str, reason: &str) -> DsoSecret {
    let want = (status.to_string(), reason.to_string());
    wait_for(
        &format!("DsoSecret {name} Ready={status} ({reason})"),
        TIMEOUT,
        || {
            let want = want.clone();
            async move {
                let d = get_dso(ns, name).await?;
                Ok((ready(&d) == Some(want)).then_some(d))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// How many ReplicaSets the Deployment `app` (pods labelled `app: <app>`) has.
pub async fn replicasets(ns: &str, app: &str) -> usize {
    let rs: Api<ReplicaSet> = Api::namespaced(client().await, ns);
    rs.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list ReplicaSets")
        .items
        .len()
}

/// Waits until the operator recorded the Deployment's baseline (it has seen the workload).
pub async fn wait_recorded(ns: &str, name: &str) {
    wait_for(
        "the versions recorded on the Deployment",
        TIMEOUT,
        || async move {
            let d: Api<Deployment> = Api::namespaced(client().await, ns);
            Ok(d.get(name)
                .await?
                .metadata
                .annotations
                .and_then(|a| a.get("dso.dev/recorded-versions").cloned()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// The Deployment's `dso.dev/recorded-versions` (JSON of key → version id), or "" when unset.
pub async fn recorded_versions(ns: &str, name: &str) -> String {
    let d: Api<Deployment> = Api::namespaced(client().await, ns);
    d.get(name)
        .await
        .expect("get the Deployment")
        .metadata
        .annotations
        .and_then(|a| a.get("dso.dev/recorded-versions").cloned())
        .unwrap_or_default()
}

/// The `dso.dev/versions-hash` of the Deployment's pod template: set once DSO has rolled it.
pub async fn template_hash(ns: &str, name: &str) -> Option<String> {
    let d: Api<Deployment> = Api::namespaced(client().await, ns);
    d.get(name)
        .await
        .expect("get Deployment")
        .spec?
        .template
        .metadata?
        .annotations?
        .get("dso.dev/versions-hash")
        .cloned()
}

/// Applies the Deployment `workload` consuming the DsoSecret `dso` (applied before) and waits
/// until it is available, `dso` is Synced and the operator has recorded the workload's
/// versions: from then on a rotation rolls it.
pub async fn apply_consumer(ns: &str, dso: &str, workload: &serde_json::Value) {
    let name = workload["metadata"]["name"]
        .as_str()
        .expect("the workload's name");
    crate::apply(ns, workload);
    wait_available(ns, name).await;
    wait_ready(ns, dso, "True", "Synced").await;
    wait_recorded(ns, name).await;
}

/// The events about the DsoSecret `name`.
pub async fn events(ns: &str, name: &str) -> Vec<Event> {
    events_for(ns, "DsoSecret", name).await
}

/// The events on the object `kind`/`name` in `ns`.
pub async fn events_for(ns: &str, kind: &str, name: &str) -> Vec<Event> {
    let ev: Api<Event> = Api::namespaced(client().await, ns);
    ev.list(&ListParams::default().fields(&format!(
        "involvedObject.kind={kind},involvedObject.name={name}"
    )))
    .await
    .expect("list events")
    .items
}

/// The running pods of `app` (labelled `app: <app>`) and the logs of their `app` containers.
pub async fn app_logs(ns: &str, app: &str) -> Vec<(Pod, String)> {
    let pods: Api<Pod> = Api::namespaced(client().await, ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list pods");
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .map(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            let log = container_log(ns, &name, "app").unwrap_or_default();
            (p, log)
        })
        .collect()
}

/// Waits (up to two minutes: a rollout included) until a running pod of `app` has printed
/// `line`; returns that pod.
pub async fn wait_printed(ns: &str, app: &str, line: &str) -> anyhow::Result<Pod> {
    wait_for(
        &format!("a pod of {app} printing {line}"),
        Duration::from_secs(120),
        || async {
            Ok(app_logs(ns, app)
                .await
                .into_iter()
                .find(|(_, log)| log.contains(line))
                .map(|(p, _)| p))
        },
    )
    .await
}

/// A Deployment consuming `secrets` whose rollout, once DSO starts one, never completes by
/// itself: a pod is ready only while its template has no `dso.dev/versions-hash` (read through
/// the downward API), so the first pod becomes ready and the pods of a DSO rollout never do,
/// and the old pod stays (maxUnavailable 0). With `progress_deadline` the Deployment is marked
/// `ProgressDeadlineExceeded` that many seconds into the rollout.
pub fn slow_rollout_deployment(
    name: &str,
    secrets: &str,
    progress_deadline: Option<u32>,
) -> serde_json::Value {
    let mut app = crate::app_container("app", "sleep 3600");
    app["readinessProbe"] = serde_json::json!({
        "exec": {"command": ["/bin/sh", "-c", "! grep -q versions-hash /etc/podinfo/annotations"]},
        "periodSeconds": 1
    });
    app["volumeMounts"] = serde_json::json!([{"name": "podinfo", "mountPath": "/etc/podinfo"}]);
    let mut d = crate::deployment(name, &crate::annotated(secrets), vec![app]);
    let spec = &mut d["spec"];
    spec["strategy"] = serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    if let Some(secs) = progress_deadline {
        spec["progressDeadlineSeconds"] = serde_json::json!(secs);
    }
    let pod = &mut spec["template"]["spec"];
    pod["terminationGracePeriodSeconds"] = serde_json::json!(1);
    pod["volumes"] = serde_json::json!([{"name": "podinfo", "downwardAPI": {"items": [
        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}
    ]}}]);
    d
}

/// Waits until the Deployment `name` has a ready, available pod.
pub async fn wait_available(ns: &str, name: &str) {
    wait_for(
        &format!("Deployment {name} available"),
        Duration::from_secs(90),
        || async move {
            let d: Api<Deployment> = Api::namespaced(client().await, ns);
            let d = d.get(name).await?;
            Ok((d.status.and_then(|s| s.available_replicas).unwrap_or(0) >= 1).then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// The Deployment's revision (`deployment.kubernetes.io/revision`): one more per rollout.
pub async fn revision(ns: &str, name: &str) -> Option<String> {
    let d: Api<Deployment> = Api::namespaced(client().await, ns);
    d.get(name)
        .await
        .ok()?
        .metadata
        .annotations?
        .get("deployment.kubernetes.io/revision")
        .cloned()
}

/// Waits until the Deployment `app` has `n` ReplicaSets.
pub async fn wait_replicasets(ns: &str, app: &str, n: usize, timeout: Duration) {
    wait_for(
        &format!("{n} ReplicaSets of {app}"),
        timeout,
        || async move { Ok((replicasets(ns, app).await == n).then_some(())) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}
