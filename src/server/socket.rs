//! The gRPC services on a Unix socket (SPEC §11): at a path (`--socket`), or registered as a
//! task's instance in a shared directory (`--socket-dir DIR --task NAME --priority N`), as
//! mistify's provider registers tasks: `DIR/NAME/NNNN-INSTANCE.sock`, the priority
//! zero-padded to four digits so that name order is priority order (lower first).
//!
//! - **Who may connect.** The socket is 0660 and the task's directory 0750: the daemon's user
//!   and group may call the function (and, with the directory's read bit, list the task's
//!   instances); nobody else may reach it. Only the daemon's user may register or remove
//!   instances of the task.
//! - **Start-up.** A socket at the path that answers is another live instance: start-up
//!   refuses, saying so. One that refuses connections was left by a crash: it is removed. A
//!   task directory that is a symbolic link, not a directory, or owned by another user is
//!   refused (whoever owns it could replace the sockets in it); one of this user's with another
//!   mode is set to 0750.
//! - **Shutdown.** The socket is removed as the drain starts (the instance deregisters), so
//!   coordinators stop choosing it while calls in flight finish.
//! - **Finding an instance** ([`best_socket`]): the sockets of the task in priority order
//!   (the number, not the name's text), skipping stale ones.

use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::socket_file::{self, Probe, SocketFile, SocketKind};
use crate::cli::SocketArgs;

/// The gRPC socket: 0660, its directory 0750.
const GRPC_SOCKET: SocketKind = SocketKind {
    what: "gRPC socket",
    flag: "--socket",
    mode: 0o660,
    dir_mode: 0o750,
};

/// The highest priority number (four digits).
pub const MAX_PRIORITY: u16 = 9999;

/// The longest task or instance name kept (a socket's path is at most 107 bytes).
const MAX_NAME: usize = 64;

/// Where to serve the gRPC socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSpec {
    /// At this path (`--socket`).
    Path(PathBuf),
    /// Registered: `dir/task/NNNN-instance.sock`.
    Task {
        /// The shared directory.
        dir: PathBuf,
        /// The task's name (its directory's).
        task: String,
        /// Lower first, 0 to 9999.
        priority: u16,
        /// The instance's name, made safe as a file name (see [`instance_name`]).
        instance: String,
    },
}

/// The gRPC socket, bound and listening: removed when dropped (or by [`GrpcSocket::deregister`]),
/// if its path still holds it.
#[derive(Debug)]
pub struct GrpcSocket {
    /// The listening socket.
    pub listener: tokio::net::UnixListener,
    /// The socket file.
    pub file: SocketFile,
}

/// Checks a task's name: one path component of letters, digits, `.`, `-` and `_`, not `.` or
/// `..`, at most 64 bytes.
pub fn check_task(task: &str) -> anyhow::Result<()> {
    let safe = !task.is_empty()
        && task.len() <= MAX_NAME
        && task != "."
        && task != ".."
        && task
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    anyhow::ensure!(
        safe,
        "the task '{task}' is not a task name: use at most {MAX_NAME} letters, digits, '.', '-' and '_' (not '.' or '..')"
    );
    Ok(())
}

/// An instance's name made safe as part of a file name: letters, digits, `.`, `-` and `_`
/// kept, anything else `_`, no leading `.`, at most 64 bytes; `invoker` if nothing is left.
pub fn instance_name(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .skip_while(|&c| c == '.')
        .take(MAX_NAME)
        .collect();
    if name.is_empty() {
        name = "invoker".to_owned();
    }
    name
}

/// The socket's file name in the task's directory: `NNNN-INSTANCE.sock`.
pub fn socket_name(priority: u16, instance: &str) -> String {
    format!("{priority:04}-{instance}.sock")
}

/// The priority of a registered socket's file name, if it is one (`NNNN-X.sock`).
pub fn priority_of(name: &str) -> Option<u16> {
    let rest = name.strip_suffix(".sock")?;
    let (digits, instance) = rest.split_at_checked(4)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || instance.len() < 2 {
        return None;
    }
    instance.strip_prefix('-')?;
    digits.parse().ok()
}

impl SocketSpec {
    /// The socket's path.
    pub fn path(&self) -> PathBuf {
        match self {
            SocketSpec::Path(path) => path.clone(),
            SocketSpec::Task {
                dir,
                task,
                priority,
                instance,
            } => dir.join(task).join(socket_name(*priority, instance)),
        }
    }
}

impl SocketSpec {
    /// The socket `invoker serve`'s arguments ask for, if any; the instance's name defaults to
    /// the host name (`HOSTNAME`, else the system's).
    pub fn from_args(args: &SocketArgs) -> anyhow::Result<Option<SocketSpec>> {
        anyhow::ensure!(
            !args.no_tcp || args.requested(),
            "--no-tcp (NO_TCP) serves on the Unix socket alone: give --socket or --socket-dir"
        );
        if let Some(path) = &args.path {
            return Ok(Some(SocketSpec::Path(path.clone())));
        }
        let (Some(dir), Some(task)) = (&args.socket_dir, &args.task) else {
            return Ok(None);
        };
        check_task(task)?;
        anyhow::ensure!(
            args.priority <= MAX_PRIORITY,
            "the priority {} is over {MAX_PRIORITY}",
            args.priority
        );
        let raw = match &args.instance {
            Some(instance) => instance.clone(),
            None => crate::env::hostname()
                .or_else(|| {
                    rustix::system::uname()
                        .nodename()
                        .to_str()
                        .ok()
                        .map(str::to_owned)
                })
                .unwrap_or_default(),
        };
        Ok(Some(SocketSpec::Task {
            dir: dir.clone(),
            task: task.clone(),
            priority: args.priority,
            instance: instance_name(&raw),
        }))
    }
}

/// Binds the gRPC socket `spec` names: see the module's documentation.
pub fn bind_grpc_socket(spec: &SocketSpec) -> anyhow::Result<GrpcSocket> {
    let path = spec.path();
    match spec {
        SocketSpec::Path(_) => socket_file::prepare_dir(&path, &GRPC_SOCKET)?,
        SocketSpec::Task {
            dir,
            task,
            priority,
            ..
        } => {
            check_task(task)?;
            anyhow::ensure!(
                *priority <= MAX_PRIORITY,
                "the priority {priority} is over {MAX_PRIORITY}"
            );
            prepare_task_dir(dir, &dir.join(task))?;
        }
    }
    if matches!(spec, SocketSpec::Task { .. }) && matches!(socket_file::probe(&path), Probe::Live) {
        anyhow::bail!(
            "another instance is registered and live at {} (its socket answers): not starting a second one under the same name; give this one another --instance",
            path.display()
        );
    }
    let (listener, file) = socket_file::bind(&path, &GRPC_SOCKET)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    Ok(GrpcSocket { listener, file })
}

/// Makes the shared directory (0750) if it is missing, and the task's directory in it (0750);
/// refuses a task directory that is a symbolic link, not a directory, or another user's.
fn prepare_task_dir(dir: &Path, task_dir: &Path) -> anyhow::Result<()> {
    for (at, what) in [(dir, "socket directory"), (task_dir, "task directory")] {
        match std::fs::DirBuilder::new().mode(0o750).create(at) {
            Ok(()) => {
                std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o750)).with_context(
                    || format!("cannot set the mode of the {what} {}", at.display()),
                )?;
                tracing::info!(directory = %at.display(), "created the {what} (mode 0750)");
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => anyhow::bail!("cannot create the {what} {}: {e}", at.display()),
        }
    }
    let shown = task_dir.display();
    // Not followed: a symbolic link here could point the sockets anywhere.
    let meta = std::fs::symlink_metadata(task_dir)
        .with_context(|| format!("cannot use the task directory {shown}"))?;
    anyhow::ensure!(
        !meta.file_type().is_symlink(),
        "the task directory {shown} is a symbolic link; not using it"
    );
    anyhow::ensure!(
        meta.is_dir(),
        "the task directory {shown} is not a directory; not using it"
    );
    let me = rustix::process::geteuid().as_raw();
    anyhow::ensure!(
        meta.uid() == me,
        "the task directory {shown} belongs to another user (uid {}, this process runs as {me}): they could replace its sockets; not using it",
        meta.uid()
    );
    if meta.mode() & 0o7777 != 0o750 {
        std::fs::set_permissions(task_dir, std::fs::Permissions::from_mode(0o750))
            .with_context(|| format!("cannot set the mode of the task directory {shown}"))?;
        tracing::info!(
            directory = %shown,
            was = format!("{:04o}", meta.mode() & 0o7777),
            "set the task directory's mode to 0750"
        );
    }
    Ok(())
}

/// The live socket of `task` in `dir` with the best (lowest) priority: sockets named
/// `NNNN-INSTANCE.sock`, in the order of their numbers, the first that accepts a connection;
/// stale ones (refusing connections) are skipped.
pub fn best_socket(dir: &Path, task: &str) -> anyhow::Result<PathBuf> {
    check_task(task)?;
    let task_dir = dir.join(task);
    let entries = std::fs::read_dir(&task_dir)
        .with_context(|| format!("cannot list the task directory {}", task_dir.display()))?;
    let mut candidates: Vec<(u16, String)> = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some(priority) = priority_of(&name) {
            candidates.push((priority, name));
        }
    }
    candidates.sort();
    let mut stale = 0;
    for (_, name) in &candidates {
        let path = task_dir.join(name);
        match socket_file::probe(&path) {
            Probe::Live => return Ok(path),
            Probe::Stale => stale += 1,
            _ => {}
        }
    }
    anyhow::bail!(
        "no live instance of the task '{task}' in {} ({} registered, {stale} stale)",
        task_dir.display(),
        candidates.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_priority_order() {
        let mut names: Vec<String> = [10, 2, 9, 9999, 0]
            .iter()
            .map(|&p| socket_name(p, "host"))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "0000-host.sock",
                "0002-host.sock",
                "0009-host.sock",
                "0010-host.sock",
                "9999-host.sock"
            ]
        );
        for name in &names {
            assert!(priority_of(name).is_some(), "{name}");
        }
        assert_eq!(priority_of("0010-a.b.sock"), Some(10));
        for not in [
            "10-a.sock",
            "0010-.sock",
            "0010a.sock",
            "x010-a.sock",
            "0010-a.sok",
            "+010-a.sock",
        ] {
            assert_eq!(priority_of(not), None, "{not}");
        }
    }

    #[test]
    fn instance_names_are_made_safe() {
        assert_eq!(instance_name("pod-7f9c.default"), "pod-7f9c.default");
        assert_eq!(instance_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(instance_name("..."), "invoker");
        assert_eq!(instance_name(""), "invoker");
        assert_eq!(instance_name("a/b c"), "a_b_c");
        assert_eq!(instance_name(&"x".repeat(200)).len(), MAX_NAME);
    }

    #[test]
    fn task_names_are_one_safe_component() {
        assert!(check_task("resize-images_2.v1").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_task(bad).is_err(), "{bad}");
        }
    }
}
