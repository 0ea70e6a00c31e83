//! Watch caches of DsoSecrets and ServiceAccounts (kube-runtime reflectors), so an admission
//! makes no Kubernetes API call. Ready once both have listed everything once, and no longer
//! while a watch has been failing (erroring without a successful relist) for longer than
//! `--cache-stale-after`: a stale cache would admit pods against old DsoSecrets and
//! ServiceAccounts, so the Service should send reviews to a replica that is in sync.
//!
//! DsoSecrets are cached untyped and read on lookup: an object this webhook cannot parse
//! (written for a newer CRD) yields a denial naming it instead of breaking the whole watch.
//! ServiceAccounts are watched as metadata only: the role annotation is all the webhook needs.

use crate::error::{Error, Result};
use crate::patch::Catalog;
use dso_api::DsoSecret;
use dso_api::annotations::SA_ROLE_ARN;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, store::Writer};
use kube::runtime::watcher::{self, Event};
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;

type SaMeta = PartialObjectMeta<ServiceAccount>;

/// Read side of the caches; cheap to clone.
#[derive(Clone)]
pub struct Store {
    secrets: reflector::Store<DynamicObject>,
    accounts: reflector::Store<SaMeta>,
    resource: ApiResource,
    ready: Arc<AtomicBool>,
    health: Arc<WatchHealth>,
}

/// Since when each watch (DsoSecrets, ServiceAccounts) has been failing, if it is.
#[derive(Debug)]
struct WatchHealth {
    failing_since: [Mutex<Option<Instant>>; 2],
    stale_after: Duration,
}

impl WatchHealth {
    fn set(&self, watch: usize, failing: bool) {
        let mut since = self.failing_since[watch]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (failing, *since) {
            (true, None) => *since = Some(Instant::now()),
            (false, Some(_)) => *since = None,
            _ => {}
        }
    }

    /// The name of a watch failing for longer than `stale_after`, if any.
    fn stale(&self) -> Option<&'static str> {
        self.failing_since
            .iter()
            .zip(WATCHES)
            .find_map(|(f, name)| {
                let since = *f.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                since
                    .is_some_and(|t| t.elapsed() >= self.stale_after)
                    .then_some(name)
            })
    }
}

const WATCHES: [&str; 2] = ["dsosecrets", "serviceaccounts"];
/// Readiness never drops for a file of objects, which has no watch.
const NEVER: Duration = Duration::from_secs(u32::MAX as u64);

/// Write side, fed by watches or by a file.
pub struct Writers {
    secrets: Writer<DynamicObject>,
    accounts: Writer<SaMeta>,
}

impl Store {
    /// Empty caches and their writers; not ready once a watch has failed for `stale_after`.
    pub fn new(stale_after: Duration) -> (Store, Writers) {
        let resource = ApiResource::erase::<DsoSecret>(&());
        let secrets = Writer::new(resource.clone());
        let accounts = Writer::default();
        let store = Store {
            secrets: secrets.as_reader(),
            accounts: accounts.as_reader(),
            resource,
            ready: Arc::new(AtomicBool::new(false)),
            health: Arc::new(WatchHealth {
                failing_since: Default::default(),
                stale_after,
            }),
        };
        (store, Writers { secrets, accounts })
    }

    /// True once both caches hold a full list, unless a watch has been failing for longer
    /// than the allowed staleness since.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.stale_watch().is_none()
    }

    /// The watch (`dsosecrets` or `serviceaccounts`) failing for too long, if any.
    pub fn stale_watch(&self) -> Option<&'static str> {
        self.health.stale()
    }

    /// Resolves once both caches are synced, and marks the store ready.
    pub async fn wait_until_ready(&self) {
        let synced = futures::future::join(
            self.secrets.wait_until_ready(),
            self.accounts.wait_until_ready(),
        )
        .await;
        if matches!(synced, (Ok(()), Ok(()))) {
            self.ready.store(true, Ordering::Relaxed);
        }
    }

    /// Number of cached DsoSecrets and ServiceAccounts (for logs).
    pub fn len(&self) -> (usize, usize) {
        (self.secrets.len(), self.accounts.len())
    }

    /// Starts the watches; the returned future runs them until the process ends. Readiness
    /// drops while one has been failing for `stale_after`.
    pub fn watch(
        client: kube::Client,
        stale_after: Duration,
    ) -> (Store, impl Future<Output = ()> + Send + 'static) {
        let (store, Writers { secrets, accounts }) = Store::new(stale_after);
        let secret_api: Api<DynamicObject> = Api::all_with(client.clone(), &store.resource);
        let secret_stream = watcher(secret_api).reflect(secrets);
        let sa_stream = watcher::watcher(Api::<SaMeta>::all(client), watcher::Config::default())
            .default_backoff()
            .reflect(accounts);
        let health = store.health.clone();
        let run = async move {
            futures::future::join(
                drain(&health, 0, secret_stream),
                drain(&health, 1, sa_stream),
            )
            .await;
        };
        (store, run)
    }

    /// Fills the caches from a YAML file of DsoSecrets and ServiceAccounts (development and
    /// benchmarks), and marks them synced.
    pub fn from_file(path: &Path) -> Result<Store> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        let (
            store,
            Writers {
                mut secrets,
                mut accounts,
            },
        ) = Store::new(NEVER);
        secrets.apply_watcher_event(&Event::Init);
        accounts.apply_watcher_event(&Event::Init);
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            if value.is_null() {
                continue;
            }
            let bad = |e: serde_json::Error| Error::Config(format!("{}: {e}", path.display()));
            match value.get("kind").and_then(|k| k.as_str()) {
                Some("DsoSecret") => {
                    let obj: DynamicObject = serde_json::from_value(value).map_err(bad)?;
                    secrets.apply_watcher_event(&Event::InitApply(obj));
                }
                Some("ServiceAccount") => {
                    let sa: ServiceAccount = serde_json::from_value(value).map_err(bad)?;
                    let meta = kube::core::PartialObjectMetaExt::into_response_partial::<
                        ServiceAccount,
                    >(sa.metadata);
                    accounts.apply_watcher_event(&Event::InitApply(meta));
                }
                other => {
                    return Err(Error::Config(format!(
                        "{}: only DsoSecret and ServiceAccount objects are read, not {other:?}",
                        path.display()
                    )));
                }
            }
        }
        secrets.apply_watcher_event(&Event::InitDone);
        accounts.apply_watcher_event(&Event::InitDone);
        store.ready.store(true, Ordering::Relaxed);
        Ok(store)
    }
}

fn watcher(
    api: Api<DynamicObject>,
) -> impl Stream<Item = Result<Event<DynamicObject>, watcher::Error>> {
    watcher::watcher(api, watcher::Config::default()).default_backoff()
}

/// Runs watch number `watch` (of [`WATCHES`]), recording in `health` whether it fails: an
/// error starts the clock, any event (a relist included) stops it.
async fn drain<K, E, S>(health: &WatchHealth, watch: usize, stream: S)
where
    E: std::fmt::Display,
    S: Stream<Item = Result<K, E>>,
{
    let what = WATCHES[watch];
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        health.set(watch, item.is_err());
        if let Err(e) = item {
            let hint = if what == "dsosecrets" {
                " (is the DsoSecret CRD installed? kubectl apply --server-side -f crds/dso.dev_dsosecrets.yaml)"
            } else {
                ""
            };
            tracing::warn!(watch = what, error = %e, "watch failed, retrying{hint}");
        }
    }
}

impl Catalog for Store {
    fn dso_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<std::result::Result<Arc<DsoSecret>, String>> {
        let key =
            ObjectRef::<DynamicObject>::new_with(name, self.resource.clone()).within(namespace);
        let obj = self.secrets.get(&key)?;
        let parsed = serde_json::to_value(obj.as_ref())
            .and_then(serde_json::from_value::<DsoSecret>)
            .map(Arc::new)
            .map_err(|e| {
                format!("this webhook cannot read it ({e}): is the webhook older than the CRD?")
            });
        Some(parsed)
    }

    fn service_account_role(&self, namespace: &str, name: &str) -> Option<Option<String>> {
        let key = ObjectRef::<SaMeta>::new(name).within(namespace);
        let sa = self.accounts.get(&key)?;
        Some(
            sa.annotations()
                .get(SA_ROLE_ARN)
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn readiness_drops_while_a_watch_keeps_failing_and_returns_when_it_relists() {
        let (store, _writers) = Store::new(Duration::from_secs(120));
        store.ready.store(true, Ordering::Relaxed);
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<(), String>>();
        let health = store.health.clone();
        let watch = tokio::spawn(async move { drain(&health, 1, rx).await });
        let settle = || tokio::task::yield_now();

        tx.unbounded_send(Err("connection refused".into()))
            .expect("send");
        settle().await;
        tokio::time::advance(Duration::from_secs(119)).await;
        tx.unbounded_send(Err("connection refused".into()))
            .expect("send");
        settle().await;
        assert!(store.is_ready(), "a failure shorter than 2m is tolerated");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!store.is_ready(), "failing for 2m: not ready");
        assert_eq!(store.stale_watch(), Some("serviceaccounts"));

        // The watcher relists: any event means the cache is current again.
        tx.unbounded_send(Ok(())).expect("send");
        settle().await;
        assert!(store.is_ready());
        tx.unbounded_send(Err("again".into())).expect("send");
        settle().await;
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(store.is_ready(), "the clock restarts with the new failure");
        drop(tx);
        watch.await.expect("the watch ends with its stream");
    }

    #[test]
    fn a_store_that_never_synced_is_not_ready() {
        let (store, _writers) = Store::new(Duration::from_secs(1));
        assert!(!store.is_ready());
    }

    #[test]
    fn a_file_of_objects_fills_the_caches_and_marks_them_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("objects.yaml");
        std::fs::write(
            &f,
            r#"
apiVersion: dso.dev/v1alpha1
kind: DsoSecret
metadata: {name: db, namespace: shop}
spec:
  files: [{path: password, secretId: prod/db}]
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
  namespace: shop
  annotations: {eks.amazonaws.com/role-arn: "arn:aws:iam::123456789012:role/web"}
"#,
        )
        .expect("write");
        let store = Store::from_file(&f).expect("load");
        assert!(store.is_ready());
        let db = store
            .dso_secret("shop", "db")
            .expect("found")
            .expect("readable");
        assert_eq!(db.spec.files[0].secret_id, "prod/db");
        assert!(store.dso_secret("other", "db").is_none());
        assert_eq!(
            store.service_account_role("shop", "web"),
            Some(Some("arn:aws:iam::123456789012:role/web".to_string()))
        );
        assert_eq!(
            store.service_account_role("shop", "default"),
            None,
            "not known"
        );
    }

    #[test]
    fn a_dsosecret_this_version_cannot_read_is_reported_not_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("objects.yaml");
        std::fs::write(
            &f,
            "apiVersion: dso.dev/v1alpha1\nkind: DsoSecret\nmetadata: {name: db, namespace: shop}\nspec: {files: [], futureField: 1}\n",
        )
        .expect("write");
        let store = Store::from_file(&f).expect("load");
        let err = store
            .dso_secret("shop", "db")
            .expect("found")
            .expect_err("unreadable");
        assert!(err.contains("futureField"), "{err}");
    }
}
