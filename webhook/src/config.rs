//! Configuration: the command line ([`Args`], every flag with an environment fallback), checked
//! into the [`InjectConfig`] the patch builder reads (defined with the builder, which does not
//! depend on this module).

use crate::error::Error;
pub use crate::limits::Limits;
use crate::patch::CaBundle;
pub use crate::patch::InjectConfig;
pub use crate::runtime_tls::RuntimeTls;
use dso_api::allowlist::Allowlist;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `dso-webhook`: injects the `dso-init` container and a memory-backed volume into pods
/// annotated `dso.dev/inject: "true"`.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "dso-webhook", version, about)]
pub struct Args {
    /// Address of the HTTPS server (/mutate, /healthz, /readyz, /metrics).
    #[arg(long, env = "DSO_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Optional plain-HTTP address serving only /healthz, /readyz and /metrics (for probes and
    /// Prometheus without TLS). Unset: those paths are served on the HTTPS address only.
    #[arg(long, env = "DSO_WEBHOOK_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// PEM certificate chain of the HTTPS server (re-read when it changes).
    #[arg(
        long,
        env = "DSO_WEBHOOK_TLS_CERT",
        default_value = "/etc/dso/tls/tls.crt"
    )]
    pub tls_cert: PathBuf,

    /// PEM private key of the HTTPS server (re-read when it changes).
    #[arg(
        long,
        env = "DSO_WEBHOOK_TLS_KEY",
        default_value = "/etc/dso/tls/tls.key"
    )]
    pub tls_key: PathBuf,

    /// How often the certificate and key files are checked for changes, such as 10s.
    #[arg(long, env = "DSO_WEBHOOK_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,

    /// Where the serving certificate comes from: `files` (--tls-cert and --tls-key, re-read
    /// every --tls-reload-interval) or `runtime` (the replicas elect a leader on --leader-lease
    /// that issues a CA and a certificate into --tls-secret, renews them and keeps the caBundle
    /// of --tls-webhook-configuration; every replica serves the Secret's pair).
    #[arg(long, env = "DSO_WEBHOOK_TLS_MODE", value_enum, default_value_t = TlsMode::Files)]
    pub tls_mode: TlsMode,

    /// Runtime mode: the Secret holding the CA bundle and the serving pair. It must exist (the
    /// chart creates it empty): the webhook only updates it.
    #[arg(long, env = "DSO_WEBHOOK_TLS_SECRET")]
    pub tls_secret: Option<String>,

    /// Runtime mode: names of the serving certificate, DNS names or IP addresses (repeat the
    /// flag or separate with commas); the first is its common name.
    #[arg(long, env = "DSO_WEBHOOK_TLS_SANS", value_delimiter = ',')]
    pub tls_san: Vec<String>,

    /// Runtime mode: name of DSO's MutatingWebhookConfiguration and ValidatingWebhookConfiguration,
    /// whose caBundle the leader keeps equal to the Secret's ca.crt.
    #[arg(long, env = "DSO_WEBHOOK_TLS_WEBHOOK_CONFIGURATION")]
    pub tls_webhook_configuration: Option<String>,

    /// Runtime mode: validity of each CA and serving certificate, such as 8760h; a new pair is
    /// issued when a third of it is left.
    #[arg(long, env = "DSO_WEBHOOK_TLS_VALIDITY", default_value = "8760h", value_parser = parse_duration)]
    pub tls_validity: Duration,

    /// Runtime mode: how long a new CA is in the caBundle before the new certificate is served
    /// (time for every API server to see the changed webhook configuration).
    #[arg(long, env = "DSO_WEBHOOK_TLS_BUNDLE_PROPAGATION", default_value = "10s", value_parser = parse_duration)]
    pub tls_bundle_propagation: Duration,

    /// Runtime mode: the Lease the replicas elect their leader on (the chart creates it).
    #[arg(long, env = "DSO_WEBHOOK_LEADER_LEASE")]
    pub leader_lease: Option<String>,

    /// Runtime mode: how long the Lease lasts without renewal, such as 15s.
    #[arg(long, env = "DSO_WEBHOOK_LEADER_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_lease_duration: Duration,

    /// Runtime mode: namespace of the Secret and the Lease (the pod's, from the downward API).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,

    /// Runtime mode: this replica's identity in the Lease (the pod's name, from the downward API).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Image of the injected dso-init container.
    #[arg(long, env = "DSO_WEBHOOK_INIT_IMAGE")]
    pub init_image: String,

    /// imagePullPolicy of the injected container: Always, IfNotPresent or Never.
    #[arg(long, env = "DSO_WEBHOOK_INIT_IMAGE_PULL_POLICY", default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub init_image_pull_policy: String,

    /// Mount path of the secrets volume when a pod has no dso.dev/mount-path annotation.
    #[arg(long, env = "DSO_WEBHOOK_DEFAULT_MOUNT_PATH", default_value = dso_api::annotations::DEFAULT_MOUNT_PATH)]
    pub default_mount_path: String,

    /// sizeLimit of the memory-backed volume, as a Kubernetes quantity such as 16Mi.
    #[arg(long, env = "DSO_WEBHOOK_SIZE_LIMIT", default_value = "16Mi")]
    pub size_limit: String,

    /// CPU request of the init container.
    #[arg(long, env = "DSO_WEBHOOK_INIT_CPU_REQUEST", default_value = "10m")]
    pub init_cpu_request: String,
    /// Memory request of the init container.
    #[arg(long, env = "DSO_WEBHOOK_INIT_MEMORY_REQUEST", default_value = "16Mi")]
    pub init_memory_request: String,
    /// CPU limit of the init container.
    #[arg(long, env = "DSO_WEBHOOK_INIT_CPU_LIMIT", default_value = "200m")]
    pub init_cpu_limit: String,
    /// Memory limit of the init container.
    #[arg(long, env = "DSO_WEBHOOK_INIT_MEMORY_LIMIT", default_value = "64Mi")]
    pub init_memory_limit: String,

    /// AWS region (AWS_REGION of the init container) of the secrets whose DsoSecret and ARN
    /// name none. Must be the operator's region. Unset: the region the EKS webhook gave the
    /// pod, else dso-init's own environment.
    #[arg(long, env = "DSO_WEBHOOK_DEFAULT_REGION")]
    pub default_region: Option<String>,

    /// Extra environment of the init container, KEY=VALUE, repeatable (one per line in the
    /// environment variable), such as AWS_ENDPOINT_URL=https://vpce-... for VPC endpoints.
    /// Values may hold commas (NO_PROXY=a,b), not newlines.
    #[arg(long = "init-env", env = "DSO_WEBHOOK_INIT_ENV", value_delimiter = '\n', value_parser = parse_key_value)]
    pub init_env: Vec<(String, String)>,

    /// ConfigMap, in the namespace of each injected pod, holding CA certificates (PEM) that
    /// dso-init trusts beside its image's public roots: for TLS-intercepting proxies. Mounted
    /// into dso-init only; a pod waits until the ConfigMap exists (e.g. a trust-manager Bundle).
    #[arg(long, env = "DSO_WEBHOOK_INIT_CA_BUNDLE_CONFIGMAP")]
    pub init_ca_bundle_configmap: Option<String>,
    /// Key of that ConfigMap holding the certificates.
    #[arg(long, env = "DSO_WEBHOOK_INIT_CA_BUNDLE_KEY", default_value = "ca.crt")]
    pub init_ca_bundle_key: String,

    /// fsGroup set on pods that have none, so that containers running as any user can read the
    /// group-readable files dso-init writes. Negative: never set one.
    #[arg(
        long,
        env = "DSO_WEBHOOK_FS_GROUP",
        default_value_t = 65532,
        allow_negative_numbers = true
    )]
    pub fs_group: i64,

    /// runAsUser of the init container when the pod sets no non-root runAsUser itself.
    #[arg(long, env = "DSO_WEBHOOK_INIT_RUN_AS_USER", default_value_t = 65532)]
    pub init_run_as_user: i64,

    /// expirationSeconds of the projected IRSA token the webhook adds, 600 (the Kubernetes
    /// minimum) to 3600: dso-init reads it once at start-up, so a short life limits what a
    /// copied token is worth.
    #[arg(
        long,
        env = "DSO_WEBHOOK_TOKEN_EXPIRATION_SECONDS",
        default_value_t = 3600
    )]
    pub token_expiration_seconds: i64,

    /// Inject pods for which no identity is found (no IAM role on the DsoSecrets or the
    /// ServiceAccount, no EKS-injected IRSA token or Pod Identity): dso-init then uses the AWS
    /// default chain, on EKS the node's role through IMDS, shared by every pod of the node.
    /// Off: such pods are refused with a message saying what to add.
    #[arg(
        long,
        env = "DSO_WEBHOOK_ALLOW_DEFAULT_CREDENTIALS",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub allow_default_credentials: bool,

    /// The secret allowlist file (YAML: `default` and `namespaces: {<namespace>: [entries]}`,
    /// each entry a secret name prefix or an ARN pattern, see docs/security.md): pods and
    /// DsoSecrets naming a secret outside their namespace's entries are refused. Read at start.
    /// Unset: every secret is allowed.
    #[arg(long, env = "DSO_WEBHOOK_SECRET_ALLOWLIST", value_parser = load_allowlist)]
    pub secret_allowlist: Option<Allowlist>,

    /// How long the watch caches may fail to resync (watch errors without recovery) before
    /// /readyz reports not ready, such as 2m: a stale cache would admit pods against old
    /// DsoSecrets and ServiceAccounts.
    #[arg(long, env = "DSO_WEBHOOK_CACHE_STALE_AFTER", default_value = "2m", value_parser = parse_duration)]
    pub cache_stale_after: Duration,

    /// Longest a client may take to send a request's headers (HTTP/1.1), such as 5s.
    #[arg(long, env = "DSO_WEBHOOK_HEADER_READ_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Longest a review may take, from its headers to the answer, such as 10s.
    #[arg(long, env = "DSO_WEBHOOK_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Open connections at most; further ones are closed at once.
    #[arg(long, env = "DSO_WEBHOOK_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,

    /// Reviews of at most 256 KiB (every real pod) in flight at most; further ones are
    /// answered 503 at once.
    #[arg(long, env = "DSO_WEBHOOK_MAX_CONCURRENT_REVIEWS", default_value_t = 64)]
    pub max_concurrent_reviews: usize,

    /// Reviews over 256 KiB in flight at most; further ones wait (within --request-timeout).
    /// Bounds the memory held by large bodies.
    #[arg(
        long,
        env = "DSO_WEBHOOK_MAX_CONCURRENT_LARGE_REVIEWS",
        default_value_t = 2
    )]
    pub max_concurrent_large_reviews: usize,

    /// Largest request body, a quantity of at most 3Mi (the API server's own request limit).
    #[arg(long, env = "DSO_WEBHOOK_MAX_BODY_SIZE", default_value = "3Mi")]
    pub max_body_size: String,

    /// Development and benchmarks only: read DsoSecrets and ServiceAccounts from this YAML file
    /// (documents separated by ---) instead of watching the cluster.
    #[arg(long, env = "DSO_WEBHOOK_STATIC_OBJECTS")]
    pub static_objects: Option<PathBuf>,

    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "DSO_WEBHOOK_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// After SIGTERM, how long the webhook still answers (each HTTP/1.1 response with
    /// `Connection: close`) before it closes its listener and idle connections: the API
    /// server retires its pooled connections meanwhile instead of writing into a closed one.
    #[arg(long, env = "DSO_WEBHOOK_SHUTDOWN_DRAIN", default_value = "3s", value_parser = parse_duration)]
    pub shutdown_drain: Duration,

    /// Log format: plain or json (the filter comes from RUST_LOG, default info).
    #[arg(long, env = "DSO_WEBHOOK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

/// Where the serving certificate comes from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// PEM files (a mounted Secret), re-read on a timer.
    Files,
    /// Issued and rotated by the webhook's elected leader into a Secret every replica follows.
    Runtime,
}

/// The run-time TLS settings, checked: `None` in files mode; an error naming the flag when one
/// is missing or out of range.
pub fn runtime_tls(args: &Args) -> Result<Option<RuntimeTls>, Error> {
    if args.tls_mode != TlsMode::Runtime {
        return Ok(None);
    }
    let required = |v: &Option<String>, flag: &str| {
        v.clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::Config(format!("{flag} is required with --tls-mode=runtime")))
    };
    let names: Vec<String> = args
        .tls_san
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if names.is_empty() {
        return Err(Error::Config(
            "--tls-san: at least one name is required with --tls-mode=runtime".into(),
        ));
    }
    if args.tls_validity < Duration::from_secs(60) {
        return Err(Error::Config(format!(
            "--tls-validity: {:?} is shorter than the minimum, 1m",
            args.tls_validity
        )));
    }
    if args.tls_bundle_propagation >= crate::certs::renew_before(args.tls_validity) {
        return Err(Error::Config(format!(
            "--tls-bundle-propagation: {:?} must be shorter than a third of --tls-validity",
            args.tls_bundle_propagation
        )));
    }
    if args.leader_lease_duration < Duration::from_secs(3) {
        return Err(Error::Config(format!(
            "--leader-lease-duration: {:?} is shorter than the minimum, 3s",
            args.leader_lease_duration
        )));
    }
    Ok(Some(RuntimeTls {
        namespace: required(&args.namespace, "--namespace (or POD_NAMESPACE)")?,
        secret: required(&args.tls_secret, "--tls-secret")?,
        configuration: required(
            &args.tls_webhook_configuration,
            "--tls-webhook-configuration",
        )?,
        names,
        validity: args.tls_validity,
        propagation: args.tls_bundle_propagation,
        lease: required(&args.leader_lease, "--leader-lease")?,
        lease_duration: args.leader_lease_duration,
        identity: required(&args.pod_name, "--pod-name (or POD_NAME)")?,
    }))
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    dso_api::duration::parse(s).map_err(|e| e.to_string())
}

/// Reads and checks the allowlist file: a bad one stops the start, naming the entry.
fn load_allowlist(path: &str) -> Result<Allowlist, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    Allowlist::from_yaml(&text).map_err(|e| format!("{path}: {e}"))
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    let valid = !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!("{k:?} is not an environment variable name"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Parses a memory quantity (`16Mi`, `64M`, `1Gi`, `1048576`) into bytes.
pub fn parse_bytes(q: &str) -> Result<u64, String> {
    let q = q.trim();
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (digits, suffix) = q.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{q:?} is not a quantity such as 16Mi"))?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return Err(format!("{q:?}: use a suffix among k, M, G, Ki, Mi, Gi")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{q:?} is too large"))
}

fn check_cpu(q: &str) -> Result<(), String> {
    let digits = q.strip_suffix('m').unwrap_or(q);
    let ok = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().filter(|c| *c == '.').count() <= 1;
    if ok {
        Ok(())
    } else {
        Err(format!("{q:?} is not a CPU quantity such as 100m or 0.5"))
    }
}

impl InjectConfig {
    /// Builds and checks the injection settings from the command line.
    pub fn from_args(a: &Args) -> Result<Self, Error> {
        let bad = |flag: &str, m: String| Error::Config(format!("--{flag}: {m}"));
        let size_limit_bytes = parse_bytes(&a.size_limit).map_err(|m| bad("size-limit", m))?;
        parse_bytes(&a.init_memory_request).map_err(|m| bad("init-memory-request", m))?;
        parse_bytes(&a.init_memory_limit).map_err(|m| bad("init-memory-limit", m))?;
        check_cpu(&a.init_cpu_request).map_err(|m| bad("init-cpu-request", m))?;
        check_cpu(&a.init_cpu_limit).map_err(|m| bad("init-cpu-limit", m))?;
        if a.init_image.trim().is_empty() {
            return Err(bad("init-image", "must name an image".into()));
        }
        if crate::patch::check_mount_path(&a.default_mount_path).is_err() {
            return Err(bad(
                "default-mount-path",
                format!(
                    "{:?} must be an absolute path without '..'",
                    a.default_mount_path
                ),
            ));
        }
        if a.init_run_as_user <= 0 {
            return Err(bad("init-run-as-user", "must be a non-root uid".into()));
        }
        if !TOKEN_EXPIRATION_SECONDS.contains(&a.token_expiration_seconds) {
            return Err(bad(
                "token-expiration-seconds",
                format!(
                    "{} is outside 600 (the Kubernetes minimum) to 3600",
                    a.token_expiration_seconds
                ),
            ));
        }
        let ca_bundle = match a.init_ca_bundle_configmap.as_deref() {
            None | Some("") => None,
            Some(name) => {
                if !is_dns_subdomain(name) {
                    return Err(bad(
                        "init-ca-bundle-configmap",
                        format!(
                            "{name:?} is not a ConfigMap name (a DNS subdomain: lowercase letters, digits, '-' and '.')"
                        ),
                    ));
                }
                let key = &a.init_ca_bundle_key;
                if key.is_empty()
                    || key.len() > 253
                    || !key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
                {
                    return Err(bad(
                        "init-ca-bundle-key",
                        format!(
                            "{key:?} is not a ConfigMap key (letters, digits, '-', '_' and '.')"
                        ),
                    ));
                }
                Some(CaBundle {
                    config_map: name.to_string(),
                    key: key.clone(),
                })
            }
        };
        let pair = |cpu: &str, mem: &str| {
            BTreeMap::from([
                ("cpu".to_string(), Quantity(cpu.to_string())),
                ("memory".to_string(), Quantity(mem.to_string())),
            ])
        };
        Ok(InjectConfig {
            image: a.init_image.clone(),
            image_pull_policy: a.init_image_pull_policy.clone(),
            default_mount_path: a.default_mount_path.trim_end_matches('/').to_string(),
            size_limit: a.size_limit.clone(),
            size_limit_bytes,
            resources: ResourceRequirements {
                requests: Some(pair(&a.init_cpu_request, &a.init_memory_request)),
                limits: Some(pair(&a.init_cpu_limit, &a.init_memory_limit)),
                ..Default::default()
            },
            default_region: a.default_region.clone(),
            init_env: a.init_env.clone(),
            fs_group: (a.fs_group >= 0).then_some(a.fs_group),
            run_as_user: a.init_run_as_user,
            token_expiration_seconds: a.token_expiration_seconds,
            allow_default_credentials: a.allow_default_credentials,
            allowlist: std::sync::Arc::new(a.secret_allowlist.clone().unwrap_or_default()),
            ca_bundle,
        })
    }
}

/// A Kubernetes object name of the DNS-1123 subdomain kind (ConfigMaps).
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The lifetimes `--token-expiration-seconds` accepts.
pub const TOKEN_EXPIRATION_SECONDS: std::ops::RangeInclusive<i64> = 600..=3600;

/// The largest `--max-body-size`.
pub const MAX_BODY_BYTES: u64 = 3 << 20;

impl Limits {
    /// Builds and checks the server's limits from the command line.
    pub fn from_args(a: &Args) -> Result<Self, Error> {
        let bad = |flag: &str, m: String| Error::Config(format!("--{flag}: {m}"));
        let body = parse_bytes(&a.max_body_size).map_err(|m| bad("max-body-size", m))?;
        if !(1024..=MAX_BODY_BYTES).contains(&body) {
            return Err(bad(
                "max-body-size",
                format!("{:?} is outside 1Ki to 3Mi", a.max_body_size),
            ));
        }
        for (flag, n) in [
            ("max-connections", a.max_connections),
            ("max-concurrent-reviews", a.max_concurrent_reviews),
            (
                "max-concurrent-large-reviews",
                a.max_concurrent_large_reviews,
            ),
        ] {
            if n == 0 {
                return Err(bad(flag, "must be at least 1".into()));
            }
        }
        for (flag, d) in [
            ("header-read-timeout", a.header_read_timeout),
            ("request-timeout", a.request_timeout),
        ] {
            if d.is_zero() {
                return Err(bad(flag, "must be longer than 0s".into()));
            }
        }
        Ok(Limits {
            header_read_timeout: a.header_read_timeout,
            request_timeout: a.request_timeout,
            max_connections: a.max_connections,
            max_concurrent_reviews: a.max_concurrent_reviews,
            max_concurrent_large_reviews: a.max_concurrent_large_reviews,
            max_body_bytes: usize::try_from(body).unwrap_or(usize::MAX),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut v = vec!["dso-webhook", "--init-image", "dso-init:1"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v)
    }

    #[test]
    fn runtime_tls_names_each_missing_or_bad_flag() {
        let full = [
            "--tls-mode=runtime",
            "--tls-secret=dso-webhook-certs",
            "--tls-san=dso-webhook.dso-system.svc,10.0.0.9",
            "--tls-webhook-configuration=dso-webhook",
            "--leader-lease=dso-webhook",
            "--namespace=dso-system",
            "--pod-name=dso-webhook-abc",
        ];
        let cfg = runtime_tls(&args(&full).expect("parse"))
            .expect("valid")
            .expect("runtime mode");
        assert_eq!(cfg.names, ["dso-webhook.dso-system.svc", "10.0.0.9"]);
        assert_eq!(cfg.validity, Duration::from_secs(8760 * 3600));
        assert!(
            runtime_tls(&args(&[]).expect("parse"))
                .expect("files mode")
                .is_none()
        );
        for (i, flag) in [
            "--tls-secret",
            "--tls-san",
            "--tls-webhook-configuration",
            "--leader-lease",
            "--namespace",
            "--pod-name",
        ]
        .iter()
        .enumerate()
        {
            let without: Vec<&str> = full
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i + 1)
                .map(|(_, a)| *a)
                .collect();
            let e = runtime_tls(&args(&without).expect("parse"))
                .expect_err("a missing flag")
                .to_string();
            assert!(e.contains(flag), "{flag}: {e}");
        }
        let mut short = full.to_vec();
        short.push("--tls-validity=30s");
        let e = runtime_tls(&args(&short).expect("parse"))
            .expect_err("too short")
            .to_string();
        assert!(e.contains("--tls-validity"), "{e}");
        let mut slow = full.to_vec();
        slow.extend(["--tls-validity=3m", "--tls-bundle-propagation=1m"]);
        let e = runtime_tls(&args(&slow).expect("parse"))
            .expect_err("propagation too long")
            .to_string();
        assert!(e.contains("--tls-bundle-propagation"), "{e}");
    }

    #[test]
    fn defaults_give_a_working_configuration() {
        let c = InjectConfig::from_args(&args(&[]).expect("parse")).expect("config");
        assert_eq!(c.size_limit_bytes, 16 << 20);
        assert_eq!(c.default_mount_path, "/run/secrets/dso");
        assert_eq!(c.fs_group, Some(65532));
        assert_eq!(c.image_pull_policy, "IfNotPresent");
    }

    #[test]
    fn init_env_is_repeatable_and_checked() {
        let a = args(&[
            "--init-env",
            "AWS_ENDPOINT_URL=http://127.0.0.1:5000",
            "--init-env",
            "A=b=c",
        ])
        .expect("parse");
        assert_eq!(
            a.init_env,
            vec![
                ("AWS_ENDPOINT_URL".into(), "http://127.0.0.1:5000".into()),
                ("A".into(), "b=c".into())
            ]
        );
        assert!(args(&["--init-env", "NOEQUALS"]).is_err());
        assert!(
            args(&["--init-env", "A=1,B"]).is_ok(),
            "a comma is not a separator"
        );
        assert!(args(&["--init-env", "1X=y"]).is_err());
    }

    #[test]
    fn init_env_values_keep_their_commas() {
        let a = args(&[
            "--init-env",
            "NO_PROXY=a,b,c",
            "--init-env",
            "HTTPS_PROXY=http://proxy:3128",
        ])
        .expect("parse");
        assert_eq!(
            a.init_env,
            vec![
                ("NO_PROXY".into(), "a,b,c".into()),
                ("HTTPS_PROXY".into(), "http://proxy:3128".into())
            ]
        );
        let c = InjectConfig::from_args(&a).expect("config");
        assert_eq!(c.init_env[0], ("NO_PROXY".into(), "a,b,c".into()));
    }

    #[test]
    fn init_env_from_the_environment_variable_is_one_pair_per_line() {
        // DSO_WEBHOOK_INIT_ENV goes through the same delimiter as this single value.
        let a =
            args(&["--init-env", "NO_PROXY=a,b,c\nAWS_ENDPOINT_URL=http://x:1"]).expect("parse");
        assert_eq!(
            a.init_env,
            vec![
                ("NO_PROXY".into(), "a,b,c".into()),
                ("AWS_ENDPOINT_URL".into(), "http://x:1".into())
            ]
        );
    }

    #[test]
    fn bad_quantities_are_refused_at_start() {
        for flag in ["--size-limit", "--init-memory-limit"] {
            let a = args(&[flag, "lots"]).expect("parse");
            let e = InjectConfig::from_args(&a)
                .expect_err("refused")
                .to_string();
            assert!(e.contains(&flag[2..]), "{e}");
        }
        let a = args(&["--init-cpu-limit", "fast"]).expect("parse");
        assert!(InjectConfig::from_args(&a).is_err());
    }

    #[test]
    fn a_ca_bundle_configmap_is_checked_at_start() {
        let c = InjectConfig::from_args(&args(&[]).expect("parse")).expect("config");
        assert_eq!(c.ca_bundle, None);
        let a = args(&["--init-ca-bundle-configmap", "corp-ca"]).expect("parse");
        let c = InjectConfig::from_args(&a).expect("config");
        assert_eq!(
            c.ca_bundle,
            Some(CaBundle {
                config_map: "corp-ca".into(),
                key: "ca.crt".into()
            })
        );
        for (flags, named) in [
            (
                &["--init-ca-bundle-configmap", "Corp_CA"][..],
                "init-ca-bundle-configmap",
            ),
            (
                &[
                    "--init-ca-bundle-configmap",
                    "corp-ca",
                    "--init-ca-bundle-key",
                    "a/b",
                ][..],
                "init-ca-bundle-key",
            ),
        ] {
            let e = InjectConfig::from_args(&args(flags).expect("parse"))
                .expect_err("refused")
                .to_string();
            assert!(e.contains(named), "{e}");
        }
    }

    #[test]
    fn a_negative_fs_group_disables_it() {
        let c =
            InjectConfig::from_args(&args(&["--fs-group", "-1"]).expect("parse")).expect("config");
        assert_eq!(c.fs_group, None);
    }

    #[test]
    fn a_relative_default_mount_path_is_refused() {
        let a = args(&["--default-mount-path", "secrets"]).expect("parse");
        assert!(InjectConfig::from_args(&a).is_err());
    }

    #[test]
    fn durations_are_written_like_kubernetes_durations() {
        let a = args(&[
            "--tls-reload-interval",
            "1m30s",
            "--shutdown-grace",
            "500ms",
        ])
        .expect("parse");
        assert_eq!(a.tls_reload_interval, Duration::from_secs(90));
        assert_eq!(a.shutdown_grace, Duration::from_millis(500));
        let e = args(&["--shutdown-grace", "20"]).expect_err("a bare number has no unit");
        assert!(e.to_string().contains("missing unit"), "{e}");
    }

    #[test]
    fn the_log_format_is_plain_or_json() {
        assert_eq!(args(&[]).expect("parse").log_format, LogFormat::Plain);
        let a = args(&["--log-format", "json"]).expect("parse");
        assert_eq!(a.log_format, LogFormat::Json);
        let e = args(&["--log-format", "yaml"]).expect_err("refused");
        assert!(e.to_string().contains("plain, json"), "{e}");
    }

    #[test]
    fn the_default_limits_fit_real_pods_and_the_chart_memory_limit() {
        let l = Limits::from_args(&args(&[]).expect("parse")).expect("limits");
        assert_eq!(l, Limits::default());
        assert_eq!(l.max_body_bytes, 3 << 20);
        assert_eq!(l.header_read_timeout, Duration::from_secs(5));
    }

    #[test]
    fn limits_out_of_range_are_refused_at_start() {
        for (flag, value) in [
            ("--max-body-size", "8Mi"),
            ("--max-body-size", "12"),
            ("--max-connections", "0"),
            ("--max-concurrent-reviews", "0"),
            ("--max-concurrent-large-reviews", "0"),
            ("--request-timeout", "0s"),
            ("--header-read-timeout", "0s"),
        ] {
            let a = args(&[flag, value]).expect("parse");
            let e = Limits::from_args(&a).expect_err(flag).to_string();
            assert!(e.contains(&flag[2..]), "{e}");
        }
    }

    #[test]
    fn the_token_lifetime_defaults_to_an_hour_within_600_to_3600_seconds() {
        let c = InjectConfig::from_args(&args(&[]).expect("parse")).expect("config");
        assert_eq!(c.token_expiration_seconds, 3600);
        for ok in ["600", "3600"] {
            let a = args(&["--token-expiration-seconds", ok]).expect("parse");
            assert!(InjectConfig::from_args(&a).is_ok(), "{ok}");
        }
        for refused in ["599", "3601", "86400"] {
            let a = args(&["--token-expiration-seconds", refused]).expect("parse");
            let e = InjectConfig::from_args(&a).expect_err(refused).to_string();
            assert!(e.contains("token-expiration-seconds"), "{e}");
        }
    }

    #[test]
    fn default_credentials_are_refused_unless_allowed() {
        let c = InjectConfig::from_args(&args(&[]).expect("parse")).expect("config");
        assert!(!c.allow_default_credentials);
        for flags in [
            &["--allow-default-credentials"][..],
            &["--allow-default-credentials=true"],
        ] {
            let c = InjectConfig::from_args(&args(flags).expect("parse")).expect("config");
            assert!(c.allow_default_credentials, "{flags:?}");
        }
        assert_eq!(
            args(&[]).expect("parse").cache_stale_after,
            Duration::from_secs(120)
        );
    }

    #[test]
    fn the_secret_allowlist_is_read_at_start_and_a_bad_one_is_refused() {
        let c = InjectConfig::from_args(&args(&[]).expect("parse")).expect("config");
        assert!(!c.allowlist.is_configured());
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.yaml");
        std::fs::write(&good, "default: [\"{namespace}/\"]\n").expect("write");
        let a = args(&["--secret-allowlist", &good.to_string_lossy()]).expect("parse");
        let c = InjectConfig::from_args(&a).expect("config");
        assert!(c.allowlist.allows("web", "web/db") && !c.allowlist.allows("web", "api/db"));
        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &bad,
            "default: [\"arn:aws:secretsmanager:us-*:*:secret:x\"]\n",
        )
        .expect("write");
        let e = args(&["--secret-allowlist", &bad.to_string_lossy()]).expect_err("refused");
        assert!(e.to_string().contains("default[0]"), "{e}");
    }

    #[test]
    fn quantities_parse_to_bytes() {
        assert_eq!(parse_bytes("16Mi"), Ok(16 << 20));
        assert_eq!(parse_bytes("64M"), Ok(64_000_000));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert!(parse_bytes("1.5Gi").is_err());
        assert!(parse_bytes("").is_err());
    }
}
