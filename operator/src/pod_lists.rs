//! One list of a namespace's pods shared by the InPlace reconciles of that namespace.
//!
//! Each InPlace DsoSecret reconcile needs the pods that mount it, and a pod does not say so in
//! a label the API server could select on. Listing the namespace per DsoSecret made one pass of
//! S DsoSecrets over N pods cost S lists of N pods (100 × 1,000 every refresh interval in the
//! cost benchmark). Here the reconciles of one namespace share a list for [`FRESH_FOR`]: the
//! first asks the API server and the others that come meanwhile wait for it (single flight).
//!
//! A shared list is at most [`FRESH_FOR`] older than a list of one's own would be. That is
//! safe: the list comes from the API server's watch cache anyway, every pod patch is guarded by
//! the `resourceVersion` read (a pod changed since is told on the next pass), and a namespace
//! whose pods were just told is listed afresh ([`PodLists::forget`]).

use k8s_openapi::api::core::v1::Pod;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one list of a namespace's pods serves the reconciles of that namespace.
pub const FRESH_FOR: Duration = Duration::from_secs(2);

type Slot = Arc<tokio::sync::Mutex<Option<(Instant, Arc<Vec<Pod>>)>>>;

/// The latest list of pods per namespace (see the module documentation).
#[derive(Default)]
pub struct PodLists {
    slots: Mutex<HashMap<String, Slot>>,
}

impl PodLists {
    /// The pods of `ns`: the shared list if it is fresh, else the result of `fetch`, shared
    /// with the reconciles of `ns` that ask while it runs. A failed fetch is not shared.
    pub async fn get<F, Fut, E>(&self, ns: &str, fetch: F) -> Result<Arc<Vec<Pod>>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<Pod>, E>>,
    {
        let slot = {
            let mut slots = crate::controller::lock(&self.slots);
            // Lists nobody asked for lately are dropped: they are stale, and a namespace of
            // thousands of pods is megabytes.
            slots.retain(|k, s| {
                k == ns
                    || s.try_lock()
                        .map(|g| g.as_ref().is_some_and(|(at, _)| at.elapsed() < FRESH_FOR))
                        .unwrap_or(true)
            });
            slots.entry(ns.to_string()).or_default().clone()
        };
        let mut latest = slot.lock().await;
        if let Some((at, pods)) = latest.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return Ok(pods.clone());
        }
        let started = Instant::now();
        let mut pods = fetch().await?;
        for p in &mut pods {
            // Never read here, and often the larger part of a pod.
            p.metadata.managed_fields = None;
        }
        let pods = Arc::new(pods);
        *latest = Some((started, pods.clone()));
        Ok(pods)
    }

    /// Forgets the list of `ns`: its pods were just told, the next reconcile lists afresh.
    pub fn forget(&self, ns: &str) {
        crate::controller::lock(&self.slots).remove(ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn pod(name: &str) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {
            "name": name,
            "managedFields": [{"manager": "kubelet", "operation": "Update"}],
        }}))
        .expect("pod")
    }

    #[tokio::test]
    async fn reconciles_of_one_namespace_at_once_share_one_list() {
        let lists = PodLists::default();
        let calls = AtomicUsize::new(0);
        let fetch = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            // Long enough for the other 99 to arrive while it runs.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, ()>(vec![pod("a"), pod("b")])
        };
        let all = futures::future::join_all((0..100).map(|_| lists.get("apps", fetch))).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one list for 100 reconciles"
        );
        for pods in all {
            let pods = pods.expect("pods");
            assert_eq!(pods.len(), 2);
            assert!(
                pods[0].metadata.managed_fields.is_none(),
                "managedFields dropped"
            );
        }
        // Another namespace has its own list.
        lists.get("other", fetch).await.expect("pods");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_stale_or_forgotten_list_is_listed_again_and_a_failure_is_not_shared() {
        let lists = PodLists::default();
        let calls = AtomicUsize::new(0);
        let fetch = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(vec![pod("a")])
        };
        lists.get("apps", fetch).await.expect("pods");
        lists.get("apps", fetch).await.expect("pods");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        lists.forget("apps");
        lists.get("apps", fetch).await.expect("pods");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "listed again after forget");

        let failed = lists
            .get("broken", || async { Err::<Vec<Pod>, _>("503") })
            .await;
        assert_eq!(failed.err(), Some("503"));
        lists
            .get("broken", fetch)
            .await
            .expect("the next one lists");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_list_serves_for_fresh_for_then_is_listed_again() {
        let lists = PodLists::default();
        let calls = AtomicUsize::new(0);
        let fetch = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(vec![pod("a")])
        };
        lists.get("apps", fetch).await.expect("pods");
        std::thread::sleep(FRESH_FOR + Duration::from_millis(50));
        lists.get("apps", fetch).await.expect("pods");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "a stale list is not served"
        );
    }
}
