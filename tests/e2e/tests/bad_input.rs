//! Issue 13's bad-input table, on the real apiserver: malformed DsoSecrets and malformed pods,
//! each refused — by the CRD's schema and CEL rules, by the webhook's `/validate`, by its
//! `/mutate` denial, or by the chart's `dso://` policy — with a message naming the field or the
//! container. Prints the table as markdown (`cargo test -p dso-e2e --test bad_input --
//! --nocapture`):
//!
//! `| # | input | refused by | message |`
//!
//! The webhook runs as a process ([`dso_e2e::Webhook`], `/mutate` and `/validate` registered
//! by URL for its namespaces); the chart's ValidatingAdmissionPolicy
//! (`templates/env-reference-policy.yaml`) is rendered with `helm template` and applied for the
//! test's duration.

use dso_e2e::{Webhook, annotated, app_container, apply, kubectl, kubectl_stdin, pod, unique};
use serde_json::{Value, json};
use std::process::Command;

const PORT: u16 = 18450;
const ROLE: &str = "arn:aws:iam::123456789012:role/e2e-bad-input";

/// One refused input: what it was, what the message must name, and what the apiserver said.
struct Row {
    input: String,
    names: Vec<String>,
    refused_by: String,
    message: String,
    admitted: bool,
}

/// Who refused, from the apiserver's message.
fn refused_by(message: &str) -> String {
    if message.contains("validate.dso.dev") {
        "webhook /validate".into()
    } else if message.contains("pods.dso.dev") || message.contains("inject.dso.dev") {
        "webhook /mutate".into()
    } else if message.contains("ValidatingAdmissionPolicy") {
        "chart policy (CEL)".into()
    } else if message.contains("dsosecrets.dso.dev") || message.contains("DsoSecret") {
        "CRD schema/CEL".into()
    } else {
        "apiserver".into()
    }
}

/// `kubectl create --dry-run=server --validate=strict` of `manifest`: `None` when admitted.
fn refusal(manifest: &Value) -> Option<String> {
    let out = kubectl_stdin(
        &["create", "--dry-run=server", "--validate=strict", "-f", "-"],
        &manifest.to_string(),
    );
    (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).trim().to_string())
}

fn row(input: &str, names: &[&str], manifest: &Value) -> Row {
    let message = refusal(manifest);
    Row {
        input: input.to_string(),
        names: names.iter().map(|s| s.to_string()).collect(),
        refused_by: message.as_deref().map(refused_by).unwrap_or_default(),
        admitted: message.is_none(),
        message: message.unwrap_or_default(),
    }
}

fn dso(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "dso.dev/v1alpha1", "kind": "DsoSecret",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// The malformed DsoSecrets: (input, its spec, what the message must name).
fn dso_cases() -> Vec<(&'static str, Value, Vec<&'static str>)> {
    let f = |extra: Value| {
        let mut file = json!({"path": "x", "secretId": "a"});
        if let (Some(o), Value::Object(e)) = (file.as_object_mut(), extra) {
            o.extend(e);
        }
        json!({"files": [file]})
    };
    let tpl = |template: &str, sources: Value| {
        json!({"files": [{"path": "password", "secretId": "a"},
                         {"path": "url", "template": template, "sources": sources}]})
    };
    let db = json!({"db": {"secretId": "a"}});
    vec![
        (
            "absolute path",
            json!({"files": [{"path": "/etc/passwd", "secretId": "a"}]}),
            vec!["spec.files[0].path"],
        ),
        (
            "path with ..",
            json!({"files": [{"path": "a/../b", "secretId": "a"}]}),
            vec!["spec.files[0].path", ".."],
        ),
        (
            "duplicate path",
            json!({"files": [{"path": "x", "secretId": "a"}, {"path": "x", "secretId": "b"}]}),
            vec!["spec.files", "same path"],
        ),
        (
            "a path both file and directory",
            json!({"files": [{"path": "conf", "secretId": "a"}, {"path": "conf/app.yaml", "secretId": "b"}]}),
            vec!["spec.files", "both as a file and as a directory"],
        ),
        (
            "no path",
            json!({"files": [{"secretId": "a"}]}),
            vec!["spec.files[0]", "path is required"],
        ),
        (
            "jsonKey with expand",
            json!({"files": [{"secretId": "a", "jsonKey": "k", "expand": true}]}),
            vec!["spec.files[0]", "jsonKey and expand"],
        ),
        (
            "expand with a path",
            f(json!({"expand": true})),
            vec!["spec.files[0]", "leave path unset"],
        ),
        (
            "versionStage with versionId",
            f(
                json!({"versionStage": "AWSCURRENT", "versionId": "0123456789abcdef0123456789abcdef"}),
            ),
            vec!["spec.files[0]", "versionStage and versionId"],
        ),
        ("no files", json!({"files": []}), vec!["spec.files"]),
        (
            "refresh interval 1s",
            json!({"files": [{"path": "x", "secretId": "a"}], "refresh": {"interval": "1s"}}),
            vec!["spec.refresh.interval"],
        ),
        (
            "refresh interval 48h",
            json!({"files": [{"path": "x", "secretId": "a"}], "refresh": {"interval": "48h"}}),
            vec!["spec.refresh.interval"],
        ),
        (
            "refresh interval `soon`",
            json!({"files": [{"path": "x", "secretId": "a"}], "refresh": {"interval": "soon"}}),
            vec!["spec.refresh.interval"],
        ),
        (
            "unknown refresh strategy",
            json!({"files": [{"path": "x", "secretId": "a"}], "refresh": {"strategy": "Sometimes"}}),
            vec!["spec.refresh.strategy"],
        ),
        (
            "fileMode 0999",
            json!({"files": [{"path": "x", "secretId": "a"}], "fileMode": "0999"}),
            vec!["spec.fileMode"],
        ),
        (
            "roleArn not an ARN",
            json!({"aws": {"roleArn": "not-an-arn"}, "files": [{"path": "x", "secretId": "a"}]}),
            vec!["spec.aws.roleArn"],
        ),
        (
            "secretId with a space",
            json!({"files": [{"path": "x", "secretId": "has space"}]}),
            vec!["spec.files[0].secretId"],
        ),
        (
            "unknown field `value`",
            f(json!({"value": "hunter2"})),
            vec!["spec.files[0]", "unknown field"],
        ),
        (
            "jsonKey not a JSON Pointer (`/a~2`)",
            f(json!({"jsonKey": "/a~2"})),
            vec!["spec.files[0].jsonKey"],
        ),
        (
            "template syntax error",
            tpl("{{ db.password", db.clone()),
            vec!["spec.files[1].template", "syntax error"],
        ),
        (
            "template reads an undeclared source",
            tpl("{{ api.key }}", db.clone()),
            vec!["spec.files[1].template", "api"],
        ),
        (
            "template source name `1db`",
            tpl("{{ db }}", json!({"1db": {"secretId": "a"}})),
            vec!["spec.files[1].sources"],
        ),
        (
            "template source jsonKey `/~x`",
            tpl(
                "{{ db }}",
                json!({"db": {"secretId": "a", "jsonKey": "/~x"}}),
            ),
            vec!["spec.files[1].sources", "jsonKey"],
        ),
        (
            "template and secretId",
            json!({"files": [{"path": "url", "secretId": "a", "template": "{{ db }}", "sources": db}]}),
            vec!["spec.files[0]"],
        ),
        (
            "template with jsonKey",
            json!({"files": [{"path": "url", "jsonKey": "k", "template": "{{ db }}", "sources": db}]}),
            vec!["spec.files[0]"],
        ),
        (
            "template without sources",
            json!({"files": [{"path": "url", "template": "{{ db }}"}]}),
            vec!["spec.files[0]"],
        ),
        (
            "ARN of another region than spec.aws.region",
            json!({"aws": {"region": "us-east-1"}, "files": [{"path": "x", "secretId": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db"}]}),
            vec!["spec.files[0].secretId"],
        ),
        (
            "ARN whose region is a host (`x@127.0.0.1/`)",
            json!({"files": [{"path": "x", "secretId": "arn:aws:secretsmanager:x@127.0.0.1/:123456789012:secret:db"}]}),
            vec!["spec.files[0].secretId"],
        ),
    ]
}

/// A pod of ServiceAccount `web` in `ns` opted in to `secrets`; `edit` changes it.
fn opted_in(ns: &str, secrets: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut p = pod("bad", &annotated(secrets));
    p["metadata"]["namespace"] = ns.into();
    p["spec"]["serviceAccountName"] = "web".into();
    edit(&mut p);
    p
}

fn env(p: &mut Value, container: usize, name: &str, value: &str) {
    p["spec"]["containers"][container]["env"] = json!([{"name": name, "value": value}]);
}

/// The malformed pods: (input, the pod, what the message must name).
fn pod_cases(ns: &str) -> Vec<(&'static str, Value, Vec<&'static str>)> {
    let ann = |key: &'static str, value: &'static str| {
        move |p: &mut Value| p["metadata"]["annotations"][key] = value.into()
    };
    let two_containers = |p: &mut Value| {
        p["spec"]["containers"] = json!([
            app_container("app", "sleep 1"),
            app_container("sidecar", "sleep 1")
        ]);
        p["metadata"]["annotations"]["dso.dev/containers"] = "app".into();
    };
    vec![
        (
            "dso.dev/secrets names an unknown DsoSecret",
            opted_in(ns, "nope", |_| {}),
            vec!["DsoSecret \"nope\" not found"],
        ),
        (
            "dso.dev/secrets names another namespace's DsoSecret",
            opted_in(ns, "other/db", |_| {}),
            vec!["dso.dev/secrets", "other/db"],
        ),
        (
            "dso.dev/secrets empty",
            opted_in(ns, " , ", |_| {}),
            vec!["dso.dev/secrets", "empty"],
        ),
        (
            "dso.dev/secrets not a name (`DB_1`)",
            opted_in(ns, "DB_1", |_| {}),
            vec!["dso.dev/secrets", "DB_1"],
        ),
        (
            "dso.dev/secrets missing",
            opted_in(ns, "db", |p| {
                if let Some(a) = p["metadata"]["annotations"].as_object_mut() {
                    a.remove("dso.dev/secrets");
                }
            }),
            vec!["dso.dev/secrets", "missing"],
        ),
        (
            "dso.dev/containers names no container",
            opted_in(ns, "db", ann("dso.dev/containers", "web")),
            vec!["dso.dev/containers", "\"web\"", "app"],
        ),
        (
            "dso.dev/containers empty",
            opted_in(ns, "db", ann("dso.dev/containers", ",")),
            vec!["dso.dev/containers", "empty"],
        ),
        (
            "dso.dev/mount-path relative",
            opted_in(ns, "db", ann("dso.dev/mount-path", "run/dso")),
            vec!["dso.dev/mount-path", "absolute"],
        ),
        (
            "dso.dev/mount-path with ..",
            opted_in(ns, "db", ann("dso.dev/mount-path", "/run/../etc")),
            vec!["dso.dev/mount-path", ".."],
        ),
        (
            "dso.dev/mount-path `/`",
            opted_in(ns, "db", ann("dso.dev/mount-path", "/")),
            vec!["dso.dev/mount-path"],
        ),
        (
            "dso.dev/mount-path over the IRSA token directory",
            opted_in(
                ns,
                "db",
                ann("dso.dev/mount-path", "/var/run/secrets/dso.dev"),
            ),
            vec!["dso.dev/mount-path"],
        ),
        (
            "a container already mounts something at the DSO path",
            opted_in(ns, "db", |p| {
                p["spec"]["volumes"] = json!([{"name": "cache", "emptyDir": {}}]);
                p["spec"]["containers"][0]["volumeMounts"] =
                    json!([{"name": "cache", "mountPath": "/run/secrets/dso/db"}]);
            }),
            vec!["container \"app\"", "cache", "dso.dev/mount-path"],
        ),
        (
            "the pod has a volume named dso-secrets",
            opted_in(ns, "db", |p| {
                p["spec"]["volumes"] = json!([{"name": "dso-secrets", "emptyDir": {}}])
            }),
            vec!["dso-secrets"],
        ),
        (
            "the pod defines and mounts the reserved volume dso-aws-iam-token",
            opted_in(ns, "db", |p| {
                p["spec"]["volumes"] = json!([{"name": "dso-aws-iam-token", "emptyDir": {}}]);
                p["spec"]["containers"][0]["volumeMounts"] =
                    json!([{"name": "dso-aws-iam-token", "mountPath": "/t"}]);
            }),
            vec!["volume named \"dso-aws-iam-token\""],
        ),
        (
            "copied from an injected pod (annotation and volume, no dso-init)",
            opted_in(ns, "db", |p| {
                p["metadata"]["annotations"]["dso.dev/injected"] = "db".into();
                p["spec"]["volumes"] =
                    json!([{"name": "dso-secrets", "emptyDir": {"medium": "Memory"}}]);
            }),
            vec!["dso-init"],
        ),
        (
            "dso://db/nope: a path the DsoSecret does not write",
            opted_in(ns, "db", |p| env(p, 0, "X", "dso://db/nope")),
            vec!["container \"app\"", "env X", "dso://db/nope", "password"],
        ),
        (
            "dso://api/password: a DsoSecret the pod does not mount",
            opted_in(ns, "db", |p| env(p, 0, "X", "dso://api/password")),
            vec!["container \"app\"", "env X", "dso.dev/secrets"],
        ),
        (
            "dso:// in a container not in dso.dev/containers",
            opted_in(ns, "db", |p| {
                two_containers(p);
                env(p, 1, "X", "dso://db/password");
            }),
            vec!["container \"sidecar\"", "env X", "dso.dev/containers"],
        ),
        (
            "dso:// in an init container",
            opted_in(ns, "db", |p| {
                p["spec"]["initContainers"] = json!([app_container("setup", "true")]);
                p["spec"]["initContainers"][0]["env"] =
                    json!([{"name": "X", "value": "dso://db/password"}]);
            }),
            vec!["container \"setup\"", "env X", "init containers"],
        ),
        (
            "dso:// on a variable an env file cannot carry (`DB.PASSWORD`)",
            opted_in(ns, "db", |p| env(p, 0, "DB.PASSWORD", "dso://db/password")),
            vec!["container \"app\"", "env DB.PASSWORD"],
        ),
        (
            "dso://db without a path",
            opted_in(ns, "db", |p| env(p, 0, "X", "dso://db")),
            vec!["container \"app\"", "env X", "no file path"],
        ),
        (
            "dso://db/../password",
            opted_in(ns, "db", |p| env(p, 0, "X", "dso://db/../password")),
            vec!["container \"app\"", "env X"],
        ),
        (
            "dso:// in a pod that does not opt in",
            {
                let mut p = pod("bad", &json!({}));
                p["metadata"]["namespace"] = ns.into();
                env(&mut p, 0, "X", "dso://db/password");
                p
            },
            vec!["container \"app\"", "env X", "does not opt in"],
        ),
        (
            "DsoSecrets naming different IAM roles",
            opted_in(ns, "role-a,role-b", |_| {}),
            vec!["\"role-a\"", "\"role-b\"", "IAM role"],
        ),
        (
            "a ServiceAccount without a role, no roleArn",
            opted_in(ns, "db", |p| {
                p["spec"]["serviceAccountName"] = "norole".into()
            }),
            vec!["ServiceAccount \"norole\"", "eks.amazonaws.com/role-arn"],
        ),
        (
            "a ServiceAccount that does not exist",
            opted_in(ns, "db", |p| {
                p["spec"]["serviceAccountName"] = "ghost".into()
            }),
            vec!["\"ghost\""],
        ),
        (
            "a DsoSecret whose files may not fit --size-limit",
            opted_in(ns, "big", |_| {}),
            vec!["big list 3 file entries", "size limit"],
        ),
        (
            "a DsoSecret stored while /validate was not registered, template broken",
            opted_in(ns, "stored-broken", |_| {}),
            vec!["\"stored-broken\"", "spec.files[0].template"],
        ),
    ]
}

/// The chart's `dso://` policy on the cluster for the test's duration.
struct Policy(String);

impl Policy {
    fn apply() -> Policy {
        let release = unique("bad");
        let chart = dso_e2e::repo_root().join("charts/dso");
        let out = Command::new("helm")
            .args([
                "template",
                &release,
                chart.to_str().expect("path"),
                "-n",
                "dso-system",
            ])
            .args([
                "--kube-version",
                "1.36.0",
                "-s",
                "templates/env-reference-policy.yaml",
            ])
            .output()
            .expect("helm on PATH");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
        dso_e2e::check(
            kubectl_stdin(&["apply", "-f", "-"], &yaml),
            "kubectl apply of the policy",
        );
        Policy(yaml)
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        let _ = kubectl_stdin(&["delete", "--ignore-not-found", "-f", "-"], &self.0);
    }
}

fn markdown(rows: &[Row], first: usize) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "| {} | {} | {} | {} |\n",
                first + i,
                cell(&r.input),
                if r.admitted {
                    "**admitted**"
                } else {
                    &r.refused_by
                },
                cell(&r.message)
            )
        })
        .collect()
}

#[tokio::test]
async fn every_malformed_dsosecret_and_pod_is_refused_naming_the_field() {
    let _policy = Policy::apply();
    let mut wh = Webhook::start(PORT, &["--size-limit", "128Ki"]).await;
    let ns = wh.namespace(&[]).await;
    // What the pods refer to; "stored-broken" is stored before /validate is registered.
    let sa = |name: &str, role: Option<&str>| {
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name,
               "annotations": role.map(|r| json!({"eks.amazonaws.com/role-arn": r})).unwrap_or(json!({}))}})
    };
    apply(&ns, &sa("web", Some(ROLE)));
    apply(&ns, &sa("norole", None));
    let file = |path: &str| json!({"path": path, "secretId": "a"});
    apply(&ns, &dso(&ns, "db", json!({"files": [file("password")]})));
    for (name, role) in [
        ("role-a", "arn:aws:iam::123456789012:role/a"),
        ("role-b", "arn:aws:iam::123456789012:role/b"),
    ] {
        apply(
            &ns,
            &dso(
                &ns,
                name,
                json!({"aws": {"roleArn": role}, "files": [file("x")]}),
            ),
        );
    }
    apply(
        &ns,
        &dso(
            &ns,
            "big",
            json!({"files": [file("a"), file("b"), file("c")]}),
        ),
    );
    apply(
        &ns,
        &dso(
            &ns,
            "stored-broken",
            json!({"files": [{"path": "url", "template": "{{ db.password", "sources": {"db": {"secretId": "a"}}}]}),
        ),
    );
    wh.register_validation(PORT).await;
    // The webhook's caches know the ServiceAccount and DsoSecrets once a good pod is admitted.
    let good = opted_in(&ns, "db", |p| env(p, 0, "X", "dso://db/password"));
    dso_e2e::wait_for(
        "a good pod admitted",
        std::time::Duration::from_secs(30),
        || async { Ok(refusal(&good).is_none().then_some(())) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", refusal(&good)));

    let dso_rows: Vec<Row> = dso_cases()
        .into_iter()
        .map(|(input, spec, names)| row(input, &names, &dso(&ns, "bad", spec)))
        .collect();
    let pod_rows: Vec<Row> = pod_cases(&ns)
        .into_iter()
        .map(|(input, p, names)| row(input, &names, &p))
        .collect();
    println!(
        "\n### Malformed DsoSecrets\n\n| # | input | refused by | message |\n|---|---|---|---|"
    );
    print!("{}", markdown(&dso_rows, 1));
    println!("\n### Malformed pods\n\n| # | input | refused by | message |\n|---|---|---|---|");
    print!("{}", markdown(&pod_rows, 1));

    assert!(dso_rows.len() >= 20 && pod_rows.len() >= 20);
    let failures: Vec<String> = dso_rows
        .iter()
        .chain(&pod_rows)
        .filter_map(|r| {
            if r.admitted {
                Some(format!("{}: admitted", r.input))
            } else {
                let missing: Vec<&String> = r
                    .names
                    .iter()
                    .filter(|n| !r.message.contains(n.as_str()))
                    .collect();
                (!missing.is_empty()).then(|| {
                    format!(
                        "{}: the message does not name {missing:?}: {}",
                        r.input, r.message
                    )
                })
            }
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing was stored by a dry run.
    let left = kubectl(&["get", "pods,dsosecrets", "-n", &ns, "-o", "name"]);
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.contains("/bad\n"), "{left}");
}
