//! The foundation on a real cluster: the generated CRD installs, the apiserver enforces its
//! validation with messages naming the field, `kubectl explain` shows the doc comments, and
//! the node runs pods.

use dso_api::DsoSecret;
use dso_e2e::{apply_crd, client, env, kubectl, kubectl_stdin, namespace, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use std::time::Duration;

fn dso_yaml(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: dso.dev/v1alpha1\nkind: DsoSecret\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}"
    )
}

#[tokio::test]
async fn a_valid_dsosecret_is_stored_and_read_back_with_its_printer_columns() {
    apply_crd();
    let c = client().await;
    let ns = namespace(&c, "e2e-found", &[]).await;
    let yaml = dso_yaml(
        &ns,
        "db",
        "  aws: {region: us-east-1, roleArn: 'arn:aws:iam::123456789012:role/shop-db'}\n  files:\n  - {path: password, secretId: prod/shop/db, jsonKey: password, versionStage: AWSCURRENT}\n  - {path: db.json, secretId: prod/shop/db}\n  - {secretId: prod/shop/api, expand: true}\n  fileMode: \"0440\"\n  refresh: {interval: 5m, strategy: Rollout}\n",
    );
    let out = kubectl_stdin(&["apply", "-f", "-"], &yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let api: Api<DsoSecret> = Api::namespaced(c.clone(), &ns);
    let got = api.get("db").await.expect("read back");
    assert_eq!(got.spec.files.len(), 3);
    assert_eq!(got.spec.files[0].json_key.as_deref(), Some("password"));
    assert_eq!(got.spec.files[2].expand, Some(true));
    assert_eq!(dso_api::validate::validate_spec(&got.spec), Ok(()));

    let out = kubectl(&["get", "dsosecrets", "-n", &ns]);
    let table = String::from_utf8_lossy(&out.stdout);
    for column in ["NAME", "READY", "REASON", "SECRETS", "LAST ROTATION", "AGE"] {
        assert!(table.contains(column), "no {column} column in:\n{table}");
    }
    assert!(table.contains("prod/shop/db"), "{table}");
    // The short name works too.
    assert!(kubectl(&["get", "dsos", "-n", &ns]).status.success());
}

#[tokio::test]
async fn the_apiserver_rejects_each_invalid_dsosecret_naming_the_field() {
    apply_crd();
    let c = client().await;
    let ns = namespace(&c, "e2e-invalid", &[]).await;
    // (name, spec, the field the message must name, a phrase of the message)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "absolute-path",
            "  files: [{path: /etc/passwd, secretId: a}]\n",
            "spec.files[0].path",
            "should match",
        ),
        (
            "dotdot-path",
            "  files: [{path: a/../b, secretId: a}]\n",
            "spec.files[0].path",
            "'..' segments",
        ),
        (
            "duplicate-path",
            "  files: [{path: x, secretId: a}, {path: x, secretId: b}]\n",
            "spec.files",
            "same path",
        ),
        (
            "jsonkey-and-expand",
            "  files: [{secretId: a, jsonKey: k, expand: true}]\n",
            "spec.files[0]",
            "jsonKey and expand are mutually exclusive",
        ),
        (
            "stage-and-id",
            "  files: [{path: x, secretId: a, versionStage: AWSCURRENT, versionId: 0123456789abcdef0123456789abcdef}]\n",
            "spec.files[0]",
            "versionStage and versionId are mutually exclusive",
        ),
        (
            "file-and-directory",
            "  files: [{path: conf, secretId: a}, {path: conf/app.yaml, secretId: b}]\n",
            "spec.files",
            "both as a file and as a directory",
        ),
        (
            "expand-with-path",
            "  files: [{path: x, secretId: a, expand: true}]\n",
            "spec.files[0]",
            "leave path unset",
        ),
        (
            "no-path",
            "  files: [{secretId: a}]\n",
            "spec.files[0]",
            "path is required",
        ),
        (
            "interval-too-short",
            "  files: [{path: x, secretId: a}]\n  refresh: {interval: 1s}\n",
            "spec.refresh.interval",
            "between 10s and 24h",
        ),
        (
            "interval-too-long",
            "  files: [{path: x, secretId: a}]\n  refresh: {interval: 48h}\n",
            "spec.refresh.interval",
            "between 10s and 24h",
        ),
        (
            "interval-not-a-duration",
            "  files: [{path: x, secretId: a}]\n  refresh: {interval: soon}\n",
            "spec.refresh.interval",
            "should match",
        ),
        (
            "file-mode-not-octal",
            "  files: [{path: x, secretId: a}]\n  fileMode: \"0999\"\n",
            "spec.fileMode",
            "should match",
        ),
        (
            "unknown-strategy",
            "  files: [{path: x, secretId: a}]\n  refresh: {strategy: Sometimes}\n",
            "spec.refresh.strategy",
            "Unsupported value",
        ),
        ("no-files", "  files: []\n", "spec.files", "at least 1"),
        (
            "bad-role-arn",
            "  aws: {roleArn: not-an-arn}\n  files: [{path: x, secretId: a}]\n",
            "spec.aws.roleArn",
            "should match",
        ),
        (
            "bad-secret-id",
            "  files: [{path: x, secretId: 'has space'}]\n",
            "spec.files[0].secretId",
            "should match",
        ),
        (
            "unknown-field",
            "  files: [{path: x, secretId: a, value: hunter2}]\n",
            "spec.files[0]",
            "unknown field",
        ),
    ];
    assert!(cases.len() >= 10);
    let mut failures = Vec::new();
    for (name, spec, field, phrase) in cases {
        let out = kubectl_stdin(
            &["create", "--validate=strict", "-f", "-"],
            &dso_yaml(&ns, name, spec),
        );
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() {
            failures.push(format!("{name}: was accepted"));
        } else if !stderr.contains(field) || !stderr.contains(phrase) {
            failures.push(format!(
                "{name}: message does not name {field:?} / {phrase:?}: {stderr}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let api: Api<DsoSecret> = Api::namespaced(c, &ns);
    assert!(
        api.list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

#[test]
fn kubectl_explain_shows_the_doc_comments() {
    apply_crd();
    let out = wait_explain("dsosecret.spec.files");
    for phrase in [
        "The files to write",
        "path",
        "secretId",
        "jsonKey",
        "expand",
        "versionId",
    ] {
        assert!(
            out.contains(phrase),
            "kubectl explain lacks {phrase:?}:\n{out}"
        );
    }
    let out = wait_explain("dsosecret.spec.files.jsonKey");
    assert!(out.contains("JSON SecretString"), "{out}");
}

fn wait_explain(what: &str) -> String {
    // The OpenAPI of a new CRD is published a moment after it is Established.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = kubectl(&["explain", what]);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl explain {what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test]
async fn a_busybox_pod_reaches_running_on_the_real_node() {
    let c = client().await;
    let ns = namespace(&c, "e2e-node", &[]).await;
    let image = env("DSO_BUSYBOX_IMAGE");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "hello"},
        "spec": {
            "containers": [{
                "name": "app", "image": image, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", "echo hello from the node; exec sleep 3600"]
            }],
            "terminationGracePeriodSeconds": 1
        }
    }))
    .expect("pod");
    let pods: Api<Pod> = Api::namespaced(c, &ns);
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    wait_for("pod hello Running", Duration::from_secs(90), || async {
        let p = pods.get("hello").await?;
        let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
        Ok((phase == "Running").then_some(()))
    })
    .await
    .expect("running");
    let log = wait_for("the pod's log", Duration::from_secs(20), || async {
        let log = dso_e2e::container_log(&ns, "hello", "app")?;
        Ok(log.contains("hello from the node").then_some(log))
    })
    .await
    .expect("log");
    assert!(log.contains("hello from the node"));
}
