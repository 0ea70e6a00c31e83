//! Limits that keep one client from starving the others or exhausting memory: how long a
//! client may take to send its headers, how many connections and reviews are served at once,
//! how large and how long a review may be.
//!
//! Reviews run in two lanes. A real pod is a few KiB: such reviews ("small", a
//! `content-length` up to [`LARGE_BODY_BYTES`]) are shed with a 503 once
//! `max_concurrent_reviews` are in flight. Larger ones (or of unknown length) wait for one of
//! `max_concurrent_large_reviews` places before their body is read, so that a burst of
//! multi-megabyte bodies neither holds more than a few bodies in memory nor delays the small
//! reviews behind it. Every review is answered within `request_timeout`, waiting included.

use crate::router::{ApiError, AppState};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Bodies above this size (or without `content-length`) go through the large lane.
pub const LARGE_BODY_BYTES: u64 = 256 << 10;

/// The server's limits (flags `--header-read-timeout`, `--request-timeout`,
/// `--max-connections`, `--max-concurrent-reviews`, `--max-concurrent-large-reviews`,
/// `--max-body-size`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest a client may take to send a request's headers (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// Longest a review may take, from its headers to the answer, waiting for a place included.
    pub request_timeout: Duration,
    /// Open connections at most; a connection over the cap is closed at once.
    pub max_connections: usize,
    /// Small reviews in flight at most; more are answered 503 at once.
    pub max_concurrent_reviews: usize,
    /// Large reviews in flight at most; more wait (within `request_timeout`).
    pub max_concurrent_large_reviews: usize,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_connections: 512,
            max_concurrent_reviews: 64,
            max_concurrent_large_reviews: 2,
            max_body_bytes: 3 << 20,
        }
    }
}

/// The two lanes' places, shared by the middleware.
#[derive(Clone)]
pub(crate) struct Lanes {
    small: Arc<Semaphore>,
    large: Arc<Semaphore>,
    timeout: Duration,
    state: AppState,
}

impl Lanes {
    pub(crate) fn new(l: &Limits, state: AppState) -> Self {
        Lanes {
            state,
            small: Arc::new(Semaphore::new(l.max_concurrent_reviews.max(1))),
            large: Arc::new(Semaphore::new(l.max_concurrent_large_reviews.max(1))),
            timeout: l.request_timeout,
        }
    }
}

fn is_large(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_none_or(|n| n > LARGE_BODY_BYTES)
}

fn unavailable(message: String) -> Response {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).into_response()
}

/// Middleware of `/mutate`: a place in the request's lane, then the handler, all within the
/// request timeout.
pub(crate) async fn limit(State(lanes): State<Lanes>, req: Request, next: Next) -> Response {
    let timeout = lanes.timeout;
    let state = lanes.state.clone();
    let work = async move {
        let _place = if is_large(&req) {
            match lanes.large.acquire_owned().await {
                Ok(p) => p,
                Err(_) => return unavailable("the webhook is shutting down".into()),
            }
        } else {
            match lanes.small.try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    tracing::warn!("too many reviews in flight: shedding one");
                    lanes.state.metrics().refused("overloaded");
                    return unavailable(
                        "the webhook has too many reviews in flight (--max-concurrent-reviews): retry"
                            .into(),
                    );
                }
            }
        };
        next.run(req).await
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(?timeout, "review timed out");
            state.metrics().refused("timeout");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the review was not answered within the webhook's --request-timeout of {timeout:?}"
                ),
            )
            .into_response()
        }
    }
}
