//! Configuration: one clap struct, every flag with an environment fallback. Durations are
//! written as in the webhook and `dso-init` (`10s`, `5m`, `1h30m`, see [`dso_api::duration`]).
//! The whole-unit flags of earlier releases (`--lease-seconds=15`, `DSO_BACKOFF_BASE_MS=1000`…)
//! are still accepted, hidden from `--help`.

use crate::cache::LookupMode;
use clap::Parser;
use dso_api::allowlist::Allowlist;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

/// DSO operator: keeps DsoSecret status in line with AWS Secrets Manager metadata and rolls the
/// workloads that consume a rotated secret. It never reads a secret value.
#[derive(Debug, clap::Parser)]
#[command(name = "dso-operator", version)]
pub struct Args {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "DSO_NAMESPACE")]
    pub namespace: Option<String>,

    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "DSO_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// How stale secret metadata is refreshed: `describe` (DescribeSecret per distinct
    /// secret) or `sweep` (ListSecrets pages of 100 for the whole region, DescribeSecret only
    /// for what the list misses; cheaper with many secrets).
    #[arg(long, env = "DSO_AWS_LOOKUP", value_enum, default_value = "describe")]
    pub aws_lookup: LookupMode,

    /// Timeout of one AWS call attempt, such as 10s.
    #[arg(long, env = "DSO_AWS_TIMEOUT", default_value = "10s", value_parser = positive)]
    pub aws_timeout: Duration,

    /// Most workload rollouts in progress at the same time (from the template patch until
    /// every pod runs it, or --rollout-timeout).
    #[arg(long, env = "DSO_MAX_CONCURRENT_ROLLOUTS", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..), default_value_t = 4)]
    pub max_concurrent_rollouts: usize,

    /// Longest time one rollout counts against --max-concurrent-rollouts, such as 5m; a rollout
    /// whose new pods are not all Ready by then marks its DsoSecrets Degraded.
    #[arg(long, env = "DSO_ROLLOUT_TIMEOUT", default_value = "5m", value_parser = positive)]
    pub rollout_timeout: Duration,

    /// How long the versions a workload consumes must stay unchanged before DSO rolls it, such
    /// as 2s: rotations closer together than that (two secrets rotated together, one rotated
    /// twice) give one rollout. 0s rolls at once, at most 5m. A burst that never pauses waits at
    /// most ten times this.
    #[arg(long, env = "DSO_ROLLOUT_SETTLE", default_value = "2s", value_parser = settle)]
    pub rollout_settle: Duration,

    /// Shortest time between two forced checks (`dso.dev/refresh`) of one DsoSecret, such as
    /// 30s; a new value sooner is refused with a RefreshRateLimited event and handled once the
    /// time has passed.
    #[arg(long, env = "DSO_REFRESH_MIN_INTERVAL", default_value = "30s", value_parser = positive)]
    pub refresh_min_interval: Duration,

    /// How long an AWS client of a region no DsoSecret uses any more is kept, such as 1h.
    #[arg(long, env = "DSO_AWS_CLIENT_IDLE", default_value = "1h", value_parser = positive)]
    pub aws_client_idle: Duration,

    /// Most DsoSecrets reconciled at the same time.
    #[arg(long, env = "DSO_RECONCILE_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..), default_value_t = 16)]
    pub reconcile_concurrency: u16,

    /// First retry delay after a failed reconcile, such as 1s (doubles per failure).
    #[arg(long, env = "DSO_BACKOFF_BASE", default_value = "1s", value_parser = positive)]
    pub backoff_base: Duration,

    /// Longest retry delay after failed reconciles, such as 5m.
    #[arg(long, env = "DSO_BACKOFF_MAX", default_value = "5m", value_parser = positive)]
    pub backoff_max: Duration,

    /// Elect a leader with a Lease, so only one replica reconciles.
    #[arg(long, env = "DSO_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the leader Lease.
    #[arg(long, env = "DSO_LEASE_NAME", default_value = "dso-operator")]
    pub lease_name: String,

    /// Namespace of the leader Lease (default: POD_NAMESPACE, else --namespace, else `default`).
    #[arg(long, env = "DSO_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// How long a Lease lasts without renewal, in whole seconds such as 15s, at least 3s
    /// (renewed every third of it; the leader stops leading when it could not renew for two
    /// thirds of it).
    #[arg(long, env = "DSO_LEASE_DURATION", default_value = "15s", value_parser = lease_duration)]
    pub lease_duration: Duration,

    /// This replica's identity in the Lease and in events (default: POD_NAME, else HOSTNAME, plus the PID).
    #[arg(long, env = "DSO_IDENTITY")]
    pub identity: Option<String>,

    /// The secret allowlist file (YAML: `default` and `namespaces: {<namespace>: [entries]}`,
    /// each entry a secret name prefix or an ARN pattern, see docs/security.md): a DsoSecret
    /// naming a secret outside its namespace's entries is marked InvalidSpec and never looked
    /// up. Read at start. Unset: every secret is allowed.
    #[arg(long, env = "DSO_SECRET_ALLOWLIST", value_parser = load_allowlist)]
    pub secret_allowlist: Option<Allowlist>,

    /// Log format: `plain` or `json`. Levels come from RUST_LOG (default `info`).
    #[arg(long, env = "DSO_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,

    /// URL of an SQS queue that an EventBridge rule feeds with Secrets Manager change events
    /// (docs/rotation.md): rotations are then seen within seconds, and the periodic check
    /// becomes a fallback (--events-fallback-interval). Needs sqs:ReceiveMessage and
    /// sqs:DeleteMessage on the queue.
    #[arg(long, env = "DSO_EVENTS_QUEUE_URL", value_parser = queue_url)]
    pub events_queue_url: Option<String>,

    /// With --events-queue-url, while the queue can be read: how often DsoSecrets that set no
    /// refresh.interval are checked anyway, such as 30m (between 10s and 24h). When the queue
    /// cannot be read they go back to refresh.interval's default, 5m.
    #[arg(long, env = "DSO_EVENTS_FALLBACK_INTERVAL", default_value = "30m", value_parser = fallback_interval)]
    pub events_fallback_interval: Duration,

    #[command(flatten)]
    legacy: Legacy,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// The flags of earlier releases, in whole units. Hidden; each conflicts with its successor.
#[derive(Debug, Default, clap::Args)]
struct Legacy {
    /// --aws-timeout as earlier releases spelled it, in whole seconds.
    #[arg(long, env = "DSO_AWS_TIMEOUT_SECONDS", hide = true, conflicts_with = "aws_timeout", value_parser = clap::value_parser!(u64).range(1..))]
    aws_timeout_seconds: Option<u64>,
    /// --rollout-timeout as earlier releases spelled it, in whole seconds.
    #[arg(long, env = "DSO_ROLLOUT_TIMEOUT_SECONDS", hide = true, conflicts_with = "rollout_timeout", value_parser = clap::value_parser!(u64).range(1..))]
    rollout_timeout_seconds: Option<u64>,
    /// --backoff-base as earlier releases spelled it, in whole milliseconds.
    #[arg(long, env = "DSO_BACKOFF_BASE_MS", hide = true, conflicts_with = "backoff_base", value_parser = clap::value_parser!(u64).range(1..))]
    backoff_base_ms: Option<u64>,
    /// --backoff-max as earlier releases spelled it, in whole seconds.
    #[arg(long, env = "DSO_BACKOFF_MAX_SECONDS", hide = true, conflicts_with = "backoff_max", value_parser = clap::value_parser!(u64).range(1..))]
    backoff_max_seconds: Option<u64>,
    /// --lease-duration as earlier releases spelled it, in whole seconds.
    #[arg(long, env = "DSO_LEASE_SECONDS", hide = true, conflicts_with = "lease_duration", value_parser = clap::value_parser!(u64).range(3..))]
    lease_seconds: Option<u64>,
}

/// Reads and checks the allowlist file: a bad one stops the start, naming the entry.
fn load_allowlist(path: &str) -> Result<Allowlist, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    Allowlist::from_yaml(&text).map_err(|e| format!("{path}: {e}"))
}

fn positive(s: &str) -> Result<Duration, String> {
    match dso_api::duration::parse(s).map_err(|e| e.to_string())? {
        d if d.is_zero() => Err("must be more than 0s".into()),
        d => Ok(d),
    }
}

/// `--rollout-settle`: 0s to 5m.
fn settle(s: &str) -> Result<Duration, String> {
    match dso_api::duration::parse(s).map_err(|e| e.to_string())? {
        d if d > Duration::from_secs(300) => Err("must be at most 5m".into()),
        d => Ok(d),
    }
}

/// An http(s) URL with a path (`https://sqs.<region>.amazonaws.com/<account>/<queue>`).
fn queue_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or("must start with https:// (the queue URL, not its ARN or name)")?;
    match rest.split_once('/') {
        Some((host, path)) if !host.is_empty() && !path.trim_matches('/').is_empty() => {
            Ok(s.to_string())
        }
        _ => Err(
            "must name the queue, as https://sqs.<region>.amazonaws.com/<account>/<queue>".into(),
        ),
    }
}

/// Within the bounds of `refresh.interval`.
fn fallback_interval(s: &str) -> Result<Duration, String> {
    use dso_api::duration::{MAX_INTERVAL, MIN_INTERVAL};
    let d = dso_api::duration::parse(s).map_err(|e| e.to_string())?;
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
        return Err("must be between 10s and 24h".into());
    }
    Ok(d)
}

/// A Lease records whole seconds (`leaseDurationSeconds`): no fractions, at least 3 s.
fn lease_duration(s: &str) -> Result<Duration, String> {
    let d = dso_api::duration::parse(s).map_err(|e| e.to_string())?;
    if d.subsec_nanos() != 0 || d < Duration::from_secs(3) {
        return Err("must be whole seconds, at least 3s".into());
    }
    Ok(d)
}

impl Args {
    /// The command line and environment, with the flags of earlier releases folded in.
    pub fn load() -> Self {
        Self::parse().fold_legacy()
    }

    /// [`Args::load`] from the given arguments (tests).
    pub fn try_load_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Ok(Self::try_parse_from(args)?.fold_legacy())
    }

    fn fold_legacy(mut self) -> Self {
        let legacy = std::mem::take(&mut self.legacy);
        let secs = Duration::from_secs;
        let set = |to: &mut Duration, from: Option<Duration>| *to = from.unwrap_or(*to);
        set(&mut self.aws_timeout, legacy.aws_timeout_seconds.map(secs));
        set(
            &mut self.rollout_timeout,
            legacy.rollout_timeout_seconds.map(secs),
        );
        set(
            &mut self.backoff_base,
            legacy.backoff_base_ms.map(Duration::from_millis),
        );
        set(&mut self.backoff_max, legacy.backoff_max_seconds.map(secs));
        set(&mut self.lease_duration, legacy.lease_seconds.map(secs));
        self
    }

    /// This replica's identity: `--identity`, else POD_NAME (else HOSTNAME) and the PID.
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::env::var("POD_NAME")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_else(|_| "dso-operator".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// Where the leader Lease lives: `--lease-namespace`, else POD_NAMESPACE, else
    /// `--namespace`, else `default`.
    pub fn lease_namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .or_else(|| self.namespace.clone())
            .unwrap_or_else(|| "default".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_load_from(std::iter::once("dso-operator").chain(args.iter().copied()))
    }

    #[test]
    fn the_defaults_parse() {
        let a = parse(&[]).expect("defaults");
        assert_eq!(a.aws_timeout, Duration::from_secs(10));
        assert_eq!(a.max_concurrent_rollouts, 4);
        assert_eq!(a.rollout_timeout, Duration::from_secs(300));
        assert_eq!(a.rollout_settle, Duration::from_secs(2));
        assert_eq!(a.backoff_base, Duration::from_secs(1));
        assert_eq!(a.backoff_max, Duration::from_secs(300));
        assert_eq!(a.lease_duration, Duration::from_secs(15));
        assert_eq!(a.refresh_min_interval, Duration::from_secs(30));
        assert_eq!(a.aws_client_idle, Duration::from_secs(3600));
        assert_eq!(a.log_format, LogFormat::Plain);
        assert_eq!(a.events_queue_url, None);
        assert_eq!(a.events_fallback_interval, Duration::from_secs(1800));
    }

    #[rstest]
    #[case::aws_timeout_of_zero("--aws-timeout", "0s")]
    #[case::duration_without_unit("--aws-timeout", "10")]
    #[case::no_rollout_slot("--max-concurrent-rollouts", "0")]
    #[case::rollout_timeout_of_zero("--rollout-timeout", "0s")]
    #[case::settle_longer_than_five_minutes("--rollout-settle", "6m")]
    #[case::refresh_min_interval_of_zero("--refresh-min-interval", "0s")]
    #[case::aws_client_idle_of_zero("--aws-client-idle", "0s")]
    #[case::no_reconcile_worker("--reconcile-concurrency", "0")]
    #[case::backoff_base_of_zero("--backoff-base", "0ms")]
    #[case::backoff_max_of_zero("--backoff-max", "0s")]
    #[case::lease_too_short_to_renew("--lease-duration", "2s")]
    #[case::lease_in_fractions_of_seconds("--lease-duration", "3500ms")]
    #[case::negative_timeout("--aws-timeout", "-1s")]
    #[case::too_many_workers("--reconcile-concurrency", "70000")]
    #[case::unknown_log_format("--log-format", "yaml")]
    #[case::legacy_aws_timeout_of_zero("--aws-timeout-seconds", "0")]
    #[case::legacy_lease_too_short("--lease-seconds", "2")]
    #[case::queue_arn_for_url(
        "--events-queue-url",
        "arn:aws:sqs:us-east-1:123456789012:dso-events"
    )]
    #[case::queue_url_without_queue("--events-queue-url", "https://sqs.us-east-1.amazonaws.com/")]
    #[case::fallback_below_the_shortest_interval("--events-fallback-interval", "5s")]
    #[case::fallback_above_a_day("--events-fallback-interval", "25h")]
    fn an_out_of_range_value_is_refused_at_start(#[case] flag: &str, #[case] value: &str) {
        let arg = format!("{flag}={value}");
        let e = parse(&[arg.as_str()]).expect_err("refused");
        assert!(e.to_string().contains(flag), "{e}");
    }

    #[rstest]
    #[case("--aws-timeout", "1ms")]
    #[case("--max-concurrent-rollouts", "1")]
    #[case("--reconcile-concurrency", "1")]
    #[case("--lease-duration", "3s")]
    #[case("--log-format", "json")]
    #[case(
        "--events-queue-url",
        "https://sqs.us-east-1.amazonaws.com/123456789012/dso-events"
    )]
    #[case("--events-fallback-interval", "10s")]
    fn the_smallest_allowed_value_is_accepted(#[case] flag: &str, #[case] value: &str) {
        parse(&[flag, value]).expect("accepted");
    }

    #[rstest]
    #[case::aws_timeout(&["--aws-timeout-seconds", "7"], |a: &Args| a.aws_timeout, 7_000)]
    #[case::rollout_timeout(&["--rollout-timeout-seconds", "20"], |a: &Args| a.rollout_timeout, 20_000)]
    #[case::backoff_base(&["--backoff-base-ms", "250"], |a: &Args| a.backoff_base, 250)]
    #[case::backoff_max(&["--backoff-max-seconds", "5"], |a: &Args| a.backoff_max, 5_000)]
    #[case::lease(&["--lease-seconds", "6"], |a: &Args| a.lease_duration, 6_000)]
    #[case::new_form(&["--lease-duration", "1m"], |a: &Args| a.lease_duration, 60_000)]
    fn the_whole_unit_flags_of_earlier_releases_still_work(
        #[case] args: &[&str],
        #[case] field: fn(&Args) -> Duration,
        #[case] millis: u64,
    ) {
        let a = parse(args).expect("accepted");
        assert_eq!(field(&a), Duration::from_millis(millis));
    }

    #[test]
    fn the_secret_allowlist_is_read_at_start_and_a_bad_one_is_refused() {
        assert_eq!(parse(&[]).expect("defaults").secret_allowlist, None);
        let dir = std::env::temp_dir().join(format!("dso-allowlist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let good = dir.join("good.yaml");
        std::fs::write(&good, "default: [\"{namespace}/\"]\n").expect("write");
        let a = parse(&["--secret-allowlist", &good.to_string_lossy()]).expect("accepted");
        let list = a.secret_allowlist.expect("loaded");
        assert!(list.allows("web", "web/db") && !list.allows("web", "api/db"));
        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, "namespaces: {web: [\"web-*\"]}\n").expect("write");
        let e = parse(&["--secret-allowlist", &bad.to_string_lossy()]).expect_err("refused");
        assert!(e.to_string().contains("namespaces.web[0]"), "{e}");
        let e = parse(&["--secret-allowlist", "/nonexistent/allowlist.yaml"]).expect_err("missing");
        assert!(e.to_string().contains("--secret-allowlist"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_old_flag_and_its_successor_together_are_refused() {
        let e = parse(&["--lease-seconds=6", "--lease-duration=6s"]).expect_err("conflict");
        assert!(e.to_string().contains("--lease-duration"), "{e}");
    }
}
