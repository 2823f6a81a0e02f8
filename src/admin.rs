//! Operating a running invoker: the admin gRPC service on a Unix socket (status, reload), the
//! `invoker status` / `invoker reload` clients for it, and Prometheus `/metrics` over HTTP.
//!
//! The admin service listens only on a Unix socket, so only processes that can reach the
//! socket file (the pod's own containers, or an operator with `kubectl exec`) can replace the
//! function; nothing on the network can.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status};

use crate::live::Live;
use crate::protocol::proto::admin::admin_client::AdminClient;
use crate::protocol::proto::admin::admin_server::{Admin, AdminServer};
use crate::protocol::proto::admin::{
    LoadReply, LoadRequest, RecentError, StatusReply, StatusRequest,
};
use crate::server::Calls;

/// The admin service.
#[derive(Debug)]
pub struct AdminService {
    live: Arc<Live>,
    calls: Arc<Calls>,
    /// The library `FUNCTION_URI` names, reloaded by an empty `LoadRequest` (and SIGHUP).
    uri_library: PathBuf,
    uri_handler: Option<String>,
    started: Instant,
}

impl AdminService {
    /// A service reporting on, and reloading, `live`.
    pub fn new(
        live: Arc<Live>,
        calls: Arc<Calls>,
        uri_library: PathBuf,
        uri_handler: Option<String>,
    ) -> Self {
        AdminService {
            live,
            calls,
            uri_library,
            uri_handler,
            started: Instant::now(),
        }
    }
}

/// Reloads the library `FUNCTION_URI` names (SIGHUP), logging the outcome.
pub async fn reload_uri(live: Arc<Live>, library: PathBuf, handler: Option<String>) {
    let reloaded =
        tokio::task::spawn_blocking(move || live.reload(&library, handler.as_deref())).await;
    match reloaded {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!("reload failed; the old function keeps serving: {e:#}"),
        Err(e) => tracing::error!("reload failed; the old function keeps serving: {e}"),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let current = self.live.current();
        let stats = self.live.stats().snapshot();
        let state = if self.calls.is_draining() {
            "DRAINING"
        } else {
            "SERVING"
        };
        Ok(Response::new(StatusReply {
            state: state.to_owned(),
            function: current.function,
            library: current.library.display().to_string(),
            sdk_version: current.sdk_version,
            library_version: current.library_version,
            generation: current.generation,
            instance_id: self.live.instance_id().to_owned(),
            messages_received: stats.received,
            messages_sent: stats.sent,
            user_errors: stats.user_errors,
            panics: stats.panics,
            calls: stats.calls,
            calls_in_flight: self.calls.in_flight() as u64,
            calls_running: stats.running,
            calls_queued: stats.queued,
            calls_rejected: stats.rejected,
            max_concurrency: stats.limits.0 as u64,
            max_queued: stats.limits.1 as u64,
            average_call_millis: stats.average_call.as_secs_f64() * 1e3,
            recent_errors: stats
                .recent_errors
                .into_iter()
                .map(|e| RecentError {
                    unix_millis: e.unix_millis,
                    message: e.message,
                })
                .collect(),
            custom_metrics: stats.custom.into_iter().collect(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
        }))
    }

    async fn load(&self, request: Request<LoadRequest>) -> Result<Response<LoadReply>, Status> {
        let request = request.into_inner();
        let (library, handler) = if request.library.is_empty() {
            (self.uri_library.clone(), self.uri_handler.clone())
        } else {
            (PathBuf::from(request.library), None)
        };
        let handler = Some(request.handler).filter(|h| !h.is_empty()).or(handler);
        let live = self.live.clone();
        let current =
            tokio::task::spawn_blocking(move || live.reload(&library, handler.as_deref()))
                .await
                .map_err(|e| Status::internal(format!("the reload did not finish: {e}")))?
                .map_err(|e| {
                    tracing::error!("reload failed; the old function keeps serving: {e:#}");
                    Status::failed_precondition(format!(
                        "reload failed; the old function keeps serving: {e:#}"
                    ))
                })?;
        Ok(Response::new(LoadReply {
            function: current.function,
            library: current.library.display().to_string(),
            generation: current.generation,
        }))
    }
}

/// Serves the admin service on a Unix socket at `path` until `shutdown` completes.
pub async fn serve_admin(
    path: &Path,
    service: AdminService,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // A socket file left by an earlier process would make bind fail.
    if std::fs::symlink_metadata(path).is_ok() {
        std::fs::remove_file(path)
            .with_context(|| format!("cannot replace the admin socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot listen on the admin socket {}", path.display()))?;
    tracing::info!(socket = %path.display(), "admin service listening");
    Server::builder()
        .add_service(AdminServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Serves Prometheus text on `http://host:port/metrics` until `shutdown` completes.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    live: Arc<Live>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let live = live.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    live.stats().prometheus_text(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Clients

async fn connect(socket: &Path) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
    let socket = socket.to_path_buf();
    let shown = socket.display().to_string();
    // The URI is required by the API but unused: every connection goes to the socket.
    let channel = Endpoint::try_from("http://invoker.admin")?
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .with_context(|| format!("cannot reach the invoker's admin socket {shown}"))?;
    Ok(AdminClient::new(channel))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `invoker status`: prints the status as JSON. Exits with the gRPC code on failure.
pub fn status(socket: &Path) -> anyhow::Result<i32> {
    runtime()?.block_on(async {
        let mut client = connect(socket).await?;
        let reply = match client.status(StatusRequest {}).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                eprintln!("invoker: {}", status.message());
                return Ok(status.code() as i32);
            }
        };
        let errors: Vec<_> = reply
            .recent_errors
            .iter()
            .map(|e| serde_json::json!({"unix_millis": e.unix_millis, "message": e.message}))
            .collect();
        let json = serde_json::json!({
            "state": reply.state,
            "function": reply.function,
            "library": reply.library,
            "sdk_version": reply.sdk_version,
            "library_version": reply.library_version,
            "generation": reply.generation,
            "instance_id": reply.instance_id,
            "messages_received": reply.messages_received,
            "messages_sent": reply.messages_sent,
            "user_errors": reply.user_errors,
            "panics": reply.panics,
            "calls": reply.calls,
            "calls_in_flight": reply.calls_in_flight,
            "calls_running": reply.calls_running,
            "calls_queued": reply.calls_queued,
            "calls_rejected": reply.calls_rejected,
            "max_concurrency": reply.max_concurrency,
            "max_queued": reply.max_queued,
            "average_call_millis": reply.average_call_millis,
            "recent_errors": errors,
            "custom_metrics": reply.custom_metrics,
            "uptime_seconds": reply.uptime_seconds,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        Ok(0)
    })
}

/// `invoker reload`: replaces the function; prints what serves now. Exits with the gRPC code.
pub fn reload(socket: &Path, library: Option<&Path>, handler: Option<&str>) -> anyhow::Result<i32> {
    runtime()?.block_on(async {
        let mut client = connect(socket).await?;
        let library = match library {
            // The daemon may run elsewhere in the file system: send an absolute path.
            Some(path) => std::path::absolute(path)?.display().to_string(),
            None => String::new(),
        };
        let request = LoadRequest {
            library,
            handler: handler.unwrap_or_default().to_owned(),
        };
        match client.load(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                println!(
                    "serving '{}' from {} (generation {})",
                    reply.function, reply.library, reply.generation
                );
                Ok(0)
            }
            Err(status) => {
                eprintln!("invoker: {}", status.message());
                Ok(status.code() as i32)
            }
        }
    })
}
