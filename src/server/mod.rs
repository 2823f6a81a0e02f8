//! The gRPC server: the function's services, health, reflection, and shutdown with a drain.
//!
//! Shutdown (SPEC §3): on SIGTERM or SIGINT health turns NOT_SERVING and new calls are refused
//! with UNAVAILABLE while calls in flight run on; when they are done, or the grace period is
//! over (then the rest end with UNAVAILABLE), the server stops and `serve` returns.
//!
//! The services are served on the TCP port, on a Unix socket (`--socket`, `--socket-dir`), or
//! both: one server, the same services, limits, deadlines and drain. At the signal the Unix
//! socket's file is removed before anything else (the instance deregisters), then the drain.

pub mod admin;
pub mod authority;
pub mod call;
pub mod codec;
pub mod drain;
pub(crate) mod http;
pub mod in_process;
pub mod listener;
pub mod metrics;
pub mod openwhisk;
pub mod riff;
pub mod socket;
pub mod socket_file;
pub mod statefun;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::net::TcpListener;
use tonic::transport::Server;

use self::call::{CallService, MessageFunctionServer};
use self::drain::Calls;
use self::listener::{ConnectionLimits, Listener, incoming};
use self::riff::{RiffServer, RiffService};
use self::socket::GrpcSocket;
use crate::live::Live;
use crate::proto::FILE_DESCRIPTOR_SET;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Host to bind.
    pub host: String,
    /// Port to bind (0 for any).
    pub port: u16,
    /// Whether to open the TCP port (`--no-tcp` serves on the Unix socket alone).
    pub tcp: bool,
    /// How long calls in flight may run on after a shutdown signal.
    pub grace: Duration,
    /// Bounds on connections.
    pub connections: ConnectionLimits,
    /// HTTP/2 streams (calls) open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams_per_connection: u32,
    /// How often an HTTP/2 ping checks a connection, and how long its answer may take.
    pub keepalive_interval: Duration,
    /// How long a keepalive ping's answer may take before the connection is closed.
    pub keepalive_timeout: Duration,
}

impl ServeOptions {
    /// The server's settings from `invoker serve`'s arguments.
    pub(crate) fn from_args(args: &crate::cli::ServeArgs) -> ServeOptions {
        let limits = &args.limits;
        ServeOptions {
            host: args.host.clone(),
            port: args.port,
            tcp: !args.socket.no_tcp,
            grace: args.grace_period,
            connections: ConnectionLimits {
                max_connections: limits.max_connections as usize,
                handshake_timeout: limits.handshake_timeout,
                idle_timeout: limits.idle_timeout,
            },
            max_streams_per_connection: limits.max_streams_per_connection,
            keepalive_interval: limits.keepalive_interval,
            keepalive_timeout: limits.keepalive_timeout,
        }
    }
}

/// Where the server listens: the TCP port, the Unix socket, or both (at least one).
#[derive(Debug, Default)]
pub struct Listeners {
    /// The TCP port.
    pub tcp: Option<TcpListener>,
    /// The Unix socket, and its file (removed first at the signal).
    pub unix: Option<GrpcSocket>,
}

/// Binds the port (unless `options.tcp` is false) and serves, there and on `socket`, until
/// `signal` (SIGTERM/SIGINT) and the drain are done.
pub async fn serve(
    options: ServeOptions,
    socket: Option<GrpcSocket>,
    live: Arc<Live>,
    calls: Arc<Calls>,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if !options.tcp {
        let listeners = Listeners {
            tcp: None,
            unix: socket,
        };
        return serve_on(listeners, &options, live, calls, signal).await;
    }
    let listener =
        listener::bind_tcp(&options.host, options.port, "", "--port or GRPC_PORT").await?;
    let listeners = Listeners {
        tcp: Some(listener),
        unix: socket,
    };
    serve_on(listeners, &options, live, calls, signal).await
}

/// Serves on bound listeners until `signal` completes and the drain is done.
pub async fn serve_on(
    listeners: Listeners,
    options: &ServeOptions,
    live: Arc<Live>,
    calls: Arc<Calls>,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = match &listeners.tcp {
        Some(listener) => Some(listener.local_addr()?),
        None => None,
    };
    let (unix_listener, socket_file) = match listeners.unix {
        Some(GrpcSocket { listener, file }) => (Some(listener), Some(file)),
        None => (None, None),
    };
    let socket_path = socket_file.as_ref().map(|f| f.path().to_path_buf());
    let connections = options.connections;
    let accepted = match (listeners.tcp, unix_listener) {
        (Some(tcp), Some(unix)) => futures_util::stream::select(
            incoming(Listener::Tcp(tcp), connections),
            incoming(Listener::Unix(unix), connections),
        )
        .boxed(),
        (Some(tcp), None) => incoming(Listener::Tcp(tcp), connections).boxed(),
        (None, Some(unix)) => incoming(Listener::Unix(unix), connections).boxed(),
        (None, None) => anyhow::bail!("nothing to listen on: no TCP port and no Unix socket"),
    };
    let grace = options.grace;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<MessageFunctionServer<CallService>>()
        .await;
    health.set_serving::<RiffServer<RiffService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    if let Some(workers) = live.watch_workers() {
        tokio::spawn(follow_workers(workers, health.clone(), calls.clone()));
    }
    let function = live.current().function;
    let call_service = MessageFunctionServer::new(CallService::new(live.clone(), calls.clone()));
    let riff_service = RiffServer::new(RiffService::new(live, calls.clone()));

    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let drain = {
        let calls = calls.clone();
        async move {
            signal.await;
            // Deregistered first: coordinators stop choosing this instance while calls drain.
            if let Some(file) = socket_file {
                let path = file.path().display().to_string();
                drop(file);
                tracing::info!(socket = %path, "removed the gRPC socket (deregistered)");
            }
            tracing::info!(
                in_flight = calls.in_flight(),
                "shutting down: draining calls in flight"
            );
            calls.start_draining();
            health
                .set_not_serving::<MessageFunctionServer<CallService>>()
                .await;
            health.set_not_serving::<RiffServer<RiffService>>().await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            calls.run_out(grace).await;
            tracing::info!("drained");
            let _ = drained_tx.send(());
        }
    };

    let shown_socket = socket_path.as_ref().map(|p| p.display().to_string());
    if let Some(addr) = addr {
        tracing::info!(%addr, function, "serving");
    }
    if let Some(socket) = &shown_socket {
        tracing::info!(%socket, function, "serving on the Unix socket");
    }
    // `listening on` comes last, once everything is bound: the TCP address, or with the
    // socket alone, `unix:PATH`.
    match (addr, &shown_socket) {
        (Some(addr), Some(socket)) => {
            println!("grpc socket at {socket}");
            println!("listening on {addr}");
        }
        (Some(addr), None) => println!("listening on {addr}"),
        (None, Some(socket)) => println!("listening on unix:{socket}"),
        (None, None) => {}
    }
    let server = Server::builder()
        .max_concurrent_streams(options.max_streams_per_connection)
        .http2_keepalive_interval(Some(options.keepalive_interval))
        .http2_keepalive_timeout(Some(options.keepalive_timeout))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(call_service)
        .add_service(riff_service)
        .serve_with_incoming_shutdown(accepted, drain);
    // After the drain, clients get a moment to close their connections; one that does not
    // answer cannot keep the process alive.
    let linger = async {
        if drained_rx.await.is_ok() {
            tokio::time::sleep(CONNECTION_LINGER).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = server => served?,
        () = linger => tracing::warn!("closing connections that did not close after the drain"),
    }
    Ok(())
}

/// With `--isolation process`: health follows the worker processes, SERVING while at least
/// one is up and NOT_SERVING while none is (all crashed and waiting for their restart), until
/// the drain (which turns it NOT_SERVING for good).
async fn follow_workers(
    mut workers: tokio::sync::watch::Receiver<crate::function::worker::WorkerStats>,
    health: tonic_health::server::HealthReporter,
    calls: Arc<Calls>,
) {
    let mut serving = true;
    loop {
        let up = workers.borrow_and_update().up > 0;
        if calls.is_draining() {
            return;
        }
        if up != serving {
            serving = up;
            let status = match up {
                true => tonic_health::ServingStatus::Serving,
                false => tonic_health::ServingStatus::NotServing,
            };
            if up {
                tracing::info!("a worker process is up again: health is SERVING");
            } else {
                tracing::warn!("no worker process is up: health is NOT_SERVING until one restarts");
            }
            for service in [
                "",
                <MessageFunctionServer<CallService> as tonic::server::NamedService>::NAME,
                <RiffServer<RiffService> as tonic::server::NamedService>::NAME,
            ] {
                health.set_service_status(service, status).await;
            }
            if up && calls.is_draining() {
                // The drain began meanwhile: it has the last word.
                for service in [
                    "",
                    <MessageFunctionServer<CallService> as tonic::server::NamedService>::NAME,
                    <RiffServer<RiffService> as tonic::server::NamedService>::NAME,
                ] {
                    health
                        .set_service_status(service, tonic_health::ServingStatus::NotServing)
                        .await;
                }
                return;
            }
        }
        if workers.changed().await.is_err() {
            return;
        }
    }
}

/// How long connections may stay open after the drain (kept short: the process ends within
/// the grace period and a second of the signal, see `run`).
const CONNECTION_LINGER: Duration = Duration::from_millis(500);
