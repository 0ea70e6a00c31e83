//! `dso-init` on the real node, with the init container written by hand the way the webhook
//! writes it: the kubelet projects a real ServiceAccount token (audience `sts.amazonaws.com`),
//! `dso-init` trades it with STS (moto) for credentials, fetches from Secrets Manager (moto) and
//! fills a memory-backed emptyDir that an app container, running as another user, reads.

use dso_api::contract::{InitPlan, PLAN_VERSION, PlanFile, PlanSecret};
use dso_e2e::{
    TestNamespace, client, container_log, create_secret, env, kubectl_stdin, namespace, unique,
    wait_for,
};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use std::time::Duration;

const MOUNT: &str = "/run/secrets/dso";
const TOKEN_DIR: &str = "/var/run/secrets/eks.amazonaws.com/serviceaccount";
const ROLE: &str = "arn:aws:iam::123456789012:role/dso-e2e-init";
/// The app runs as a user other than dso-init's (65532); the fsGroup gives it the files.
const APP_UID: u32 = 1001;
const FS_GROUP: u32 = 2000;

fn file(path: Option<&str>, secret_id: &str, json_key: Option<&str>, expand: bool) -> PlanFile {
    PlanFile {
        path: path.map(Into::into),
        secret_id: secret_id.into(),
        json_key: json_key.map(Into::into),
        version_stage: None,
        version_id: None,
        expand,
        template: None,
        sources: Default::default(),
    }
}

fn restricted() -> serde_json::Value {
    serde_json::json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
    })
}

/// The pod the webhook would produce, written by hand.
fn pod(name: &str, plan: &InitPlan, app_script: &str) -> Pod {
    let plan = serde_json::to_string(plan).expect("plan");
    let mut init_sc = restricted();
    init_sc["runAsUser"] = 65532.into();
    init_sc["runAsGroup"] = 65532.into();
    let mut app_sc = restricted();
    app_sc["runAsUser"] = APP_UID.into();
    app_sc["runAsGroup"] = APP_UID.into();
    let resources = serde_json::json!({
        "requests": {"cpu": "10m", "memory": "16Mi"},
        "limits": {"cpu": "200m", "memory": "64Mi"},
    });
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": "app",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {
                "runAsNonRoot": true,
                "fsGroup": FS_GROUP,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "volumes": [
                {"name": "dso", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                {"name": "aws-iam-token", "projected": {"sources": [{"serviceAccountToken": {
                    "audience": "sts.amazonaws.com", "expirationSeconds": 3600, "path": "token"}}]}},
            ],
            "initContainers": [{
                "name": "dso-init",
                "image": env("DSO_INIT_IMAGE"),
                "imagePullPolicy": "Never",
                "env": [
                    {"name": "DSO_PLAN", "value": plan},
                    {"name": "AWS_ROLE_ARN", "value": ROLE},
                    {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": format!("{TOKEN_DIR}/token")},
                    {"name": "AWS_REGION", "value": "us-east-1"},
                    {"name": "AWS_ENDPOINT_URL", "value": env("DSO_POD_AWS_ENDPOINT")},
                    {"name": "DSO_DEADLINE", "value": "20s"},
                ],
                "volumeMounts": [
                    {"name": "dso", "mountPath": MOUNT},
                    {"name": "aws-iam-token", "mountPath": TOKEN_DIR, "readOnly": true},
                ],
                "securityContext": init_sc,
                "resources": resources,
            }],
            "containers": [{
                "name": "app",
                "image": env("DSO_BUSYBOX_IMAGE"),
                "imagePullPolicy": "Never",
                "command": ["/bin/busybox", "sh", "-c", app_script],
                "volumeMounts": [{"name": "dso", "mountPath": MOUNT, "readOnly": true}],
                "securityContext": app_sc,
                "resources": resources,
            }],
        },
    }))
    .expect("pod")
}

/// A namespace (deleted at the end of the test) with a ServiceAccount `app` annotated with
/// [`ROLE`].
async fn setup(prefix: &str) -> (kube::Client, TestNamespace) {
    let c = client().await;
    let ns = namespace(
        &c,
        prefix,
        // Enforced, and warned (so a finding shows in kubectl's output, not just a refusal).
        &[
            ("pod-security.kubernetes.io/enforce", "restricted"),
            ("pod-security.kubernetes.io/warn", "restricted"),
        ],
    )
    .await;
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "app", "annotations": {"eks.amazonaws.com/role-arn": ROLE}}
    }))
    .expect("sa");
    Api::<ServiceAccount>::namespaced(c.clone(), &ns)
        .create(&PostParams::default(), &sa)
        .await
        .expect("create the ServiceAccount");
    (c, ns)
}

/// Creates the pod with kubectl in a namespace that enforces Pod Security `restricted`, on the
/// pod network, and checks the apiserver found nothing: the injected and app containers
/// satisfy `restricted`.
fn create_restricted(ns: &str, pod: &Pod) {
    let json = serde_json::to_string(pod).expect("pod json");
    let out = kubectl_stdin(&["create", "-n", ns, "-f", "-"], &json);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl create: {stderr}");
    let findings: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.split_once("would violate PodSecurity \"restricted:latest\": "))
        .map(|(_, f)| f.trim())
        .collect();
    assert!(
        findings.is_empty(),
        "the pod breaks `restricted`: {findings:?} ({stderr})"
    );
}

fn init_status(pod: &Pod) -> Option<ContainerStatus> {
    pod.status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == "dso-init")
        .cloned()
}

#[tokio::test]
async fn the_app_reads_the_files_dso_init_wrote_with_the_pods_own_identity() {
    let (c, ns) = setup("e2e-init").await;
    let canary_pw = unique("canary-pw");
    let canary_key = unique("canary-key");
    let db = unique("e2e/db");
    let api_id = unique("e2e/api");
    let db_version = create_secret(
        &db,
        &serde_json::json!({"username": "shop", "password": canary_pw}).to_string(),
    )
    .await;
    let api_version = create_secret(
        &api_id,
        &serde_json::json!({"key": canary_key, "region": "eu"}).to_string(),
    )
    .await;
    let plan = InitPlan {
        env_files: Vec::new(),
        signal_target: None,
        version: PLAN_VERSION,
        mount_path: MOUNT.into(),
        size_limit_bytes: 1 << 20,
        secrets: vec![
            PlanSecret {
                name: "db".into(),
                region: None,
                file_mode: 0o440,
                files: vec![
                    file(Some("password"), &db, Some("password"), false),
                    file(Some("db.json"), &db, None, false),
                ],
                in_place: false,
                signal: None,
            },
            PlanSecret {
                name: "api".into(),
                region: Some("us-east-1".into()),
                file_mode: 0o440,
                files: vec![file(None, &api_id, None, true)],
                in_place: false,
                signal: None,
            },
        ],
    };
    let script = format!(
        "cd {MOUNT} && for f in db/password db/db.json api/key api/region; do \
         echo \"FILE $f $(/bin/busybox stat -c %a $f) $(/bin/busybox cat $f)\"; done; \
         echo \"DIR db $(/bin/busybox stat -c %a db)\"; echo \"UID $(/bin/busybox id -u)\"; \
         echo DONE; exec /bin/busybox sleep 3600"
    );
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    create_restricted(&ns, &pod("app", &plan, &script));

    let log = wait_for(
        "the app container's output",
        Duration::from_secs(90),
        || async {
            let log = container_log(&ns, "app", "app")?;
            Ok(log.contains("DONE").then_some(log))
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\ninit log: {}",
            container_log(&ns, "app", "dso-init").unwrap_or_default()
        )
    });
    assert!(
        log.contains(&format!("FILE db/password 440 {canary_pw}")),
        "{log}"
    );
    let whole = serde_json::json!({"username": "shop", "password": canary_pw}).to_string();
    assert!(
        log.contains(&format!("FILE db/db.json 440 {whole}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("FILE api/key 440 {canary_key}")),
        "{log}"
    );
    assert!(log.contains("FILE api/region 440 eu"), "{log}");
    assert!(
        log.contains("DIR db 2750"),
        "directories keep the fsGroup's set-group-ID bit: {log}"
    );
    assert!(log.contains(&format!("UID {APP_UID}")), "{log}");

    let got = pods.get("app").await.expect("pod");
    let status = init_status(&got).expect("init container status");
    let terminated = status
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("dso-init terminated");
    assert_eq!(terminated.exit_code, 0);
    let message = terminated.message.clone().unwrap_or_default();
    let report: dso_api::contract::InitReport =
        serde_json::from_str(&message).expect("the termination message is the report");
    let ids: Vec<&str> = report
        .versions
        .iter()
        .map(|v| v.version_id.as_str())
        .collect();
    assert!(ids.contains(&db_version.as_str()), "{message}");
    assert!(ids.contains(&api_version.as_str()), "{message}");

    let init_log = container_log(&ns, "app", "dso-init").expect("init log");
    let spec = serde_json::to_string(&got).expect("pod json");
    for canary in [&canary_pw, &canary_key] {
        assert!(
            !init_log.contains(canary.as_str()),
            "value in dso-init's log: {init_log}"
        );
        assert!(
            !message.contains(canary.as_str()),
            "value in the termination message"
        );
        assert!(!spec.contains(canary.as_str()), "value in the pod object");
    }
}

#[tokio::test]
async fn a_pod_naming_a_missing_secret_stays_in_init_failure_with_the_reason_in_the_log() {
    let (c, ns) = setup("e2e-init-missing").await;
    let missing = unique("e2e/missing");
    let plan = InitPlan {
        env_files: Vec::new(),
        signal_target: None,
        version: PLAN_VERSION,
        mount_path: MOUNT.into(),
        size_limit_bytes: 1 << 20,
        secrets: vec![PlanSecret {
            name: "db".into(),
            region: None,
            file_mode: 0o440,
            files: vec![file(Some("password"), &missing, None, false)],
            in_place: false,
            signal: None,
        }],
    };
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    create_restricted(
        &ns,
        &pod(
            "broken",
            &plan,
            "echo STARTED; exec /bin/busybox sleep 3600",
        ),
    );

    let status = wait_for("dso-init to fail", Duration::from_secs(90), || async {
        let p = pods.get("broken").await?;
        let Some(s) = init_status(&p) else {
            return Ok(None);
        };
        let failed = [s.state.as_ref(), s.last_state.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|st| st.terminated.as_ref())
            .any(|t| t.exit_code != 0);
        Ok(failed.then_some(s))
    })
    .await
    .expect("dso-init failed");
    let terminated = [status.state.as_ref(), status.last_state.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|st| st.terminated.clone())
        .expect("terminated");
    assert_eq!(terminated.exit_code, 4, "ResourceNotFound exits 4");
    let message = terminated.message.unwrap_or_default();
    assert!(message.contains("ResourceNotFound"), "{message}");
    assert!(message.contains(&missing), "{message}");

    let log = wait_for(
        "the reason in dso-init's log",
        Duration::from_secs(30),
        || async {
            let log = container_log(&ns, "broken", "dso-init")?;
            Ok(log.contains("ResourceNotFound").then_some(log))
        },
    )
    .await
    .expect("dso-init log");
    assert!(log.contains(r#"DsoSecret "db", file "password""#), "{log}");

    let p = pods.get("broken").await.expect("pod");
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending"),
        "the pod stays in init"
    );
    let app_started = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .any(|s| s.state.as_ref().is_some_and(|st| st.running.is_some()));
    assert!(!app_started, "the app must not start without its secrets");
    assert!(
        !container_log(&ns, "broken", "app")
            .unwrap_or_default()
            .contains("STARTED")
    );
}
