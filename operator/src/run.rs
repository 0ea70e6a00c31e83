//! Running the operator from its [`Args`]: clients and start-up checks, the HTTP endpoints,
//! leader election, the watches, the controller, and a graceful shutdown (on SIGTERM or
//! Ctrl-C, or when the Lease is lost).

use crate::args::{Args, LogFormat};
use crate::cache::VersionCache;
use crate::controller::{self, Context, Settings, Stores};
use crate::error::Error;
use crate::http::{Health, Phase, Synced};
use crate::lease::{self, LeaderElector, Leadership};
use crate::metrics::Metrics;
use crate::status::Events;
use crate::workload::{self, WorkloadKind};
use anyhow::Context as _;
use dso_api::DsoSecret;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::{Predicate, PredicateConfig};
use kube::runtime::{Controller, WatchStreamExt, predicates, watcher};
use kube::{Client, Resource};
use std::sync::Arc;
use tokio::sync::watch;
use tracing::{info, warn};

/// Sets up logging: `format` on stderr, levels from RUST_LOG (default `info`); JSON events carry
/// their fields at the top level. The webhook's `main::init_tracing` is the same function.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Plain => builder.try_init(),
    };
}

/// Resolves on SIGTERM or Ctrl-C (the same function as the webhook's
/// `dso_webhook::server::shutdown_signal`).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Resolves once `stop` turns true.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
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

/// How often cache entries and AWS clients nothing uses are looked for.
const FORGET_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The watch streams readiness waits for: DsoSecrets and the three workload kinds.
const STREAMS: usize = 4;

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

/// Runs the operator until a shutdown signal (or the loss of the Lease).
pub async fn run(args: Args) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let identity = args.identity();
    let ns = args.namespace.as_deref();

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let event_metrics = args
        .events_queue_url
        .is_some()
        .then(|| crate::sqs::EventMetrics::register(&mut registry));
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
    let http_addr = args.http_addr;
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("cannot listen on {http_addr}"))?;
    info!(%http_addr, "serving /metrics, /healthz, /readyz");
    let server = tokio::spawn(
        axum::serve(listener, crate::http::router(health.clone()))
            .with_graceful_shutdown(stopped(stop_rx.clone()))
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
                .operation_attempt_timeout(args.aws_timeout)
                .build(),
        )
        .load()
        .await;
    let queue = args
        .events_queue_url
        .as_deref()
        .map(|url| crate::sqs::Queue::new(&aws_config, url, args.aws_timeout));
    let aws = Arc::new(crate::aws::Aws::new(aws_config, metrics.clone()));
    info!(region = %aws.default_region(), lookup = ?args.aws_lookup, namespace = ns.unwrap_or("<all>"), secret_allowlist = args.secret_allowlist.is_some(), "AWS metadata client ready");

    let elector = args.leader_election.then(|| {
        Arc::new(LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &args.lease_namespace()),
            &args.lease_name,
            &identity,
            args.lease_duration,
        ))
    });
    let mut leadership = Leadership::always();
    if let Some(elector) = &elector {
        health.set(Phase::Standby);
        info!(identity = elector.identity(), lease = %args.lease_name, "waiting for the leader Lease");
        let Some(won) = elector.acquire(&mut stop_rx.clone()).await else {
            let _ = server.await;
            return Ok(());
        };
        leadership = won;
        info!(identity = elector.identity(), "became leader");
    }
    metrics.set_leader(true);
    health.set(Phase::Syncing);

    // Lease renewal: losing it stops the controller (another replica takes over).
    let renewal = elector.clone().map(|elector| {
        let (stop_tx, health, metrics) = (stop_tx.clone(), health.clone(), metrics.clone());
        lease::keep_renewed(elector, leadership.clone(), stop_rx.clone(), move || {
            metrics.set_leader(false);
            health.set(Phase::Failed);
            let _ = stop_tx.send(true);
        })
    });

    let synced = Synced::default();
    let (dsosecrets, dsosecret_changes) = watch::<DsoSecret>(&client, ns, keep_all, &synced);
    let (deployments, deployment_changes) =
        watch::<Deployment>(&client, ns, Deployment::slim, &synced);
    let (statefulsets, statefulset_changes) =
        watch::<StatefulSet>(&client, ns, StatefulSet::slim, &synced);
    let (daemonsets, daemonset_changes) = watch::<DaemonSet>(&client, ns, DaemonSet::slim, &synced);
    // Secrets Manager change events trigger reconciles (crate::sqs).
    let (event_tx, event_rx) = futures::channel::mpsc::unbounded();
    let controller = Controller::for_stream(dsosecret_changes, dsosecrets.clone())
        .watches_stream(deployment_changes, workload::dsosecrets_of::<Deployment>)
        .watches_stream(statefulset_changes, workload::dsosecrets_of::<StatefulSet>)
        .watches_stream(daemonset_changes, workload::dsosecrets_of::<DaemonSet>)
        .with_config(
            kube::runtime::controller::Config::default().concurrency(args.reconcile_concurrency),
        )
        .graceful_shutdown_on(stopped(stop_rx.clone()));
    metrics.watch_readiness(dsosecrets.clone());
    let controller = if queue.is_some() {
        controller.reconcile_on(event_rx)
    } else {
        controller
    };
    let stores = Stores {
        dsosecrets,
        deployments,
        statefulsets,
        daemonsets,
    };
    {
        let (health, stop, synced) = (health.clone(), stop_rx.clone(), synced.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = health.running_once_synced(&synced, STREAMS) => {}
                _ = stopped(stop) => {}
            }
        });
    }
    let events = Events::new(
        client.clone(),
        Reporter {
            controller: controller::FIELD_MANAGER.into(),
            instance: Some(identity.clone()),
        },
    );
    let ctx = Arc::new(Context::new(
        client.clone(),
        VersionCache::new(aws, args.aws_lookup),
        events,
        metrics.clone(),
        stores,
        Settings {
            backoff_base: args.backoff_base,
            backoff_max: args.backoff_max,
            rollout_timeout: args.rollout_timeout,
            rollout_settle: args.rollout_settle,
            allowlist: Arc::new(args.secret_allowlist.clone().unwrap_or_default()),
            refresh_min_interval: args.refresh_min_interval,
            max_concurrent_rollouts: args.max_concurrent_rollouts,
            detection: match &queue {
                Some(_) => crate::events::Detection::with_events(args.events_fallback_interval),
                None => crate::events::Detection::default(),
            },
        },
        leadership,
    ));
    // Forget cache entries and AWS clients nothing uses any more, every minute or so.
    {
        let (ctx, mut stop, idle) = (ctx.clone(), stop_rx.clone(), args.aws_client_idle);
        tokio::spawn(async move {
            loop {
                let pause = dso_api::backoff::spread(FORGET_EVERY, 0.2, fastrand::u64(..));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => controller::forget_unused(&ctx, idle),
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        });
    }
    if let (Some(queue), Some(event_metrics)) = (queue, event_metrics) {
        let watch = crate::sqs::ControllerWatch {
            ctx: ctx.clone(),
            trigger: event_tx,
        };
        let reader = crate::sqs::Reader::new(queue, watch, event_metrics, metrics.clone());
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            // "No DsoSecret names this secret" is only true once the cache is synced.
            tokio::select! {
                () = synced.all(STREAMS) => reader.run(stop).await,
                () = stopped(stop.clone()) => {}
            }
        });
    }
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
    let mut lost = false;
    if let (Some(elector), Some(renewal)) = (elector, renewal) {
        lost = renewal.await.unwrap_or(false);
        if !lost {
            match elector.release().await {
                Ok(()) => info!("released the leader Lease"),
                Err(e) => warn!(error = %e, "could not release the leader Lease"),
            }
        }
    }
    let _ = server.await;
    if lost {
        anyhow::bail!("lost the leader Lease");
    }
    info!("stopped");
    Ok(())
}
