//! How dso-init authenticates: IRSA added or reused, EKS Pod Identity, roles and regions.

use super::*;
use rstest::rstest;

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
    assert_eq!(tok.expiration_seconds, Some(3600));
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
fn dso_init_learns_its_pod_from_the_downward_api_for_the_role_session_name() {
    let p = pod(json!({"metadata": {"annotations": {"dso.dev/secrets": "db"}}}));
    let out = injected(&p);
    let field = |name: &str| {
        init(&out)
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(
        field(dso_api::contract::POD_NAMESPACE_ENV).as_deref(),
        Some("metadata.namespace")
    );
    assert_eq!(
        field(dso_api::contract::POD_NAME_ENV).as_deref(),
        Some("metadata.name")
    );
}

#[test]
fn a_pod_without_any_identity_is_refused_unless_default_credentials_are_allowed() {
    let strict = InjectConfig {
        allow_default_credentials: false,
        ..cfg()
    };
    let p = pod(json!({}));
    let e = mutate(&p, NS, &catalog(), &strict).expect_err("denied");
    assert_eq!(e.metric_label(), "no_identity");
    let m = e.to_string();
    for hint in [
        "ServiceAccount \"default\"",
        "eks.amazonaws.com/role-arn",
        "spec.aws.roleArn",
        "Pod Identity",
        "--allow-default-credentials",
    ] {
        assert!(m.contains(hint), "{hint}: {m}");
    }
    assert!(matches!(
        mutate(&p, NS, &catalog(), &cfg()).expect("allowed"),
        Mutation::Inject(Injection {
            identity: Identity::DefaultChain,
            ..
        })
    ));
}

#[rstest]
#[case::a_dsosecret_role("db-role", "default", Value::Null)]
#[case::a_service_account_role("db", "with-role", Value::Null)]
#[case::eks_pod_identity("db", "default", eks_pod_identity(true))]
fn a_pod_with_an_identity_is_injected_without_default_credentials(
    #[case] secrets: &str,
    #[case] service_account: &str,
    #[case] extra: Value,
) {
    let strict = InjectConfig {
        allow_default_credentials: false,
        ..cfg()
    };
    let cat = catalog().with_sa_role(NS, "with-role", ROLE_SA);
    let extra = if extra.is_null() { json!({}) } else { extra };
    let p = pod(merge_into(
        extra,
        json!({"metadata": {"annotations": {"dso.dev/secrets": secrets}},
               "spec": {"serviceAccountName": service_account}}),
    ));
    match mutate(&p, NS, &cat, &strict).expect("admitted") {
        Mutation::Inject(i) => assert_ne!(i.identity, Identity::DefaultChain),
        other => panic!("expected an injection, got {other:?}"),
    }
}

#[test]
fn a_token_reused_from_the_eks_webhook_is_an_identity() {
    let strict = InjectConfig {
        allow_default_credentials: false,
        ..cfg()
    };
    let p = pod(json!({"spec": {
        "containers": [{"name": "app", "image": "a",
            "env": [{"name": "AWS_ROLE_ARN", "value": ROLE_A},
                    {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"}],
            "volumeMounts": [{"name": "aws-iam-token", "mountPath": "/var/run/secrets/eks.amazonaws.com/serviceaccount", "readOnly": true}]}],
        "volumes": [{"name": "aws-iam-token", "projected": {"sources": [{"serviceAccountToken": {"audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token"}}]}}]
    }}));
    match mutate(&p, NS, &catalog(), &strict).expect("admitted") {
        Mutation::Inject(i) => assert!(
            matches!(i.identity, Identity::IrsaReused { .. }),
            "{:?}",
            i.identity
        ),
        other => panic!("expected an injection, got {other:?}"),
    }
}
