//! Run-time TLS (`--tls-mode=runtime`): the certificate is managed by the webhook itself, so
//! the chart's render holds no key material and is the same on every render (GitOps).
//!
//! - Every replica follows the certificate Secret ([`follow_secret`]) and swaps its serving
//!   pair when the Secret changes; until a pair is loaded it is not ready.
//! - The replicas elect a leader on a Lease ([`lead`]). The leader alone writes: when
//!   [`certs::plan`] says so it issues a new CA and serving certificate, first adds the new CA
//!   to the `caBundle` of DSO's Mutating- and ValidatingWebhookConfiguration (the API server
//!   then trusts both the certificate still served and the new one), waits for the API server
//!   to pick that up, then stores the pair in the Secret. The previous CA leaves the bundle
//!   when the previous certificate expires. It also puts the Secret's bundle back into the
//!   configurations whenever they change (an `apply` of the chart that carries no caBundle).
//!
//! Every object is named (RBAC by `resourceNames`): the Secret and the Lease are created by the
//! chart, so the webhook never creates anything. No key material is logged: only fingerprints.

use crate::certs::{self, Plan, Stored};
use crate::error::{Error, Result};
use crate::lease::{LeaderElector, Leadership, keep_renewed};
use crate::tls::CertReloader;
use base64::Engine;
use futures::{Stream, StreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Longest the leader sleeps between two checks, whatever the plan says.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Pause after a failed reconcile.
const RETRY: Duration = Duration::from_secs(5);
/// Field manager of the caBundle patches and Secret writes.
const MANAGER: &str = "dso-webhook";

/// What run-time TLS needs, checked from the command line.
#[derive(Clone, Debug)]
pub struct RuntimeTls {
    pub namespace: String,
    pub secret: String,
    /// Name of both webhook configurations.
    pub configuration: String,
    pub names: Vec<String>,
    pub validity: Duration,
    pub propagation: Duration,
    pub lease: String,
    pub lease_duration: Duration,
    pub identity: String,
}

impl RuntimeTls {
    /// The objects this mode reads and writes, all named.
    fn apis(&self, client: &kube::Client, leadership: &Leadership) -> Apis {
        Apis {
            secrets: Api::namespaced(client.clone(), &self.namespace),
            mutating: Api::all(client.clone()),
            validating: Api::all(client.clone()),
            leadership: leadership.clone(),
        }
    }
}

/// The objects the leader writes, and its leadership: checked right before every write, so a
/// replica that stalled and lost the Lease never overwrites its successor's work.
struct Apis {
    secrets: Api<Secret>,
    mutating: Api<MutatingWebhookConfiguration>,
    validating: Api<ValidatingWebhookConfiguration>,
    leadership: Leadership,
}

impl Apis {
    fn ensure_leading(&self) -> Result<()> {
        if self.leadership.is_leading() {
            Ok(())
        } else {
            Err(Error::Tls(
                "no longer leading (the Lease was not renewed in time): not writing".into(),
            ))
        }
    }
}

fn named(name: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("metadata.name={name}"))
}

fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// Every replica: installs the Secret's pair each time it changes, forever.
pub async fn follow_secret(client: kube::Client, cfg: RuntimeTls, certs: Arc<CertReloader>) {
    let api: Api<Secret> = Api::namespaced(client, &cfg.namespace);
    let mut secrets = std::pin::pin!(
        watcher(api, named(&cfg.secret))
            .default_backoff()
            .applied_objects()
    );
    while let Some(next) = secrets.next().await {
        let secret = match next {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, secret = %cfg.secret, "watch of the certificate Secret failed; retrying");
                continue;
            }
        };
        let mut data = secret_data(&secret);
        let (Some(cert), Some(key)) = (data.remove(certs::KEY_CERT), data.remove(certs::KEY_KEY))
        else {
            tracing::info!(secret = %cfg.secret, "the certificate Secret holds no pair yet; waiting for the leader");
            continue;
        };
        if cert.is_empty() || key.is_empty() {
            continue;
        }
        match certs.install(cert, key) {
            Ok(true) => tracing::info!(
                cert_sha256 = %certs.fingerprint(),
                "serving the certificate from the Secret"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                error = %e,
                secret = %cfg.secret,
                "the Secret's certificate is not usable; still serving the previous one"
            ),
        }
    }
}

/// Runs for leadership until `stop` turns true; while leading, manages the certificate.
pub async fn lead(client: kube::Client, cfg: RuntimeTls, mut stop: watch::Receiver<bool>) {
    let elector = Arc::new(LeaderElector::new(
        Api::<Lease>::namespaced(client.clone(), &cfg.namespace),
        &cfg.lease,
        &cfg.identity,
        cfg.lease_duration,
    ));
    loop {
        let Some(leadership) = elector.acquire(&mut stop).await else {
            return;
        };
        tracing::info!(lease = %cfg.lease, identity = %cfg.identity, "leading: this replica manages the webhook certificate");
        let (lost_tx, mut lost) = watch::channel(false);
        let renewal = keep_renewed(
            elector.clone(),
            leadership.clone(),
            stop.clone(),
            move || {
                let _ = lost_tx.send(true);
            },
        );
        tokio::select! {
            () = manage(&client, &cfg, &leadership) => {},
            _ = lost.wait_for(|l| *l) => {
                tracing::warn!("no longer leading; another replica manages the certificate");
            },
            _ = stop.wait_for(|s| *s) => {},
        }
        renewal.abort();
        if *stop.borrow() {
            if let Err(e) = elector.release().await {
                tracing::warn!(error = %e, "could not release the leader Lease");
            }
            return;
        }
    }
}

/// Reconciles on every change of the Secret or the webhook configurations, and when the plan
/// says, forever.
async fn manage(client: &kube::Client, cfg: &RuntimeTls, leadership: &Leadership) {
    let apis = cfg.apis(client, leadership);
    let poke = |s: Pin<Box<dyn Stream<Item = ()> + Send>>| s;
    let mut changes = futures::stream::select_all([
        poke(Box::pin(
            watcher(apis.secrets.clone(), named(&cfg.secret))
                .default_backoff()
                .map(|_| ()),
        )),
        poke(Box::pin(
            watcher(apis.mutating.clone(), named(&cfg.configuration))
                .default_backoff()
                .map(|_| ()),
        )),
        poke(Box::pin(
            watcher(apis.validating.clone(), named(&cfg.configuration))
                .default_backoff()
                .map(|_| ()),
        )),
    ]);
    let names = certs::names_hash(&cfg.names);
    loop {
        let wait = match reconcile(&apis, cfg, &names).await {
            Ok(wait) => wait.min(MAX_WAIT),
            Err(e) => {
                tracing::warn!(error = %e, "managing the webhook certificate failed; retrying");
                RETRY
            }
        };
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {},
            Some(()) = changes.next() => {
                // A burst of events (our own writes included) makes one reconcile.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while let Some(Some(())) = changes.next().now_or_never() {}
            },
        }
    }
}

use futures::FutureExt;

fn kube_err(what: &str) -> impl Fn(kube::Error) -> Error + '_ {
    move |e| Error::Tls(format!("{what}: {e}"))
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// One pass: issue, drop the previous CA, or keep the configurations in step with the Secret.
/// Returns how long to wait before the next pass.
async fn reconcile(apis: &Apis, cfg: &RuntimeTls, names: &str) -> Result<Duration> {
    let Some(mut secret) = apis
        .secrets
        .get_opt(&cfg.secret)
        .await
        .map_err(kube_err("read the certificate Secret"))?
    else {
        return Err(Error::Tls(format!(
            "the certificate Secret {}/{} does not exist: the chart creates it (empty); \
             the webhook may only update it",
            cfg.namespace, cfg.secret
        )));
    };
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let stored = Stored::read(&secret_data(&secret), &annotations);
    let now = Timestamp::now();
    match certs::plan(&stored, names, now, cfg.validity) {
        Plan::Keep { next } => {
            sync_ca_bundle(apis, cfg, &stored.bundle_pem()).await?;
            Ok(Duration::try_from(next.duration_since(now)).unwrap_or(Duration::ZERO))
        }
        Plan::DropPreviousCa => {
            let bundle = stored.bundle.first().cloned().unwrap_or_default();
            let annotations = secret
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new);
            annotations.remove(certs::ANNOTATION_PREVIOUS_CA_UNTIL);
            secret
                .data
                .get_or_insert_with(BTreeMap::new)
                .insert(certs::KEY_CA.into(), ByteString(bundle.into_bytes()));
            write(apis, cfg, &secret).await?;
            tracing::info!("the previous certificate has expired: its CA left the caBundle");
            Ok(Duration::ZERO)
        }
        Plan::Issue(reason) => {
            tracing::info!(reason, names = ?cfg.names, "issuing a new CA and serving certificate");
            let issued = certs::issue(&cfg.names, now, cfg.validity)?;
            let (bundle, previous_until) = certs::rotated_bundle(&stored, &issued.ca_pem, now);
            let bundle = bundle.concat();
            // The API server must trust the new CA before any replica serves the new
            // certificate; while it trusts both, either may be served.
            sync_ca_bundle(apis, cfg, &bundle).await?;
            if stored.has_pair {
                tokio::time::sleep(cfg.propagation).await;
            }
            let annotations = secret
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new);
            annotations.remove(certs::ANNOTATION_ROTATE);
            annotations.insert(
                certs::ANNOTATION_NOT_AFTER.into(),
                issued.not_after.to_string(),
            );
            annotations.insert(certs::ANNOTATION_NAMES.into(), names.to_string());
            match previous_until {
                Some(t) => {
                    annotations.insert(certs::ANNOTATION_PREVIOUS_CA_UNTIL.into(), t.to_string())
                }
                None => annotations.remove(certs::ANNOTATION_PREVIOUS_CA_UNTIL),
            };
            let data = secret.data.get_or_insert_with(BTreeMap::new);
            data.insert(certs::KEY_CA.into(), ByteString(bundle.into_bytes()));
            data.insert(
                certs::KEY_CERT.into(),
                ByteString(issued.cert_pem.into_bytes()),
            );
            data.insert(
                certs::KEY_KEY.into(),
                ByteString(issued.key_pem.into_bytes()),
            );
            write(apis, cfg, &secret).await?;
            tracing::info!(not_after = %issued.not_after, "new serving certificate stored");
            Ok(Duration::ZERO)
        }
    }
}

/// Replaces the Secret as read (its resourceVersion): a concurrent change makes a conflict,
/// answered by the next pass on fresh data.
async fn write(apis: &Apis, cfg: &RuntimeTls, secret: &Secret) -> Result<()> {
    apis.ensure_leading()?;
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    match apis.secrets.replace(&cfg.secret, &params, secret).await {
        Ok(_) => Ok(()),
        Err(e) if is_conflict(&e) => {
            tracing::info!("the certificate Secret changed meanwhile; planning again");
            Ok(())
        }
        Err(e) => Err(kube_err("update the certificate Secret")(e)),
    }
}

/// Sets `caBundle` of every webhook of both configurations to `bundle`, where it differs.
async fn sync_ca_bundle(apis: &Apis, cfg: &RuntimeTls, bundle: &str) -> Result<()> {
    if bundle.is_empty() {
        return Ok(());
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(bundle);
    patch_bundle(apis, &apis.mutating, &cfg.configuration, &encoded, true).await?;
    patch_bundle(apis, &apis.validating, &cfg.configuration, &encoded, false).await
}

/// JSON patch of the webhooks whose caBundle is not `encoded`, each guarded by a test of the
/// webhook's name and of the caBundle read (so a concurrent reorder or another writer's bundle
/// fails the patch instead of being overwritten; the next pass reads again). A missing
/// ValidatingWebhookConfiguration (validation off) is fine; a missing mutating one is not.
async fn patch_bundle<K>(
    apis: &Apis,
    api: &Api<K>,
    name: &str,
    encoded: &str,
    required: bool,
) -> Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let kind = std::any::type_name::<K>()
        .rsplit("::")
        .next()
        .unwrap_or("webhook configuration");
    let Some(current) = api
        .get_opt(name)
        .await
        .map_err(kube_err(&format!("read {kind} {name}")))?
    else {
        if required {
            return Err(Error::Tls(format!(
                "{kind} {name} does not exist: nothing to put the caBundle in"
            )));
        }
        return Ok(());
    };
    let value =
        serde_json::to_value(&current).map_err(|e| Error::Tls(format!("{kind} {name}: {e}")))?;
    let ops = bundle_patch(&value, encoded);
    if ops.is_empty() {
        return Ok(());
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
        .map_err(|e| Error::Tls(format!("caBundle patch: {e}")))?;
    apis.ensure_leading()?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map_err(kube_err(&format!("patch the caBundle of {kind} {name}")))?;
    tracing::info!(kind, name, "caBundle updated");
    Ok(())
}

/// The JSON patch operations that set `caBundle` to `encoded` in every webhook of a
/// configuration (as JSON) where it differs, each behind tests of the webhook's name and of
/// the caBundle as read; empty when all match.
pub fn bundle_patch(configuration: &serde_json::Value, encoded: &str) -> Vec<serde_json::Value> {
    let mut ops = Vec::new();
    let webhooks = configuration
        .get("webhooks")
        .and_then(|w| w.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, webhook) in webhooks.iter().enumerate() {
        let current = webhook
            .pointer("/clientConfig/caBundle")
            .and_then(|b| b.as_str());
        if current == Some(encoded) {
            continue;
        }
        ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook.get("name")}));
        if let Some(current) = current {
            ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": current}));
        }
        ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}));
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_webhooks_with_another_bundle_are_patched_each_behind_a_test_of_its_name() {
        let config = json!({"webhooks": [
            {"name": "inject.dso.dev", "clientConfig": {"caBundle": "T0xE"}},
            {"name": "other.dso.dev", "clientConfig": {"caBundle": "TkVX"}},
            {"name": "empty.dso.dev", "clientConfig": {}},
        ]});
        assert_eq!(
            bundle_patch(&config, "TkVX"),
            vec![
                json!({"op": "test", "path": "/webhooks/0/name", "value": "inject.dso.dev"}),
                json!({"op": "test", "path": "/webhooks/0/clientConfig/caBundle", "value": "T0xE"}),
                json!({"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "TkVX"}),
                json!({"op": "test", "path": "/webhooks/2/name", "value": "empty.dso.dev"}),
                json!({"op": "add", "path": "/webhooks/2/clientConfig/caBundle", "value": "TkVX"}),
            ]
        );
        assert!(bundle_patch(&json!({"webhooks": []}), "TkVX").is_empty());
        assert!(bundle_patch(&json!({}), "TkVX").is_empty());
    }
}
