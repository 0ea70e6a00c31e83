//! What the fuzz targets share: the webhook's view of a namespace (a fixed catalog of
//! DsoSecrets and ServiceAccounts, as in the webhook's own patch tests), its settings, and the
//! properties every admission must keep:
//!
//! - no panic, whatever the pod;
//! - a denial is a denial (a message for the user), never a server failure;
//! - an injection's JSON patch applies to the pod and leaves a valid Pod, which the apiserver
//!   can serialise into the review's response;
//! - the patched pod, reviewed again (reinvocation), changes nothing;
//! - no regular container of the patched pod keeps a literal `dso://` value;
//! - dso-init accepts the plan the webhook wrote into `DSO_PLAN`.

use dso_api::DsoSecret;
use dso_api::contract::PLAN_ENV;
use dso_webhook::patch::{Catalog, InjectConfig, Mutation, mutate};
use k8s_openapi::api::core::v1::{Pod, ResourceRequirements};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The namespace of the catalog.
pub const NS: &str = "shop";

/// DsoSecrets and ServiceAccount roles the fuzzed pods may refer to.
#[derive(Default)]
pub struct Fake {
    secrets: BTreeMap<String, Arc<DsoSecret>>,
    roles: BTreeMap<String, String>,
}

impl Fake {
    /// Adds DsoSecret `name` of [`NS`]; `None` when `spec` is not a DsoSecret spec.
    pub fn with_secret(mut self, name: &str, spec: Value) -> Option<Self> {
        let s: DsoSecret = serde_json::from_value(json!({
            "apiVersion": "dso.dev/v1alpha1", "kind": "DsoSecret",
            "metadata": {"name": name, "namespace": NS}, "spec": spec
        }))
        .ok()?;
        self.secrets.insert(name.into(), Arc::new(s));
        Some(self)
    }
}

impl Catalog for Fake {
    fn dso_secret(&self, namespace: &str, name: &str) -> Option<Result<Arc<DsoSecret>, String>> {
        (namespace == NS)
            .then(|| self.secrets.get(name).cloned().map(Ok))
            .flatten()
    }
    fn service_account_role(&self, namespace: &str, name: &str) -> Option<Option<String>> {
        (namespace == NS && name != "not-yet-cached").then(|| self.roles.get(name).cloned())
    }
}

/// The catalog the admission target reviews against.
pub fn catalog() -> Fake {
    let mut c = Fake::default();
    c.roles
        .insert("web".into(), "arn:aws:iam::123456789012:role/web".into());
    let specs = [
        (
            "db",
            json!({"files": [{"path": "password", "secretId": "prod/db", "jsonKey": "password"}]}),
        ),
        (
            "api",
            json!({"files": [{"secretId": "prod/api", "expand": true}], "fileMode": "0400"}),
        ),
        (
            "role-a",
            json!({"aws": {"roleArn": "arn:aws:iam::123456789012:role/a", "region": "eu-west-1"}, "files": [{"path": "p", "secretId": "x"}]}),
        ),
        (
            "role-b",
            json!({"aws": {"roleArn": "arn:aws:iam::123456789012:role/b"}, "files": [{"path": "conf/p", "secretId": "arn:aws:secretsmanager:us-east-1:123456789012:secret:y"}]}),
        ),
        (
            "broken",
            json!({"files": [{"path": "../escape", "secretId": "x"}]}),
        ),
        (
            "tpl",
            json!({"files": [{"path": "url", "template": "postgres://{{ db.username }}:{{ db.password }}@db/app",
            "sources": {"db": {"secretId": "prod/db", "versionStage": "AWSPREVIOUS"}}}]}),
        ),
    ];
    for (name, spec) in specs {
        c = c.with_secret(name, spec).unwrap_or_default();
    }
    c
}

/// The webhook's settings (as its defaults, with a small volume so the size check bites).
pub fn cfg() -> InjectConfig {
    InjectConfig {
        image: "dso.local/dso-init:dev".into(),
        image_pull_policy: "IfNotPresent".into(),
        default_mount_path: "/run/secrets/dso".into(),
        size_limit: "1Mi".into(),
        size_limit_bytes: 1 << 20,
        resources: ResourceRequirements::default(),
        default_region: Some("us-east-1".into()),
        init_env: vec![],
        fs_group: Some(65532),
        run_as_user: 65532,
        token_expiration_seconds: 3600,
        allow_default_credentials: false,
        allowlist: Default::default(),
        ca_bundle: None,
    }
}

/// Reviews `pod` as created in `namespace` and checks the properties of the module's doc.
/// Returns whether it was injected.
pub fn check_admission(pod: &Pod, namespace: &str, catalog: &Fake) -> bool {
    let cfg = cfg();
    let injection = match mutate(pod, namespace, catalog, &cfg) {
        Ok(Mutation::Inject(i)) => i,
        Ok(_) => return false,
        Err(e) => {
            let label = e.metric_label();
            assert!(
                !matches!(label, "patch" | "config" | "tls" | "io" | "invalid_review"),
                "a pod got a server failure instead of a denial: {e}"
            );
            assert!(!e.to_string().is_empty());
            return false;
        }
    };
    let mut value = serde_json::to_value(pod).expect("a Pod serialises");
    json_patch::patch(&mut value, &injection.patch)
        .unwrap_or_else(|e| panic!("the patch does not apply: {e}\n{:?}", injection.patch));
    let patched: Pod = serde_json::from_value(value).expect("the patched object is a Pod");
    match mutate(&patched, namespace, catalog, &cfg) {
        Ok(Mutation::AlreadyInjected) => {}
        other => panic!("a second review of the injected pod did not leave it alone: {other:?}"),
    }
    let spec = patched.spec.as_ref().expect("an injected pod has a spec");
    for c in &spec.containers {
        for e in c.env.iter().flatten() {
            assert!(
                e.value
                    .as_deref()
                    .and_then(dso_api::env::parse_reference)
                    .is_none(),
                "container {:?} keeps the literal reference of {}",
                c.name,
                e.name
            );
        }
    }
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == dso_api::annotations::INIT_CONTAINER_NAME)
        .expect("dso-init injected");
    let plan = init
        .env
        .iter()
        .flatten()
        .find(|e| e.name == PLAN_ENV)
        .and_then(|e| e.value.clone())
        .expect("DSO_PLAN set");
    if let Err(e) = dso_init::plan::parse(&plan) {
        panic!("dso-init refuses the webhook's plan: {e}\n{plan}");
    }
    true
}
