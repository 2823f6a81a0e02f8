//! The admin gRPC service on a Unix socket (status, reload); its clients are
//! `invoker status` / `invoker reload` (`cmd::admin`).
//!
//! The admin service listens only on a Unix socket, so only processes that can reach the
//! socket file (the pod's own containers, or an operator with `kubectl exec`) can replace the
//! function; nothing on the network can. The socket is mode 0600 (the daemon's user, and
//! root), in a directory that is created 0700 when missing; see [`bind_admin_socket`].

use std::os::unix::fs::{
    DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use super::drain::Calls;
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

/// The socket file this process bound; removed when dropped, if it is still that file.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    /// Device and inode of the socket, so that whatever replaced it is left alone.
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.id
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the admin socket at `path`, mode 0600 whatever the process's umask.
///
/// - **The directory.** When the socket's directory is missing it is created, mode 0700 (only
///   the last component: a missing parent of it is an error). An existing directory keeps its
///   mode; one that others may write to without the sticky bit is warned about, because
///   anyone who may write there can replace the socket with one of their own.
/// - **What is there already.** A socket nobody answers on (left by a process that died) is
///   replaced. A socket someone answers on (another invoker) is refused, and so is anything
///   that is not a socket (a regular file, a symbolic link, a FIFO, a directory): left as it
///   is, with an error naming the path.
/// - **The mode.** `bind` creates the file with 0777 minus the umask. Setting the umask around
///   `bind` would change it for the whole process, racing with every other thread that
///   creates files; `chmod` after `bind` leaves a window in which another local user could
///   connect through the wider mode and keep that connection after the `chmod` (permission is
///   checked at connect only), and the admin service can load any library. So the socket is
///   bound inside a fresh private directory (0700, so nobody else can reach the socket there;
///   made in the socket's own directory, because a hard link cannot cross file systems), set
///   to 0600, and then hard-linked to `path`: the link appears
///   with its final mode, atomically, and fails if anything appeared at `path` meanwhile
///   (unlike `rename`, which would replace it). The private directory is then removed.
pub fn bind_admin_socket(path: &Path) -> anyhow::Result<AdminSocket> {
    let shown = path.display();
    anyhow::ensure!(
        path.file_name().is_some(),
        "the admin socket {shown} does not name a file"
    );
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    prepare_socket_dir(dir)?;
    clear_socket_path(path)?;
    let private = PrivateDir::create(dir)
        .with_context(|| format!("cannot create the admin socket {shown}"))?;
    let bound = private.path.join("s");
    let listener = std::os::unix::net::UnixListener::bind(&bound)
        .with_context(|| format!("cannot listen on the admin socket {shown}"))?;
    std::fs::set_permissions(&bound, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of the admin socket {shown}"))?;
    let meta = std::fs::symlink_metadata(&bound)
        .with_context(|| format!("cannot create the admin socket {shown}"))?;
    std::fs::hard_link(&bound, path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "something appeared at the admin socket path {shown} while the socket was being created; not replacing it"
            )
        } else {
            anyhow::anyhow!("cannot create the admin socket {shown}: {e}")
        }
    })?;
    let file = SocketFile {
        path: path.to_path_buf(),
        id: (meta.dev(), meta.ino()),
    };
    drop(private);
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    tracing::info!(socket = %shown, "admin service listening");
    Ok(AdminSocket { listener, file })
}

/// Creates the socket's directory (0700) if it is missing; warns if others can replace files
/// in an existing one.
fn prepare_socket_dir(dir: &Path) -> anyhow::Result<()> {
    let shown = dir.display();
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            // The umask may have taken bits from 0700; it cannot have added any.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(
                || format!("cannot set the mode of the admin socket's directory {shown}"),
            )?;
            tracing::info!(directory = %shown, "created the admin socket's directory (mode 0700)");
            return Ok(());
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            anyhow::bail!("cannot create the admin socket's directory {shown}: {e}")
        }
    }
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot use the admin socket's directory {shown}"))?;
    anyhow::ensure!(
        meta.is_dir(),
        "the admin socket's directory {shown} is not a directory"
    );
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        tracing::warn!(
            directory = %shown,
            mode = format!("{:o}", mode & 0o7777),
            "the admin socket's directory is writable by others and has no sticky bit: they can replace the socket with their own; use a directory only this user can write to"
        );
    }
    Ok(())
}

/// Makes way for the socket at `path`: nothing there, or a stale socket (removed). Refuses a
/// live socket and anything that is not a socket, leaving it as it is.
fn clear_socket_path(path: &Path) -> anyhow::Result<()> {
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => anyhow::bail!("cannot use the admin socket path {shown}: {e}"),
    };
    let kind = meta.file_type();
    if !kind.is_socket() {
        let what = if kind.is_symlink() {
            "a symbolic link"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_file() {
            "a regular file"
        } else {
            "a device"
        };
        anyhow::bail!(
            "the admin socket path {shown} is {what}, not a socket; not replacing it (remove it, or choose another --admin-socket)"
        );
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => anyhow::bail!(
            "another process is listening on the admin socket {shown} (another invoker?); not replacing it"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            // Nobody listens: left by a process that ended without removing it.
            std::fs::remove_file(path)
                .with_context(|| format!("cannot replace the stale admin socket {shown}"))?;
            tracing::info!(socket = %shown, "replaced a stale admin socket");
            Ok(())
        }
        Err(e) => anyhow::bail!(
            "cannot tell whether the admin socket {shown} is in use ({e}); not replacing it"
        ),
    }
}

/// A fresh directory, mode 0700, that only this process uses; removed (with the socket bound
/// in it) when dropped.
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// A short name, so that the socket's temporary path fits the 107 bytes a Unix socket's
    /// path may have whenever its final one does (or nearly: `.inv-XXXXXXXX/s`).
    fn create(dir: &Path) -> std::io::Result<PrivateDir> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos()
            ^ std::process::id().rotate_left(16);
        let mut attempt = 0u32;
        loop {
            let tag = seed.wrapping_add(attempt.wrapping_mul(0x9e37_79b9));
            let path = dir.join(format!(".inv-{tag:08x}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    let private = PrivateDir { path };
                    std::fs::set_permissions(
                        &private.path,
                        std::fs::Permissions::from_mode(0o700),
                    )?;
                    return Ok(private);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path.join("s"));
        let _ = std::fs::remove_dir(&self.path);
    }
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
