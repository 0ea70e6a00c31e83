//! The HTTP surface: `POST /mutate` (AdmissionReview v1 of pods), `POST /validate`
//! (AdmissionReview v1 of DsoSecrets: the rules a schema cannot say, such as a template's syntax),
//! `GET /healthz`, `GET /readyz`, `GET /metrics`. Every error, including a body that is not JSON, is answered with a JSON
//! body rather than axum's plain-text default.

use crate::config::InjectConfig;
use crate::error::Error;
use crate::limits::Limits;
use crate::metrics::{Metrics, Outcome};
use crate::patch::{Catalog, Mutation, mutate};
use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dso_api::DsoSecretSpec;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Arc<dyn Catalog + Send + Sync>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    config: InjectConfig,
    metrics: Metrics,
}

impl AppState {
    /// `ready` answers /readyz (the watch caches are synced).
    pub fn new(
        catalog: Arc<dyn Catalog + Send + Sync>,
        ready: Arc<dyn Fn() -> bool + Send + Sync>,
        config: InjectConfig,
    ) -> Self {
        AppState {
            inner: Arc::new(Inner {
                catalog,
                ready,
                config,
                metrics: Metrics::default(),
            }),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}

/// An error answered as `{"code": <status>, "message": ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: String) -> Self {
        ApiError { status, message }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"code": self.status.as_u16(), "message": self.message});
        (self.status, Json(body)).into_response()
    }
}

/// A JSON body whose rejection is an [`ApiError`]. Bodies above
/// [`LARGE_BODY_BYTES`](crate::limits::LARGE_BODY_BYTES) are parsed on the blocking pool, so
/// that parsing megabytes does not hold up the runtime's workers serving other reviews.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send + 'static,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Expected request with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is larger than the webhook's --max-body-size".into(),
                ));
            }
            Err(rejection) => {
                return Err(ApiError::new(rejection.status(), rejection.body_text()));
            }
        };
        let large = bytes_len_is_large(&bytes);
        let parse = move || match Json::<T>::from_bytes(&bytes) {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(ApiError::new(rejection.status(), rejection.body_text())),
        };
        if large {
            tokio::task::spawn_blocking(parse).await.map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("parsing the body failed: {e}"),
                )
            })?
        } else {
            parse()
        }
    }
}

fn bytes_len_is_large(b: &axum::body::Bytes) -> bool {
    u64::try_from(b.len()).is_ok_and(|n| n > crate::limits::LARGE_BODY_BYTES)
}

/// All routes, TLS-agnostic (tests call it with `oneshot`), with the default [`Limits`].
pub fn router(state: AppState) -> Router {
    router_with(state, &Limits::default())
}

/// All routes; `/mutate` bounded by `limits` (body size, lanes, request timeout).
pub fn router_with(state: AppState, limits: &Limits) -> Router {
    admin_router(state.clone()).merge(
        Router::new()
            .route("/mutate", post(mutate_handler))
            .route("/validate", post(validate_handler))
            .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes))
            .layer(axum::middleware::from_fn_with_state(
                crate::limits::Lanes::new(limits, state.clone()),
                crate::limits::limit,
            ))
            .with_state(state),
    )
}

/// Only /healthz, /readyz and /metrics (for the optional plain-HTTP admin address).
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "no such path: the webhook serves /mutate, /validate, /healthz, /readyz and /metrics"
                    .into(),
            }
        })
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    let ready = (state.inner.ready)();
    state.inner.metrics.set_ready(ready);
    if ready {
        Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "watch caches of DsoSecrets and ServiceAccounts are not synced (not yet, or a watch has been failing for longer than --cache-stale-after)".into(),
        }
        .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.inner.metrics.encode(),
    )
        .into_response()
}

/// The request of a review, or the `invalid` answer (counted) when the review carries none.
fn request<T: kube::core::Resource>(
    state: &AppState,
    review: AdmissionReview<T>,
    started: Instant,
) -> Result<AdmissionRequest<T>, Box<Response>> {
    review
        .try_into()
        .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| {
            let e = Error::InvalidReview(e.to_string());
            tracing::warn!(error = %e, "not an AdmissionReview request");
            state
                .inner
                .metrics
                .admission(Outcome::Invalid, e.metric_label(), started);
            Box::new(answer(&AdmissionResponse::invalid(e)))
        })
}

async fn mutate_handler(
    State(state): State<AppState>,
    JsonBody(review): JsonBody<AdmissionReview<Pod>>,
) -> Response {
    let started = Instant::now();
    let req = match request(&state, review, started) {
        Ok(req) => req,
        Err(invalid) => return *invalid,
    };
    let namespace = req
        .namespace
        .clone()
        .or_else(|| {
            req.object
                .as_ref()
                .and_then(|p| p.metadata.namespace.clone())
        })
        .unwrap_or_default();
    let pod_name = req
        .object
        .as_ref()
        .and_then(|p| {
            p.metadata
                .name
                .clone()
                .or_else(|| p.metadata.generate_name.clone())
        })
        .unwrap_or_default();
    let span = tracing::info_span!(
        "admission",
        uid = %req.uid,
        namespace = %namespace,
        pod = %pod_name,
        dry_run = req.dry_run,
        outcome = tracing::field::Empty,
    );
    let (response, outcome, reason) = span.in_scope(|| admit(&state, &req, &namespace));
    span.record("outcome", outcome.as_str());
    let body = answer(&response);
    state.inner.metrics.admission(outcome, reason, started);
    body
}

/// `POST /validate`: a DsoSecret CREATE or UPDATE judged by [`dso_api::validate::validate_spec`],
/// the rules the CRD's schema cannot express (a template's syntax and sources, an ARN's region),
/// and by the secret allowlist of its namespace (`--secret-allowlist`). This check at apply is
/// for users' sake: the configuration fails open, so pods (`/mutate`) and the operator check again.
/// The schema stays the authority on shape: a spec this webhook cannot read (a newer CRD) is
/// allowed with a warning, and pods mounting it are still checked when they are created.
async fn validate_handler(
    State(state): State<AppState>,
    JsonBody(review): JsonBody<AdmissionReview<DynamicObject>>,
) -> Response {
    let started = Instant::now();
    let req = match request(&state, review, started) {
        Ok(req) => req,
        Err(invalid) => return *invalid,
    };
    let name = req
        .object
        .as_ref()
        .and_then(|o| o.metadata.name.clone())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "validation",
        uid = %req.uid,
        namespace = %req.namespace.as_deref().unwrap_or_default(),
        dsosecret = %name,
        outcome = tracing::field::Empty,
    );
    let (response, outcome, reason) =
        span.in_scope(|| judge(&req, &name, &state.inner.config.allowlist));
    span.record("outcome", outcome.as_str());
    state.inner.metrics.admission(outcome, reason, started);
    answer(&response)
}

fn judge(
    req: &AdmissionRequest<DynamicObject>,
    name: &str,
    allowlist: &dso_api::allowlist::Allowlist,
) -> (AdmissionResponse, Outcome, &'static str) {
    let res = AdmissionResponse::from(req);
    let is_dso_secret = req.kind.group == "dso.dev" && req.kind.kind == "DsoSecret";
    let (true, Operation::Create | Operation::Update, Some(obj)) =
        (is_dso_secret, &req.operation, req.object.as_ref())
    else {
        return (res, Outcome::Skipped, "none");
    };
    let spec = obj.data.get("spec").cloned().unwrap_or_default();
    let spec: DsoSecretSpec = match serde_json::from_value(spec) {
        Ok(spec) => spec,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the spec: left to the schema");
            let mut res = res;
            res.warnings = Some(vec![format!(
                "the DSO webhook cannot read this spec ({e}); it checks it again when a pod mounts it"
            )]);
            return (res, Outcome::Skipped, "none");
        }
    };
    let namespace = req
        .namespace
        .clone()
        .or_else(|| obj.metadata.namespace.clone())
        .unwrap_or_default();
    let joined = |errors: Vec<dso_api::validate::FieldError>| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    let verdict = dso_api::validate::validate_spec(&spec)
        .map_err(|errors| Error::InvalidDsoSecret {
            name: name.to_string(),
            problems: joined(errors),
        })
        .and_then(|()| {
            allowlist
                .check_spec(&namespace, &spec)
                .map_err(|errors| Error::NotAllowed {
                    namespace: namespace.clone(),
                    name: name.to_string(),
                    problems: joined(errors),
                })
        });
    match verdict {
        Ok(()) => (res, Outcome::Valid, "none"),
        Err(e) => {
            tracing::info!(reason = e.metric_label(), message = %e, "denied");
            (res.deny(e.to_string()), Outcome::Denied, e.metric_label())
        }
    }
}

/// The AdmissionReview answer. kube's `AdmissionReview` writes the patch, a Go `[]byte`, as a
/// JSON array of numbers (up to four bytes per byte); this writes the base64 string Go itself
/// writes and the apiserver reads, under a third of the size. The fields are kube's otherwise.
fn answer(res: &AdmissionResponse) -> Response {
    use base64::Engine;

    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Review<'a> {
        api_version: &'a str,
        kind: &'a str,
        response: Answer<'a>,
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer<'a> {
        uid: &'a str,
        allowed: bool,
        status: &'a kube::core::Status,
        #[serde(skip_serializing_if = "Option::is_none")]
        patch: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        patch_type: Option<&'static str>,
        #[serde(skip_serializing_if = "std::collections::HashMap::is_empty")]
        audit_annotations: &'a std::collections::HashMap<String, String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        warnings: Option<&'a Vec<String>>,
    }
    let patch = res
        .patch
        .as_ref()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(p));
    Json(Review {
        api_version: &res.types.api_version,
        kind: &res.types.kind,
        response: Answer {
            uid: &res.uid,
            allowed: res.allowed,
            status: &res.result,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            audit_annotations: &res.audit_annotations,
            warnings: res.warnings.as_ref(),
        },
    })
    .into_response()
}

/// Decides one admission. `dryRun` needs no special case: the webhook has no side effects.
fn admit(
    state: &AppState,
    req: &AdmissionRequest<Pod>,
    namespace: &str,
) -> (AdmissionResponse, Outcome, &'static str) {
    let res = AdmissionResponse::from(req);
    let is_pod = req.kind.group.is_empty() && req.kind.kind == "Pod";
    let (true, Operation::Create, Some(pod)) = (is_pod, &req.operation, req.object.as_ref()) else {
        return (res, Outcome::Skipped, "none");
    };
    if namespace.is_empty() {
        let e = Error::NoNamespace;
        tracing::info!(reason = e.metric_label(), message = %e, "denied");
        return (res.deny(e.to_string()), Outcome::Denied, e.metric_label());
    }
    match mutate(
        pod,
        namespace,
        state.inner.catalog.as_ref(),
        &state.inner.config,
    ) {
        Ok(Mutation::NotRequested) => (res, Outcome::Skipped, "none"),
        Ok(Mutation::AlreadyInjected) => {
            tracing::info!("already injected: no change");
            (res, Outcome::Unchanged, "none")
        }
        Ok(Mutation::Inject(inj)) => {
            let secrets = inj.secrets.join(",");
            let containers = inj.containers.join(",");
            match res.clone().with_patch(inj.patch) {
                Ok(res) => {
                    tracing::info!(%secrets, %containers, identity = %inj.identity, "injected");
                    (res, Outcome::Injected, "none")
                }
                Err(e) => {
                    let e = Error::from(e);
                    tracing::error!(error = %e, "cannot serialize the patch");
                    (res.deny(e.to_string()), Outcome::Denied, e.metric_label())
                }
            }
        }
        Err(e) => {
            tracing::info!(reason = e.metric_label(), message = %e, "denied");
            (res.deny(e.to_string()), Outcome::Denied, e.metric_label())
        }
    }
}
