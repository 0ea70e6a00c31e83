//! Configuration (one clap struct, every flag with an environment fallback) and the wiring
//! that runs the operator: clients, start-up checks, leader election, watches, the controller,
//! the HTTP endpoints, and a graceful shutdown.

use crate::cache::{LookupMode, VersionCache};
use crate::controller::{self, Context, Settings, Stores};
use crate::error::Error;
use crate::http::{Health, Phase};
use crate::lease::LeaderElector;
use crate::metrics::Metrics;
use crate::workload::{self, WorkloadKind};
use anyhow::Context as _;
use dso_api::DsoSecret;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::{Predicate, PredicateConfig};
use kube::runtime::{Controller, WatchStreamExt, predicates, watcher};
use kube::{Client, Resource};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{error, info, warn};

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
    #[arg(long, env = "DSO_LOG_FORMAT", default_value = "plain")]
    pub log_format: LogFormat,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

async fn wait(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Plain => builder.try_init(),
    };
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Counts watch streams that finished their initial list (readiness). Store readiness cannot
/// be awaited here: kube's `Store::wait_until_ready` wakes only one of several waiters, and the
/// controller already waits on its own store.
#[derive(Clone, Default)]
struct Synced(Arc<std::sync::atomic::AtomicUsize>);

impl Synced {
    /// A stream inspector that counts the first `InitDone` of one stream.
    fn marker<K>(&self) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) + Send + 'static {
        let (count, mut done) = (self.0.clone(), false);
        move |event| {
            if !done && matches!(event, Ok(watcher::Event::InitDone)) {
                done = true;
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A reflector for one kind, and the stream of its meaningful changes for the controller.
fn watch<K>(
    client: &Client,
    namespace: Option<&str>,
    slim: fn(&mut K),
    synced: &Synced,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api::<K>(client, namespace), watcher::Config::default())
        .default_backoff()
        .modify(slim)
        .inspect(synced.marker())
        .reflect(writer)
        .applied_objects()
        // Only spec (generation) and annotation changes matter: a status write or a replica
        // count change would only cause a no-op reconcile.
        .predicate_filter(
            predicates::generation.combine(predicates::annotations),
            PredicateConfig::default(),
        );
    (reader, stream)
}

fn keep_all<K>(_: &mut K) {}

impl Args {
    /// Runs the operator until a shutdown signal (or the loss of the Lease).
    pub async fn run(self) -> anyhow::Result<()> {
        let Args {
            namespace,
            http_addr,
            aws_lookup,
            aws_timeout_seconds,
            max_concurrent_rollouts,
            rollout_timeout_seconds,
            reconcile_concurrency,
            backoff_base_ms,
            backoff_max_seconds,
            leader_election,
            lease_name,
            lease_namespace,
            lease_seconds,
            identity,
            log_format,
        } = self;
        init_tracing(log_format);
        let _ = rustls::crypto::ring::default_provider().install_default();

        let identity = identity.unwrap_or_else(|| {
            let host = std::env::var("POD_NAME")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_else(|_| "dso-operator".into());
            format!("{host}-{}", std::process::id())
        });
        let ns = namespace.as_deref();

        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut registry);
        let health = Health::new(registry);
        let (stop_tx, stop_rx) = watch::channel(false);
        {
            let stop_tx = stop_tx.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                info!("shutdown signal received");
                let _ = stop_tx.send(true);
            });
        }
        let listener = tokio::net::TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("cannot listen on {http_addr}"))?;
        info!(%http_addr, "serving /metrics, /healthz, /readyz");
        let server = tokio::spawn(
            axum::serve(listener, crate::http::router(health.clone()))
                .with_graceful_shutdown(wait(stop_rx.clone()))
                .into_future(),
        );

        let client = Client::try_default()
            .await
            .context("cannot build a Kubernetes client (in-cluster config or KUBECONFIG)")?;
        api::<DsoSecret>(&client, ns)
            .list(&ListParams::default().limit(1))
            .await
            .map_err(Error::startup_check)?;

        let aws_config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_secs(aws_timeout_seconds))
                    .build(),
            )
            .load()
            .await;
        let aws = Arc::new(crate::aws::Aws::new(aws_config, metrics.clone()));
        info!(region = %aws.default_region(), lookup = ?aws_lookup, namespace = ns.unwrap_or("<all>"), "AWS metadata client ready");

        let elector = leader_election.then(|| {
            let lease_ns = lease_namespace
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .or_else(|| namespace.clone())
                .unwrap_or_else(|| "default".into());
            LeaderElector::new(
                Api::<Lease>::namespaced(client.clone(), &lease_ns),
                &lease_name,
                &identity,
                Duration::from_secs(lease_seconds),
            )
        });
        if let Some(elector) = &elector {
            health.set(Phase::Standby);
            info!(identity = elector.identity(), lease = %lease_name, "waiting for the leader Lease");
            loop {
                match elector.try_acquire_or_renew().await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "leader election attempt failed"),
                }
                let mut rx = stop_rx.clone();
                tokio::select! {
                    _ = tokio::time::sleep(elector.duration() / 5) => {},
                    _ = rx.wait_for(|s| *s) => {
                        let _ = server.await;
                        return Ok(());
                    }
                }
            }
            info!(identity = elector.identity(), "became leader");
        }
        metrics.set_leader(true);
        health.set(Phase::Syncing);

        // Lease renewal: losing it stops the controller (another replica takes over).
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let renewer = elector.map(|elector| {
            let (stop_tx, mut stop_rx, lost, health, metrics) =
                (stop_tx.clone(), stop_rx.clone(), lost.clone(), health.clone(), metrics.clone());
            let elector = Arc::new(elector);
            let handle = {
                let elector = elector.clone();
                tokio::spawn(async move {
                    let duration = elector.duration();
                    let mut last_ok = std::time::Instant::now();
                    let mut pause = duration / 3;
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {},
                            _ = stop_rx.wait_for(|s| *s) => return,
                        }
                        // An attempt may not outlive the renew deadline (a hung call included).
                        let left = crate::lease::renew_deadline(duration)
                            .saturating_sub(last_ok.elapsed());
                        let attempt =
                            tokio::time::timeout(left, elector.try_acquire_or_renew()).await;
                        match attempt {
                            Ok(Ok(true)) => {
                                last_ok = std::time::Instant::now();
                                pause = duration / 3;
                            }
                            Ok(Ok(false)) => {
                                error!("lost the leader Lease to another replica; stopping");
                                break;
                            }
                            Ok(Err(e))
                                if crate::lease::still_leading(
                                    last_ok,
                                    duration,
                                    std::time::Instant::now(),
                                ) =>
                            {
                                warn!(error = %e, "Lease renewal failed; retrying");
                                pause = duration / 10;
                            }
                            Ok(Err(e)) => {
                                error!(error = %e, "could not renew the leader Lease before the renew deadline; stopping");
                                break;
                            }
                            Err(_) => {
                                error!("Lease renewal did not answer before the renew deadline; stopping");
                                break;
                            }
                        }
                    }
                    lost.store(true, std::sync::atomic::Ordering::SeqCst);
                    metrics.set_leader(false);
                    health.set(Phase::Failed);
                    let _ = stop_tx.send(true);
                })
            };
            (elector, handle)
        });

        let synced = Synced::default();
        let (dsosecrets, dsosecret_changes) = watch::<DsoSecret>(&client, ns, keep_all, &synced);
        let (deployments, deployment_changes) =
            watch::<Deployment>(&client, ns, Deployment::slim, &synced);
        let (statefulsets, statefulset_changes) =
            watch::<StatefulSet>(&client, ns, StatefulSet::slim, &synced);
        let (daemonsets, daemonset_changes) =
            watch::<DaemonSet>(&client, ns, DaemonSet::slim, &synced);
        let controller = Controller::for_stream(dsosecret_changes, dsosecrets.clone())
            .watches_stream(deployment_changes, workload::dsosecrets_of::<Deployment>)
            .watches_stream(statefulset_changes, workload::dsosecrets_of::<StatefulSet>)
            .watches_stream(daemonset_changes, workload::dsosecrets_of::<DaemonSet>)
            .with_config(
                kube::runtime::controller::Config::default().concurrency(reconcile_concurrency),
            )
            .graceful_shutdown_on(wait(stop_rx.clone()));
        let stores = Stores {
            dsosecrets,
            deployments,
            statefulsets,
            daemonsets,
        };
        {
            let (health, mut rx) = (health.clone(), stop_rx.clone());
            tokio::spawn(async move {
                let all_synced = async {
                    while synced.count() < 4 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                };
                tokio::select! {
                    _ = all_synced => {
                        if health.phase() == Phase::Syncing {
                            health.set(Phase::Running);
                            info!("watch caches synced; reconciling");
                        }
                    }
                    _ = rx.wait_for(|s| *s) => {}
                }
            });
        }
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: controller::FIELD_MANAGER.into(),
                instance: Some(identity.clone()),
            },
        );
        let ctx = Arc::new(Context::new(
            client.clone(),
            VersionCache::new(aws, aws_lookup),
            recorder,
            metrics.clone(),
            stores,
            Settings {
                backoff_base: Duration::from_millis(backoff_base_ms),
                backoff_max: Duration::from_secs(backoff_max_seconds),
                rollout_timeout: Duration::from_secs(rollout_timeout_seconds),
            },
            max_concurrent_rollouts,
        ));
        controller
            .run(controller::reconcile, controller::error_policy, ctx)
            .for_each(|res| async move {
                if let Err(e) = res {
                    match e {
                        kube::runtime::controller::Error::ReconcilerFailed(..) => {}
                        kube::runtime::controller::Error::ObjectNotFound(_) => {}
                        other => warn!(error = %other, "controller stream error"),
                    }
                }
            })
            .await;

        if health.phase() != Phase::Failed {
            health.set(Phase::ShuttingDown);
        }
        let _ = stop_tx.send(true);
        metrics.set_leader(false);
        if let Some((elector, handle)) = renewer {
            let _ = handle.await;
            if !lost.load(std::sync::atomic::Ordering::SeqCst) {
                match elector.release().await {
                    Ok(()) => info!("released the leader Lease"),
                    Err(e) => warn!(error = %e, "could not release the leader Lease"),
                }
            }
        }
        let _ = server.await;
        if lost.load(std::sync::atomic::Ordering::SeqCst) {
            anyhow::bail!("lost the leader Lease");
        }
        info!("stopped");
        Ok(())
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
