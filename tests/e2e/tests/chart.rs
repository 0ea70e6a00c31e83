//! The Helm chart, installed with `helm install` as a user would, running the whole story:
//! the operator marks a DsoSecret Ready, the webhook injects dso-init into a Deployment's pod,
//! dso-init fetches the value with the pod's own IRSA identity, a rotation in AWS rolls the
//! Deployment onto the new value, and `helm uninstall` leaves nothing behind but the CRD.
//!
//! Besides the variables of `dso_e2e` (KUBECONFIG, DSO_MOTO_ENDPOINT, DSO_BUSYBOX_IMAGE,
//! DSO_POD_LOGS_DIR), with `helm` and `kubectl` on PATH:
//!
//! | variable | meaning |
//! |---|---|
//! | `DSO_CHART_VALUES` | values file for this cluster; default `charts/dso/values-local.yaml` (the local cluster and kind: moto at `moto.aws.svc.cluster.local`) |
//!
//! The tests that only render the chart (`helm lint`, `helm template`) need `helm` and no
//! cluster; the CRD copy check needs neither.

use dso_api::DsoSecret;
use dso_e2e::{
    TestNamespace, annotated, client, container_log, create_secret, env, kubectl, kubectl_stdin,
    namespace, pod, put_secret_value, ready, repo_root, unique, wait_for,
};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::Resource;
use kube::api::{Api, ListParams};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const ROLE: &str = "arn:aws:iam::123456789012:role/dso-e2e-chart";
/// The label the local values' webhook selects namespaces by.
const INJECTION_LABEL: (&str, &str) = ("dso.dev/injection", "enabled");

/// A value of [`INJECTION_LABEL`]'s key for one test's release alone, and the `--set` that
/// makes its webhook select only namespaces carrying it. The tests of this file run at the
/// same time: with one shared label, every release's webhook also intercepts the other tests'
/// pods — and a release still being installed (no caBundle yet) refuses them with "x509:
/// certificate signed by unknown authority".
fn own_injection_label(prefix: &str) -> (String, String) {
    let label = unique(prefix);
    let set = format!("webhook.namespaceSelector.matchLabels.dso\\.dev/injection={label}");
    (label, set)
}

fn repo(path: &str) -> PathBuf {
    repo_root().join(path)
}

fn helm(args: &[&str]) -> std::process::Output {
    Command::new("helm").args(args).output().expect(
        "helm not found on PATH: tests/run.sh puts it there (tests/cluster/deps.sh installs it)",
    )
}

/// The command's stdout, or an error with its output.
fn ok(what: &str, out: std::process::Output) -> anyhow::Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

#[test]
fn the_chart_ships_the_generated_crd_unchanged() {
    let generated = std::fs::read(repo("crds/dso.dev_dsosecrets.yaml")).expect("crds/");
    let shipped =
        std::fs::read(repo("charts/dso/crds/dso.dev_dsosecrets.yaml")).expect("chart crds/");
    assert!(
        generated == shipped,
        "charts/dso/crds/dso.dev_dsosecrets.yaml differs from crds/dso.dev_dsosecrets.yaml: \
         cp crds/dso.dev_dsosecrets.yaml charts/dso/crds/"
    );
}

#[test]
fn helm_lint_passes_with_the_default_and_the_local_values() {
    let chart = repo("charts/dso");
    let chart = chart.to_str().expect("path");
    let local = repo("charts/dso/values-local.yaml");
    for extra in [vec![], vec!["-f", local.to_str().expect("path")]] {
        let mut args = vec!["lint", "--strict", chart];
        args.extend(extra);
        let out = ok("helm lint", helm(&args)).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
    // The schema refuses a failure policy the API server would not know.
    let out = helm(&["lint", chart, "--set", "webhook.failurePolicy=Sometimes"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("/webhook/failurePolicy"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The chart rendered offline (release `dso` in `dso-system`) as JSON documents.
fn template(extra: &[&str]) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    let chart = repo("charts/dso");
    let mut args = vec![
        "template",
        "dso",
        chart.to_str().expect("path"),
        "-n",
        "dso-system",
        "--kube-version",
        "1.36.0",
    ];
    args.extend_from_slice(extra);
    let yaml = ok("helm template", helm(&args)).unwrap_or_else(|e| panic!("{e:#}"));
    serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|doc| serde_json::Value::deserialize(doc).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(docs: &[serde_json::Value]) -> Vec<&str> {
    docs.iter().filter_map(|d| d["kind"].as_str()).collect()
}

#[test]
fn no_role_of_the_chart_grants_access_to_secrets_or_wildcards() {
    for values in [vec![], vec!["--set", "operator.watchNamespace=shop"]] {
        let mut checked = Vec::new();
        for doc in template(&values) {
            if !matches!(doc["kind"].as_str(), Some("ClusterRole" | "Role")) {
                continue;
            }
            let (kind, name) = (&doc["kind"], &doc["metadata"]["name"]);
            checked.push(format!(
                "{}/{}",
                kind.as_str().unwrap_or_default(),
                name.as_str().unwrap_or_default()
            ));
            for rule in doc["rules"].as_array().expect("rules") {
                let resources: Vec<&str> = rule["resources"]
                    .as_array()
                    .expect("resources")
                    .iter()
                    .filter_map(|r| r.as_str())
                    .collect();
                let verbs = rule["verbs"].to_string();
                // The one exception: the webhook's own certificate Secret, by name
                // (webhook.tls.mode runtime).
                let own_certificate =
                    rule["resourceNames"] == serde_json::json!(["dso-webhook-certs"]);
                assert!(
                    !resources
                        .iter()
                        .any(|r| (*r == "secrets" && !own_certificate) || r.contains('*')),
                    "{} grants {resources:?}",
                    doc["metadata"]["name"]
                );
                assert!(
                    !verbs.contains('*'),
                    "{} grants verbs {verbs}",
                    doc["metadata"]["name"]
                );
            }
        }
        // The operator's and the webhook's ClusterRoles, the operator's leader-election Role,
        // the webhook's Role (its certificate Secret and Lease).
        assert_eq!(
            checked.len(),
            4,
            "{values:?} rendered the roles {checked:?}"
        );
    }
}

#[test]
fn with_cert_manager_the_chart_requests_a_certificate_and_generates_no_key() {
    let docs = template(&["--set", "webhook.tls.certManager.enabled=true"]);
    let kinds = kinds(&docs);
    assert!(
        kinds.contains(&"Certificate") && kinds.contains(&"Issuer"),
        "{kinds:?}"
    );
    assert!(
        !kinds.contains(&"Secret"),
        "the chart generated a key: {kinds:?}"
    );
    let mwc = docs
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("the webhook configuration");
    assert_eq!(
        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "dso-system/dso-webhook"
    );
    assert!(mwc["webhooks"][0]["clientConfig"]["caBundle"].is_null());
}

#[test]
fn the_webhook_registration_is_fail_closed_short_and_only_for_opted_in_pods() {
    let docs = template(&["--set", "webhook.namespaceSelector.matchLabels.team=shop"]);
    let mwc = docs
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("the webhook configuration");
    let w = &mwc["webhooks"][0];
    assert_eq!(w["failurePolicy"], "Fail");
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["timeoutSeconds"], 5);
    assert_eq!(w["reinvocationPolicy"], "IfNeeded");
    assert_eq!(w["admissionReviewVersions"], serde_json::json!(["v1"]));
    assert_eq!(w["rules"][0]["operations"], serde_json::json!(["CREATE"]));
    assert_eq!(
        w["namespaceSelector"]["matchExpressions"][0]["values"],
        serde_json::json!(["dso-system", "kube-system"])
    );
    assert_eq!(w["namespaceSelector"]["matchLabels"]["team"], "shop");
    let cel = w["matchConditions"][0]["expression"].as_str().expect("CEL");
    assert!(cel.contains("'dso.dev/inject'"), "{cel}");
    assert_eq!(w["clientConfig"]["service"]["path"], "/mutate");
    // Two replicas by default, kept available through node drains.
    let pdb = docs
        .iter()
        .find(|d| d["kind"] == "PodDisruptionBudget")
        .expect("a PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
}

#[test]
fn every_container_of_the_chart_has_probes_resources_and_a_restricted_context() {
    let (mut deployments, mut containers) = (Vec::new(), 0);
    for doc in template(&[]) {
        if doc["kind"] != "Deployment" {
            continue;
        }
        let name = &doc["metadata"]["name"];
        deployments.push(name.as_str().unwrap_or_default().to_string());
        let spec = &doc["spec"]["template"]["spec"];
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        assert_eq!(doc["spec"]["replicas"], 2, "{name}");
        for c in spec["containers"].as_array().expect("containers") {
            containers += 1;
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{name}"
            );
            for field in ["livenessProbe", "readinessProbe", "startupProbe"] {
                assert!(c[field].is_object(), "{name} has no {field}");
            }
            for field in ["requests", "limits"] {
                assert!(
                    c["resources"][field]["memory"].is_string(),
                    "{name} has no memory {field}"
                );
            }
        }
    }
    // The operator and the webhook, one container each.
    assert_eq!(deployments.len(), 2, "{deployments:?}");
    assert_eq!(containers, 2, "{deployments:?}");
}

fn secret_json(password: &str) -> String {
    serde_json::json!({"username": "shop", "password": password}).to_string()
}

/// The app: prints its secret file, then sleeps. Host network: the local node is loopback-only.
fn app_manifests(ns: &str, secret_id: &str) -> String {
    let busybox = env("DSO_BUSYBOX_IMAGE");
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
  namespace: {ns}
  annotations:
    eks.amazonaws.com/role-arn: {ROLE}
---
apiVersion: dso.dev/v1alpha1
kind: DsoSecret
metadata:
  name: db
  namespace: {ns}
spec:
  aws: {{region: us-east-1}}
  files:
    - {{path: password, secretId: "{secret_id}", jsonKey: password}}
  refresh: {{interval: 10s, strategy: Rollout}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
      annotations:
        dso.dev/inject: "true"
        dso.dev/secrets: db
    spec:
      serviceAccountName: web
      terminationGracePeriodSeconds: 1
      securityContext:
        runAsNonRoot: true
        runAsUser: 1001
        seccompProfile: {{type: RuntimeDefault}}
      containers:
        - name: app
          image: {busybox}
          imagePullPolicy: IfNotPresent
          command: ["/bin/sh", "-c", "echo \"password=$(cat /run/secrets/dso/db/password)\"; exec sleep 3600"]
          resources:
            requests: {{cpu: 10m, memory: 16Mi}}
            limits: {{cpu: 100m, memory: 32Mi}}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {{drop: [ALL]}}
"#
    )
}

/// A bare pod in `ns`, opted in to DSO or not.
fn probe_pod(ns: &str, name: &str, inject: bool) -> String {
    let annotations = if inject {
        annotated("db")
    } else {
        serde_json::json!({})
    };
    let mut p = pod(name, &annotations);
    p["metadata"]["namespace"] = ns.into();
    p.to_string()
}

/// A pod of ServiceAccount `web` in `ns` whose container `app` has `X: <value>`.
fn env_pod(ns: &str, name: &str, inject: bool, value: &str) -> String {
    let annotations = if inject {
        annotated("db")
    } else {
        serde_json::json!({})
    };
    let mut p = pod(name, &annotations);
    p["metadata"]["namespace"] = ns.into();
    p["spec"]["serviceAccountName"] = "web".into();
    p["spec"]["containers"][0]["env"] = serde_json::json!([{"name": "X", "value": value}]);
    p.to_string()
}

/// `kubectl create --dry-run=server -o json`: the admitted object, or the refusal.
fn dry_create(manifest: &str) -> Result<serde_json::Value, String> {
    let out = kubectl_stdin(
        &["create", "--dry-run=server", "-o", "json", "-f", "-"],
        manifest,
    );
    if out.status.success() {
        serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Issue 14 through the installed chart: its ValidatingAdmissionPolicy refuses `dso://` in a
/// pod that does not opt in (the webhook never sees it), naming container and variable, while
/// an opted-in pod is still rewritten and an ordinary value passes; its ValidatingWebhookConfiguration
/// makes `kubectl apply` refuse a DsoSecret whose template does not parse or reads an undeclared
/// source, naming `spec.files[N].template`.
async fn env_references_and_templates_at_admission(app_ns: &str) -> anyhow::Result<()> {
    let refusal = dry_create(&env_pod(app_ns, "unopted", false, "dso://db/password"))
        .err()
        .ok_or_else(|| anyhow::anyhow!("a pod with dso:// that does not opt in was admitted"))?;
    anyhow::ensure!(
        refusal.contains("-env-references")
            && refusal.contains(r#"container "app", env X: dso://db/password"#)
            && refusal.contains("does not opt in"),
        "the refusal does not name the policy, the container and the variable: {refusal}"
    );
    let admitted = dry_create(&env_pod(app_ns, "opted-in", true, "dso://db/password"))
        .map_err(|e| anyhow::anyhow!("an opted-in pod with dso:// was refused: {e}"))?;
    let x = &admitted["spec"]["containers"][0]["env"][0];
    anyhow::ensure!(
        x["value"].is_null() && x["valueFrom"]["fileKeyRef"]["volumeName"] == "dso-secrets",
        "the opted-in pod's dso:// was not rewritten: {x}"
    );
    dry_create(&env_pod(app_ns, "plain-value", false, "postgres://db:5432"))
        .map_err(|e| anyhow::anyhow!("a pod with an ordinary value was refused: {e}"))?;

    // (files, the field, a phrase of the message)
    let broken = [
        (
            r#"[{path: password, secretId: a}, {path: url, template: "{{ db.password", sources: {db: {secretId: a}}}]"#,
            "spec.files[1].template",
            "syntax error",
        ),
        (
            r#"[{path: url, template: "{{ api.key }}", sources: {db: {secretId: a}}}]"#,
            "spec.files[0].template",
            "\"api\"",
        ),
    ];
    for (files, field, phrase) in broken {
        let manifest = format!(
            "apiVersion: dso.dev/v1alpha1\nkind: DsoSecret\nmetadata: {{name: broken, namespace: {app_ns}}}\nspec:\n  files: {files}\n"
        );
        let out = kubectl_stdin(&["apply", "-f", "-"], &manifest);
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(
            !out.status.success()
                && stderr.contains("validate.dso.dev")
                && stderr.contains(field)
                && stderr.contains(phrase),
            "kubectl apply of a DsoSecret with files {files} was not refused by validate.dso.dev naming {field} / {phrase}: {stderr}"
        );
    }
    Ok(())
}

/// What a user would look at when the story breaks: printed on failure.
fn diagnostics(rel_ns: &str, app_ns: &str) -> String {
    let mut out = String::new();
    for args in [
        vec!["get", "all,dsosecrets,events", "-n", app_ns, "-o", "wide"],
        vec!["get", "all,events", "-n", rel_ns, "-o", "wide"],
        vec!["describe", "pods", "-n", app_ns],
        vec!["describe", "pods", "-n", rel_ns],
        vec!["get", "dsosecrets", "-n", app_ns, "-o", "yaml"],
    ] {
        let o = kubectl(&args);
        out.push_str(&format!(
            "\n$ kubectl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let dir = env("DSO_POD_LOGS_DIR");
    for ns in [rel_ns, app_ns] {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(&format!("{ns}_")) else {
                continue;
            };
            let pod = rest.split('_').next().unwrap_or_default();
            for c in std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let c = c.file_name().to_string_lossy().into_owned();
                let log = container_log(ns, pod, &c).unwrap_or_default();
                out.push_str(&format!("\n--- log {ns}/{pod}/{c}\n{log}"));
            }
        }
    }
    out
}

/// A release in `rel_ns` serving `app_ns`. Whatever happened, the cluster-wide webhook
/// registration must not outlive the test: dropping it uninstalls the release (when installed),
/// then the namespaces go.
struct Release {
    name: String,
    installed: bool,
    /// Dropped after [`Drop::drop`] has uninstalled the release.
    rel_ns: TestNamespace,
    app_ns: TestNamespace,
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.installed {
            let _ = Command::new("helm")
                .args(["uninstall", &self.name, "-n", &self.rel_ns, "--wait"])
                .output();
        }
    }
}

/// Pods of a ReplicaSet that run with their app container started.
async fn running_pod_of(pods: &Api<Pod>, rs: &str) -> anyhow::Result<Option<Pod>> {
    let list = pods.list(&ListParams::default().labels("app=web")).await?;
    Ok(list.items.into_iter().find(|p| {
        let owned = p
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.name == rs);
        let running = p
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|ph| ph == "Running");
        owned && running && p.metadata.deletion_timestamp.is_none()
    }))
}

/// Names of the objects a list returns.
async fn names<K>(api: Api<K>, params: &ListParams) -> anyhow::Result<Vec<String>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .list(params)
        .await?
        .items
        .into_iter()
        .filter_map(|o| o.meta().name.clone())
        .collect())
}

async fn replica_sets(rss: &Api<ReplicaSet>) -> anyhow::Result<Vec<ReplicaSet>> {
    Ok(rss
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items)
}

#[tokio::test]
async fn the_api_server_finds_the_charts_pods_pod_security_restricted() {
    let c = client().await;
    let ns = namespace(
        &c,
        "e2e-chart-pss",
        &[
            ("pod-security.kubernetes.io/enforce", "restricted"),
            ("pod-security.kubernetes.io/warn", "restricted"),
        ],
    )
    .await;
    let chart = repo("charts/dso");
    let rendered = ok(
        "helm template",
        helm(&[
            "template",
            "dso",
            chart.to_str().expect("path"),
            "-n",
            &ns,
            "--kube-version",
            "1.36.0",
        ]),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let out = kubectl_stdin(
        &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
        &rendered,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("PodSecurity"),
        "the chart's pods break Pod Security restricted: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("deployment.apps/dso-webhook created (server dry run)"),
        "{stdout}"
    );
}

#[tokio::test]
async fn the_installed_chart_injects_rotates_and_uninstalls_cleanly() {
    let c = client().await;
    // The local values as they are: the same file works on the local cluster and on kind
    // (both serve moto as moto.aws.svc.cluster.local).
    let values = std::env::var("DSO_CHART_VALUES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo("charts/dso/values-local.yaml"));
    env("DSO_POD_LOGS_DIR");

    let rel_ns = namespace(&c, "e2e-chart", &[]).await;
    let (label, selector) = own_injection_label("chart");
    let app_ns = namespace(&c, "e2e-chart-app", &[(INJECTION_LABEL.0, label.as_str())]).await;
    let mut release = Release {
        name: format!("dso-{}", rel_ns.trim_start_matches("e2e-chart-")),
        installed: false,
        rel_ns,
        app_ns,
    };
    let (rel_ns, app_ns) = (release.rel_ns.to_string(), release.app_ns.to_string());
    let name = release.name.clone();
    let fullname = name.clone(); // the release name contains "dso": resources are named after it

    // helm install, waiting for both rollouts.
    let chart = repo("charts/dso");
    let install = helm(&[
        "install",
        &name,
        chart.to_str().expect("path"),
        "-n",
        &rel_ns,
        "-f",
        values.to_str().expect("path"),
        "--set",
        &format!("operator.watchNamespace={app_ns}"),
        "--set",
        &selector,
        "--wait",
        "--timeout",
        "120s",
    ]);
    release.installed = true;
    if !install.status.success() {
        panic!(
            "helm install failed: {}\n{}",
            String::from_utf8_lossy(&install.stderr),
            diagnostics(&rel_ns, &app_ns)
        );
    }
    let notes = String::from_utf8_lossy(&install.stdout);
    assert!(
        notes.contains("dso.dev/inject"),
        "NOTES.txt tells what to do next: {notes}"
    );

    if let Err(e) = scenario(&c, &rel_ns, &app_ns, &name, &fullname).await {
        panic!("{e:#}\n{}", diagnostics(&rel_ns, &app_ns));
    }
    release.installed = false;
}

async fn scenario(
    c: &kube::Client,
    rel_ns: &str,
    app_ns: &str,
    name: &str,
    fullname: &str,
) -> anyhow::Result<()> {
    // The serving certificate the webhook issued at run time (webhook.tls.mode runtime, the
    // default) survives an upgrade (helm never renders its data), and so does the caBundle
    // the webhook patched.
    let start = std::time::Instant::now();
    let progress = |what: &str| eprintln!("[chart +{:.1}s] {what}", start.elapsed().as_secs_f64());
    let tls_secret = format!("{fullname}-webhook-certs");
    let secrets_rel: Api<Secret> = Api::namespaced(c.clone(), rel_ns);
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(c.clone());
    let mwc_name = format!("{fullname}-webhook");
    let ca_bundle = |mwc: MutatingWebhookConfiguration| {
        mwc.webhooks
            .unwrap_or_default()
            .first()
            .and_then(|w| w.client_config.ca_bundle.clone())
    };
    // Registered as on EKS: through the webhook's Service, never by URL; both components on
    // the pod network (their own addresses), two replicas each.
    let mwc = mwcs.get(&mwc_name).await?;
    let client_config = mwc
        .webhooks
        .as_ref()
        .and_then(|w| w.first())
        .map(|w| w.client_config.clone())
        .unwrap_or_default();
    anyhow::ensure!(
        client_config.url.is_none()
            && client_config.service.as_ref().map(|s| s.name.as_str())
                == Some(format!("{fullname}-webhook").as_str()),
        "the webhook is not registered through its Service: {client_config:?}"
    );
    let rel_pods: Api<Pod> = Api::namespaced(c.clone(), rel_ns);
    let component_pods = rel_pods.list(&ListParams::default()).await?.items;
    anyhow::ensure!(
        component_pods.len() == 4,
        "two webhook and two operator pods: {:?}",
        component_pods
            .iter()
            .map(|p| p.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    for p in &component_pods {
        let host_network = p
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let status = p.status.clone().unwrap_or_default();
        anyhow::ensure!(
            !host_network && status.pod_ip.is_some() && status.pod_ip != status.host_ip,
            "{:?} is not on the pod network (hostNetwork {host_network}, podIP {:?}, hostIP {:?})",
            p.metadata.name,
            status.pod_ip,
            status.host_ip
        );
    }
    let cert_before = secrets_rel.get(&tls_secret).await?.data;
    let bundle_before = ca_bundle(mwcs.get(&mwc_name).await?);
    anyhow::ensure!(
        bundle_before.is_some()
            && bundle_before.as_ref() == cert_before.as_ref().and_then(|d| d.get("ca.crt")),
        "the webhook configuration's caBundle is not the CA of the webhook's certificate"
    );
    progress("installed; upgrading");
    ok(
        "helm upgrade",
        helm(&[
            "upgrade",
            name,
            repo("charts/dso").to_str().expect("path"),
            "-n",
            rel_ns,
            "--reuse-values",
            "--wait",
            "--timeout",
            "120s",
        ]),
    )?;
    anyhow::ensure!(
        secrets_rel.get(&tls_secret).await?.data == cert_before,
        "helm upgrade replaced the webhook's certificate"
    );
    anyhow::ensure!(
        ca_bundle(mwcs.get(&mwc_name).await?) == bundle_before,
        "helm upgrade changed the caBundle"
    );
    progress("upgraded; certificate kept");

    // A secret in AWS, and an app that consumes it.
    let secret_id = unique("e2e/chart/db");
    let canary1 = unique("canary-chart-v1");
    let canary2 = unique("canary-chart-v2");
    create_secret(&secret_id, &secret_json(&canary1)).await;
    ok(
        "kubectl apply of the app",
        kubectl_stdin(&["apply", "-f", "-"], &app_manifests(app_ns, &secret_id)),
    )?;

    progress("secret created in AWS, app applied");
    // The operator marks the DsoSecret Ready.
    let dsos: Api<DsoSecret> = Api::namespaced(c.clone(), app_ns);
    wait_for(
        "DsoSecret db Ready=True",
        Duration::from_secs(60),
        || async {
            let d = dsos.get("db").await?;
            Ok(ready(&d).filter(|(s, _)| s == "True"))
        },
    )
    .await?;

    progress("DsoSecret Ready");
    // The webhook injected dso-init; dso-init fetched the value; the app prints it.
    let pods: Api<Pod> = Api::namespaced(c.clone(), app_ns);
    let rss: Api<ReplicaSet> = Api::namespaced(c.clone(), app_ns);
    let first_rs = wait_for("the first ReplicaSet", Duration::from_secs(30), || async {
        Ok(replica_sets(&rss)
            .await?
            .first()
            .and_then(|r| r.metadata.name.clone()))
    })
    .await?;
    let pod = wait_for("the app pod Running", Duration::from_secs(90), || async {
        running_pod_of(&pods, &first_rs).await
    })
    .await?;
    let spec = pod.spec.clone().unwrap_or_default();
    let init = spec.init_containers.clone().unwrap_or_default();
    anyhow::ensure!(
        init.first().map(|i| i.name.as_str()) == Some("dso-init"),
        "the webhook did not inject dso-init first: {init:?}"
    );
    anyhow::ensure!(
        pod.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("dso.dev/injected")),
        "the pod has no dso.dev/injected annotation"
    );
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    wait_for(
        "the first value in the app's log",
        Duration::from_secs(30),
        || async {
            Ok(container_log(app_ns, &pod_name, "app")?
                .contains(&format!("password={canary1}"))
                .then_some(()))
        },
    )
    .await?;

    progress("pod injected and Running; the app printed the first value");
    env_references_and_templates_at_admission(app_ns).await?;
    progress("dso:// without opting in refused, opted in rewritten; broken templates refused");
    // Rotation in AWS: the operator rolls the Deployment; the new pod reads the new value.
    put_secret_value(&secret_id, &secret_json(&canary2)).await;
    let second_rs = wait_for(
        "a new ReplicaSet after the rotation",
        Duration::from_secs(90),
        || async {
            Ok(replica_sets(&rss)
                .await?
                .into_iter()
                .filter_map(|r| r.metadata.name)
                .find(|n| *n != first_rs))
        },
    )
    .await?;
    let new_pod = wait_for("the new pod Running", Duration::from_secs(90), || async {
        running_pod_of(&pods, &second_rs).await
    })
    .await?;
    let new_pod_name = new_pod.metadata.name.clone().unwrap_or_default();
    wait_for(
        "the new value in the new pod's log",
        Duration::from_secs(30),
        || async {
            Ok(container_log(app_ns, &new_pod_name, "app")?
                .contains(&format!("password={canary2}"))
                .then_some(()))
        },
    )
    .await?;
    let d = dsos.get("db").await?;
    let rotation = d.status.as_ref().and_then(|s| s.last_rotation.as_ref());
    anyhow::ensure!(
        rotation.is_some_and(|r| r.workloads.iter().any(|w| w.contains("web"))),
        "status.lastRotation does not name Deployment web: {rotation:?}"
    );

    progress("rotated: new ReplicaSet, the new pod printed the new value");
    // The values appear nowhere but in the app's own output.
    let mut exposed = Vec::new();
    let mut look = |place: &str, text: String| {
        for canary in [&canary1, &canary2] {
            if text.contains(canary.as_str()) {
                exposed.push(format!("{canary} in {place}"));
            }
        }
    };
    for p in pods.list(&ListParams::default()).await?.items {
        look("a pod", serde_json::to_string(&p)?);
    }
    look(
        "the DsoSecret",
        serde_json::to_string(&dsos.get("db").await?)?,
    );
    for ns in [app_ns, rel_ns] {
        let events = kubectl(&["get", "events", "-n", ns, "-o", "json"]);
        look(
            "core events",
            String::from_utf8_lossy(&events.stdout).into_owned(),
        );
        let events = kubectl(&["get", "events.events.k8s.io", "-n", ns, "-o", "json"]);
        look(
            "events",
            String::from_utf8_lossy(&events.stdout).into_owned(),
        );
        for s in Api::<Secret>::namespaced(c.clone(), ns)
            .list(&ListParams::default())
            .await?
            .items
        {
            let decoded: Vec<String> = s
                .data
                .iter()
                .flatten()
                .map(|(_, v)| String::from_utf8_lossy(&v.0).into_owned())
                .collect();
            look("a Kubernetes Secret", decoded.join("\n"));
        }
    }
    for p in Api::<Pod>::namespaced(c.clone(), rel_ns)
        .list(&ListParams::default())
        .await?
        .items
    {
        let pod = p.metadata.name.unwrap_or_default();
        for container in ["operator", "webhook"] {
            look(
                &format!("the {container} log"),
                container_log(rel_ns, &pod, container)?,
            );
        }
    }
    for p in [&pod_name, &new_pod_name] {
        look("the dso-init log", container_log(app_ns, p, "dso-init")?);
    }
    anyhow::ensure!(exposed.is_empty(), "secret values leaked: {exposed:?}");

    progress("no value in pod specs, events, status, Secrets or DSO logs");

    // With the webhook down, opted-in pods are refused (fail closed) and other pods are never
    // sent to it (matchConditions), so they are admitted.
    ok(
        "kubectl scale",
        kubectl(&[
            "scale",
            "deployment",
            &format!("{fullname}-webhook"),
            "-n",
            rel_ns,
            "--replicas=0",
        ]),
    )?;
    let rel_pods: Api<Pod> = Api::namespaced(c.clone(), rel_ns);
    wait_for(
        "the webhook pods to be gone",
        Duration::from_secs(60),
        || async {
            let left = rel_pods
                .list(&ListParams::default().labels("app.kubernetes.io/component=webhook"))
                .await?;
            Ok(left.items.is_empty().then_some(()))
        },
    )
    .await?;
    let plain = probe_pod(app_ns, "plain", false);
    ok(
        "creating a pod without dso.dev/inject while the webhook is down",
        kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], &plain),
    )?;
    let opted_in = kubectl_stdin(
        &["create", "--dry-run=server", "-f", "-"],
        &probe_pod(app_ns, "opted-in", true),
    );
    let refusal = String::from_utf8_lossy(&opted_in.stderr);
    anyhow::ensure!(
        !opted_in.status.success() && refusal.contains("inject.dso.dev"),
        "an opted-in pod was admitted while the webhook was down: {refusal}"
    );
    progress("webhook down: opted-in pods refused, others admitted");
    // helm uninstall leaves nothing behind but the CRD.
    ok(
        "helm uninstall",
        helm(&[
            "uninstall",
            name,
            "-n",
            rel_ns,
            "--wait",
            "--cascade",
            "foreground",
            "--timeout",
            "120s",
        ]),
    )?;
    let selector = format!("app.kubernetes.io/instance={name}");
    let by_release = ListParams::default().labels(&selector);
    wait_for(
        "the release's objects to be gone",
        Duration::from_secs(60),
        || async {
            let all = ListParams::default();
            let mut left = Vec::new();
            let mut add = |kind: &str, names: Vec<String>| {
                left.extend(names.into_iter().map(|n| format!("{kind}/{n}")));
            };
            add(
                "MutatingWebhookConfiguration",
                names(
                    Api::<MutatingWebhookConfiguration>::all(c.clone()),
                    &by_release,
                )
                .await?,
            );
            add(
                "ClusterRole",
                names(Api::<ClusterRole>::all(c.clone()), &by_release).await?,
            );
            add(
                "ClusterRoleBinding",
                names(Api::<ClusterRoleBinding>::all(c.clone()), &by_release).await?,
            );
            add(
                "Deployment",
                names(Api::<Deployment>::namespaced(c.clone(), rel_ns), &all).await?,
            );
            add(
                "ReplicaSet",
                names(Api::<ReplicaSet>::namespaced(c.clone(), rel_ns), &all).await?,
            );
            add(
                "Pod",
                names(Api::<Pod>::namespaced(c.clone(), rel_ns), &all).await?,
            );
            add(
                "Service",
                names(Api::<Service>::namespaced(c.clone(), rel_ns), &all).await?,
            );
            // Helm's own release records are Secrets too: uninstall deletes them.
            add(
                "Secret",
                names(Api::<Secret>::namespaced(c.clone(), rel_ns), &all).await?,
            );
            add(
                "Role",
                names(Api::<Role>::namespaced(c.clone(), rel_ns), &all).await?,
            );
            add(
                "RoleBinding",
                names(Api::<RoleBinding>::namespaced(c.clone(), rel_ns), &all).await?,
            );
            add(
                "PodDisruptionBudget",
                names(
                    Api::<PodDisruptionBudget>::namespaced(c.clone(), rel_ns),
                    &all,
                )
                .await?,
            );
            add(
                "Lease",
                names(Api::<Lease>::namespaced(c.clone(), rel_ns), &all).await?,
            );
            let mut sas = names(Api::<ServiceAccount>::namespaced(c.clone(), rel_ns), &all).await?;
            sas.retain(|n| n != "default");
            add("ServiceAccount", sas);
            let mut cms = names(Api::<ConfigMap>::namespaced(c.clone(), rel_ns), &all).await?;
            cms.retain(|n| n != "kube-root-ca.crt");
            add("ConfigMap", cms);
            if left.is_empty() {
                Ok(Some(()))
            } else {
                Err(anyhow::anyhow!("left behind: {left:?}"))
            }
        },
    )
    .await?;
    progress("uninstalled: nothing left but the CRD");
    let crd = kubectl(&["get", "crd", "dsosecrets.dso.dev", "-o", "name"]);
    anyhow::ensure!(
        crd.status.success(),
        "helm uninstall removed the CRD (it must keep it)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Run-time TLS (webhook.tls.mode runtime) under load: issue 13's "webhook roll under load".

/// Counts of a stream of opted-in pod creates (server-side dry runs: they go through admission,
/// nothing is stored or scheduled).
#[derive(Default)]
struct LoadCounts {
    creates: std::sync::atomic::AtomicU64,
    failures: std::sync::atomic::AtomicU64,
    uninjected: std::sync::atomic::AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

/// Creates `per_second` opted-in pods per second in `ns` (at most 32 in flight) until `stop`;
/// the task's output is how long it ran.
fn start_load(
    c: kube::Client,
    ns: &str,
    per_second: u32,
    counts: std::sync::Arc<LoadCounts>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Duration> {
    use std::sync::atomic::Ordering::Relaxed;
    let pods: Api<Pod> = Api::namespaced(c, ns);
    let mut manifest = pod("load", &annotated("db"));
    manifest["spec"]["serviceAccountName"] = "web".into();
    let manifest: Pod = serde_json::from_value(manifest).expect("a pod");
    tokio::spawn(async move {
        let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
        let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = std::time::Instant::now();
        while !*stop.borrow() {
            tick.tick().await;
            let Ok(place) = in_flight.clone().acquire_owned().await else {
                break;
            };
            let (pods, manifest, counts) = (pods.clone(), manifest.clone(), counts.clone());
            tokio::spawn(async move {
                let _place = place;
                let dry = kube::api::PostParams {
                    dry_run: true,
                    ..Default::default()
                };
                counts.creates.fetch_add(1, Relaxed);
                match pods.create(&dry, &manifest).await {
                    Ok(created) => {
                        let injected = created
                            .spec
                            .and_then(|s| s.init_containers)
                            .is_some_and(|i| i.iter().any(|c| c.name == "dso-init"));
                        if !injected {
                            counts.uninjected.fetch_add(1, Relaxed);
                        }
                    }
                    Err(e) => {
                        counts.failures.fetch_add(1, Relaxed);
                        let mut errors = counts.errors.lock().unwrap_or_else(|p| p.into_inner());
                        if errors.len() < 10 {
                            errors.push(format!("{:.1}s: {e}", started.elapsed().as_secs_f64()));
                        }
                    }
                }
            });
        }
        let _ = in_flight.acquire_many(32).await;
        started.elapsed()
    })
}

/// The ServiceAccount (with an IRSA role) and the DsoSecret the load's pods use.
fn load_manifests(ns: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
  namespace: {ns}
  annotations:
    eks.amazonaws.com/role-arn: {ROLE}
---
apiVersion: dso.dev/v1alpha1
kind: DsoSecret
metadata:
  name: db
  namespace: {ns}
spec:
  aws: {{region: us-east-1}}
  files:
    - {{path: password, secretId: "e2e/chart/load", jsonKey: password}}
"#
    )
}

/// One dry-run create of an opted-in pod: `Ok(Some(()))` once it comes back injected.
async fn injected_dry_run(pods: &Api<Pod>) -> anyhow::Result<Option<()>> {
    let mut manifest = pod("probe", &annotated("db"));
    manifest["spec"]["serviceAccountName"] = "web".into();
    let dry = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    let created = pods
        .create(&dry, &serde_json::from_value(manifest)?)
        .await?;
    let init = created
        .spec
        .and_then(|s| s.init_containers)
        .unwrap_or_default();
    anyhow::ensure!(
        init.iter().any(|c| c.name == "dso-init"),
        "admitted without injection: {init:?}"
    );
    Ok(Some(()))
}

/// The base64 body of a PEM certificate, without line breaks (to find it in other output).
fn pem_body(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>()
}

/// Whether the webhook at `ip` serves the certificate whose PEM body is `body`.
fn serves(ip: &str, body: &str) -> bool {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("{ip}:8443")])
        .stdin(std::process::Stdio::null())
        .output();
    out.is_ok_and(|o| pem_body(&String::from_utf8_lossy(&o.stdout)).contains(body))
}

/// Running, not terminating webhook pods of the release, with their IPs.
async fn webhook_pod_ips(pods: &Api<Pod>) -> anyhow::Result<Vec<String>> {
    Ok(pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=webhook"))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.status.and_then(|s| s.pod_ip))
        .collect())
}

#[tokio::test]
async fn runtime_tls_survives_a_webhook_roll_and_a_rotation_under_load_without_a_failed_admission()
{
    let c = client().await;
    let values = std::env::var("DSO_CHART_VALUES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo("charts/dso/values-local.yaml"));
    let rel_ns = namespace(&c, "e2e-tls", &[]).await;
    let (label, selector) = own_injection_label("tls");
    let app_ns = namespace(&c, "e2e-tls-app", &[(INJECTION_LABEL.0, label.as_str())]).await;
    let mut release = Release {
        name: format!("dso-{}", rel_ns.trim_start_matches("e2e-tls-")),
        installed: false,
        rel_ns,
        app_ns,
    };
    let (rel_ns, app_ns) = (release.rel_ns.to_string(), release.app_ns.to_string());
    let name = release.name.clone();
    let install = helm(&[
        "install",
        &name,
        repo("charts/dso").to_str().expect("path"),
        "-n",
        &rel_ns,
        "-f",
        values.to_str().expect("path"),
        "--set",
        &format!("operator.watchNamespace={app_ns}"),
        "--set",
        &selector,
        "--set",
        "webhook.replicas=2",
        "--set",
        "webhook.extraArgs={--tls-bundle-propagation=3s}",
        "--wait",
        "--timeout",
        "180s",
    ]);
    release.installed = true;
    if !install.status.success() {
        panic!(
            "helm install failed: {}\n{}",
            String::from_utf8_lossy(&install.stderr),
            diagnostics(&rel_ns, &app_ns)
        );
    }
    if let Err(e) = roll_and_rotate(&c, &rel_ns, &app_ns, &name).await {
        panic!("{e:#}\n{}", diagnostics(&rel_ns, &app_ns));
    }
}

async fn roll_and_rotate(
    c: &kube::Client,
    rel_ns: &str,
    app_ns: &str,
    fullname: &str,
) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let start = std::time::Instant::now();
    let progress = |what: &str| eprintln!("[tls +{:.1}s] {what}", start.elapsed().as_secs_f64());
    ok(
        "kubectl apply of the ServiceAccount and DsoSecret",
        kubectl_stdin(&["apply", "-f", "-"], &load_manifests(app_ns)),
    )?;
    let pods: Api<Pod> = Api::namespaced(c.clone(), app_ns);
    wait_for(
        "an opted-in pod admitted with injection",
        Duration::from_secs(60),
        || injected_dry_run(&pods),
    )
    .await?;
    progress("webhook injecting; starting the load");

    let counts = std::sync::Arc::new(LoadCounts::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let load = start_load(c.clone(), app_ns, 30, counts.clone(), stop);
    tokio::time::sleep(Duration::from_secs(5)).await;

    // (a) The webhook Deployment rolled.
    let deployment = format!("deployment/{fullname}-webhook");
    progress("kubectl rollout restart of the webhook");
    ok(
        "kubectl rollout restart",
        kubectl(&["rollout", "restart", &deployment, "-n", rel_ns]),
    )?;
    ok(
        "kubectl rollout status",
        kubectl(&[
            "rollout",
            "status",
            &deployment,
            "-n",
            rel_ns,
            "--timeout=180s",
        ]),
    )?;
    let after_roll = (counts.creates.load(Relaxed), counts.failures.load(Relaxed));
    progress(&format!(
        "rolled: {} creates, {} failed so far",
        after_roll.0, after_roll.1
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;

    // (b) A forced rotation: a new CA and certificate while the old CA stays trusted.
    let secrets: Api<Secret> = Api::namespaced(c.clone(), rel_ns);
    let secret_name = format!("{fullname}-webhook-certs");
    let cert_of = |s: Secret| {
        s.data
            .and_then(|d| d.get("tls.crt").cloned())
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    };
    let old_cert = cert_of(secrets.get(&secret_name).await?);
    let rel_pods: Api<Pod> = Api::namespaced(c.clone(), rel_ns);
    for ip in webhook_pod_ips(&rel_pods).await? {
        anyhow::ensure!(
            serves(&ip, &pem_body(&old_cert)),
            "{ip} does not serve the Secret's certificate before the rotation"
        );
    }
    let asked = std::time::Instant::now();
    progress("annotating the Secret dso.dev/rotate");
    ok(
        "kubectl annotate",
        kubectl(&[
            "annotate",
            "secret",
            &secret_name,
            "-n",
            rel_ns,
            &format!("dso.dev/rotate={}", unique("e2e")),
        ]),
    )?;
    let new_cert = wait_for(
        "a new certificate in the Secret",
        Duration::from_secs(60),
        || async {
            let cert = cert_of(secrets.get(&secret_name).await?);
            Ok((cert != old_cert && !cert.is_empty()).then_some(cert))
        },
    )
    .await?;
    let stored = asked.elapsed();
    let body = pem_body(&new_cert);
    wait_for(
        "every webhook replica serving the new certificate",
        Duration::from_secs(60),
        || async {
            let ips = webhook_pod_ips(&rel_pods).await?;
            Ok((ips.len() == 2 && ips.iter().all(|ip| serves(ip, &body))).then_some(()))
        },
    )
    .await?;
    let served = asked.elapsed();
    progress(&format!(
        "rotated: new certificate stored {:.1}s and served by both replicas {:.1}s after the request",
        stored.as_secs_f64(),
        served.as_secs_f64()
    ));
    // The overlap: the API server trusts the new CA and still the previous one.
    let mwc = Api::<MutatingWebhookConfiguration>::all(c.clone())
        .get(&format!("{fullname}-webhook"))
        .await?;
    let bundle = mwc
        .webhooks
        .unwrap_or_default()
        .first()
        .and_then(|w| w.client_config.ca_bundle.clone())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default();
    anyhow::ensure!(
        bundle.matches("BEGIN CERTIFICATE").count() == 2,
        "the caBundle after a rotation holds the new and the previous CA: {bundle}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;

    let _ = stop_tx.send(true);
    let ran = load.await?;
    let (creates, failures, uninjected) = (
        counts.creates.load(Relaxed),
        counts.failures.load(Relaxed),
        counts.uninjected.load(Relaxed),
    );
    let rate = creates as f64 / ran.as_secs_f64();
    eprintln!(
        "[tls] load: {creates} opted-in pod creates in {:.1}s ({rate:.1}/s), {failures} failed, \
         {uninjected} admitted without injection; rotation: stored after {:.1}s, served by all \
         replicas after {:.1}s",
        ran.as_secs_f64(),
        stored.as_secs_f64(),
        served.as_secs_f64()
    );
    let errors = counts
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    anyhow::ensure!(
        failures == 0 && uninjected == 0,
        "{failures} failed admissions, {uninjected} without injection: {errors:#?}"
    );
    anyhow::ensure!(rate >= 20.0, "the load ran at {rate:.1}/s, below 20/s");

    // No key material in the webhook's logs.
    let key = secrets
        .get(&secret_name)
        .await?
        .data
        .and_then(|d| d.get("tls.key").cloned())
        .map(|b| pem_body(&String::from_utf8_lossy(&b.0)))
        .unwrap_or_default();
    anyhow::ensure!(!key.is_empty(), "no key in the Secret");
    for p in rel_pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=webhook"))
        .await?
        .items
    {
        let pod_name = p.metadata.name.unwrap_or_default();
        let log = container_log(rel_ns, &pod_name, "webhook").unwrap_or_default();
        anyhow::ensure!(
            !log.contains("PRIVATE KEY") && !log.contains(&key[..40]),
            "{pod_name} logged key material"
        );
    }
    Ok(())
}

/// Objects applied with `kubectl apply` (as Argo CD does), deleted when dropped.
struct Applied {
    file: PathBuf,
}

impl Drop for Applied {
    fn drop(&mut self) {
        let file = self.file.to_str().unwrap_or_default();
        let _ = Command::new("kubectl")
            .args(["delete", "-f", file, "--ignore-not-found", "--wait=false"])
            .output();
        let _ = std::fs::remove_file(&self.file);
    }
}

#[tokio::test]
async fn helm_template_piped_to_kubectl_apply_injects_and_a_second_apply_keeps_the_certificate() {
    let c = client().await;
    let values = std::env::var("DSO_CHART_VALUES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo("charts/dso/values-local.yaml"));
    let rel_ns = namespace(&c, "e2e-gitops", &[]).await;
    let label = unique("gitops");
    let app_ns = namespace(&c, "e2e-gitops-app", &[(INJECTION_LABEL.0, label.as_str())]).await;
    let name = format!("dso-{}", rel_ns.trim_start_matches("e2e-gitops-"));
    let render = || {
        ok(
            "helm template",
            helm(&[
                "template",
                &name,
                repo("charts/dso").to_str().expect("path"),
                "-n",
                &rel_ns,
                "--kube-version",
                "1.36.0",
                "-f",
                values.to_str().expect("path"),
                "--set",
                &format!("operator.watchNamespace={app_ns}"),
                "--set",
                &format!("webhook.namespaceSelector.matchLabels.dso\\.dev/injection={label}"),
            ]),
        )
    };
    let rendered = render().unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        rendered,
        render().unwrap_or_else(|e| panic!("{e:#}")),
        "two renders differ"
    );
    let file = std::env::temp_dir().join(format!("{name}.yaml"));
    std::fs::write(&file, &rendered).expect("write the render");
    let applied = Applied { file };
    let apply = |server_side: bool| {
        // No -n: every namespaced object of the render names its namespace (the operator's Role
        // is in the watched namespace), as Argo CD applies it.
        let mut args = vec!["apply", "-f", "-"];
        if server_side {
            args.extend(["--server-side", "--field-manager=argocd-controller"]);
        }
        ok("kubectl apply", kubectl_stdin(&args, &rendered))
    };
    let run = async {
        // The CRD first, as Argo CD syncs it (helm template leaves crds/ out by default).
        ok(
            "kubectl apply of the CRD",
            kubectl(&[
                "apply",
                "-f",
                repo("charts/dso/crds/dso.dev_dsosecrets.yaml")
                    .to_str()
                    .expect("path"),
            ]),
        )?;
        apply(false)?;
        ok(
            "kubectl apply of the ServiceAccount and DsoSecret",
            kubectl_stdin(&["apply", "-f", "-"], &load_manifests(&app_ns)),
        )?;
        let pods: Api<Pod> = Api::namespaced(c.clone(), &app_ns);
        wait_for(
            "an opted-in pod admitted with injection",
            Duration::from_secs(120),
            || injected_dry_run(&pods),
        )
        .await?;
        let secrets: Api<Secret> = Api::namespaced(c.clone(), &rel_ns);
        let secret_name = format!("{name}-webhook-certs");
        let mwcs: Api<MutatingWebhookConfiguration> = Api::all(c.clone());
        let bundle = |m: MutatingWebhookConfiguration| {
            m.webhooks
                .unwrap_or_default()
                .first()
                .and_then(|w| w.client_config.ca_bundle.clone())
        };
        let cert = secrets.get(&secret_name).await?.data;
        let ca = bundle(mwcs.get(&format!("{name}-webhook")).await?);
        // A sync again, client-side then server-side (Argo CD's two ways): the render carries
        // neither the Secret's data nor the caBundle, so neither is touched.
        apply(false)?;
        apply(true)?;
        // Argo CD's "Synced": one more server-side apply of the render would change nothing, so
        // nothing running (the webhook's certificate and caBundle writes, the operator) rewrites
        // a field the render sets.
        ok(
            "kubectl diff --server-side of the render (drift after the sync)",
            kubectl_stdin(
                &[
                    "diff",
                    "--server-side",
                    "--field-manager=argocd-controller",
                    "-f",
                    "-",
                ],
                &rendered,
            ),
        )?;
        anyhow::ensure!(
            secrets.get(&secret_name).await?.data == cert,
            "an apply of the render changed the certificate Secret"
        );
        anyhow::ensure!(
            bundle(mwcs.get(&format!("{name}-webhook")).await?) == ca,
            "an apply of the render changed the caBundle"
        );
        injected_dry_run(&pods).await?;
        anyhow::Ok(())
    };
    let result = run.await;
    drop(applied);
    if let Err(e) = result {
        panic!("{e:#}\n{}", diagnostics(&rel_ns, &app_ns));
    }
}
