//! Starting the daemon: read the configuration, load the function and run its init hook, then
//! bind the port (an open port means a loaded, initialised function), then serve: gRPC, and
//! optionally the admin socket and `/metrics`. After the drain, the shutdown hooks run.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::Exit;
use crate::cli::ServeArgs;
use crate::engine::pool::{Limits as PoolLimits, Pool};
use crate::function::uri::FunctionUri;
use crate::live::Live;
use crate::server::admin::{AdminService, bind_admin_socket, reload_uri, serve_admin};
use crate::server::drain::Calls;
use crate::server::listener::bind_tcp;
use crate::server::metrics::serve_metrics;
use crate::server::socket::{SocketSpec, bind_grpc_socket};
use crate::server::{ServeOptions, serve as serve_grpc};
use crate::stats::Stats;

/// `invoker serve`.
pub fn serve(args: ServeArgs) -> anyhow::Result<Exit> {
    // Before the library is loaded: a crash in its initialisers or init hook is named too.
    super::install_crash_handler();
    let uri = FunctionUri::parse(&args.function_uri)?;
    let socket_spec = SocketSpec::from_args(&args.socket)?;
    let config = args.config.load()?;
    let stats = Arc::new(Stats::new());
    let pool = Arc::new(Pool::new(
        PoolLimits::from_args(&args.limits),
        stats.clone(),
    ));
    let runtime = super::serving_runtime()?;
    let live = Arc::new(Live::start_isolated(
        &uri.path,
        uri.handler.as_deref(),
        &instance_id(),
        config,
        stats,
        pool,
        super::worker_options(&args.isolation),
    )?);
    let current = live.current();
    tracing::info!(
        function = %current.function,
        library = %current.library.display(),
        sdk = %current.sdk_version,
        "function loaded"
    );
    let terminate = CancellationToken::new();
    watch_for_termination(terminate.clone(), args.grace_period)?;
    let served = runtime.block_on(async {
        let calls = Arc::new(Calls::with_max(args.limits.max_calls as usize));
        let stop = CancellationToken::new();
        let mut helpers = tokio::task::JoinSet::new();
        // Every listener is bound before the gRPC port prints `listening on`; one that cannot
        // be bound fails start-up here, before that line.
        if let Some(port) = args.metrics_port {
            let listener = bind_tcp(
                &args.host,
                port,
                " for /metrics",
                "--metrics-port or METRICS_PORT",
            )
            .await?;
            println!("metrics on http://{}/metrics", listener.local_addr()?);
            let stopped = stop.clone().cancelled_owned();
            helpers.spawn(serve_metrics(
                listener,
                live.clone(),
                args.metrics_header_timeout,
                stopped,
            ));
        }
        if let Some(path) = &args.admin_socket {
            let socket = bind_admin_socket(path)?;
            let service = AdminService::new(
                live.clone(),
                calls.clone(),
                uri.path.clone(),
                uri.handler.clone(),
            );
            let stopped = stop.clone().cancelled_owned();
            helpers.spawn(serve_admin(socket, service, stopped));
        }
        let socket = socket_spec.as_ref().map(bind_grpc_socket).transpose()?;
        // Installed before the port opens: SIGHUP's default action would end the process.
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        helpers.spawn(reload_on_sighup(
            live.clone(),
            uri.clone(),
            hangups,
            stop.clone(),
        ));
        let options = ServeOptions::from_args(&args);
        let terminated = terminate.clone().cancelled_owned();
        let served = tokio::select! {
            served = serve_grpc(options, socket, live.clone(), calls, terminated) => served,
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
    crate::function::flush_panic_log();
    served.map(|()| Exit::SUCCESS)
}

/// How long shutdown waits for tasks still running after the drain.
pub(super) const BLOCKED_CALL_WAIT: Duration = Duration::from_millis(300);

/// How long after SIGTERM, past the grace period, the process may take to end at most.
const EXIT_MARGIN: Duration = Duration::from_secs(1);

/// Watches for SIGTERM and SIGINT on a thread of its own, with its own small runtime, so that
/// nothing the function does to the serving runtime's workers (a streaming function that
/// blocks or spins) can keep the signal from being seen. On the signal it starts the drain
/// (`terminate`), and if the process has not ended by the grace period plus [`EXIT_MARGIN`],
/// it ends it (exit code 1, logged), without the shutdown hooks.
pub(super) fn watch_for_termination(
    terminate: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal thread's runtime")?;
    // Installed now, before the port opens, so an early signal is not missed.
    let (mut sigterm, mut sigint) = runtime
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        })
        .context("cannot listen for SIGTERM/SIGINT")?;
    std::thread::Builder::new()
        .name("invoker-signals".into())
        .spawn(move || {
            runtime.block_on(async {
                tokio::select! {
                    _ = sigterm.recv() => tracing::info!("SIGTERM received"),
                    _ = sigint.recv() => tracing::info!("SIGINT received"),
                }
                terminate.cancel();
                tokio::time::sleep(grace + EXIT_MARGIN).await;
            });
            tracing::error!(
                grace_seconds = grace.as_secs_f64(),
                "the drain did not end within the grace period and a second (a call blocked in the function, or a slow shutdown hook): exiting now"
            );
            std::process::exit(1);
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

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
pub(super) fn instance_id() -> String {
    crate::env::hostname().map_or_else(
        || format!("invoker-{}", std::process::id()),
        |h| format!("{h}-{}", std::process::id()),
    )
}
