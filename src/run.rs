//! Starting the daemon: read the configuration, load the function and run its init hook, then
//! bind the port (an open port means a loaded, initialised function), then serve: gRPC, and
//! optionally the admin socket and `/metrics`. After the drain, the shutdown hooks run.

use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminService, reload_uri, serve_admin, serve_metrics};
use crate::cli::ServeArgs;
use crate::function::uri::FunctionUri;
use crate::live::Live;
use crate::server::{Calls, ServeOptions, serve as serve_grpc};
use crate::stats::Stats;

/// `invoker serve`.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let uri = FunctionUri::parse(&args.function_uri)?;
    let config = crate::config::load(args.config.as_deref(), args.function_config.as_deref())?;
    let stats = Arc::new(Stats::new());
    let live = Arc::new(Live::start(
        &uri.path,
        uri.handler.as_deref(),
        &instance_id(),
        config,
        stats,
    )?);
    let current = live.current();
    tracing::info!(
        function = %current.function,
        library = %current.library.display(),
        sdk = %current.sdk_version,
        "function loaded"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async {
        let calls = Arc::new(Calls::default());
        let stop = CancellationToken::new();
        let mut helpers = tokio::task::JoinSet::new();
        if let Some(port) = args.metrics_port {
            let listener = tokio::net::TcpListener::bind((args.host.as_str(), port))
                .await
                .with_context(|| format!("cannot listen for /metrics on {}:{port}", args.host))?;
            println!("metrics on http://{}/metrics", listener.local_addr()?);
            let stopped = stop.clone().cancelled_owned();
            helpers.spawn(serve_metrics(listener, live.clone(), stopped));
        }
        if let Some(socket) = args.admin_socket.clone() {
            let service = AdminService::new(
                live.clone(),
                calls.clone(),
                uri.path.clone(),
                uri.handler.clone(),
            );
            let stopped = stop.clone().cancelled_owned();
            helpers.spawn(async move { serve_admin(&socket, service, stopped).await });
        }
        // Installed before the port opens: SIGHUP's default action would end the process.
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        helpers.spawn(reload_on_sighup(
            live.clone(),
            uri.clone(),
            hangups,
            stop.clone(),
        ));
        let options = ServeOptions {
            host: args.host,
            port: args.port,
            grace: args.grace_period,
        };
        let served = tokio::select! {
            served = serve_grpc(options, live.clone(), calls) => served,
            // A helper that fails (its port or socket is taken) stops the daemon.
            Some(Ok(Err(e))) = helpers.join_next() => Err(e),
        };
        stop.cancel();
        while helpers.join_next().await.is_some() {}
        served
    });
    // A request/reply call still blocked in the function after the grace period (its caller
    // already got UNAVAILABLE) holds a blocking-pool thread that nothing can stop: dropping the
    // runtime would wait for it forever. Give it a moment, then leave it behind.
    runtime.shutdown_timeout(BLOCKED_CALL_WAIT);
    // After the drain (or a failed start), every loaded library's shutdown hook runs once.
    live.shutdown();
    served
}

/// How long shutdown waits for calls still blocked in the function after the drain.
const BLOCKED_CALL_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Reloads the file `FUNCTION_URI` names on each SIGHUP, until `stop`.
async fn reload_on_sighup(
    live: Arc<Live>,
    uri: FunctionUri,
    mut hangups: tokio::signal::unix::Signal,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            Some(()) = hangups.recv() => {
                tracing::info!(library = %uri.path.display(), "SIGHUP: reloading the function");
                reload_uri(live.clone(), uri.path.clone(), uri.handler.clone()).await;
            }
        }
    }
}

/// This instance's id: the pod name when there is one, else host name and process id.
fn instance_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .map_or_else(
            || format!("invoker-{}", std::process::id()),
            |h| format!("{h}-{}", std::process::id()),
        )
}
