//! Fetching secret values with the pod's own identity.
//!
//! Credentials come from aws-config's default chain: IRSA web identity
//! (`AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`), EKS Pod Identity, environment keys, the
//! instance role. With IRSA and the pod's namespace and name known, the web identity exchange
//! uses a role session name that identifies the pod
//! ([`dso_api::contract::role_session_name`]), so CloudTrail shows which pod read what. `AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_SECRETS_MANAGER` / `_STS` are honoured
//! (VPC endpoints, local emulators). One client per region; every distinct
//! (region, secret, version) is fetched once, concurrently.
//!
//! Retries are ours, not the SDK's (it is configured with retries off), so that what is retried
//! is decided by [`dso_api::aws_error`], the classifier the operator uses too ([`classify`] only
//! adapts the SDK's error to it): throttling, 5xx, timeouts and connection failures are retried
//! with [`dso_api::backoff`], up to `max_attempts` and never past the overall deadline;
//! everything else fails at once.

use crate::error::AwsFailure;
use crate::plan::{FetchKey, VersionSel};
use crate::value::SecretValue;
use aws_config::BehaviorVersion;
use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::default_provider::region::DefaultRegionChain;
use aws_config::environment::credentials::EnvironmentVariableCredentialsProvider;
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::provider_config::ProviderConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::web_identity_token::{StaticConfiguration, WebIdentityTokenCredentialsProvider};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::Region;
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::{ConnectorError, SdkError};
use dso_api::aws_error::{self, AwsErrorKind};
use futures::{StreamExt, TryStreamExt};
use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;
use tokio::time::Instant;

/// Timeouts, retries and concurrency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The whole fetch ends by then, whatever happens.
    pub deadline: Duration,
    /// One GetSecretValue call (credentials included).
    pub attempt_timeout: Duration,
    /// Establishing a connection.
    pub connect_timeout: Duration,
    /// Attempts per secret (1 = no retry).
    pub max_attempts: u32,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// First backoff; doubles per attempt, with jitter, up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// The role session name of the IRSA web identity exchange
    /// ([`dso_api::contract::role_session_name`]); `None`: the SDK's default.
    pub role_session_name: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            deadline: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            max_attempts: 6,
            concurrency: 8,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            role_session_name: None,
        }
    }
}

/// A fetched version.
#[derive(Debug)]
pub struct Fetched {
    pub version_id: String,
    /// `None` when the version holds neither a SecretString nor a SecretBinary.
    pub value: Option<SecretValue>,
}

impl fmt::Display for VersionSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionSel::Id(id) => write!(f, "versionId {id}"),
            VersionSel::Stage(s) => write!(f, "versionStage {s}"),
        }
    }
}

/// Secrets Manager clients built from the environment, one per region.
pub struct Fetcher {
    default: Client,
    default_region: Option<String>,
    by_region: BTreeMap<String, Client>,
    settings: Settings,
}

impl Fetcher {
    /// Loads the default AWS configuration. `regions` are the regions the plan names; when
    /// the environment names none and the plan names one for every entry, the first is used for
    /// the credential provider, so no region lookup reaches the instance metadata service.
    pub async fn from_environment(settings: Settings, regions: &[Option<String>]) -> Fetcher {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(settings.connect_timeout)
                    .build(),
            );
        // The same default chain aws-config builds, but with the SDK's retries off for STS too:
        // retries are ours, so the deadline and the attempt count mean what they say.
        let provider_config = ProviderConfig::default()
            .with_behavior_version(Some(BehaviorVersion::latest()))
            .with_retry_config(RetryConfig::disabled());
        let mut chain = DefaultCredentialsChain::builder().configure(provider_config.clone());
        let env_region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .any(|v| std::env::var(v).is_ok_and(|r| !r.is_empty()));
        let mut region = None;
        if !env_region
            && !regions.is_empty()
            && regions.iter().all(Option::is_some)
            && let Some(Some(first)) = regions.first()
        {
            region = Some(Region::new(first.clone()));
        }
        let web_identity = web_identity_from_env(settings.role_session_name.as_deref());
        if web_identity.is_some() && region.is_none() {
            // Resolved once here, for both our provider and the chain.
            region = DefaultRegionChain::builder().build().region().await;
        }
        if let Some(r) = &region {
            loader = loader.region(r.clone());
            chain = chain.region(r.clone());
        }
        let chain = chain.build().await;
        let credentials = match web_identity {
            // IRSA with a session name that identifies the pod. Same order as the default
            // chain: static keys from the environment first, then the web identity; what
            // follows (profile files, EKS Pod Identity, the instance role) stays the chain's.
            Some(static_configuration) => {
                let web = WebIdentityTokenCredentialsProvider::builder()
                    .configure(&provider_config.with_region(region))
                    .static_configuration(static_configuration)
                    .build();
                SharedCredentialsProvider::new(
                    CredentialsProviderChain::first_try(
                        "Environment",
                        EnvironmentVariableCredentialsProvider::new(),
                    )
                    .or_else("WebIdentityToken", web)
                    .or_else("DefaultChain", chain),
                )
            }
            None => SharedCredentialsProvider::new(chain),
        };
        let sdk = loader.credentials_provider(credentials).load().await;
        let default_region = sdk.region().map(|r| r.to_string());
        let mut by_region = BTreeMap::new();
        for r in regions.iter().flatten() {
            by_region.entry(r.clone()).or_insert_with(|| {
                let conf = aws_sdk_secretsmanager::config::Builder::from(&sdk)
                    .region(Region::new(r.clone()))
                    .build();
                Client::from_conf(conf)
            });
        }
        Fetcher {
            default: Client::new(&sdk),
            default_region,
            by_region,
            settings,
        }
    }

    /// The region used for entries that name none.
    pub fn default_region(&self) -> Option<&str> {
        self.default_region.as_deref()
    }

    fn client(&self, region: Option<&str>) -> &Client {
        region
            .and_then(|r| self.by_region.get(r))
            .unwrap_or(&self.default)
    }

    /// Fetches every key, at most `concurrency` at once; the first failure ends the others.
    pub async fn fetch_all(
        &self,
        keys: Vec<FetchKey>,
        deadline: Instant,
    ) -> Result<BTreeMap<FetchKey, Fetched>, (FetchKey, AwsFailure)> {
        futures::stream::iter(keys)
            .map(|key| async move {
                match self.fetch_one(&key, deadline).await {
                    Ok(v) => Ok((key, v)),
                    Err(e) => Err((key, e)),
                }
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .try_collect()
            .await
    }

    async fn fetch_one(&self, key: &FetchKey, deadline: Instant) -> Result<Fetched, AwsFailure> {
        let client = self.client(key.region.as_deref());
        retry(&self.settings, deadline, || async {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let limit = self.settings.attempt_timeout.min(remaining);
            match tokio::time::timeout(limit, get(client, key)).await {
                Ok(result) => result,
                Err(_) => Err(AwsFailure::new(
                    AwsErrorKind::Timeout,
                    format!("no answer within {limit:?} ({})", key.version),
                )),
            }
        })
        .await
    }
}

/// The IRSA configuration in the environment (what the webhook or the EKS identity webhook
/// set: `AWS_ROLE_ARN` and `AWS_WEB_IDENTITY_TOKEN_FILE`), with `session_name`; `None` without
/// either, or without a session name (the default chain then does as it always does).
fn web_identity_from_env(session_name: Option<&str>) -> Option<StaticConfiguration> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    Some(StaticConfiguration {
        web_identity_token_file: var("AWS_WEB_IDENTITY_TOKEN_FILE")?.into(),
        role_arn: var("AWS_ROLE_ARN")?,
        session_name: session_name?.to_string(),
    })
}

/// Calls `attempt` until it succeeds, fails permanently, runs out of attempts or of time.
pub async fn retry<T, F, Fut>(
    settings: &Settings,
    deadline: Instant,
    mut attempt: F,
) -> Result<T, AwsFailure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AwsFailure>>,
{
    let mut n = 0;
    loop {
        n += 1;
        let mut failure = match attempt().await {
            Ok(v) => return Ok(v),
            Err(f) => f,
        };
        failure.attempts = n;
        if !failure.kind.is_retryable() || n >= settings.max_attempts {
            return Err(failure);
        }
        let pause = dso_api::backoff::delay(
            n,
            settings.base_backoff,
            settings.max_backoff,
            fastrand::u64(..),
        );
        if Instant::now() + pause >= deadline {
            failure.detail = format!(
                "{}; gave up at the {:?} deadline",
                failure.detail, settings.deadline
            );
            return Err(failure);
        }
        tokio::time::sleep(pause).await;
    }
}

async fn get(client: &Client, key: &FetchKey) -> Result<Fetched, AwsFailure> {
    let request = client.get_secret_value().secret_id(&key.secret_id);
    let request = match &key.version {
        VersionSel::Id(id) => request.version_id(id),
        VersionSel::Stage(stage) => request.version_stage(stage),
    };
    let mut out = request.send().await.map_err(|e| {
        let mut f = classify(&e);
        f.detail = format!("{} ({})", f.detail, key.version);
        f
    })?;
    let version_id = out.version_id.take().unwrap_or_default();
    let value = match (out.secret_string.take(), out.secret_binary.take()) {
        (Some(s), _) => Some(SecretValue::Text(s)),
        (None, Some(b)) => Some(SecretValue::Binary(b.into_inner())),
        (None, None) => None,
    };
    Ok(Fetched { version_id, value })
}

/// Adapts an SDK error to [`dso_api::aws_error`] (AWS's error code and HTTP status; what a
/// request without an answer ran into) and words a message a user can act on. Messages come
/// from AWS error metadata and connection errors, never from a response body.
pub fn classify(err: &SdkError<GetSecretValueError, HttpResponse>) -> AwsFailure {
    if let Some(failure) = credentials_failure(err) {
        return failure;
    }
    match err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("Unknown");
            let status = service.raw().status().as_u16();
            let message = service
                .err()
                .message()
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status} without a message"));
            let kind = aws_error::classify(service.err().code(), Some(status));
            let detail = match kind {
                AwsErrorKind::Other | AwsErrorKind::Credentials => {
                    format!("{code}: {message} (HTTP {status})")
                }
                _ => message.to_string(),
            };
            AwsFailure::new(kind, detail)
        }
        SdkError::TimeoutError(_) => AwsFailure::new(AwsErrorKind::Timeout, "the call timed out"),
        SdkError::DispatchFailure(d) => {
            let context = chain(err);
            let kind = aws_error::classify_unanswered(d.is_timeout(), d.is_io(), &context);
            let detail = match kind {
                AwsErrorKind::Tls => {
                    format!("the endpoint's TLS certificate is not trusted: {context}{TLS_HINT}")
                }
                AwsErrorKind::Unreachable => {
                    format!("cannot reach the Secrets Manager endpoint: {context}")
                }
                _ => context,
            };
            AwsFailure::new(kind, detail)
        }
        SdkError::ResponseError(r) => AwsFailure::new(
            AwsErrorKind::BadResponse,
            format!(
                "the answer could not be read (HTTP {})",
                r.raw().status().as_u16()
            ),
        ),
        SdkError::ConstructionFailure(_) => AwsFailure::new(
            AwsErrorKind::Other,
            format!("the request could not be built: {}", chain(err)),
        ),
        _ => AwsFailure::new(AwsErrorKind::Other, chain(err)),
    }
}

const TLS_HINT: &str = " (the image needs a CA bundle at /etc/ssl/certs/ca-certificates.crt or \
     SSL_CERT_FILE naming one; with a VPC endpoint or a proxy, check AWS_ENDPOINT_URL and its \
     certificate)";

/// A failure to get credentials (e.g. STS AssumeRoleWithWebIdentity), found in the error chain.
fn credentials_failure(err: &(dyn StdError + 'static)) -> Option<AwsFailure> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(cred) = e.downcast_ref::<CredentialsError>() {
            let context = chain(cred);
            let connector = connector_error(cred);
            let timed_out = matches!(cred, CredentialsError::ProviderTimedOut(_))
                || connector.is_some_and(ConnectorError::is_timeout);
            let io = connector.is_some_and(ConnectorError::is_io);
            // A provider that answered (or found nothing to ask) refused: a credentials error.
            let kind = match aws_error::classify_unanswered(timed_out, io, &context) {
                AwsErrorKind::Other => AwsErrorKind::Credentials,
                kind => kind,
            };
            let hint = if kind == AwsErrorKind::Tls {
                TLS_HINT
            } else if matches!(cred, CredentialsError::CredentialsNotLoaded(_)) {
                " (no credential source found: give the pod's ServiceAccount an IAM role \
                 (IRSA, eks.amazonaws.com/role-arn) or an EKS Pod Identity association)"
            } else {
                ""
            };
            return Some(AwsFailure::new(
                kind,
                format!("could not get AWS credentials: {context}{hint}"),
            ));
        }
        cur = e.source();
    }
    None
}

/// The messages of an error and its sources, joined by ": " (repeats left out).
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        let msg = e.to_string();
        if !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        cur = e.source();
    }
    parts.join(": ")
}

fn connector_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a ConnectorError> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<ConnectorError>() {
            return Some(c);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_secretsmanager::error::ErrorMetadata;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn service_error(code: &str, status: u16) -> SdkError<GetSecretValueError, HttpResponse> {
        let err = GetSecretValueError::generic(
            ErrorMetadata::builder()
                .code(code)
                .message("AWS says no")
                .build(),
        );
        let raw = HttpResponse::new(
            StatusCode::try_from(status).expect("status"),
            SdkBody::empty(),
        );
        SdkError::service_error(err, raw)
    }

    /// The table itself is `dso_api::aws_error`'s; this checks the code and the status reach it.
    #[test]
    fn the_code_and_status_of_an_aws_answer_decide_its_kind() {
        let cases = [
            (
                "ResourceNotFoundException",
                400,
                AwsErrorKind::ResourceNotFound,
            ),
            ("ExpiredTokenException", 400, AwsErrorKind::Credentials),
            ("Whatever", 429, AwsErrorKind::Throttling),
            ("Whatever", 503, AwsErrorKind::ServiceUnavailable),
            ("Whatever", 400, AwsErrorKind::Other),
        ];
        for (code, status, kind) in cases {
            let f = classify(&service_error(code, status));
            assert_eq!(f.kind, kind, "{code} {status}");
        }
    }

    #[test]
    fn an_unclassified_answer_names_the_aws_code_and_status() {
        let f = classify(&service_error("Whatever", 400));
        assert_eq!(f.detail, "Whatever: AWS says no (HTTP 400)");
    }

    #[test]
    fn a_credentials_failure_deep_in_the_chain_is_reported_as_such() {
        let cred = CredentialsError::not_loaded("no providers in chain provided credentials");
        let err: SdkError<GetSecretValueError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::other(Box::new(cred), None));
        let f = classify(&err);
        assert_eq!(f.kind, AwsErrorKind::Credentials);
        assert!(f.detail.contains("IRSA"), "{}", f.detail);
        let timed_out = CredentialsError::provider_timed_out(Duration::from_secs(5));
        let err: SdkError<GetSecretValueError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::other(Box::new(timed_out), None));
        assert_eq!(classify(&err).kind, AwsErrorKind::Timeout);
    }

    #[test]
    fn a_refused_connection_is_unreachable_and_transient() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err: SdkError<GetSecretValueError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io(Box::new(io)));
        let f = classify(&err);
        assert_eq!(f.kind, AwsErrorKind::Unreachable);
        assert!(f.detail.contains("refused"), "{}", f.detail);
    }

    #[test]
    fn an_untrusted_certificate_is_a_tls_error_not_worth_retrying() {
        let io = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        let err: SdkError<GetSecretValueError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io(Box::new(io)));
        let f = classify(&err);
        assert_eq!(f.kind, AwsErrorKind::Tls);
        assert!(!f.kind.is_retryable());
        assert!(f.detail.contains("CA"), "{}", f.detail);
    }

    fn fast() -> Settings {
        Settings {
            max_attempts: 4,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            ..Settings::default()
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let out = retry(&fast(), deadline, || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(AwsFailure::new(AwsErrorKind::Throttling, "slow down"))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(out, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried() {
        let calls = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let out: Result<(), _> = retry(&fast(), deadline, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(AwsFailure::new(AwsErrorKind::AccessDenied, "no"))
        })
        .await;
        assert_eq!(out.expect_err("denied").attempts, 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn retries_stop_at_the_attempt_limit_and_say_how_many_were_made() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let out: Result<(), _> = retry(&fast(), deadline, || async {
            Err(AwsFailure::new(AwsErrorKind::ServiceUnavailable, "503"))
        })
        .await;
        let f = out.expect_err("exhausted");
        assert_eq!(f.attempts, 4);
        assert!(f.to_string().contains("after 4 attempts"), "{f}");
    }

    #[tokio::test]
    async fn retries_stop_before_the_deadline() {
        let settings = Settings {
            max_attempts: 100,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(50),
            deadline: Duration::from_millis(200),
            ..Settings::default()
        };
        let start = Instant::now();
        let out: Result<(), _> = retry(&settings, start + settings.deadline, || async {
            Err(AwsFailure::new(AwsErrorKind::Unreachable, "refused"))
        })
        .await;
        assert!(start.elapsed() < Duration::from_millis(300));
        assert!(out.expect_err("deadline").detail.contains("deadline"));
    }
}
