//! `dso-webhook` as a process on this host, registered through a real
//! MutatingWebhookConfiguration in URL mode (`https://127.0.0.1:PORT/mutate`, with the caBundle
//! of a CA made here).
//!
//! Each [`Webhook`] runs on its own port with its own configuration, which selects only the
//! namespaces it makes ([`Webhook::namespace`]: a label unique to it) and, through
//! `matchConditions`, only pods annotated `dso.dev/inject: "true"`, like the chart's: other tests
//! sharing the cluster never see it. [`Webhook::register_validation`] adds `/validate` for the
//! DsoSecrets of those namespaces.

use crate::process::{LogFile, http_get};
use crate::{
    TestNamespace, annotated, apply_crd, client, env, kubectl_best_effort, namespace, pod, unique,
    wait_for,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

/// Label selecting a webhook's namespaces in its configuration.
const SELECTOR_LABEL: &str = "dso-webhook-e2e";
const TIMEOUT: Duration = Duration::from_secs(60);

type Ca = rcgen::CertifiedIssuer<'static, rcgen::KeyPair>;

/// A running `dso-webhook`, the configuration that sends it its namespaces' pods, and those
/// namespaces. Dropping it stops the process and deletes the configuration and the namespaces;
/// when the test panics, the tail of the webhook's log (stdout and stderr) is printed first.
pub struct Webhook {
    child: Option<Child>,
    config_name: String,
    /// Value of [`SELECTOR_LABEL`] on the namespaces this webhook serves.
    run: String,
    dir: PathBuf,
    ca: Ca,
    log: LogFile,
    /// Dropped after [`Drop::drop`] has stopped the process and removed the configuration.
    namespaces: Vec<TestNamespace>,
}

/// A CA for the caBundle; serving certificates are issued from it (and re-issued on rotation).
fn test_ca() -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "dso-webhook e2e CA");
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("CA key"))
        .expect("CA certificate")
}

/// Issues a new serving certificate and key for 127.0.0.1 and swaps them in the way a
/// Secret volume update does: write elsewhere, then rename over the old files.
fn write_serving_pair(dir: &Path, ca: &Ca) {
    let key = rcgen::KeyPair::generate().expect("serving key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("serving params")
        .signed_by(&key, ca)
        .expect("serving certificate");
    std::fs::write(dir.join("tls.crt.new"), cert.pem()).expect("write cert");
    std::fs::write(dir.join("tls.key.new"), key.serialize_pem()).expect("write key");
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).expect("swap key");
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).expect("swap cert");
}

impl Webhook {
    /// Starts `$DSO_BIN_DIR/dso-webhook` on 127.0.0.1:`port` (admin HTTP on `port + 50`) with
    /// the node's dso-init image, region us-east-1 and `extra_args`, registers it, and returns
    /// once the apiserver routes an opted-in pod of a fresh namespace to it.
    pub async fn start(port: u16, extra_args: &[&str]) -> Webhook {
        apply_crd();
        let run = unique("wh");
        let dir = std::env::temp_dir().join(format!("dso-webhook-e2e-{run}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca = test_ca();
        write_serving_pair(&dir, &ca);
        let (log, stdout, stderr) = LogFile::create(dir.join("webhook.log"), "dso-webhook");
        let bin = PathBuf::from(env("DSO_BIN_DIR")).join("dso-webhook");
        let admin_port = port + 50;
        let child = std::process::Command::new(&bin)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin_port}"),
                "--tls-cert",
                &dir.join("tls.crt").to_string_lossy(),
                "--tls-key",
                &dir.join("tls.key").to_string_lossy(),
                "--init-image",
                &env("DSO_INIT_IMAGE"),
                "--init-image-pull-policy",
                "Never",
                "--default-region",
                "us-east-1",
                "--shutdown-grace",
                "2s",
            ])
            .args(extra_args)
            .env("KUBECONFIG", env("KUBECONFIG"))
            .env("RUST_LOG", "info")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        // From here on, a panic prints the log and cleans up through Drop.
        let mut webhook = Webhook {
            child: Some(child),
            config_name: format!("dso-e2e-{run}"),
            run,
            dir,
            ca,
            log,
            namespaces: Vec::new(),
        };
        wait_for("the webhook to be ready", TIMEOUT, || async {
            let (status, _) = http_get(admin_port, "/readyz").await?;
            Ok((status == 200).then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        webhook.register(port).await;
        webhook
    }

    /// Creates the MutatingWebhookConfiguration and waits until the apiserver uses it.
    async fn register(&mut self, port: u16) {
        let mut config: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": self.config_name},
            "webhooks": [{
                "name": "pods.dso.dev",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "timeoutSeconds": 5,
                "failurePolicy": "Fail",
                "reinvocationPolicy": "IfNeeded",
                "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate")},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["pods"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchLabels": {SELECTOR_LABEL: self.run}},
                "matchConditions": [{
                    "name": "opted-in",
                    "expression": "has(object.metadata.annotations) && 'dso.dev/inject' in object.metadata.annotations && object.metadata.annotations['dso.dev/inject'].lowerAscii() == 'true'"
                }]
            }]
        }))
        .expect("webhook configuration");
        if let Some(w) = config.webhooks.as_mut().and_then(|w| w.first_mut()) {
            w.client_config.ca_bundle = Some(ByteString(self.ca.pem().into_bytes()));
        }
        Api::<MutatingWebhookConfiguration>::all(client().await)
            .create(&PostParams::default(), &config)
            .await
            .expect("create the MutatingWebhookConfiguration");

        // The apiserver picks the configuration up within about a second: probe with dry runs.
        let probe_ns = self.namespace(&[]).await;
        let pods: Api<Pod> = Api::namespaced(client().await, &probe_ns);
        let probe = pod("probe", &annotated("nothing-here"));
        wait_for("the apiserver to call the webhook", TIMEOUT, || {
            let pods = pods.clone();
            let probe = probe.clone();
            async move {
                let dry = PostParams {
                    dry_run: true,
                    ..Default::default()
                };
                match pods.create(&dry, &serde_json::from_value(probe)?).await {
                    Err(kube::Error::Api(s)) if s.message.contains("nothing-here") => Ok(Some(())),
                    other => anyhow::bail!("not routed to the webhook yet: {other:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Registers `/validate` for the DsoSecrets of this webhook's namespaces (a
    /// ValidatingWebhookConfiguration named like the mutating one, `failurePolicy: Fail`), as
    /// the chart does, and waits until the apiserver uses it.
    pub async fn register_validation(&mut self, port: u16) {
        let mut config: ValidatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": self.config_name},
            "webhooks": [{
                "name": "validate.dso.dev",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "timeoutSeconds": 5,
                "failurePolicy": "Fail",
                "clientConfig": {"url": format!("https://127.0.0.1:{port}/validate")},
                "rules": [{"apiGroups": ["dso.dev"], "apiVersions": ["v1alpha1"],
                           "operations": ["CREATE", "UPDATE"], "resources": ["dsosecrets"],
                           "scope": "Namespaced"}],
                "namespaceSelector": {"matchLabels": {SELECTOR_LABEL: self.run}},
            }]
        }))
        .expect("webhook configuration");
        if let Some(w) = config.webhooks.as_mut().and_then(|w| w.first_mut()) {
            w.client_config.ca_bundle = Some(ByteString(self.ca.pem().into_bytes()));
        }
        Api::<ValidatingWebhookConfiguration>::all(client().await)
            .create(&PostParams::default(), &config)
            .await
            .expect("create the ValidatingWebhookConfiguration");
        let probe_ns = self.namespace(&[]).await;
        let broken: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "dso.dev/v1alpha1", "kind": "DsoSecret",
            "metadata": {"name": "probe"},
            "spec": {"files": [{"path": "x", "template": "{{ nothing-here", "sources": {"a": {"secretId": "a"}}}]}
        }))
        .expect("probe");
        let api: Api<DynamicObject> = Api::namespaced_with(
            client().await,
            &probe_ns,
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("dso.dev", "v1alpha1", "DsoSecret"),
                "dsosecrets",
            ),
        );
        wait_for("the apiserver to call /validate", TIMEOUT, || {
            let (api, broken) = (api.clone(), broken.clone());
            async move {
                let dry = PostParams {
                    dry_run: true,
                    ..Default::default()
                };
                match api.create(&dry, &broken).await {
                    Err(kube::Error::Api(s)) if s.message.contains("validate.dso.dev") => {
                        Ok(Some(()))
                    }
                    other => anyhow::bail!("not routed to /validate yet: {other:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// A fresh namespace this webhook serves, deleted with the webhook.
    pub async fn namespace(&mut self, extra_labels: &[(&str, &str)]) -> String {
        let mut labels = vec![(SELECTOR_LABEL, self.run.as_str())];
        labels.extend_from_slice(extra_labels);
        let ns = namespace(&client().await, "dso-wh", &labels).await;
        let name = ns.to_string();
        self.namespaces.push(ns);
        name
    }

    /// Everything the webhook logged so far.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// Issues a new serving certificate from the same CA and swaps it in on disk.
    pub fn rotate_certificate(&self) {
        write_serving_pair(&self.dir, &self.ca);
    }

    /// Whether the process started by [`Webhook::start`] still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Creates `sent` (`params` may ask for a dry run) once the webhook's watch caches hold the
/// objects just applied for it. A DsoSecret or ServiceAccount created a moment before the pod may
/// not be in those caches yet, and the webhook then denies by name — documented, and the
/// ReplicaSet's next retry succeeds; a test creating a bare pod retries the same way. Only those
/// two denials are retried (for up to a minute); any other answer, admission or refusal, is
/// returned as it is.
pub async fn create_once_cached(
    pods: &Api<Pod>,
    params: &PostParams,
    sent: &Pod,
) -> kube::Result<Pod> {
    let started = std::time::Instant::now();
    loop {
        match pods.create(params, sent).await {
            Err(kube::Error::Api(s))
                if (s.message.contains("not in the webhook's cache yet")
                    || s.message.contains("not found in namespace"))
                    && started.elapsed() < TIMEOUT =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            answer => return answer,
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            eprintln!("{}", self.log.tail());
        }
        self.stop();
        kubectl_best_effort(&[
            "delete",
            "mutatingwebhookconfiguration",
            &self.config_name,
            "--ignore-not-found",
        ]);
        kubectl_best_effort(&[
            "delete",
            "validatingwebhookconfiguration",
            &self.config_name,
            "--ignore-not-found",
        ]);
        // A failed test's log stays, at the path its tail names.
        if !failed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
