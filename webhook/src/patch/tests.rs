//! The patch builder over a table of pod shapes, denials, and a property test.

use super::*;
use crate::config::InjectConfig;
use k8s_openapi::api::core::v1::ResourceRequirements;
use proptest::prelude::*;
use rstest::rstest;
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
        token_expiration_seconds: 86400,
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

#[test]
fn a_pod_without_security_contexts_gets_the_volume_the_init_container_and_the_mount() {
    let p = injected(&pod(json!({})));
    let s = spec(&p);
    let vol = s
        .volumes
        .as_ref()
        .expect("volumes")
        .iter()
        .find(|v| v.name == "dso-secrets")
        .expect("volume");
    let ed = vol.empty_dir.as_ref().expect("emptyDir");
    assert_eq!(ed.medium.as_deref(), Some("Memory"));
    assert_eq!(ed.size_limit, Some(Quantity("4Mi".into())));
    let i = init(&p);
    assert_restricted(i);
    assert_eq!(
        i.security_context.as_ref().and_then(|s| s.run_as_user),
        Some(65532)
    );
    assert_eq!(
        s.security_context.as_ref().and_then(|s| s.fs_group),
        Some(65532)
    );
    let m = &i.volume_mounts.as_ref().expect("init mounts")[0];
    assert_eq!(
        (m.mount_path.as_str(), m.read_only),
        ("/run/secrets/dso", None)
    );
    let app = mounts_of(&p, "app");
    assert_eq!(app.len(), 1);
    assert_eq!(app[0].read_only, Some(true));
    assert_eq!(
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("dso.dev/injected"))
            .map(String::as_str),
        Some("db")
    );
    assert_eq!(env(i, "AWS_REGION"), Some("us-east-1"));
    assert_eq!(env(i, "AWS_ENDPOINT_URL"), Some("http://127.0.0.1:5000"));
    assert_eq!(env(i, "AWS_ROLE_ARN"), None, "no role known: default chain");
}

#[test]
fn the_plan_names_secrets_keys_and_paths_never_values() {
    let p = injected(&pod(
        json!({"metadata": {"annotations": {"dso.dev/secrets": "db, api"}}}),
    ));
    let plan: InitPlan =
        serde_json::from_str(env(init(&p), PLAN_ENV).expect("plan")).expect("plan json");
    assert_eq!(plan.mount_path, "/run/secrets/dso");
    assert_eq!(plan.size_limit_bytes, 4 << 20);
    let names: Vec<_> = plan.secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["db", "api"]);
    assert_eq!(
        plan.secrets[0].files[0].json_key.as_deref(),
        Some("password")
    );
    assert_eq!(plan.secrets[1].file_mode, 0o400);
    assert!(plan.secrets[1].files[0].expand);
}

#[test]
fn a_pod_level_user_is_inherited_and_its_security_context_kept() {
    let p = injected(&pod(
        json!({"spec": {"securityContext": {"runAsUser": 1000, "runAsNonRoot": true}}}),
    ));
    let sc = spec(&p)
        .security_context
        .as_ref()
        .expect("pod security context");
    assert_eq!(
        (sc.run_as_user, sc.run_as_non_root, sc.fs_group),
        (Some(1000), Some(true), Some(65532))
    );
    assert_eq!(
        init(&p)
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user),
        None
    );
}

#[test]
fn a_root_pod_level_user_is_not_inherited_by_the_init_container() {
    let p = injected(&pod(json!({"spec": {"securityContext": {"runAsUser": 0}}})));
    assert_eq!(
        init(&p)
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user),
        Some(65532)
    );
}

#[test]
fn an_existing_fs_group_is_kept() {
    let p = injected(&pod(
        json!({"spec": {"securityContext": {"fsGroup": 2000}}}),
    ));
    assert_eq!(
        spec(&p).security_context.as_ref().and_then(|s| s.fs_group),
        Some(2000)
    );
}

#[test]
fn container_level_users_keep_their_settings_and_read_through_the_fs_group() {
    let p = injected(&pod(json!({"spec": {"containers": [
        {"name": "app", "image": "a", "securityContext": {"runAsUser": 1000}},
        {"name": "side", "image": "b", "securityContext": {"runAsUser": 2000, "runAsGroup": 3000}}
    ]}})));
    let s = spec(&p);
    assert_eq!(
        s.containers[0]
            .security_context
            .as_ref()
            .and_then(|c| c.run_as_user),
        Some(1000)
    );
    assert_eq!(
        s.containers[1]
            .security_context
            .as_ref()
            .and_then(|c| c.run_as_group),
        Some(3000)
    );
    assert_eq!(
        s.security_context.as_ref().and_then(|c| c.fs_group),
        Some(65532)
    );
    assert_eq!(mounts_of(&p, "app").len() + mounts_of(&p, "side").len(), 2);
}

#[test]
fn only_the_selected_containers_get_the_mount() {
    let p = injected(&pod(json!({
        "metadata": {"annotations": {"dso.dev/containers": "side"}},
        "spec": {"containers": [
            {"name": "app", "image": "a", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            {"name": "side", "image": "b", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
        ], "volumes": [{"name": "data", "emptyDir": {}}]}
    })));
    assert!(mounts_of(&p, "app").is_empty());
    assert_eq!(mounts_of(&p, "side").len(), 1);
    let side = &spec(&p).containers[1];
    assert_eq!(
        side.volume_mounts.as_ref().map(Vec::len),
        Some(2),
        "the user's mount stays"
    );
    assert_eq!(spec(&p).volumes.as_ref().map(Vec::len), Some(2));
}

#[test]
fn existing_init_containers_run_after_dso_init() {
    let p = injected(&pod(json!({"spec": {"initContainers": [
        {"name": "migrate", "image": "m"}, {"name": "proxy", "image": "p", "restartPolicy": "Always"}
    ]}})));
    let names: Vec<_> = spec(&p)
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["dso-init", "migrate", "proxy"]);
}

#[rstest]
#[case::our_volume_name(json!({"spec": {"volumes": [{"name": "dso-secrets", "emptyDir": {}}]}}), "a volume named \"dso-secrets\"")]
#[case::our_token_volume_name(json!({"spec": {"volumes": [{"name": "dso-aws-iam-token", "emptyDir": {}}]}}), "dso-aws-iam-token")]
#[case::our_container_name(json!({"spec": {"containers": [{"name": "dso-init", "image": "x"}]}}), "a container named \"dso-init\"")]
#[case::our_init_container_name(json!({"spec": {"initContainers": [{"name": "dso-init", "image": "x"}]}}), "a container named \"dso-init\"")]
fn a_pod_using_a_reserved_name_is_refused(#[case] extra: Value, #[case] names: &str) {
    let e = mutate(&pod(extra), NS, &catalog(), &cfg()).expect_err("denied");
    assert_eq!(e.metric_label(), "reserved_name");
    assert!(e.to_string().contains(names), "{e}");
}

#[test]
fn a_mount_already_at_the_mount_path_is_refused() {
    let e = mutate(
        &pod(json!({"spec": {"containers": [{"name": "app", "image": "a",
            "volumeMounts": [{"name": "mine", "mountPath": "/run/secrets/dso/"}]}]}})),
        NS,
        &catalog(),
        &cfg(),
    )
    .expect_err("denied");
    assert_eq!(e.metric_label(), "mount_collision");
    assert!(
        e.to_string().contains("\"app\"") && e.to_string().contains("\"mine\""),
        "{e}"
    );
}

#[test]
fn a_mount_below_the_mount_path_is_refused_but_one_above_is_fine() {
    let below = pod(json!({"spec": {"containers": [{"name": "app", "image": "a",
        "volumeMounts": [{"name": "x", "mountPath": "/run/secrets/dso/db"}]}]}}));
    assert!(mutate(&below, NS, &catalog(), &cfg()).is_err());
    let above = pod(json!({"spec": {"containers": [{"name": "app", "image": "a",
        "volumeMounts": [{"name": "x", "mountPath": "/run"}, {"name": "y", "mountPath": "/run/secrets/dsox"}]}]}}));
    assert!(mutate(&above, NS, &catalog(), &cfg()).is_ok());
}

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

#[test]
fn a_token_injected_by_the_eks_webhook_is_reused() {
    let cat = catalog().with_sa_role(NS, "default", ROLE_SA);
    let p0 = pod(eks_injected());
    let inj = inject(&p0, &cat);
    assert_eq!(
        inj.identity,
        Identity::IrsaReused {
            role_arn: ROLE_SA.into(),
            volume: "aws-iam-token".into()
        }
    );
    let p = apply(&p0, &inj.patch);
    assert!(
        !spec(&p)
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name == ann::TOKEN_VOLUME_NAME)
    );
    let i = init(&p);
    assert_eq!(
        env(i, "AWS_WEB_IDENTITY_TOKEN_FILE"),
        Some("/var/run/secrets/eks.amazonaws.com/serviceaccount/token")
    );
    assert_eq!(env(i, "AWS_ROLE_ARN"), Some(ROLE_SA));
    assert_eq!(
        env(i, "AWS_REGION"),
        Some("us-east-1"),
        "the webhook's default region, the operator's, wins over the EKS webhook's"
    );
    assert!(
        i.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "aws-iam-token" && m.read_only == Some(true))
    );
}

#[test]
fn a_dsosecret_role_wins_over_the_eks_injected_role_and_keeps_the_token() {
    let p0 = pod(merge_into(
        eks_injected(),
        json!({"metadata": {"annotations": {"dso.dev/secrets": "db-role"}}}),
    ));
    let i = inject(&p0, &catalog());
    assert_eq!(
        i.identity,
        Identity::IrsaReused {
            role_arn: ROLE_A.into(),
            volume: "aws-iam-token".into()
        }
    );
}

const POD_IDENTITY_TOKEN: &str =
    "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token";

/// What the EKS pod identity webhook adds for EKS Pod Identity, in the app container.
fn eks_pod_identity(with_volume: bool) -> Value {
    let env = json!([
        {"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"},
        {"name": "AWS_DEFAULT_REGION", "value": "eu-central-1"},
        {"name": "AWS_REGION", "value": "eu-central-1"},
        {"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials"},
        {"name": "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "value": POD_IDENTITY_TOKEN}
    ]);
    let mut v = json!({"spec": {
        "containers": [{"name": "app", "image": "a", "env": env,
            "volumeMounts": [{"name": "eks-pod-identity-token", "mountPath": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount", "readOnly": true}]}],
        "volumes": [{"name": "eks-pod-identity-token", "projected": {"sources": [{"serviceAccountToken": {"audience": "pods.eks.amazonaws.com", "expirationSeconds": 86400, "path": "eks-pod-identity-token"}}]}}]
    }});
    if !with_volume {
        v["spec"]["volumes"] = json!([]);
    }
    v
}

#[rstest]
#[case::no_role_anywhere("db", "default", true, "pod-identity")]
#[case::service_account_not_cached_yet("db", "not-yet-cached", true, "pod-identity")]
#[case::a_dsosecret_role_wins("db-role", "default", true, "irsa")]
#[case::a_service_account_role_wins("db", "with-role", true, "irsa")]
#[case::the_token_volume_is_missing("db", "default", false, "default-chain")]
fn eks_pod_identity_set_up_before_dso_is_copied_into_dso_init(
    #[case] secrets: &str,
    #[case] service_account: &str,
    #[case] with_volume: bool,
    #[case] expected: &str,
) {
    let cat = catalog().with_sa_role(NS, "with-role", ROLE_SA);
    let p0 = pod(merge_into(
        eks_pod_identity(with_volume),
        json!({"metadata": {"annotations": {"dso.dev/secrets": secrets}},
               "spec": {"serviceAccountName": service_account}}),
    ));
    let inj = inject(&p0, &cat);
    let p = apply(&p0, &inj.patch);
    let i = init(&p);
    let token_mount = i
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "eks-pod-identity-token");
    match expected {
        "pod-identity" => {
            assert_eq!(
                inj.identity,
                Identity::PodIdentityReused {
                    volume: "eks-pod-identity-token".into()
                }
            );
            assert_eq!(
                env(i, "AWS_CONTAINER_CREDENTIALS_FULL_URI"),
                Some("http://169.254.170.23/v1/credentials")
            );
            assert_eq!(
                env(i, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
                Some(POD_IDENTITY_TOKEN)
            );
            let m = token_mount.expect("the token is mounted in dso-init");
            assert_eq!(
                (m.mount_path.as_str(), m.read_only),
                (
                    "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount",
                    Some(true)
                )
            );
            assert_eq!(env(i, "AWS_ROLE_ARN"), None);
        }
        other => {
            assert!(
                inj.identity.to_string().starts_with(other),
                "{}",
                inj.identity
            );
            assert_eq!(env(i, "AWS_CONTAINER_CREDENTIALS_FULL_URI"), None);
            assert!(token_mount.is_none());
        }
    }
    assert!(
        !spec(&p)
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name == "dso-aws-iam-token")
            || expected == "irsa",
        "a token volume is added only for IRSA"
    );
}

fn merge_into(mut a: Value, b: Value) -> Value {
    merge(&mut a, b);
    a
}

#[test]
fn a_service_account_role_adds_a_projected_token_for_sts() {
    let cat = catalog().with_sa_role(NS, "default", ROLE_SA);
    let p0 = pod(json!({}));
    let inj = inject(&p0, &cat);
    assert_eq!(
        inj.identity,
        Identity::IrsaAdded {
            role_arn: ROLE_SA.into()
        }
    );
    let p = apply(&p0, &inj.patch);
    let vol = spec(&p)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == ann::TOKEN_VOLUME_NAME)
        .expect("token volume");
    let tok = vol
        .projected
        .as_ref()
        .and_then(|p| p.sources.as_ref())
        .and_then(|s| s[0].service_account_token.as_ref())
        .expect("token");
    assert_eq!(tok.audience.as_deref(), Some("sts.amazonaws.com"));
    assert_eq!(tok.expiration_seconds, Some(86400));
    let i = init(&p);
    assert_eq!(env(i, "AWS_ROLE_ARN"), Some(ROLE_SA));
    assert_eq!(
        env(i, "AWS_WEB_IDENTITY_TOKEN_FILE"),
        Some("/var/run/secrets/dso.dev/serviceaccount/token")
    );
    assert_eq!(env(i, "AWS_STS_REGIONAL_ENDPOINTS"), Some("regional"));
    assert!(
        mounts_of(&p, "app")
            .iter()
            .all(|m| m.name != ann::TOKEN_VOLUME_NAME),
        "only dso-init gets the token"
    );
    assert!(
        !spec(&p).containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == ann::TOKEN_VOLUME_NAME)
    );
}

#[test]
fn the_dsosecret_role_wins_over_the_service_account() {
    let cat = catalog().with_sa_role(NS, "default", ROLE_SA);
    let p = pod(json!({"metadata": {"annotations": {"dso.dev/secrets": "db,db-role"}}}));
    assert_eq!(
        inject(&p, &cat).identity,
        Identity::IrsaAdded {
            role_arn: ROLE_A.into()
        }
    );
}

fn plan_and_region(p: &Pod, c: &InjectConfig) -> (InitPlan, Option<String>) {
    let Mutation::Inject(inj) = mutate(p, NS, &catalog(), c).expect("admitted") else {
        panic!("expected an injection");
    };
    let after = apply(p, &inj.patch);
    let i = init(&after);
    let plan = serde_json::from_str(env(i, PLAN_ENV).expect("plan")).expect("plan json");
    (plan, env(i, "AWS_REGION").map(str::to_string))
}

#[test]
fn one_dsosecrets_region_never_becomes_the_region_of_another() {
    // "db-role" names eu-west-1, "db" names none: "db" is fetched where the operator looks it
    // up, in the default region, whichever order the annotation lists them in.
    for list in ["db-role,db", "db,db-role"] {
        let p = pod(json!({"metadata": {"annotations": {"dso.dev/secrets": list}}}));
        let (plan, region) = plan_and_region(&p, &cfg());
        let of = |name: &str| {
            plan.secrets
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.region.clone())
        };
        assert_eq!(of("db-role").as_deref(), Some("eu-west-1"), "{list}");
        assert_eq!(
            of("db").as_deref(),
            Some("us-east-1"),
            "{list}: the default"
        );
        assert_eq!(region.as_deref(), Some("us-east-1"), "{list}");

        let no_default = InjectConfig {
            default_region: None,
            ..cfg()
        };
        let (plan, region) = plan_and_region(&p, &no_default);
        let of = |name: &str| {
            plan.secrets
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.region.clone())
        };
        assert_eq!(of("db-role").as_deref(), Some("eu-west-1"), "{list}");
        assert_eq!(of("db"), None, "{list}: dso-init uses its environment");
        assert_eq!(region, None, "{list}: dso-init uses its environment");
    }
}

#[test]
fn an_arn_in_another_region_keeps_its_dsosecret_entry_free_of_the_default_region() {
    const ARN: &str = "arn:aws:secretsmanager:eu-north-1:123456789012:secret:prod/x-AbCdEf";
    let cat = catalog()
        .with_secret(
            NS,
            "far",
            json!({"files": [{"path": "x", "secretId": ARN}, {"path": "y", "secretId": "prod/y"}]}),
        )
        .with_secret(
            NS,
            "near",
            json!({"files": [{"path": "x", "secretId": ARN.replace("eu-north-1", "us-east-1")}]}),
        );
    let p = pod(json!({"metadata": {"annotations": {"dso.dev/secrets": "far,near"}}}));
    let after = apply(&p, &inject(&p, &cat).patch);
    let i = init(&after);
    let plan: InitPlan = serde_json::from_str(env(i, PLAN_ENV).expect("plan")).expect("json");
    // dso-init would prefer an entry's region over the ARN's: "far" names none, its ARN is
    // fetched from eu-north-1 and "prod/y" from AWS_REGION, the default.
    assert_eq!(plan.secrets[0].region, None);
    assert_eq!(plan.secrets[1].region.as_deref(), Some("us-east-1"));
    assert_eq!(env(i, "AWS_REGION"), Some("us-east-1"));
}

#[test]
fn a_service_account_missing_from_the_cache_is_a_retryable_denial_unless_the_role_is_known() {
    let p = pod(json!({"spec": {"serviceAccountName": "not-yet-cached"}}));
    let e = mutate(&p, NS, &catalog(), &cfg()).expect_err("denied");
    assert_eq!(e.metric_label(), "unknown_serviceaccount");
    assert!(
        e.to_string()
            .contains("\"not-yet-cached\" of namespace shop is not in the webhook's cache yet"),
        "{e}"
    );
    let with_role = pod(
        json!({"metadata": {"annotations": {"dso.dev/secrets": "db-role"}},
        "spec": {"serviceAccountName": "not-yet-cached"}}),
    );
    assert!(mutate(&with_role, NS, &catalog(), &cfg()).is_ok());
}

#[test]
fn an_already_injected_pod_gets_no_patch() {
    let once = injected(&pod(json!({})));
    assert_eq!(
        mutate(&once, NS, &catalog(), &cfg()).expect("ok"),
        Mutation::AlreadyInjected
    );
}

const MARK: &str = "dso.dev/injected";
fn our_volume() -> Value {
    json!([{"name": "dso-secrets", "emptyDir": {"medium": "Memory"}}])
}
fn our_init() -> Value {
    json!([{"name": "dso-init", "image": "x"}])
}

/// What the webhook does with a pod carrying some of what an injection leaves behind.
#[derive(Debug, PartialEq)]
enum Seen {
    Injects,
    LeavesAlone,
    Denies(&'static str, &'static str),
}

#[rstest]
#[case::annotation_alone(true, false, false, Seen::Injects)]
#[case::all_three(true, true, true, Seen::LeavesAlone)]
#[case::annotation_and_volume(
    true,
    true,
    false,
    Seen::Denies(
        "partly_injected",
        "has the annotation dso.dev/injected and the volume \"dso-secrets\" but not the init container \"dso-init\""
    )
)]
#[case::annotation_and_init(
    true,
    false,
    true,
    Seen::Denies("partly_injected", "but not the volume \"dso-secrets\"")
)]
#[case::volume_and_init_without_annotation(
    false,
    true,
    true,
    Seen::Denies(
        "partly_injected",
        "but not the annotation dso.dev/injected, as if copied"
    )
)]
#[case::volume_alone(
    false,
    true,
    false,
    Seen::Denies("reserved_name", "a volume named \"dso-secrets\"")
)]
fn a_pod_is_left_alone_only_when_it_carries_everything_an_injection_adds(
    #[case] annotation: bool,
    #[case] volume: bool,
    #[case] init_container: bool,
    #[case] expected: Seen,
) {
    let mut extra = json!({"metadata": {"annotations": {}}, "spec": {}});
    if annotation {
        extra["metadata"]["annotations"][MARK] = json!("stale,copied");
    }
    if volume {
        extra["spec"]["volumes"] = our_volume();
    }
    if init_container {
        extra["spec"]["initContainers"] = our_init();
    }
    let p = pod(extra);
    match (mutate(&p, NS, &catalog(), &cfg()), expected) {
        (Ok(Mutation::Inject(inj)), Seen::Injects) => {
            let after = apply(&p, &inj.patch);
            assert_eq!(
                after
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(MARK))
                    .map(String::as_str),
                Some("db"),
                "the copied annotation is replaced"
            );
            assert_eq!(init(&after).name, "dso-init");
            assert_eq!(mounts_of(&after, "app").len(), 1, "the app gets its files");
        }
        (Ok(Mutation::AlreadyInjected), Seen::LeavesAlone) => {}
        (Err(e), Seen::Denies(label, message)) => {
            assert_eq!(e.metric_label(), label, "{e}");
            assert!(e.to_string().contains(message), "{e}");
        }
        (got, expected) => panic!("expected {expected:?}, got {got:?}"),
    }
}

#[rstest]
#[case::no_annotations(json!({"metadata": {"annotations": null}}))]
#[case::inject_false(json!({"metadata": {"annotations": {"dso.dev/inject": "false"}}}))]
fn a_pod_that_did_not_opt_in_is_untouched(#[case] extra: Value) {
    assert_eq!(
        mutate(&pod(extra), NS, &Fake::default(), &cfg()).expect("ok"),
        Mutation::NotRequested
    );
}

#[test]
fn annotation_keys_with_a_slash_are_escaped_in_the_patch() {
    let inj = inject(&pod(json!({})), &catalog());
    let text = serde_json::to_string(&inj.patch).expect("json");
    assert!(
        text.contains("/metadata/annotations/dso.dev~1injected"),
        "{text}"
    );
}

#[rstest]
#[case::unknown_dsosecret(json!({"dso.dev/secrets": "db,nope"}), "unknown_dsosecret", "\"nope\" not found in namespace shop")]
#[case::other_namespace(json!({"dso.dev/secrets": "other/db"}), "other_namespace", "\"other/db\" refers to another namespace")]
#[case::missing_list(json!({"dso.dev/secrets": null}), "malformed_annotation", "dso.dev/secrets: missing")]
#[case::empty_list(json!({"dso.dev/secrets": " , "}), "malformed_annotation", "dso.dev/secrets: empty")]
#[case::bad_name(json!({"dso.dev/secrets": "Db_1"}), "malformed_annotation", "\"Db_1\" is not a DsoSecret name")]
#[case::relative_mount(json!({"dso.dev/mount-path": "secrets"}), "malformed_annotation", "must be an absolute path")]
#[case::dotdot_mount(json!({"dso.dev/mount-path": "/run/../etc"}), "malformed_annotation", "must not contain '..'")]
#[case::root_mount(json!({"dso.dev/mount-path": "/"}), "malformed_annotation", "cannot be the mount path")]
#[case::token_mount(json!({"dso.dev/mount-path": "/var/run/secrets/dso.dev"}), "malformed_annotation", "IRSA token")]
#[case::unknown_container(json!({"dso.dev/containers": "app,ghost"}), "unknown_container", "\"ghost\", but the pod has no such container (its containers: app)")]
#[case::empty_containers(json!({"dso.dev/containers": ""}), "malformed_annotation", "dso.dev/containers: empty")]
#[case::invalid_spec(json!({"dso.dev/secrets": "broken"}), "invalid_dsosecret", "DsoSecret \"broken\" is invalid: spec.files[0].path")]
#[case::too_large(json!({"dso.dev/secrets": "big,db"}), "too_large", "65 file entries")]
#[case::conflicting_roles(json!({"dso.dev/secrets": "db-role,other-role"}), "conflicting_roles", "different IAM roles")]
fn bad_input_is_denied_with_a_message_naming_the_problem(
    #[case] annotations: Value,
    #[case] label: &str,
    #[case] message: &str,
) {
    let e = mutate(
        &pod(json!({"metadata": {"annotations": annotations}})),
        NS,
        &catalog(),
        &cfg(),
    )
    .expect_err("denied");
    assert_eq!(e.metric_label(), label, "{e}");
    assert!(
        e.to_string().contains(message),
        "{e:?} should contain {message:?}"
    );
}

#[test]
fn a_custom_mount_path_is_used_everywhere() {
    let p = injected(&pod(
        json!({"metadata": {"annotations": {"dso.dev/mount-path": "/etc/app/secrets/"}}}),
    ));
    assert_eq!(mounts_of(&p, "app")[0].mount_path, "/etc/app/secrets");
    let plan: InitPlan =
        serde_json::from_str(env(init(&p), PLAN_ENV).expect("plan")).expect("json");
    assert_eq!(plan.mount_path, "/etc/app/secrets");
}

// ---- property: a second pass changes nothing, and no user field is removed ----

/// True when everything in `old` is still in `new` (objects by key, arrays element-wise by
/// containment anywhere in the new array, so inserted elements are allowed).
fn contains(new: &Value, old: &Value) -> bool {
    match (new, old) {
        (Value::Object(n), Value::Object(o)) => o
            .iter()
            .all(|(k, v)| n.get(k).is_some_and(|nv| contains(nv, v))),
        (Value::Array(n), Value::Array(o)) => {
            o.iter().all(|ov| n.iter().any(|nv| contains(nv, ov)))
        }
        (n, o) => n == o,
    }
}

fn arb_mount() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        "/data",
        "/cache",
        "/run",
        "/var/run/secrets/kubernetes.io/serviceaccount",
    ])
    .prop_map(|p| json!({"name": "data", "mountPath": p}))
}

fn arb_container(i: usize) -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(arb_mount(), 0..3)),
        prop::option::of(prop::sample::select(vec![0i64, 1000, 2000])),
        prop::option::of(Just(json!([{"name": "A", "value": "1"}]))),
    )
        .prop_map(move |(mounts, user, env)| {
            let mut c = json!({"name": format!("c{i}"), "image": "img"});
            if let Some(m) = mounts {
                // unique mount paths per container
                let mut seen = std::collections::BTreeSet::new();
                let m: Vec<Value> = m
                    .into_iter()
                    .filter(|v| seen.insert(v["mountPath"].to_string()))
                    .collect();
                c["volumeMounts"] = Value::Array(m);
            }
            if let Some(u) = user {
                c["securityContext"] = json!({"runAsUser": u});
            }
            if let Some(e) = env {
                c["env"] = e;
            }
            c
        })
}

prop_compose! {
    fn arb_pod()(
        n in 1usize..4,
        n_init in prop::option::of(0usize..3),
        pod_sc in prop::option::of(prop::sample::select(vec![json!({}), json!({"runAsUser": 1000}), json!({"fsGroup": 7}), json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}})])),
        volumes in prop::option::of(Just(json!([{"name": "data", "emptyDir": {}}]))),
        secrets in prop::sample::select(vec!["db", "db,api", "db-role", "api , db"]),
        select_first in any::<bool>(),
        eks in any::<bool>(),
        c0 in arb_container(0), c1 in arb_container(1), c2 in arb_container(2),
    ) -> Pod {
        let mut p = json!({
            "metadata": {"name": "p", "namespace": NS, "labels": {"app": "x"},
                "annotations": {"dso.dev/inject": "true", "dso.dev/secrets": secrets, "user/key": "v"}},
            "spec": {"containers": vec![c0, c1, c2].into_iter().take(n).collect::<Vec<_>>()}
        });
        if select_first { p["metadata"]["annotations"]["dso.dev/containers"] = json!("c0"); }
        if let Some(k) = n_init { p["spec"]["initContainers"] = Value::Array((0..k).map(|i| json!({"name": format!("i{i}"), "image": "x"})).collect()); }
        if let Some(sc) = pod_sc { p["spec"]["securityContext"] = sc; }
        if let Some(v) = volumes { p["spec"]["volumes"] = v; }
        if eks { merge(&mut p, eks_injected()); p["spec"]["containers"][0]["name"] = json!("c0"); }
        serde_json::from_value(p).expect("generated pod")
    }
}

proptest! {
    #[test]
    fn a_second_pass_changes_nothing_and_no_user_field_is_removed(p in arb_pod()) {
        let cat = catalog().with_sa_role(NS, "default", ROLE_SA);
        let Mutation::Inject(inj) = mutate(&p, NS, &cat, &cfg()).expect("admitted") else {
            panic!("expected an injection");
        };
        let once = apply(&p, &inj.patch);
        prop_assert_eq!(mutate(&once, NS, &cat, &cfg()).expect("admitted"), Mutation::AlreadyInjected);
        let (before, after) = (serde_json::to_value(&p).expect("json"), serde_json::to_value(&once).expect("json"));
        prop_assert!(contains(&after, &before), "a user field was removed:\n{before:#}\n{after:#}");
        // Everything the patch adds lives under our names or in fields the pod had not set.
        let users: Vec<_> = spec(&p).containers.iter().map(|c| c.name.clone()).collect();
        let after_users: Vec<_> = spec(&once).containers.iter().map(|c| c.name.clone()).collect();
        prop_assert_eq!(users, after_users);
    }
}
