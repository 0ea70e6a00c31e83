//! `dso-webhook` on the real cluster, registered through a real MutatingWebhookConfiguration
//! in URL mode.
//!
//! Each test starts its own webhook process ([`dso_e2e::Webhook`]: `$DSO_BIN_DIR/dso-webhook`,
//! watching the cluster through `KUBECONFIG`) on its own port, with its own configuration that
//! selects only the namespaces the webhook makes for this test and only opted-in pods: other
//! tests sharing the cluster never see it.

use dso_e2e::{
    Webhook, annotated, app_container, apply, client, container_log, create_once_cached,
    create_secret, deployment, dso_secret, env, pod, unique, wait_for,
};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Creates a pod from its manifest: the apiserver's answer, admission included.
async fn create_pod(pods: &Api<Pod>, manifest: Value) -> kube::Result<Pod> {
    let pod: Pod = serde_json::from_value(manifest).expect("a pod manifest");
    create_once_cached(pods, &PostParams::default(), &pod).await
}

/// The pod's `dso.dev/injected` annotation: the DsoSecrets the webhook injected.
fn injected(p: &Pod) -> Option<&str> {
    p.metadata
        .annotations
        .as_ref()?
        .get("dso.dev/injected")
        .map(String::as_str)
}

fn init_names(p: &Pod) -> Vec<String> {
    p.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .map(|c| c.name.clone())
        .collect()
}

fn dso_mounts(p: &Pod, container: &str) -> Vec<(String, Option<bool>)> {
    p.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter(|c| c.name == container)
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .filter(|m| m.name == "dso-secrets")
        .map(|m| (m.mount_path.clone(), m.read_only))
        .collect()
}

/// Dry-run admits `sent` once the webhook's caches hold the objects just applied for it.
async fn admitted_once_cached(pods: &Api<Pod>, sent: &Pod) -> Pod {
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    create_once_cached(pods, &dry, sent)
        .await
        .unwrap_or_else(|e| panic!("the pod was not admitted: {e}"))
}

#[tokio::test]
async fn a_deployment_with_the_annotations_gets_pods_with_the_init_container_the_tmpfs_and_the_mounts()
 {
    let mut wh = Webhook::start(18401, &["--allow-default-credentials"]).await;
    let ns = wh.namespace(&[]).await;
    apply(&ns, &dso_secret("db", "prod/e2e/db", json!({})));
    let mut annotations = annotated("db");
    annotations["dso.dev/containers"] = json!("app");
    apply(
        &ns,
        &deployment(
            "web",
            &annotations,
            vec![
                app_container("app", "sleep 3600"),
                app_container("side", "sleep 3600"),
            ],
        ),
    );
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let pod = wait_for("a pod of the Deployment", TIMEOUT, || async {
        Ok(pods
            .list(&ListParams::default().labels("app=web"))
            .await?
            .items
            .into_iter()
            .next())
    })
    .await
    .expect("the ReplicaSet controller created a pod");

    assert_eq!(
        init_names(&pod).first().map(String::as_str),
        Some("dso-init")
    );
    let spec = pod.spec.as_ref().expect("spec");
    let init = &spec.init_containers.as_ref().expect("init containers")[0];
    assert_eq!(init.image.as_deref(), Some(env("DSO_INIT_IMAGE").as_str()));
    let plan = init
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "DSO_PLAN")
        .and_then(|e| e.value.clone())
        .expect("DSO_PLAN");
    assert!(plan.contains("prod/e2e/db"), "{plan}");
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "dso-secrets")
        .expect("the dso-secrets volume");
    let empty_dir = volume.empty_dir.as_ref().expect("an emptyDir");
    assert_eq!(empty_dir.medium.as_deref(), Some("Memory"));
    assert!(empty_dir.size_limit.is_some());
    assert_eq!(
        dso_mounts(&pod, "app"),
        vec![("/run/secrets/dso".to_string(), Some(true))]
    );
    assert!(
        dso_mounts(&pod, "side").is_empty(),
        "containers not selected get no mount"
    );
    assert_eq!(injected(&pod), Some("db"));
    assert!(
        spec.security_context
            .as_ref()
            .and_then(|s| s.fs_group)
            .is_some()
    );
}

#[tokio::test]
async fn an_unannotated_pod_is_admitted_unchanged() {
    let mut wh = Webhook::start(18402, &[]).await;
    let ns = wh.namespace(&[]).await;
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let sent = pod("plain", &json!({"team": "a"}));
    let created = create_pod(&pods, sent)
        .await
        .expect("an unannotated pod is admitted");
    assert!(init_names(&created).is_empty());
    assert!(dso_mounts(&created, "app").is_empty());
    let volumes: Vec<_> = created
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .map(|v| v.name.clone())
        .collect();
    assert!(
        volumes.iter().all(|v| v.starts_with("kube-api-access-")),
        "{volumes:?}"
    );
    let annotations = created.metadata.annotations.unwrap_or_default();
    assert_eq!(annotations.len(), 1, "{annotations:?}");
    assert!(
        created
            .spec
            .and_then(|s| s.security_context)
            .and_then(|s| s.fs_group)
            .is_none()
    );
}

#[tokio::test]
async fn a_pod_in_a_restricted_namespace_is_admitted_after_mutation() {
    let mut wh = Webhook::start(18403, &[]).await;
    let ns = wh
        .namespace(&[("pod-security.kubernetes.io/enforce", "restricted")])
        .await;
    apply(&ns, &dso_secret("db", "prod/e2e/db", json!({})));
    // IRSA adds a projected token volume: restricted allows it.
    apply(
        &ns,
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web",
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/web"}}}),
    );
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let mut sent = pod("restricted", &annotated("db"));
    sent["spec"]["serviceAccountName"] = json!("web");
    // The webhook's caches see the new ServiceAccount and DsoSecret shortly after they are
    // created: dry runs (which go through admission, Pod Security included) until then.
    let dry_run =
        admitted_once_cached(&pods, &serde_json::from_value(sent.clone()).expect("pod")).await;
    assert!(
        dry_run
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .flat_map(|c| c.env.iter().flatten())
            .any(|e| e.name == "AWS_ROLE_ARN"),
        "the ServiceAccount's role is not injected"
    );
    let created = create_pod(&pods, sent)
        .await
        .expect("Pod Security restricted admits the mutated pod");
    assert_eq!(
        init_names(&created).first().map(String::as_str),
        Some("dso-init")
    );
    let sc = created
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .expect("init")[0]
        .security_context
        .clone()
        .expect("init security context");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
}

#[tokio::test]
async fn an_unknown_dsosecret_is_denied_and_the_message_reaches_the_replicaset_events() {
    let mut wh = Webhook::start(18404, &[]).await;
    let ns = wh.namespace(&[]).await;
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let sent: Pod = serde_json::from_value(pod("direct", &annotated("missing"))).expect("pod");
    let direct = pods
        .create(&PostParams::default(), &sent)
        .await
        .expect_err("a pod naming an unknown DsoSecret is denied");
    let expected = format!("DsoSecret \"missing\" not found in namespace {ns}");
    assert!(direct.to_string().contains(&expected), "{direct}");

    apply(
        &ns,
        &deployment(
            "web",
            &annotated("missing"),
            vec![app_container("app", "sleep 3600")],
        ),
    );
    let events: Api<Event> = Api::namespaced(client().await, &ns);
    let rss: Api<ReplicaSet> = Api::namespaced(client().await, &ns);
    let message = wait_for(
        "a FailedCreate event on the ReplicaSet",
        TIMEOUT,
        || async {
            let rs_names: Vec<String> = rss
                .list(&ListParams::default().labels("app=web"))
                .await?
                .items
                .into_iter()
                .filter_map(|r| r.metadata.name)
                .collect();
            Ok(events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .find(|e| {
                    e.involved_object.kind.as_deref() == Some("ReplicaSet")
                        && e.involved_object
                            .name
                            .as_ref()
                            .is_some_and(|n| rs_names.contains(n))
                        && e.reason.as_deref() == Some("FailedCreate")
                })
                .and_then(|e| e.message))
        },
    )
    .await
    .expect("the ReplicaSet reports the denial");
    assert!(message.contains(&expected), "{message}");
}

#[tokio::test]
async fn with_the_webhook_stopped_annotated_pods_are_refused_and_others_still_admitted() {
    let mut wh = Webhook::start(18405, &[]).await;
    let ns = wh.namespace(&[]).await;
    apply(&ns, &dso_secret("db", "prod/e2e/db", json!({})));
    wh.stop();
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let refused = create_pod(&pods, pod("annotated", &annotated("db")))
        .await
        .expect_err("failurePolicy Fail refuses an annotated pod while the webhook is down");
    assert!(refused.to_string().contains("pods.dso.dev"), "{refused}");
    create_pod(&pods, pod("plain", &json!({})))
        .await
        .expect("matchConditions keep unannotated pods away from the stopped webhook");
}

/// The whole path on the node: the webhook injects, the kubelet projects the IRSA token,
/// dso-init trades it with STS (moto) and fetches from Secrets Manager (moto), and an app
/// running as another user reads the file. The value appears nowhere in the pod object.
#[tokio::test]
async fn an_injected_pod_runs_and_its_app_reads_the_secret_fetched_by_dso_init() {
    // dso-init runs in the pod, on the pod network: it reaches moto by name.
    let moto = env("DSO_POD_AWS_ENDPOINT");
    let mut wh = Webhook::start(18406, &["--init-env", &format!("AWS_ENDPOINT_URL={moto}")]).await;
    let ns = wh.namespace(&[]).await;
    let secret_id = unique("e2e/webhook/db");
    let canary = unique("canary-value-never-in-the-spec");
    create_secret(&secret_id, &json!({"password": canary}).to_string()).await;
    apply(
        &ns,
        &dso_secret(
            "db",
            &secret_id,
            json!({"aws": {"roleArn": "arn:aws:iam::123456789012:role/e2e-webhook"}}),
        ),
    );
    let mut sent = pod("runs", &annotated("db"));
    sent["spec"]["containers"] = json!([app_container(
        "app",
        "if [ -s /run/secrets/dso/db/password ] && cat /run/secrets/dso/db/password >/dev/null; then echo READABLE; else echo UNREADABLE; ls -ln /run/secrets/dso /run/secrets/dso/db; fi; sleep 3600"
    )]);
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    admitted_once_cached(&pods, &serde_json::from_value(sent.clone()).expect("pod")).await;
    create_pod(&pods, sent).await.expect("the pod is admitted");
    let running = wait_for(
        "the injected pod to run",
        Duration::from_secs(120),
        || async {
            let p = pods.get("runs").await?;
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            anyhow::ensure!(
                phase != "Failed",
                "pod failed: {:?}\ninit log: {}",
                p.status,
                container_log(&ns, "runs", "dso-init").unwrap_or_default()
            );
            Ok((phase == "Running").then_some(p))
        },
    )
    .await
    .expect("the injected pod runs");
    let log = wait_for("the app's verdict", TIMEOUT, || async {
        let log = container_log(&ns, "runs", "app")?;
        Ok(log.contains("READABLE").then_some(log))
    })
    .await
    .expect("app log");
    assert!(
        log.contains("READABLE") && !log.contains("UNREADABLE"),
        "{log}"
    );
    let object = serde_json::to_string(&running).expect("json");
    assert!(
        !object.contains(&canary),
        "the secret value leaked into the pod object"
    );
    let init_log = container_log(&ns, "runs", "dso-init").unwrap_or_default();
    assert!(
        !init_log.contains(&canary),
        "the secret value leaked into dso-init's log"
    );
}

#[tokio::test]
async fn a_rotated_certificate_is_loaded_without_a_restart_and_no_admission_fails_meanwhile() {
    let mut wh = Webhook::start(
        18407,
        &["--tls-reload-interval", "1s", "--allow-default-credentials"],
    )
    .await;
    let ns = wh.namespace(&[]).await;
    apply(&ns, &dso_secret("db", "prod/e2e/db", json!({})));
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let pod: Pod = serde_json::from_value(pod("rotating", &annotated("db"))).expect("pod");
    admitted_once_cached(&pods, &pod).await;
    let admit = || async {
        let p = pods
            .create(&dry, &pod)
            .await
            .unwrap_or_else(|e| panic!("an admission failed during the rotation: {e}"));
        assert_eq!(init_names(&p).first().map(String::as_str), Some("dso-init"));
    };
    wh.rotate_certificate();
    let started = std::time::Instant::now();
    while !wh.log().contains("serving certificate reloaded") {
        admit().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            started.elapsed() < TIMEOUT,
            "the new certificate was never loaded"
        );
    }
    for _ in 0..20 {
        admit().await;
    }
    assert!(wh.is_running(), "the same process kept serving");
}

/// Review findings on the real apiserver (a dry run: nothing is started): an `--init-env` value
/// with commas reaches dso-init whole, a `dso.dev/injected` annotation copied into a new pod does
/// not stop the injection, and a region-less DsoSecret is fetched from the webhook's default
/// region even next to a DsoSecret naming another one.
#[tokio::test]
async fn a_copied_injected_annotation_is_injected_anew_with_whole_init_env_values_and_per_secret_regions()
 {
    let mut wh = Webhook::start(
        18408,
        &[
            "--init-env",
            "NO_PROXY=a,b,c",
            "--allow-default-credentials",
        ],
    )
    .await;
    let ns = wh.namespace(&[]).await;
    apply(
        &ns,
        &dso_secret("eu", "prod/e2e/eu", json!({"aws": {"region": "eu-west-1"}})),
    );
    apply(&ns, &dso_secret("db", "prod/e2e/db", json!({})));
    let mut annotations = annotated("eu,db");
    annotations["dso.dev/injected"] = json!("copied-from-a-live-pod");
    let sent: Pod = serde_json::from_value(pod("copied", &annotations)).expect("pod");
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let pod = admitted_once_cached(&pods, &sent).await;

    assert_eq!(
        init_names(&pod).first().map(String::as_str),
        Some("dso-init")
    );
    assert_eq!(
        dso_mounts(&pod, "app"),
        vec![("/run/secrets/dso".to_string(), Some(true))]
    );
    assert_eq!(injected(&pod), Some("eu,db"));
    let init = &pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .expect("init containers")[0];
    let env_of = |name: &str| {
        init.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(env_of("NO_PROXY").as_deref(), Some("a,b,c"));
    assert_eq!(env_of("AWS_REGION").as_deref(), Some("us-east-1"));
    let plan: Value = serde_json::from_str(&env_of("DSO_PLAN").expect("DSO_PLAN")).expect("json");
    let regions: Vec<(&str, &str)> = plan["secrets"]
        .as_array()
        .expect("secrets")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default(),
                s["region"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(regions, [("eu", "eu-west-1"), ("db", "us-east-1")]);
}

/// Sum of `dso_webhook_admissions_total` series with this outcome, from the webhook's /metrics.
async fn admissions(admin_port: u16, outcome: &str) -> f64 {
    let (status, body) = dso_e2e::http_get(admin_port, "/metrics")
        .await
        .expect("the webhook's /metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("dso_webhook_admissions_total"),
        "no admissions series in /metrics: {body}"
    );
    body.lines()
        .filter(|l| {
            l.starts_with("dso_webhook_admissions_total{")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The apiserver calls DSO once per opted-in pod: the ServiceAccount admission plugin, which
/// the apiserver re-runs after DSO's patch, finds dso-init already carrying the API token mount
/// it would add, so nothing changes after DSO and `reinvocationPolicy: IfNeeded` has no reason
/// to call again. Counted with the webhook's own metrics: N pods → N reviews, all `injected`.
#[tokio::test]
async fn each_opted_in_pod_costs_exactly_one_review() {
    const PORT: u16 = 18412;
    let mut wh = Webhook::start(PORT, &[]).await;
    let ns = wh.namespace(&[]).await;
    apply(
        &ns,
        &dso_secret(
            "db",
            "prod/e2e/one-review",
            json!({"aws": {"roleArn": "arn:aws:iam::123456789012:role/e2e-one-review"}}),
        ),
    );
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    // The pods' ServiceAccount must exist for the plugin (and DSO) to see its token volume.
    wait_for("the default ServiceAccount", TIMEOUT, || async {
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client().await, &ns);
        Ok(sas.get_opt("default").await?.map(|_| ()))
    })
    .await
    .expect("default ServiceAccount");
    admitted_once_cached(
        &pods,
        &serde_json::from_value(pod("dry", &annotated("db"))).expect("pod"),
    )
    .await;
    let admin = PORT + 50;
    let (injected_before, unchanged_before) = (
        admissions(admin, "injected").await,
        admissions(admin, "unchanged").await,
    );
    const N: usize = 10;
    for i in 0..N {
        let created = create_pod(&pods, pod(&format!("once-{i}"), &annotated("db")))
            .await
            .expect("the pod is admitted");
        let spec = created.spec.expect("spec");
        let init = spec.init_containers.unwrap_or_default();
        let dso_init = init
            .iter()
            .find(|c| c.name == "dso-init")
            .expect("dso-init");
        // What the ServiceAccount plugin gives every container: the API token, read-only.
        assert!(
            dso_init.volume_mounts.iter().flatten().any(|m| m.mount_path
                == "/var/run/secrets/kubernetes.io/serviceaccount"
                && m.read_only == Some(true)
                && m.name.starts_with("kube-api-access-")),
            "dso-init lacks the token mount the plugin adds: {:?}",
            dso_init.volume_mounts
        );
    }
    let injected = admissions(admin, "injected").await - injected_before;
    let unchanged = admissions(admin, "unchanged").await - unchanged_before;
    assert_eq!(
        (injected, unchanged),
        (N as f64, 0.0),
        "{N} opted-in pods: reviews by outcome (injected, unchanged)"
    );
}

/// A TLS-intercepting proxy's situation: Secrets Manager is reached over HTTPS through a
/// proxy whose certificate a private CA signed (socat terminating TLS in front of moto, on the
/// node's address). The CA reaches dso-init only as the webhook mounts it
/// (`--init-ca-bundle-configmap`: a ConfigMap of the pod's namespace), and the pod gets its secret.
#[tokio::test]
async fn dso_init_trusts_a_private_ca_given_as_a_configmap_through_the_webhook() {
    let node_ip = node_internal_ip().await;
    // The proxy: TLS on the node's address, plain HTTP to moto (both in the cluster's netns).
    let moto_addr = env("DSO_MOTO_ENDPOINT")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let dir = std::env::temp_dir().join(unique("dso-e2e-tls-proxy"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "corp TLS-intercepting proxy CA");
    let ca =
        rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().expect("key"))
            .expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![node_ip.clone()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("proxy certificate");
    let pem = dir.join("proxy.pem");
    std::fs::write(&pem, format!("{}{}", cert.pem(), key.serialize_pem())).expect("write pem");
    let port = 18431;
    let mut proxy = std::process::Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind={node_ip},reuseaddr,fork,verify=0,cert={}",
            pem.display()
        ))
        .arg(format!("TCP:{moto_addr}"))
        .stderr(std::fs::File::create(dir.join("socat.log")).expect("log"))
        .spawn()
        .expect("socat (tests/cluster/deps.sh installs it)");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _proxy = Kill(&mut proxy);

    let moto = env("DSO_POD_AWS_ENDPOINT");
    let mut wh = Webhook::start(
        18407,
        &[
            // STS stays on moto over HTTP; Secrets Manager goes through the proxy.
            "--init-env",
            &format!("AWS_ENDPOINT_URL={moto}"),
            "--init-env",
            &format!("AWS_ENDPOINT_URL_SECRETS_MANAGER=https://{node_ip}:{port}"),
            "--init-ca-bundle-configmap",
            "corp-proxy-ca",
            "--init-ca-bundle-key",
            "bundle.pem",
        ],
    )
    .await;
    let ns = wh.namespace(&[]).await;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "corp-proxy-ca", "namespace": ns},
        "data": {"bundle.pem": ca.pem()}});
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client().await, &ns);
    configmaps
        .create(
            &PostParams::default(),
            &serde_json::from_value(cm).expect("ConfigMap"),
        )
        .await
        .expect("create the CA ConfigMap");
    let secret_id = unique("e2e/webhook/proxied");
    let canary = unique("canary-through-the-proxy");
    create_secret(&secret_id, &json!({"password": canary}).to_string()).await;
    apply(
        &ns,
        &dso_secret(
            "db",
            &secret_id,
            json!({"aws": {"roleArn": "arn:aws:iam::123456789012:role/e2e-webhook"}}),
        ),
    );
    let mut sent = pod("proxied", &annotated("db"));
    sent["spec"]["containers"] = json!([app_container(
        "app",
        "if [ -s /run/secrets/dso/db/password ]; then echo READABLE; else echo UNREADABLE; fi; sleep 3600"
    )]);
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let created = create_pod(&pods, sent).await.expect("the pod is admitted");
    let volume = created
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .and_then(|v| v.iter().find(|v| v.name == "dso-ca-bundle"))
        .and_then(|v| v.config_map.as_ref())
        .map(|c| c.name.clone());
    assert_eq!(volume.as_deref(), Some("corp-proxy-ca"));
    wait_for("the pod to run", Duration::from_secs(120), || async {
        let p = pods.get("proxied").await?;
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        anyhow::ensure!(
            phase != "Failed",
            "pod failed: {:?}\ninit log: {}",
            p.status,
            container_log(&ns, "proxied", "dso-init").unwrap_or_default()
        );
        Ok((phase == "Running").then_some(()))
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nsocat: {}",
            std::fs::read_to_string(dir.join("socat.log")).unwrap_or_default()
        )
    });
    let log = wait_for("the app's verdict", TIMEOUT, || async {
        let log = container_log(&ns, "proxied", "app")?;
        Ok(log.contains("READABLE").then_some(log))
    })
    .await
    .expect("app log");
    assert!(
        log.contains("READABLE") && !log.contains("UNREADABLE"),
        "{log}"
    );
    let init_log = container_log(&ns, "proxied", "dso-init").unwrap_or_default();
    assert!(!init_log.contains(&canary), "{init_log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The node's InternalIP: where pods reach processes of the cluster's network namespace.
async fn node_internal_ip() -> String {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client().await);
    let list = nodes.list(&ListParams::default()).await.expect("nodes");
    list.items
        .iter()
        .flat_map(|n| n.status.iter().flat_map(|s| s.addresses.iter().flatten()))
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
        .expect("a node with an InternalIP")
}
