//! The patch builder over tables of pod shapes and denials, and a property test. The fixtures
//! live here; the tests are grouped by step.

mod api_token;
mod denials;
mod env;
mod examples;
mod identity;
mod inplace;
mod property;
mod shape;
mod signal;

use super::identity::env_value;
use super::*;
use dso_api::contract::PLAN_ENV;
use k8s_openapi::api::core::v1::{Container, ResourceRequirements};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const NS: &str = "shop";
const ROLE_A: &str = "arn:aws:iam::123456789012:role/shop-db";
const ROLE_B: &str = "arn:aws:iam::123456789012:role/other";
const ROLE_SA: &str = "arn:aws:iam::123456789012:role/from-sa";

#[derive(Default)]
struct Fake {
    secrets: BTreeMap<(String, String), Arc<DsoSecret>>,
    roles: BTreeMap<(String, String), String>,
}

impl Fake {
    fn with_secret(mut self, ns: &str, name: &str, spec: Value) -> Self {
        let s: DsoSecret = serde_json::from_value(json!({
            "apiVersion": "dso.dev/v1alpha1", "kind": "DsoSecret",
            "metadata": {"name": name, "namespace": ns}, "spec": spec
        }))
        .expect("DsoSecret fixture");
        self.secrets.insert((ns.into(), name.into()), Arc::new(s));
        self
    }
    fn with_sa_role(mut self, ns: &str, sa: &str, role: &str) -> Self {
        self.roles.insert((ns.into(), sa.into()), role.into());
        self
    }
}

impl Catalog for Fake {
    fn dso_secret(&self, namespace: &str, name: &str) -> Option<Result<Arc<DsoSecret>, String>> {
        self.secrets
            .get(&(namespace.into(), name.into()))
            .cloned()
            .map(Ok)
    }
    fn service_account_role(&self, namespace: &str, name: &str) -> Option<Option<String>> {
        // Every ServiceAccount exists except this one, which the cache has not seen yet.
        (name != "not-yet-cached")
            .then(|| self.roles.get(&(namespace.into(), name.into())).cloned())
    }
}

fn catalog() -> Fake {
    Fake::default()
        .with_secret(NS, "db", json!({"files": [{"path": "password", "secretId": "prod/db", "jsonKey": "password"}]}))
        .with_secret(NS, "api", json!({"files": [{"secretId": "prod/api", "expand": true}], "fileMode": "0400"}))
        .with_secret(NS, "db-role", json!({"aws": {"roleArn": ROLE_A, "region": "eu-west-1"}, "files": [{"path": "p", "secretId": "x"}]}))
        .with_secret(NS, "other-role", json!({"aws": {"roleArn": ROLE_B}, "files": [{"path": "p", "secretId": "y"}]}))
        .with_secret(NS, "broken", json!({"files": [{"path": "../escape", "secretId": "x"}]}))
        .with_secret(NS, "big", json!({"files": (0..64).map(|i| json!({"path": format!("f{i}"), "secretId": "s"})).collect::<Vec<_>>()}))
        .with_secret("other", "db", json!({"files": [{"path": "p", "secretId": "x"}]}))
        .with_secret(NS, "tpl", json!({"files": [{"path": "url", "template": "postgres://{{ db.username }}:{{ db.password }}@db/app",
            "sources": {"db": {"secretId": "prod/db", "versionStage": "AWSPREVIOUS"}}}]}))
        .with_secret(NS, "tpl-broken", json!({"files": [{"path": "url", "template": "{{ db.password }}{{ api }}",
            "sources": {"db": {"secretId": "prod/db"}}}]}))
}

fn cfg() -> InjectConfig {
    InjectConfig {
        image: "dso.local/dso-init:dev".into(),
        image_pull_policy: "IfNotPresent".into(),
        default_mount_path: "/run/secrets/dso".into(),
        size_limit: "4Mi".into(),
        size_limit_bytes: 4 << 20,
        resources: ResourceRequirements::default(),
        default_region: Some("us-east-1".into()),
        init_env: vec![("AWS_ENDPOINT_URL".into(), "http://127.0.0.1:5000".into())],
        fs_group: Some(65532),
        run_as_user: 65532,
        token_expiration_seconds: 3600,
        // The shape tests use pods without a role; the identity tests turn this off.
        allow_default_credentials: true,
        allowlist: Default::default(),
        ca_bundle: None,
    }
}

/// An opted-in pod with one container `app`, merged with `extra` (objects merge, the rest replaces).
fn pod(extra: Value) -> Pod {
    let mut base = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": NS,
                     "annotations": {"dso.dev/inject": "true", "dso.dev/secrets": "db"}},
        "spec": {"serviceAccountName": "default", "containers": [{"name": "app", "image": "busybox"}]}
    });
    merge(&mut base, extra);
    serde_json::from_value(base).expect("pod fixture")
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (b, e) => *b = e,
    }
}

fn inject(pod: &Pod, cat: &Fake) -> Injection {
    match mutate(pod, NS, cat, &cfg()).expect("admitted") {
        Mutation::Inject(i) => i,
        other => panic!("expected an injection, got {other:?}"),
    }
}

fn apply(pod: &Pod, patch: &Patch) -> Pod {
    let mut v = serde_json::to_value(pod).expect("pod json");
    json_patch::patch(&mut v, patch).expect("the patch applies");
    serde_json::from_value(v).expect("still a pod")
}

fn injected(p: &Pod) -> Pod {
    apply(p, &inject(p, &catalog()).patch)
}

fn spec(p: &Pod) -> &PodSpec {
    p.spec.as_ref().expect("spec")
}

fn init(p: &Pod) -> &Container {
    let c = &spec(p).init_containers.as_ref().expect("init containers")[0];
    assert_eq!(c.name, "dso-init", "dso-init comes first");
    c
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    env_value(c, name)
}

fn mounts_of<'a>(p: &'a Pod, container: &str) -> Vec<&'a VolumeMount> {
    spec(p)
        .containers
        .iter()
        .find(|c| c.name == container)
        .and_then(|c| c.volume_mounts.as_ref())
        .map(|m| m.iter().filter(|m| m.name == "dso-secrets").collect())
        .unwrap_or_default()
}

fn assert_restricted(c: &Container) {
    let sc = c.security_context.as_ref().expect("security context");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
}

fn merge_into(mut a: Value, b: Value) -> Value {
    merge(&mut a, b);
    a
}

/// What the EKS pod identity webhook adds for IRSA, in the app container.
fn eks_injected() -> Value {
    let eks_env = json!([
        {"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"},
        {"name": "AWS_DEFAULT_REGION", "value": "eu-central-1"},
        {"name": "AWS_REGION", "value": "eu-central-1"},
        {"name": "AWS_ROLE_ARN", "value": ROLE_SA},
        {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"}
    ]);
    json!({"spec": {
        "containers": [{"name": "app", "image": "a", "env": eks_env,
            "volumeMounts": [{"name": "aws-iam-token", "mountPath": "/var/run/secrets/eks.amazonaws.com/serviceaccount", "readOnly": true}]}],
        "volumes": [{"name": "aws-iam-token", "projected": {"sources": [{"serviceAccountToken": {"audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token"}}]}}]
    }})
}
