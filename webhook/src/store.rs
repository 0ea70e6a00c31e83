//! Watch caches of DsoSecrets and ServiceAccounts (kube-runtime reflectors), so an admission
//! makes no Kubernetes API call. Ready once both have listed everything once.
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
use std::sync::atomic::{AtomicBool, Ordering};

type SaMeta = PartialObjectMeta<ServiceAccount>;

/// Read side of the caches; cheap to clone.
#[derive(Clone)]
pub struct Store {
    secrets: reflector::Store<DynamicObject>,
    accounts: reflector::Store<SaMeta>,
    resource: ApiResource,
    ready: Arc<AtomicBool>,
}

/// Write side, fed by watches or by a file.
pub struct Writers {
    secrets: Writer<DynamicObject>,
    accounts: Writer<SaMeta>,
}

impl Store {
    /// Empty caches and their writers.
    pub fn new() -> (Store, Writers) {
        let resource = ApiResource::erase::<DsoSecret>(&());
        let secrets = Writer::new(resource.clone());
        let accounts = Writer::default();
        let store = Store {
            secrets: secrets.as_reader(),
            accounts: accounts.as_reader(),
            resource,
            ready: Arc::new(AtomicBool::new(false)),
        };
        (store, Writers { secrets, accounts })
    }

    /// True once both caches hold a full list.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
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

    /// Starts the watches; the returned future runs them until the process ends.
    pub fn watch(client: kube::Client) -> (Store, impl Future<Output = ()> + Send + 'static) {
        let (store, Writers { secrets, accounts }) = Store::new();
        let secret_api: Api<DynamicObject> = Api::all_with(client.clone(), &store.resource);
        let secret_stream = watcher(secret_api).reflect(secrets).applied_objects();
        let sa_stream = watcher::watcher(Api::<SaMeta>::all(client), watcher::Config::default())
            .default_backoff()
            .reflect(accounts)
            .applied_objects();
        let run = async move {
            futures::future::join(
                drain("dsosecrets", secret_stream),
                drain("serviceaccounts", sa_stream),
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
        ) = Store::new();
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

async fn drain<K, S>(what: &'static str, stream: S)
where
    S: Stream<Item = Result<K, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
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
