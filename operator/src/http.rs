//! The operator's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process works)
//! and `/readyz` (leading with synced caches, or standing by for the Lease), and what they
//! report: the [`Phase`] in [`Health`], and [`Synced`], which tells when the caches are synced.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::Mutex;
use tokio::sync::watch;

/// What the process reports about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Checking the CRD, building clients.
    Starting,
    /// Waiting for the leader Lease (healthy, ready as a standby).
    Standby,
    /// Leading; the watch caches are filling.
    Syncing,
    /// Leading with synced caches: reconciling.
    Running,
    /// Lost the Lease or a fatal error: about to exit.
    Failed,
    /// Draining after a shutdown signal.
    ShuttingDown,
}

/// Shared between the controller and the endpoints.
pub struct Health {
    registry: Registry,
    phase: Mutex<Phase>,
}

impl Health {
    pub fn new(registry: Registry) -> Arc<Self> {
        Arc::new(Health {
            registry,
            phase: Mutex::new(Phase::Starting),
        })
    }

    pub fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase;
    }

    pub fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Health {
    /// Once `streams` watch streams have synced, moves a leader still `Syncing` to `Running`.
    pub async fn running_once_synced(&self, synced: &Synced, streams: usize) {
        synced.all(streams).await;
        if self.phase() == Phase::Syncing {
            self.set(Phase::Running);
            tracing::info!("watch caches synced; reconciling");
        }
    }
}

/// Counts watch streams that finished their initial list (readiness). Store readiness cannot
/// be awaited here: kube's `Store::wait_until_ready` wakes only one of several waiters, and the
/// controller already waits on its own store.
#[derive(Clone)]
pub struct Synced(Arc<watch::Sender<usize>>);

impl Default for Synced {
    fn default() -> Self {
        Synced(Arc::new(watch::Sender::new(0)))
    }
}

impl Synced {
    /// A stream inspector that counts the first `InitDone` of one stream.
    pub fn marker<K>(
        &self,
    ) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) + Send + 'static {
        let (count, mut done) = (self.0.clone(), false);
        move |event| {
            if !done && matches!(event, Ok(watcher::Event::InitDone)) {
                done = true;
                count.send_modify(|n| *n += 1);
            }
        }
    }

    /// Resolves once `streams` streams have finished their initial list.
    pub async fn all(&self, streams: usize) {
        // The sender lives in `self`: waiting cannot fail.
        let _ = self.0.subscribe().wait_for(|n| *n >= streams).await;
    }
}

/// The router (tests call it without a socket).
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &h.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn healthz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    match h.phase() {
        Phase::Failed => (
            StatusCode::SERVICE_UNAVAILABLE,
            "failed: lost the leader Lease or a fatal error\n",
        ),
        _ => (StatusCode::OK, "ok\n"),
    }
}

async fn readyz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    match h.phase() {
        Phase::Running => (StatusCode::OK, "ready: leading, caches synced\n"),
        Phase::Standby => (
            StatusCode::OK,
            "ready: standby, waiting for the leader Lease\n",
        ),
        Phase::Starting => (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting\n"),
        Phase::Syncing => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: leading, caches syncing\n",
        ),
        Phase::Failed => (StatusCode::SERVICE_UNAVAILABLE, "not ready: failed\n"),
        Phase::ShuttingDown => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn status(h: &Arc<Health>, path: &str) -> StatusCode {
        router(h.clone())
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response")
            .status()
    }

    #[tokio::test]
    async fn readiness_follows_the_phase() {
        let h = Health::new(Registry::default());
        assert_eq!(status(&h, "/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
        h.set(Phase::Syncing);
        assert_eq!(status(&h, "/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
        h.set(Phase::Running);
        assert_eq!(status(&h, "/readyz").await, StatusCode::OK);
        h.set(Phase::Standby);
        assert_eq!(status(&h, "/readyz").await, StatusCode::OK);
        assert_eq!(status(&h, "/healthz").await, StatusCode::OK);
        h.set(Phase::Failed);
        assert_eq!(
            status(&h, "/healthz").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn a_leader_is_ready_once_every_stream_has_synced_once() {
        let h = Health::new(Registry::default());
        h.set(Phase::Syncing);
        let synced = Synced::default();
        let (mut a, mut b) = (synced.marker::<()>(), synced.marker::<()>());
        let all = synced.all(2);
        tokio::pin!(all);
        a(&Ok(watcher::Event::InitDone));
        a(&Ok(watcher::Event::InitDone)); // a relist of the same stream counts once
        let not_yet = tokio::time::timeout(std::time::Duration::ZERO, &mut all).await;
        assert!(not_yet.is_err(), "one stream of two synced");
        b(&Ok(watcher::Event::Init));
        b(&Ok(watcher::Event::InitDone));
        all.await;
        h.running_once_synced(&synced, 2).await;
        assert_eq!(status(&h, "/readyz").await, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_served_as_text() {
        let mut registry = Registry::default();
        let m = crate::metrics::Metrics::register(&mut registry);
        m.aws_call("ListSecrets");
        let h = Health::new(registry);
        let resp = router(h)
            .oneshot(
                Request::get("/metrics")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
