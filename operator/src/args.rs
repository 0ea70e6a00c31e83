//! Configuration: one clap struct, every flag with an environment fallback.

use crate::cache::LookupMode;
use std::net::SocketAddr;

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

    /// Timeout of one AWS call attempt, in seconds.
    #[arg(long, env = "DSO_AWS_TIMEOUT_SECONDS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 10)]
    pub aws_timeout_seconds: u64,

    /// Most workload rollouts in progress at the same time (from the template patch until
    /// every pod runs it, or --rollout-timeout-seconds).
    #[arg(long, env = "DSO_MAX_CONCURRENT_ROLLOUTS", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..), default_value_t = 4)]
    pub max_concurrent_rollouts: usize,

    /// Longest time one rollout counts against --max-concurrent-rollouts, in seconds.
    #[arg(long, env = "DSO_ROLLOUT_TIMEOUT_SECONDS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 300)]
    pub rollout_timeout_seconds: u64,

    /// Most DsoSecrets reconciled at the same time.
    #[arg(long, env = "DSO_RECONCILE_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..), default_value_t = 16)]
    pub reconcile_concurrency: u16,

    /// First retry delay after a failed reconcile, in milliseconds (doubles per failure).
    #[arg(long, env = "DSO_BACKOFF_BASE_MS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 1000)]
    pub backoff_base_ms: u64,

    /// Longest retry delay after failed reconciles, in seconds.
    #[arg(long, env = "DSO_BACKOFF_MAX_SECONDS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 300)]
    pub backoff_max_seconds: u64,

    /// Elect a leader with a Lease, so only one replica reconciles.
    #[arg(long, env = "DSO_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the leader Lease.
    #[arg(long, env = "DSO_LEASE_NAME", default_value = "dso-operator")]
    pub lease_name: String,

    /// Namespace of the leader Lease (default: POD_NAMESPACE, else --namespace, else `default`).
    #[arg(long, env = "DSO_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Seconds a Lease lasts without renewal (renewed every third of it; the leader stops
    /// leading when it could not renew for two thirds of it).
    #[arg(long, env = "DSO_LEASE_SECONDS", value_parser = clap::value_parser!(u64).range(3..), default_value_t = 15)]
    pub lease_seconds: u64,

    /// This replica's identity in the Lease and in events (default: POD_NAME, else HOSTNAME, plus the PID).
    #[arg(long, env = "DSO_IDENTITY")]
    pub identity: Option<String>,

    /// Log format: `plain` or `json`. Levels come from RUST_LOG (default `info`).
    #[arg(long, env = "DSO_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

impl Args {
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
    use clap::Parser;
    use rstest::rstest;

    #[test]
    fn the_defaults_parse() {
        let a = Args::try_parse_from(["dso-operator"]).expect("defaults");
        assert_eq!(a.aws_timeout_seconds, 10);
        assert_eq!(a.max_concurrent_rollouts, 4);
        assert_eq!(a.lease_seconds, 15);
    }

    #[rstest]
    #[case::aws_timeout_of_zero("--aws-timeout-seconds", "0")]
    #[case::no_rollout_slot("--max-concurrent-rollouts", "0")]
    #[case::rollout_timeout_of_zero("--rollout-timeout-seconds", "0")]
    #[case::no_reconcile_worker("--reconcile-concurrency", "0")]
    #[case::backoff_base_of_zero("--backoff-base-ms", "0")]
    #[case::backoff_max_of_zero("--backoff-max-seconds", "0")]
    #[case::lease_too_short_to_renew("--lease-seconds", "2")]
    #[case::negative_timeout("--aws-timeout-seconds", "-1")]
    #[case::too_many_workers("--reconcile-concurrency", "70000")]
    fn an_out_of_range_value_is_refused_at_start(#[case] flag: &str, #[case] value: &str) {
        let arg = format!("{flag}={value}");
        let e = Args::try_parse_from(["dso-operator", arg.as_str()]).expect_err("refused");
        assert!(e.to_string().contains(flag), "{e}");
    }

    #[rstest]
    #[case("--aws-timeout-seconds", "1")]
    #[case("--max-concurrent-rollouts", "1")]
    #[case("--reconcile-concurrency", "1")]
    #[case("--lease-seconds", "3")]
    fn the_smallest_allowed_value_is_accepted(#[case] flag: &str, #[case] value: &str) {
        Args::try_parse_from(["dso-operator", flag, value]).expect("accepted");
    }
}
