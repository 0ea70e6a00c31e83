//! In-process tests of the router: AdmissionReview JSON in, AdmissionReview JSON out, through
//! `oneshot` (no socket, no TLS), against the real store loaded from a file of objects.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use clap::Parser;
use dso_webhook::config::{Args, InjectConfig};
use dso_webhook::store::Store;
use dso_webhook::{AppState, router};
use http_body_util::BodyExt;
use rstest::rstest;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tower::ServiceExt;

const OBJECTS: &str = r#"
apiVersion: dso.dev/v1alpha1
kind: DsoSecret
metadata: {name: db, namespace: shop}
spec:
  files: [{path: password, secretId: prod/db, jsonKey: password}]
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: default
  namespace: shop
  annotations: {eks.amazonaws.com/role-arn: "arn:aws:iam::123456789012:role/shop"}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: no-role, namespace: shop}
"#;

fn state(ready: Arc<AtomicBool>) -> AppState {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("objects.yaml");
    std::fs::write(&f, OBJECTS).expect("write");
    let store = Store::from_file(&f).expect("store");
    let args =
        Args::try_parse_from(["dso-webhook", "--init-image", "dso-init:test"]).expect("args");
    let cfg = InjectConfig::from_args(&args).expect("config");
    AppState::new(
        Arc::new(store),
        Arc::new(move || ready.load(Ordering::Relaxed)),
        cfg,
    )
}

fn app() -> axum::Router {
    router(state(Arc::new(AtomicBool::new(true))))
}

fn review(operation: &str, annotations: Value, dry_run: bool) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "6a1d3e2c-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "web-", "namespace": "shop", "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]}},
            "oldObject": null, "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

async fn call(
    app: axum::Router,
    method: &str,
    uri: &str,
    body: Body,
    json_type: bool,
) -> (StatusCode, Value, String) {
    let mut req = Request::builder().method(method).uri(uri);
    if json_type {
        req = req.header("content-type", "application/json");
    }
    let resp = app
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&bytes).to_string();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text,
    )
}

async fn post_review(app: axum::Router, body: Value) -> Value {
    let (status, v, text) = call(app, "POST", "/mutate", Body::from(body.to_string()), true).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    v["response"].clone()
}

fn patch_of(response: &Value) -> Vec<Value> {
    let bytes = match &response["patch"] {
        Value::String(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64"),
        Value::Array(nums) => nums
            .iter()
            .map(|n| n.as_u64().expect("byte") as u8)
            .collect(),
        other => panic!("no patch: {other}"),
    };
    serde_json::from_slice(&bytes).expect("patch json")
}

#[rstest]
#[case::create(false)]
#[case::dry_run_create(true)]
#[tokio::test]
async fn an_annotated_pod_gets_a_json_patch_with_the_init_container(#[case] dry_run: bool) {
    let r = post_review(
        app(),
        review(
            "CREATE",
            json!({"dso.dev/inject": "true", "dso.dev/secrets": "db"}),
            dry_run,
        ),
    )
    .await;
    assert_eq!(r["uid"], "6a1d3e2c-0000-4000-8000-000000000001");
    assert_eq!(r["allowed"], true);
    assert_eq!(r["patchType"], "JSONPatch");
    let ops = patch_of(&r);
    let init = ops
        .iter()
        .find(|o| o["path"] == "/spec/initContainers")
        .expect("init op");
    assert_eq!(init["value"][0]["name"], "dso-init");
    assert_eq!(init["value"][0]["image"], "dso-init:test");
    assert!(
        ops.iter()
            .any(|o| o["path"] == "/metadata/annotations/dso.dev~1injected")
    );
}

#[tokio::test]
async fn the_patch_is_sent_as_base64_the_form_the_apiserver_reads() {
    let r = post_review(
        app(),
        review(
            "CREATE",
            json!({"dso.dev/inject": "true", "dso.dev/secrets": "db"}),
            false,
        ),
    )
    .await;
    let patch = r["patch"]
        .as_str()
        .expect("a base64 string, not an array of numbers");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("base64");
    let ops: Vec<Value> = serde_json::from_slice(&bytes).expect("a JSON patch");
    assert!(!ops.is_empty());
    assert_eq!(r["patchType"], "JSONPatch");
}

/// The apiserver runs the ServiceAccount admission plugin before the webhooks: the pod arrives
/// with its `kube-api-access-*` volume mounted in the app container.
#[tokio::test]
async fn dso_init_gets_the_service_account_token_mount_the_apiserver_gave_the_pod() {
    let mount = json!({"name": "kube-api-access-4xq8z", "readOnly": true,
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"});
    let mut body = review(
        "CREATE",
        json!({"dso.dev/inject": "true", "dso.dev/secrets": "db"}),
        false,
    );
    body["request"]["object"]["spec"]["containers"][0]["volumeMounts"] = json!([mount]);
    body["request"]["object"]["spec"]["volumes"] = json!([{"name": "kube-api-access-4xq8z",
        "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}]);
    let r = post_review(app(), body.clone()).await;
    let ops = patch_of(&r);
    let init = ops
        .iter()
        .find(|o| o["path"] == "/spec/initContainers")
        .expect("init op");
    let mounts = init["value"][0]["volumeMounts"]
        .as_array()
        .expect("init mounts");
    assert_eq!(mounts.last(), Some(&mount), "{mounts:?}");

    // Without automount, the apiserver gives no token and neither does DSO.
    body["request"]["object"]["spec"]["automountServiceAccountToken"] = json!(false);
    let r = post_review(app(), body).await;
    let ops = patch_of(&r);
    let init = ops
        .iter()
        .find(|o| o["path"] == "/spec/initContainers")
        .expect("init op");
    assert!(
        !init["value"][0]["volumeMounts"]
            .to_string()
            .contains("kube-api-access"),
        "{init}"
    );
}

#[rstest]
#[case::not_annotated("CREATE", json!({"team": "a"}))]
#[case::opted_out("CREATE", json!({"dso.dev/inject": "false", "dso.dev/secrets": "db"}))]
#[case::update_of_an_annotated_pod("UPDATE", json!({"dso.dev/inject": "true", "dso.dev/secrets": "db"}))]
#[tokio::test]
async fn other_pods_and_operations_pass_untouched(#[case] op: &str, #[case] annotations: Value) {
    let r = post_review(app(), review(op, annotations, false)).await;
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none(), "{r}");
}

#[rstest]
#[case::unknown_dsosecret(json!({"dso.dev/secrets": "nope"}), "DsoSecret \"nope\" not found in namespace shop")]
#[case::other_namespace(json!({"dso.dev/secrets": "other/db"}), "refers to another namespace")]
#[case::unknown_container(json!({"dso.dev/secrets": "db", "dso.dev/containers": "ghost"}), "no such container")]
#[tokio::test]
async fn bad_pods_are_denied_with_the_reason_in_the_status(
    #[case] extra: Value,
    #[case] message: &str,
) {
    let mut annotations = json!({"dso.dev/inject": "true"});
    annotations
        .as_object_mut()
        .expect("object")
        .extend(extra.as_object().expect("object").clone());
    let r = post_review(app(), review("CREATE", annotations, false)).await;
    assert_eq!(r["allowed"], false);
    let got = r["status"]["message"].as_str().expect("message");
    assert!(got.contains(message), "{got}");
}

#[rstest]
#[case::not_json("{not json", true)]
#[case::wrong_shape(r#"{"request": 42}"#, true)]
#[case::no_content_type(r#"{}"#, false)]
#[tokio::test]
async fn an_unreadable_body_gets_a_json_error(#[case] body: &'static str, #[case] json_type: bool) {
    let (status, v, text) = call(app(), "POST", "/mutate", Body::from(body), json_type).await;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(
        v["code"],
        status.as_u16(),
        "a JSON body, not plain text: {text}"
    );
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{text}"
    );
}

#[tokio::test]
async fn a_review_without_a_request_is_answered_as_invalid() {
    let r = post_review(
        app(),
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
    )
    .await;
    assert_eq!(r["allowed"], false);
}

#[tokio::test]
async fn a_pod_without_a_namespace_is_denied_and_counted_as_no_namespace() {
    let app = app();
    let mut body = review(
        "CREATE",
        json!({"dso.dev/inject": "true", "dso.dev/secrets": "db"}),
        false,
    );
    body["request"]["namespace"] = Value::Null;
    body["request"]["object"]["metadata"]["namespace"] = Value::Null;
    let r = post_review(app.clone(), body).await;
    assert_eq!(r["allowed"], false);
    let message = r["status"]["message"].as_str().expect("message");
    assert!(message.contains("the pod has no namespace"), "{message}");
    post_review(
        app.clone(),
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
    )
    .await;
    let (_, _, text) = call(app, "GET", "/metrics", Body::empty(), false).await;
    for line in [
        r#"dso_webhook_admissions_total{outcome="denied",reason="no_namespace"} 1"#,
        r#"dso_webhook_admissions_total{outcome="invalid",reason="invalid"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[tokio::test]
async fn readyz_follows_the_watch_caches() {
    let ready = Arc::new(AtomicBool::new(false));
    let app = router(state(ready.clone()));
    let (status, v, _) = call(app.clone(), "GET", "/readyz", Body::empty(), false).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        v["message"]
            .as_str()
            .expect("message")
            .contains("not synced")
    );
    ready.store(true, Ordering::Relaxed);
    let (status, _, _) = call(app.clone(), "GET", "/readyz", Body::empty(), false).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(app, "GET", "/healthz", Body::empty(), false).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_count_admissions_by_outcome_and_reason() {
    let app = app();
    post_review(
        app.clone(),
        review(
            "CREATE",
            json!({"dso.dev/inject": "true", "dso.dev/secrets": "db"}),
            false,
        ),
    )
    .await;
    post_review(
        app.clone(),
        review(
            "CREATE",
            json!({"dso.dev/inject": "true", "dso.dev/secrets": "nope"}),
            false,
        ),
    )
    .await;
    post_review(app.clone(), review("CREATE", json!({}), false)).await;
    let (status, _, text) = call(app, "GET", "/metrics", Body::empty(), false).await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        r#"dso_webhook_admissions_total{outcome="injected",reason="none"} 1"#,
        r#"dso_webhook_admissions_total{outcome="denied",reason="unknown_dsosecret"} 1"#,
        r#"dso_webhook_admissions_total{outcome="skipped",reason="none"} 1"#,
        "dso_webhook_admission_duration_seconds_count 3",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[tokio::test]
async fn an_unknown_path_gets_a_json_404() {
    let (status, v, _) = call(app(), "GET", "/nope", Body::empty(), false).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["code"], 404);
}

/// `dso://` env references over HTTP: replaced in the patch, or refused naming the reference.
#[rstest]
#[case::rewritten("dso://db/password", None)]
#[case::unknown_path(
    "dso://db/nope",
    Some(
        "container \"app\", env DB_PASSWORD: dso://db/nope: DsoSecret \"db\" does not write \"nope\""
    )
)]
#[case::unmounted(
    "dso://api/token",
    Some(
        "container \"app\", env DB_PASSWORD: dso://api/token: the pod does not mount DsoSecret \"api\""
    )
)]
#[tokio::test]
async fn a_dso_env_reference_is_rewritten_or_denied(
    #[case] reference: &str,
    #[case] denial: Option<&str>,
) {
    let mut body = review(
        "CREATE",
        json!({"dso.dev/inject": "true", "dso.dev/secrets": "db"}),
        false,
    );
    body["request"]["object"]["spec"]["containers"][0]["env"] =
        json!([{"name": "DB_PASSWORD", "value": reference}]);
    let r = post_review(app(), body).await;
    match denial {
        Some(message) => {
            assert_eq!(r["allowed"], false);
            let got = r["status"]["message"].as_str().expect("message");
            assert!(got.contains(message), "{got}");
        }
        None => {
            assert_eq!(r["allowed"], true);
            let ops = patch_of(&r);
            let replace = ops
                .iter()
                .find(|o| o["path"] == "/spec/containers/0/env/0")
                .expect("env op");
            assert_eq!(replace["op"], "replace");
            assert_eq!(
                replace["value"],
                json!({"name": "DB_PASSWORD", "valueFrom": {"fileKeyRef": {
                    "volumeName": "dso-secrets", "path": ".dso-env/app.env", "key": "DB_PASSWORD"}}})
            );
        }
    }
}

fn dso_secret_review(operation: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "6a1d3e2c-0000-4000-8000-000000000002",
            "kind": {"group": "dso.dev", "version": "v1alpha1", "kind": "DsoSecret"},
            "resource": {"group": "dso.dev", "version": "v1alpha1", "resource": "dsosecrets"},
            "namespace": "shop", "operation": operation,
            "userInfo": {"username": "dev"},
            "object": {"apiVersion": "dso.dev/v1alpha1", "kind": "DsoSecret",
                "metadata": {"name": "db", "namespace": "shop"}, "spec": spec},
            "oldObject": null, "dryRun": false
        }
    })
}

/// `kubectl apply` of a DsoSecret whose template is broken is refused with the field named.
#[rstest]
#[case::valid_template("CREATE", json!({"files": [{"path": "url", "template": "{{ db.password }}", "sources": {"db": {"secretId": "prod/db"}}}]}), None)]
#[case::syntax_error("CREATE", json!({"files": [{"path": "url", "template": "{{ db.password", "sources": {"db": {"secretId": "prod/db"}}}]}), Some("DsoSecret \"db\" is invalid: spec.files[0].template: syntax error at line 1"))]
#[case::undeclared_source("UPDATE", json!({"files": [{"path": "url", "template": "{{ api.key }}", "sources": {"db": {"secretId": "prod/db"}}}]}), Some("spec.files[0].template: reads \"api\" not declared in sources (declared: db)"))]
#[case::arn_region("CREATE", json!({"aws": {"region": "us-east-1"}, "files": [{"path": "p", "secretId": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf"}]}), Some("spec.files[0].secretId: the ARN is in region eu-west-1"))]
#[tokio::test]
async fn a_dso_secret_is_validated_beyond_its_schema(
    #[case] operation: &str,
    #[case] spec: Value,
    #[case] denial: Option<&str>,
) {
    let (status, v, text) = call(
        app(),
        "POST",
        "/validate",
        Body::from(dso_secret_review(operation, spec).to_string()),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let r = &v["response"];
    assert_eq!(r["uid"], "6a1d3e2c-0000-4000-8000-000000000002");
    match denial {
        None => assert_eq!(r["allowed"], true, "{r}"),
        Some(message) => {
            assert_eq!(r["allowed"], false);
            let got = r["status"]["message"].as_str().expect("message");
            assert!(got.contains(message), "{got}");
        }
    }
    assert!(r.get("patch").is_none(), "validation never patches");
}

#[tokio::test]
async fn a_spec_the_webhook_cannot_read_is_left_to_the_schema_with_a_warning() {
    let (_, v, _) = call(
        app(),
        "POST",
        "/validate",
        Body::from(dso_secret_review("CREATE", json!({"files": [], "newField": 1})).to_string()),
        true,
    )
    .await;
    assert_eq!(v["response"]["allowed"], true);
    assert!(
        v["response"]["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("cannot read"))
    );
}

#[rstest]
#[case::token_in_the_app(json!([{"name": "app", "image": "busybox",
    "volumeMounts": [{"name": "dso-aws-iam-token", "mountPath": "/t"}]}]), "container \"app\" mounts volume \"dso-aws-iam-token\"")]
#[case::secrets_writable_in_a_sidecar(json!([{"name": "app", "image": "busybox"}, {"name": "side", "image": "busybox",
    "volumeMounts": [{"name": "dso-secrets", "mountPath": "/s"}]}]), "container \"side\" mounts volume \"dso-secrets\"")]
#[tokio::test]
async fn a_pod_mounting_a_dso_volume_itself_is_denied_naming_the_container_and_volume(
    #[case] containers: Value,
    #[case] message: &str,
) {
    let mut body = review(
        "CREATE",
        json!({"dso.dev/inject": "true", "dso.dev/secrets": "db"}),
        false,
    );
    body["request"]["object"]["spec"]["containers"] = containers;
    let r = post_review(app(), body).await;
    assert_eq!(r["allowed"], false);
    let got = r["status"]["message"].as_str().expect("message");
    assert!(got.contains(message), "{got}");
}

#[tokio::test]
async fn a_pod_without_an_aws_identity_is_denied_with_what_to_add() {
    let mut body = review(
        "CREATE",
        json!({"dso.dev/inject": "true", "dso.dev/secrets": "db"}),
        false,
    );
    body["request"]["object"]["spec"]["serviceAccountName"] = json!("no-role");
    let r = post_review(app(), body).await;
    assert_eq!(r["allowed"], false);
    let got = r["status"]["message"].as_str().expect("message");
    assert!(
        got.contains("no AWS identity") && got.contains("eks.amazonaws.com/role-arn"),
        "{got}"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_a_json_413() {
    let limits = dso_webhook::limits::Limits {
        max_body_bytes: 64 << 10,
        ..Default::default()
    };
    let app = dso_webhook::router_with(state(Arc::new(AtomicBool::new(true))), &limits);
    let mut body = review(
        "CREATE",
        json!({"dso.dev/inject": "true", "dso.dev/secrets": "db", "big": "x".repeat(100 << 10)}),
        false,
    );
    body["request"]["uid"] = json!("big");
    let (status, v, text) = call(app, "POST", "/mutate", Body::from(body.to_string()), true).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("--max-body-size")),
        "{text}"
    );
}

#[tokio::test]
async fn a_large_review_is_parsed_and_answered_like_a_small_one() {
    let body = review(
        "CREATE",
        json!({"dso.dev/inject": "true", "dso.dev/secrets": "db", "big": "x".repeat(1 << 20)}),
        false,
    );
    let r = post_review(app(), body).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(r["patchType"], "JSONPatch");
}

#[tokio::test]
async fn past_the_cap_a_small_review_is_shed_and_a_stuck_one_times_out_both_counted() {
    let limits = dso_webhook::limits::Limits {
        max_concurrent_reviews: 1,
        request_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let app = dso_webhook::router_with(state(Arc::new(AtomicBool::new(true))), &limits);
    let small = |body: Body| {
        Request::post("/mutate")
            .header("content-type", "application/json")
            .header("content-length", "100")
            .body(body)
            .expect("request")
    };
    // A client that announces 100 bytes and never sends them holds the only place.
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    let stuck = tokio::spawn(app.clone().oneshot(small(Body::from_stream(rx))));
    let body = review("CREATE", json!({}), false).to_string();
    let mut shed = None;
    for _ in 0..1000 {
        let resp = app
            .clone()
            .oneshot(small(Body::from(body.clone())))
            .await
            .expect("response");
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            shed = Some(resp.into_body().collect().await.expect("body").to_bytes());
            break;
        }
        tokio::task::yield_now().await;
    }
    let shed = shed.expect("a second small review is shed while the first holds the place");
    let v: Value = serde_json::from_slice(&shed).expect("JSON");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("--max-concurrent-reviews")),
        "{v}"
    );

    let resp = stuck.await.expect("join").expect("response");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
            .expect("JSON");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("--request-timeout")),
        "{v}"
    );
    drop(tx);

    let (_, _, text) = call(app, "GET", "/metrics", Body::empty(), false).await;
    for line in [
        r#"dso_webhook_requests_refused_total{reason="overloaded"} 1"#,
        r#"dso_webhook_requests_refused_total{reason="timeout"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

/// The admin's allowlist of the next tests: `shop` may name `prod/…` and `shop/…`; another
/// namespace's entry that must never show in `shop`'s messages.
const ALLOWLIST: &str = r#"
default: ["{namespace}/"]
namespaces:
  shop: ["prod/"]
  payments: ["pay-team-only/"]
"#;

/// DsoSecrets of `shop` naming other teams' secrets, one per way of naming one.
const STOLEN: &str = r#"
---
apiVersion: dso.dev/v1alpha1
kind: DsoSecret
metadata: {name: stolen, namespace: shop}
spec:
  files: [{path: password, secretId: pay-team-only/db}]
---
apiVersion: dso.dev/v1alpha1
kind: DsoSecret
metadata: {name: stolen-tpl, namespace: shop}
spec:
  files:
  - path: url
    template: "{{ db.password }}"
    sources: {db: {secretId: "arn:aws:secretsmanager:us-east-1:999999999999:secret:prod/db-AbCdEf"}}
"#;

/// A router whose webhook runs with `--secret-allowlist` (the file above).
fn app_with_allowlist() -> axum::Router {
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = dir.path().join("objects.yaml");
    std::fs::write(&objects, format!("{OBJECTS}{STOLEN}")).expect("write");
    let allowlist = dir.path().join("allowlist.yaml");
    std::fs::write(&allowlist, ALLOWLIST).expect("write");
    let store = Store::from_file(&objects).expect("store");
    let args = Args::try_parse_from([
        "dso-webhook",
        "--init-image",
        "dso-init:test",
        "--secret-allowlist",
        &allowlist.to_string_lossy(),
    ])
    .expect("args");
    let cfg = InjectConfig::from_args(&args).expect("config");
    router(AppState::new(Arc::new(store), Arc::new(|| true), cfg))
}

#[rstest]
#[case::file_secret_id(
    "stolen",
    "spec.files[0].secretId: secret \"pay-team-only/db\" (file \"password\")"
)]
#[case::template_source_in_another_account(
    "stolen-tpl",
    "spec.files[0].sources.db.secretId: secret \"arn:aws:secretsmanager:us-east-1:999999999999:secret:prod/db-AbCdEf\" (file \"url\")"
)]
#[tokio::test]
async fn a_pod_whose_dsosecret_names_a_secret_outside_the_allowlist_is_denied(
    #[case] dsosecret: &str,
    #[case] names: &str,
) {
    let app = app_with_allowlist();
    let annotations =
        json!({"dso.dev/inject": "true", "dso.dev/secrets": format!("db,{dsosecret}")});
    let r = post_review(app.clone(), review("CREATE", annotations, false)).await;
    assert_eq!(r["allowed"], false, "{r}");
    let got = r["status"]["message"].as_str().expect("message");
    assert!(
        got.starts_with(&format!(
            "DsoSecret \"{dsosecret}\" of namespace shop names secrets outside the namespace's secret allowlist"
        )),
        "{got}"
    );
    assert!(got.contains(names), "{got}");
    assert!(got.contains("it may use: shop/, prod/"), "{got}");
    assert!(
        !got.contains("pay-team-only/,") && !got.contains("payments"),
        "another namespace's entries: {got}"
    );
    assert!(r.get("patch").is_none());

    // The allowed DsoSecret alone is injected.
    let ok = json!({"dso.dev/inject": "true", "dso.dev/secrets": "db"});
    let r = post_review(app.clone(), review("CREATE", ok, false)).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(r.get("patch").is_some());
    let (_, _, metrics) = call(app, "GET", "/metrics", Body::empty(), false).await;
    assert!(
        metrics.contains("reason=\"not_allowed\""),
        "the denial is counted: {metrics}"
    );
}

#[rstest]
#[case::allowed(json!({"files": [{"path": "p", "secretId": "shop/db"}]}), None)]
#[case::other_teams_name(json!({"files": [{"path": "p", "secretId": "pay-team-only/db"}]}),
    Some("DsoSecret \"db\" of namespace shop names secrets outside the namespace's secret allowlist, set by the cluster admin: spec.files[0].secretId: secret \"pay-team-only/db\" (file \"p\")"))]
#[case::template_source(json!({"files": [{"path": "url", "template": "{{ s.k }}", "sources": {"s": {"secretId": "other/x"}}}]}),
    Some("spec.files[0].sources.s.secretId: secret \"other/x\" (file \"url\")"))]
#[case::bare_prefix_does_not_allow_an_arn(json!({"files": [{"path": "p", "secretId": "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db"}]}),
    Some("spec.files[0].secretId: secret \"arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db\""))]
#[tokio::test]
async fn a_dsosecret_naming_a_secret_outside_the_allowlist_is_refused_at_apply(
    #[case] spec: Value,
    #[case] denial: Option<&str>,
) {
    let (status, v, text) = call(
        app_with_allowlist(),
        "POST",
        "/validate",
        Body::from(dso_secret_review("CREATE", spec).to_string()),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let r = &v["response"];
    match denial {
        None => assert_eq!(r["allowed"], true, "{r}"),
        Some(message) => {
            assert_eq!(r["allowed"], false, "{r}");
            let got = r["status"]["message"].as_str().expect("message");
            assert!(got.contains(message), "{got}");
            assert!(!got.contains("pay-team-only/,"), "{got}");
        }
    }
}
