//! `dso-webhook` binary: parse the configuration, build the pieces, run them.

use anyhow::Context;
use clap::Parser;
use dso_webhook::config::{Args, InjectConfig, Limits, LogFormat, runtime_tls};
use dso_webhook::store::Store;
use dso_webhook::tls::CertReloader;
use dso_webhook::{AppState, router_with, runtime_tls, server, tls};
use std::sync::Arc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    tls::install_crypto_provider();

    let config = InjectConfig::from_args(&args)?;
    let limits = Limits::from_args(&args)?;
    let runtime_tls = runtime_tls(&args)?;
    let client = match (&args.static_objects, &runtime_tls) {
        (Some(_), None) => None,
        _ => Some(
            kube::Client::try_default()
                .await
                .context("cannot build a Kubernetes client (in-cluster config or KUBECONFIG)")?,
        ),
    };
    let certs = match (&runtime_tls, &client) {
        (Some(cfg), Some(client)) => {
            let certs = CertReloader::empty();
            tokio::spawn(runtime_tls::follow_secret(
                client.clone(),
                cfg.clone(),
                certs.clone(),
            ));
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            tokio::spawn(runtime_tls::lead(client.clone(), cfg.clone(), stop));
            tokio::spawn(async move {
                server::shutdown_signal().await;
                let _ = stop_tx.send(true);
            });
            certs
        }
        _ => {
            let certs = CertReloader::load(&args.tls_cert, &args.tls_key)
                .context("cannot load the serving certificate")?;
            tokio::spawn(certs.clone().run(args.tls_reload_interval));
            certs
        }
    };
    let store = match (&args.static_objects, client) {
        (Some(path), _) => Store::from_file(path)?,
        (None, client) => {
            let client = client.context("no Kubernetes client")?;
            let (store, watches) = Store::watch(client, args.cache_stale_after);
            tokio::spawn(watches);
            store
        }
    };
    // Ready once the caches are synced and a certificate is loaded (run-time mode: from the
    // Secret, which may take the leader's first issue).
    let ready = {
        let s = store.clone();
        let certs = certs.clone();
        Arc::new(move || s.is_ready() && certs.is_loaded())
    };
    let state = AppState::new(Arc::new(store.clone()), ready, config);
    {
        let state = state.clone();
        tokio::spawn(async move {
            store.wait_until_ready().await;
            let (secrets, accounts) = store.len();
            state.metrics().set_ready(true);
            tracing::info!(secrets, accounts, "watch caches synced: ready");
        });
    }

    if let Some(addr) = args.admin_listen {
        let listener = server::bind(addr).await?;
        let admin = dso_webhook::router::admin_router(state.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, admin)
                .with_graceful_shutdown(server::shutdown_signal())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "admin server failed");
            }
        });
    }
    if runtime_tls.is_some() && !certs.is_loaded() {
        // Not before a certificate is loaded: an API server that calls by URL (host network)
        // ignores readiness, and a handshake without a certificate fails every opted-in pod.
        tracing::info!(listen = %args.listen, "waiting for the certificate Secret before serving admission reviews");
        let loaded = async {
            while !certs.is_loaded() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            () = loaded => {},
            () = server::shutdown_signal() => return Ok(()),
        }
    }
    let listener = server::bind(args.listen).await?;
    tracing::info!(listen = %args.listen, "serving admission reviews");
    server::serve_tls(
        listener,
        certs.server_config(),
        router_with(state, &limits),
        server::shutdown_signal(),
        server::Shutdown {
            drain: args.shutdown_drain,
            grace: args.shutdown_grace,
        },
        limits,
    )
    .await;
    Ok(())
}

/// Sets up logging: `format` on stderr, levels from RUST_LOG (default `info`); JSON events carry
/// their fields at the top level. The operator's `run::init_tracing` is the same function.
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Plain => builder.try_init(),
    };
}
