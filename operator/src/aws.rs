//! AWS Secrets Manager, metadata only: `DescribeSecret` and `ListSecrets`. The operator never
//! calls `GetSecretValue`, so its IAM policy needs neither the value nor the KMS key.
//!
//! Every SDK failure goes through [`classify`], which adapts it to [`dso_api::aws_error`]: that
//! decides what is transient (retried with backoff, never cached) and what is permanent
//! (recorded in status and cached for the refresh interval). Its text never names the
//! operator's identity: ARNs and principals are redacted before it reaches status or events.

use crate::domain::{ProblemKind, SecretMeta};
use crate::metrics::Metrics;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use k8s_openapi::jiff::Timestamp;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A classified AWS failure, with a message a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AwsProblem {
    pub kind: ProblemKind,
    pub message: String,
}

impl AwsProblem {
    /// True for failures worth retrying with backoff (never cached).
    pub fn is_transient(&self) -> bool {
        self.kind == ProblemKind::Transient
    }
}

/// Adapts an SDK error to [`dso_api::aws_error`], the classifier `dso-init` uses too, and
/// words it for status and events. Retryable kinds are [`ProblemKind::Transient`]; credentials
/// the operator cannot use count as access denied (both need the operator's identity fixed,
/// not the secret), with their own hint.
pub fn classify<E>(
    operation: &str,
    secret: &str,
    err: &SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> AwsProblem
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    use dso_api::aws_error::{self, AwsErrorKind};
    let (kind, detail) = match err {
        SdkError::TimeoutError(_) => (AwsErrorKind::Timeout, "timed out".to_string()),
        SdkError::ResponseError(_) => (
            AwsErrorKind::BadResponse,
            "unreadable response from AWS".to_string(),
        ),
        SdkError::DispatchFailure(d) => {
            let chain = error_chain(err);
            let kind = aws_error::classify_unanswered(d.is_timeout(), d.is_io(), &chain);
            (kind, format!("request not sent: {chain}"))
        }
        SdkError::ServiceError(s) => {
            let kind = aws_error::classify(err.code(), Some(s.raw().status().as_u16()));
            let code = err.code().unwrap_or("Unknown");
            let msg = err.message().unwrap_or("");
            (kind, format!("{code}: {msg}"))
        }
        // Construction failures: no credentials, no region, bad endpoint.
        _ => (AwsErrorKind::Other, error_chain(err)),
    };
    let (problem, hint) = match kind {
        AwsErrorKind::ResourceNotFound => {
            (ProblemKind::NotFound, "; check the secretId and the region")
        }
        AwsErrorKind::AccessDenied => (
            ProblemKind::AccessDenied,
            "; grant the operator's role secretsmanager:DescribeSecret and secretsmanager:ListSecrets",
        ),
        AwsErrorKind::Credentials => (
            ProblemKind::AccessDenied,
            "; AWS does not accept the operator's credentials: check its IAM role (IRSA or Pod Identity) and the node's clock",
        ),
        AwsErrorKind::Tls => (
            ProblemKind::Permanent,
            "; the endpoint's TLS certificate is not trusted: check AWS_ENDPOINT_URL and the CA that signed its certificate",
        ),
        k if k.is_retryable() => (ProblemKind::Transient, ""),
        _ => (ProblemKind::Permanent, ""),
    };
    // Status and events are read by the DsoSecret's namespace: AWS's text may name the
    // operator's role ("User: arn:aws:sts::…:assumed-role/dso-operator/… is not authorized").
    let detail = aws_error::redact_principals(&detail);
    AwsProblem {
        kind: problem,
        message: format!("{operation} {secret}: {detail}{hint}"),
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

fn timestamp(t: Option<&aws_smithy_types::DateTime>) -> Option<Timestamp> {
    t.and_then(|t| Timestamp::new(t.secs(), t.subsec_nanos() as i32).ok())
}

fn stages(map: Option<&HashMap<String, Vec<String>>>) -> BTreeMap<String, Vec<String>> {
    map.map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// Secrets Manager clients (one per region, built lazily from one base configuration, dropped
/// when unused for a while: [`Aws::forget_idle`]).
pub struct Aws {
    base: aws_config::SdkConfig,
    /// Region → its client and when it was last used.
    clients: Mutex<HashMap<String, (Client, Instant)>>,
    metrics: Metrics,
}

impl Aws {
    /// Wraps a loaded AWS configuration (default chain; honours `AWS_ENDPOINT_URL`, `AWS_REGION`).
    pub fn new(base: aws_config::SdkConfig, metrics: Metrics) -> Self {
        Aws {
            base,
            clients: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The region used when neither the secret ARN nor the DsoSecret names one.
    pub fn default_region(&self) -> String {
        self.base
            .region()
            .map(|r| r.to_string())
            .unwrap_or_default()
    }

    fn client(&self, region: &str) -> Client {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let (client, used) = clients.entry(region.to_string()).or_insert_with(|| {
            let mut conf = aws_sdk_secretsmanager::config::Builder::from(&self.base);
            if !region.is_empty() {
                conf = conf.region(aws_config::Region::new(region.to_string()));
            }
            (Client::from_conf(conf.build()), Instant::now())
        });
        *used = Instant::now();
        client.clone()
    }

    /// Drops the clients last used `idle` or longer before `now` (a region whose secrets no
    /// DsoSecret names any more); returns how many. A later call builds one again.
    pub fn forget_idle(&self, now: Instant, idle: Duration) -> usize {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let before = clients.len();
        clients.retain(|_, (_, used)| now.saturating_duration_since(*used) < idle);
        before - clients.len()
    }

    /// The regions it holds a client for, sorted.
    pub fn regions(&self) -> Vec<String> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let mut regions: Vec<String> = clients.keys().cloned().collect();
        regions.sort();
        regions
    }

    /// `DescribeSecret`: the versions and staging labels of one secret.
    pub async fn describe(&self, region: &str, secret_id: &str) -> Result<SecretMeta, AwsProblem> {
        self.metrics.aws_call("DescribeSecret");
        let out = self
            .client(region)
            .describe_secret()
            .secret_id(secret_id)
            .send()
            .await
            .map_err(|e| classify("DescribeSecret", secret_id, &e))?;
        let meta = SecretMeta {
            arn: out.arn().map(str::to_string),
            name: out.name().map(str::to_string),
            versions: stages(out.version_ids_to_stages()),
            last_changed: timestamp(out.last_changed_date()),
            deleted: out.deleted_date().is_some(),
        };
        if meta.deleted {
            return Err(AwsProblem {
                kind: ProblemKind::NotFound,
                message: format!(
                    "DescribeSecret {secret_id}: the secret is scheduled for deletion; restore it or point the DsoSecret elsewhere"
                ),
            });
        }
        Ok(meta)
    }

    /// `ListSecrets`, every page (100 secrets a call): the metadata of all secrets of a region.
    pub async fn list_all(&self, region: &str) -> Result<Vec<SecretMeta>, AwsProblem> {
        let client = self.client(region);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            self.metrics.aws_call("ListSecrets");
            let page = client
                .list_secrets()
                .max_results(100)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| classify("ListSecrets", region, &e))?;
            for s in page.secret_list() {
                if s.deleted_date().is_some() {
                    continue;
                }
                out.push(SecretMeta {
                    arn: s.arn().map(str::to_string),
                    name: s.name().map(str::to_string),
                    versions: stages(s.secret_versions_to_stages()),
                    last_changed: timestamp(s.last_changed_date()),
                    deleted: false,
                });
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }
}
