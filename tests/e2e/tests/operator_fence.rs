//! The operator's fence (charts/dso/templates/operator-fence.yaml) on the real API server: the
//! chart's own ValidatingAdmissionPolicy, rendered with `helm template` for a ServiceAccount
//! made here, and that account's own token (no impersonation: the API server authenticates
//! it as it would the operator's). With RBAC that lets it patch Deployments, it may still only
//! do what the operator does: server-side apply `dso.dev/versions-hash` on the pod template and
//! `dso.dev/recorded-versions` on the workload. An image change, any other annotation or
//! label, a replica count, and anything in kube-system or the release namespace are refused,
//! by the policy, naming it. Users other than the operator are not fenced.
//!
//! And the real operator, run with that account's token under the chart's RBAC for
//! `operator.watchNamespace` (a Role, no ClusterRole) and the fence, still rolls a Deployment
//! after a rotation in AWS (so does `chart.rs`'s installed chart, fence on by default).
//!
//! Needs KUBECONFIG (an administrator), DSO_MOTO_ENDPOINT, DSO_BIN_DIR (dso-operator), with
//! `helm` and `kubectl` on PATH.

use dso_e2e::{TestNamespace, client, kubectl, kubectl_best_effort, kubectl_stdin, namespace};
use dso_e2e::{
    annotated, apply_crd, create_secret, dso_secret, env, put_secret_value, repo_root, unique,
    wait_for,
};
use serde_json::{Value, json};
use std::process::{Command, Output};
use std::time::Duration;

/// The ServiceAccount fenced as the operator's.
const SA: &str = "fenced-operator";
const HASH: &str = "dso.dev/versions-hash";
const RECORD: &str = "dso.dev/recorded-versions";

/// Cluster-scoped objects and objects in kube-system: deleted when dropped, also on panic.
struct Cleanup(Vec<[String; 4]>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for [kind, name, ns_flag, ns] in &self.0 {
            kubectl_best_effort(&["delete", kind, name, ns_flag, ns, "--ignore-not-found"]);
        }
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn apply(manifest: &Value) {
    ok(
        "kubectl apply",
        kubectl_stdin(&["apply", "-f", "-"], &manifest.to_string()),
    );
}

/// The chart rendered for release `release` in `rel_ns`, its operator being `SA`: the objects
/// of the given kinds.
fn rendered(release: &str, rel_ns: &str, extra: &[&str], kinds: &[&str]) -> Vec<Value> {
    use serde::Deserialize;
    let chart = repo_root().join("charts/dso");
    let out = Command::new("helm")
        .args([
            "template",
            release,
            chart.to_str().expect("path"),
            "-n",
            rel_ns,
        ])
        .args(["--kube-version", "1.36.0"])
        .args(["--set", "operator.serviceAccount.create=false"])
        .args(["--set", &format!("operator.serviceAccount.name={SA}")])
        .args(extra)
        .output()
        .expect("helm not found on PATH: tests/run.sh puts it there");
    let yaml = ok("helm template", out);
    serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|doc| Value::deserialize(doc).expect("a YAML document"))
        .filter(|d| d["kind"].as_str().is_some_and(|k| kinds.contains(&k)))
        .collect()
}

const FENCE_KINDS: [&str; 2] = [
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

/// The chart's policy and binding for release `release` in `rel_ns`, its operator being `SA`.
fn rendered_fence(release: &str, rel_ns: &str) -> Vec<Value> {
    // The workload fence only: the chart also renders the pod fence (strategy InPlace) and the
    // dso:// policy for pods, which have names of their own.
    let name = format!("{release}-dso-operator-fence");
    let docs: Vec<Value> = rendered(release, rel_ns, &[], &FENCE_KINDS)
        .into_iter()
        .filter(|d| d["metadata"]["name"].as_str() == Some(name.as_str()))
        .collect();
    assert_eq!(docs.len(), 2, "the chart renders a policy and its binding");
    docs
}

/// A token of `SA` in `ns`, in a kubeconfig of its own (under `dir`), checked to authenticate
/// as that account; returns the kubeconfig's path.
fn fenced_kubeconfig(ns: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let token = ok(
        "kubectl create token",
        kubectl(&["create", "token", SA, "-n", ns, "--duration", "10m"]),
    );
    std::fs::create_dir_all(dir).expect("temp dir");
    let kubeconfig = dir.join("config");
    token_kubeconfig(token.trim(), &kubeconfig);
    let whoami = ok(
        "kubectl auth whoami",
        kubectl(&[
            &format!("--kubeconfig={}", kubeconfig.display()),
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ]),
    );
    assert_eq!(whoami, format!("system:serviceaccount:{ns}:{SA}"));
    kubeconfig
}

/// A kubeconfig authenticating with `token` only, to the cluster of KUBECONFIG.
fn token_kubeconfig(token: &str, path: &std::path::Path) {
    let admin: Value = serde_json::from_str(&ok(
        "kubectl config view",
        kubectl(&["config", "view", "--raw", "--minify", "-o", "json"]),
    ))
    .expect("kubeconfig JSON");
    let cluster = admin["clusters"][0].clone();
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": SA, "user": {"token": token}}],
        "contexts": [{"name": SA, "context": {"cluster": cluster["name"], "user": SA}}],
        "current-context": SA,
    });
    std::fs::write(path, config.to_string()).expect("write the kubeconfig");
}

/// A Deployment of no replicas (nothing runs), with a template annotation of its own.
fn deployment(name: &str, ns: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": {"team": "web"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"team.example/owner": "web"}},
                "spec": {"containers": [{"name": "app", "image": "dso.local/busybox:1"}]}
            }
        }
    })
}

/// The operator's own write (operator/src/workload.rs `apply_patch`): server-side apply, field
/// manager dso-operator, forced.
fn operator_apply(ns: &str, name: &str, hash: &str, record: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "annotations": {RECORD: record}},
        "spec": {"template": {"metadata": {"annotations": {HASH: hash}}}}
    })
}

#[tokio::test]
async fn the_operator_account_may_only_set_dso_annotations_outside_system_namespaces() {
    let c = client().await;
    let rel_ns: TestNamespace = namespace(&c, "e2e-fence", &[]).await;
    let app_ns: TestNamespace = namespace(&c, "e2e-fence-app", &[]).await;
    let release = unique("fence");
    let policy = format!("{release}-dso-operator-fence");
    let sys_name = unique("dso-fence");
    let mut cleanup = Cleanup(Vec::new());

    // The chart's policy, for this release's operator account.
    for doc in rendered_fence(&release, &rel_ns) {
        assert_eq!(doc["metadata"]["name"], policy.as_str());
        let kind = doc["kind"].as_str().expect("kind").to_string();
        cleanup
            .0
            .push([kind, policy.clone(), "-n".into(), "default".into()]);
        apply(&doc);
    }

    // The account, with RBAC to patch Deployments in the app namespace, its own namespace and
    // kube-system: what the fence stands in for is a role that large.
    ok(
        "create the ServiceAccount",
        kubectl(&["create", "serviceaccount", SA, "-n", &rel_ns]),
    );
    for ns in [&*app_ns, &*rel_ns, "kube-system"] {
        apply(&json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": sys_name, "namespace": ns},
            "rules": [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "patch"]}]
        }));
        apply(&json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": sys_name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sys_name},
            "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": &*rel_ns}]
        }));
        // Created, not applied: `kubectl apply --server-side` below would otherwise move the
        // client-side apply's fields to its own manager (the operator, through kube-rs, does not).
        ok(
            "kubectl create deployment",
            kubectl_stdin(
                &["create", "-f", "-"],
                &deployment(&sys_name, ns).to_string(),
            ),
        );
        if ns == "kube-system" {
            for kind in ["role", "rolebinding", "deployment"] {
                cleanup
                    .0
                    .push([kind.into(), sys_name.clone(), "-n".into(), ns.into()]);
            }
        }
    }
    let dir = std::env::temp_dir().join(unique("dso-fence-kubeconfig"));
    let kubeconfig = fenced_kubeconfig(&rel_ns, &dir);
    let kubeconfig_flag = format!("--kubeconfig={}", kubeconfig.display());

    let image_patch = r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"evil.example/miner:1"}]}}}}"#;
    let as_operator = |ns: &str, args: &[&str]| {
        let mut all = vec![kubeconfig_flag.as_str(), "-n", ns];
        all.extend_from_slice(args);
        kubectl(&all)
    };
    let web = sys_name.as_str();
    // The policy is in force once the API server has loaded it: a server dry run goes through
    // admission and stores nothing.
    wait_for(
        "the policy to refuse an image change",
        Duration::from_secs(60),
        || async {
            let out = as_operator(
                &app_ns,
                &[
                    "patch",
                    "deployment",
                    web,
                    "--dry-run=server",
                    "-p",
                    image_patch,
                ],
            );
            Ok((!out.status.success() && stderr(&out).contains(&policy)).then_some(()))
        },
    )
    .await
    .expect("policy in force");

    let refused = |what: &str, out: Output, message: &str| {
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "{what} was allowed: {}",
            stdout(&out)
        );
        assert!(
            err.contains(&format!("ValidatingAdmissionPolicy '{policy}'")) && err.contains(message),
            "{what}: refused, but not by the policy with {message:?}: {err}"
        );
    };
    let spec_only = "may change nothing in a workload's spec";
    refused(
        "an image change",
        as_operator(&app_ns, &["patch", "deployment", web, "-p", image_patch]),
        spec_only,
    );
    refused(
        "a replica count",
        as_operator(
            &app_ns,
            &[
                "patch",
                "deployment",
                web,
                "-p",
                r#"{"spec":{"replicas":5}}"#,
            ],
        ),
        spec_only,
    );
    refused(
        "a pod template label",
        as_operator(
            &app_ns,
            &[
                "patch",
                "deployment",
                web,
                "-p",
                r#"{"spec":{"template":{"metadata":{"labels":{"extra":"x"}}}}}"#,
            ],
        ),
        spec_only,
    );
    refused(
        "another pod template annotation",
        as_operator(
            &app_ns,
            &[
                "patch",
                "deployment",
                web,
                "-p",
                r#"{"spec":{"template":{"metadata":{"annotations":{"team.example/owner":"mallory"}}}}}"#,
            ],
        ),
        "no pod template annotation but dso.dev/versions-hash",
    );
    refused(
        "a workload label",
        as_operator(
            &app_ns,
            &[
                "patch",
                "deployment",
                web,
                "-p",
                r#"{"metadata":{"labels":{"team":"mallory"}}}"#,
            ],
        ),
        "no workload metadata but the dso.dev/recorded-versions annotation",
    );
    refused(
        "the versions hash and another pod template annotation at once",
        as_operator(
            &app_ns,
            &[
                "patch",
                "deployment",
                web,
                "-p",
                r#"{"spec":{"template":{"metadata":{"annotations":{"dso.dev/versions-hash":"x","team.example/owner":"mallory"}}}}}"#,
            ],
        ),
        "no pod template annotation but dso.dev/versions-hash",
    );

    // The operator's own writes pass: a rollout (hash and record), then a record alone.
    let ssa = |body: &Value| {
        let mut args = vec![kubeconfig_flag.as_str()];
        args.extend_from_slice(&[
            "apply",
            "--server-side",
            "--field-manager=dso-operator",
            "--force-conflicts",
            "-f",
            "-",
        ]);
        kubectl_stdin(&args, &body.to_string())
    };
    let get = |ns: &str| -> Value {
        serde_json::from_str(&ok(
            "kubectl get deployment",
            kubectl(&["get", "deployment", web, "-n", ns, "-o", "json"]),
        ))
        .expect("deployment JSON")
    };
    let before = get(&app_ns);
    ok(
        "the operator's rollout patch",
        ssa(&operator_apply(&app_ns, web, "h1", r#"{"db":"v1"}"#)),
    );
    ok(
        "the operator's record-only patch",
        ssa(&operator_apply(&app_ns, web, "h1", r#"{"db":"v2"}"#)),
    );
    let after = get(&app_ns);
    let tpl = &after["spec"]["template"];
    assert_eq!(tpl["metadata"]["annotations"][HASH], "h1");
    assert_eq!(tpl["metadata"]["annotations"]["team.example/owner"], "web");
    assert_eq!(after["metadata"]["annotations"][RECORD], r#"{"db":"v2"}"#);
    assert_eq!(tpl["spec"]["containers"][0]["image"], "dso.local/busybox:1");
    assert_eq!(after["metadata"]["labels"], before["metadata"]["labels"]);
    assert!(
        after["metadata"]["generation"].as_i64() > before["metadata"]["generation"].as_i64(),
        "the hash changed the template: a rollout"
    );

    // Not in kube-system, nor in the release namespace, even the operator's own write.
    refused(
        "the operator's patch in kube-system",
        ssa(&operator_apply("kube-system", web, "h1", "{}")),
        "may not change workloads in kube-system or",
    );
    refused(
        "the operator's patch in the release namespace",
        ssa(&operator_apply(&rel_ns, web, "h1", "{}")),
        "may not change workloads in kube-system or",
    );

    // Only the operator's account is fenced: the administrator changes the image.
    ok(
        "the administrator's image change",
        kubectl(&["-n", &app_ns, "patch", "deployment", web, "-p", image_patch]),
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop(cleanup);
}

/// The real operator, run with the fenced account's own token and the chart's RBAC for
/// `operator.watchNamespace` (a Role there, no ClusterRole) and its fence: a rotation in AWS
/// still rolls the consuming Deployment.
#[tokio::test]
async fn the_fenced_operator_still_rolls_a_workload_after_a_rotation() {
    let c = client().await;
    apply_crd();
    let rel_ns: TestNamespace = namespace(&c, "e2e-fence-op", &[]).await;
    let app_ns: TestNamespace = namespace(&c, "e2e-fence-op-app", &[]).await;
    let release = unique("fence");
    let fullname = format!("{release}-dso-operator");
    let mut cleanup = Cleanup(Vec::new());
    ok(
        "create the ServiceAccount",
        kubectl(&["create", "serviceaccount", SA, "-n", &rel_ns]),
    );
    let watch = format!("operator.watchNamespace={app_ns}");
    let mut kinds = vec!["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"];
    kinds.extend(FENCE_KINDS);
    for doc in rendered(&release, &rel_ns, &["--set", &watch], &kinds) {
        let name = doc["metadata"]["name"].as_str().expect("name").to_string();
        if !name.starts_with(&fullname) {
            continue; // the webhook's
        }
        let kind = doc["kind"].as_str().expect("kind");
        assert!(
            !kind.starts_with("Cluster"),
            "with watchNamespace the operator has no {kind}"
        );
        if FENCE_KINDS.contains(&kind) {
            cleanup
                .0
                .push([kind.into(), name, "-n".into(), "default".into()]);
        }
        apply(&doc);
    }
    let dir = std::env::temp_dir().join(unique("dso-fence-kubeconfig"));
    let kubeconfig = fenced_kubeconfig(&rel_ns, &dir);

    let secret = unique("e2e/fence/rotate");
    create_secret(&secret, "canary-fence-value").await;
    let refresh = json!({"refresh": {"interval": "10s", "strategy": "Rollout"}});
    let mut dso = dso_secret("db", &secret, refresh);
    dso["metadata"]["namespace"] = json!(&*app_ns);
    apply(&dso);
    let mut web = deployment("web", &app_ns);
    web["spec"]["template"]["metadata"]["annotations"] = annotated("db");
    // Applied client-side, as a user (and the chart test) does: the operator's server-side apply
    // must pass the fence and leave kubectl's fields (dso.dev/inject) as they are.
    apply(&web);

    let bin = std::path::PathBuf::from(env("DSO_BIN_DIR")).join("dso-operator");
    let log_path = dir.join("operator.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(bin)
        .args(["--namespace", &app_ns, "--lease-namespace", &rel_ns])
        .args(["--lease-name", &fullname, "--http-addr", "127.0.0.1:18591"])
        .env("KUBECONFIG", &kubeconfig)
        .env("AWS_ENDPOINT_URL", env("DSO_MOTO_ENDPOINT"))
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("RUST_LOG", "info,dso_operator=debug")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start dso-operator");
    let get = |what: &'static str, path: &'static str| {
        let app_ns = app_ns.to_string();
        async move {
            let out = kubectl(&[
                "get",
                "deployment",
                "web",
                "-n",
                &app_ns,
                "-o",
                &format!("jsonpath={path}"),
            ]);
            anyhow::ensure!(out.status.success(), "{what}: {}", stderr(&out));
            let v = stdout(&out);
            Ok((!v.is_empty()).then_some(v))
        }
    };
    let result = async {
        wait_for(
            "the operator to record the versions",
            Duration::from_secs(60),
            || {
                get(
                    "record",
                    "{.metadata.annotations.dso\\.dev/recorded-versions}",
                )
            },
        )
        .await?;
        put_secret_value(&secret, "canary-fence-rotated").await;
        wait_for(
            "a rollout after the rotation",
            Duration::from_secs(60),
            || {
                get(
                    "hash",
                    "{.spec.template.metadata.annotations.dso\\.dev/versions-hash}",
                )
            },
        )
        .await?;
        let inject = get(
            "inject",
            "{.spec.template.metadata.annotations.dso\\.dev/inject}",
        )
        .await?;
        anyhow::ensure!(
            inject.as_deref() == Some("true"),
            "the operator's apply changed the template's dso.dev/inject: {inject:?}"
        );
        Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    if let Err(e) = result {
        panic!("{e:#}\noperator log:\n{log}");
    }
    assert!(
        !log.contains("denied request"),
        "the fence refused one of the operator's writes:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop(cleanup);
}
