//! The admin gRPC service on a Unix socket (status, reload); its clients are
//! `invoker status` / `invoker reload` (`cmd::admin`).
//!
//! The admin service listens only on a Unix socket, so only processes that can reach the
//! socket file (the pod's own containers, or an operator with `kubectl exec`) can replace the
//! function; nothing on the network can. The socket is mode 0600 (the daemon's user, and
//! root), in a directory that is created 0700 when missing; see [`bind_admin_socket`] (the
//! binding itself, shared with the gRPC socket, is `socket_file`'s).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use super::drain::Calls;
use super::socket_file::{self, SocketFile, SocketKind};
use crate::live::{ErrorKind, Live, LiveError, Named};
use crate::proto::admin::admin_server::{Admin, AdminServer};
use crate::proto::admin::{LoadReply, LoadRequest, RecentError, StatusReply, StatusRequest};

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
        tokio::task::spawn_blocking(move || live.reload(&library, handler.as_deref(), Named::Uri))
            .await;
    match reloaded {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => log_failure(&e),
        Err(e) => tracing::error!("reload failed; the old function keeps serving: {e}"),
    }
}

/// Logs a failed reload, with whose fault it was.
fn log_failure(e: &LiveError) {
    tracing::error!(
        kind = ?e.kind(),
        "reload failed; the old function keeps serving: {e}"
    );
}

/// The status of a failed reload: the library's fault is `FAILED_PRECONDITION`, a missing
/// file `NOT_FOUND`, a handler the library does not have (or none, when it has several)
/// `INVALID_ARGUMENT`, and a failure to copy the library into memory or `$TMPDIR` `INTERNAL`.
fn reload_status(e: &LiveError) -> Status {
    let message = format!("reload failed; the old function keeps serving: {e}");
    match e.kind() {
        ErrorKind::BadLibrary => Status::failed_precondition(message),
        ErrorKind::NotFound => Status::not_found(message),
        ErrorKind::BadRequest => Status::invalid_argument(message),
        ErrorKind::Internal => Status::internal(message),
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
        let workers = stats.workers.clone().unwrap_or_default();
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
            isolation: if stats.workers.is_some() {
                "process"
            } else {
                "in-process"
            }
            .to_owned(),
            workers: workers.workers as u64,
            workers_up: workers.up as u64,
            worker_restarts: workers.restarts,
            worker_crashes: workers.crashes,
            last_crash: workers.last_crash.clone().unwrap_or_default(),
            last_crash_unix_millis: workers.last_crash_unix_millis,
            crashes: stats.crashes,
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
        let (library, handler, named) = if request.library.is_empty() {
            (
                self.uri_library.clone(),
                self.uri_handler.clone(),
                Named::Uri,
            )
        } else {
            (PathBuf::from(request.library), None, Named::Request)
        };
        let handler = Some(request.handler).filter(|h| !h.is_empty()).or(handler);
        let live = self.live.clone();
        let current =
            tokio::task::spawn_blocking(move || live.reload(&library, handler.as_deref(), named))
                .await
                .map_err(|e| Status::internal(format!("the reload did not finish: {e}")))?
                .map_err(|e| {
                    log_failure(&e);
                    reload_status(&e)
                })?;
        Ok(Response::new(LoadReply {
            function: current.function,
            library: current.library.display().to_string(),
            generation: current.generation,
        }))
    }
}

/// The admin socket, bound and listening: see [`bind_admin_socket`].
#[derive(Debug)]
pub struct AdminSocket {
    listener: UnixListener,
    file: SocketFile,
}

/// The admin socket: 0600 (the daemon's user, and root), its directory 0700 when created.
const ADMIN_SOCKET: SocketKind = SocketKind {
    what: "admin socket",
    flag: "--admin-socket",
    mode: 0o600,
    dir_mode: 0o700,
};

/// Binds the admin socket at `path`, mode 0600 whatever the process's umask: see
/// [`socket_file::bind`] for what is refused at the path and why the mode is never wider,
/// even for a moment.
pub fn bind_admin_socket(path: &Path) -> anyhow::Result<AdminSocket> {
    socket_file::prepare_dir(path, &ADMIN_SOCKET)?;
    let (listener, file) = socket_file::bind(path, &ADMIN_SOCKET)?;
    let listener = UnixListener::from_std(listener)?;
    tracing::info!(socket = %path.display(), "admin service listening");
    Ok(AdminSocket { listener, file })
}

/// Serves the admin service on its bound socket until `shutdown` completes; then removes the
/// socket file (if it is still this process's).
pub async fn serve_admin(
    socket: AdminSocket,
    service: AdminService,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let AdminSocket { listener, file } = socket;
    Server::builder()
        .add_service(AdminServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    drop(file);
    Ok(())
}
