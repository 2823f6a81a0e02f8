//! The admin socket and `/metrics` through the real binary: the socket's and its directory's
//! modes whatever the umask, what is refused at the socket's path (and left as it was), that
//! every listener is up before `listening on`, and the `/metrics` header read timeout and
//! connection bound.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, HANG, uri, wait_for_log};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn scratch(name: &str) -> common::Scratch {
    common::scratch("listeners", name)
}

/// The permission bits of `path` itself (not of what a symbolic link points to).
fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// `invoker status` through `socket`: (exit code, stderr).
fn status(socket: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .args(["status", "--admin-socket", socket.to_str().unwrap()])
        .output()
        .expect("run invoker status");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `invoker serve` for greeter's `hello` with `env`, expecting it to fail at start-up:
/// returns (exit code, stdout, stderr). A daemon still running after [`HANG`] fails the test.
fn serve_expecting_failure(env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_invoker"));
    command
        .arg("serve")
        .env("FUNCTION_URI", uri("greeter", Some("hello")))
        .env("GRPC_PORT", "0")
        .env("HOST", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("start invoker");
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > HANG {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the daemon started instead of failing:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The error lines `invoker` printed (`invoker: ...`), as opposed to its log.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("invoker: "))
        .collect()
}

#[tokio::test]
async fn the_admin_socket_is_0600_whatever_the_umask() {
    let dir = scratch("mode");
    let socket = dir.join("admin.sock");
    let _daemon = Daemon::start_in_shell(
        &uri("greeter", Some("hello")),
        &[("ADMIN_SOCKET", socket.to_str().unwrap())],
        "umask 000",
    );
    assert!(
        std::fs::symlink_metadata(&socket)
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert_eq!(mode(&socket), 0o600, "mode of {}", socket.display());
    // Nothing of the way it was made is left in the directory.
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["admin.sock"]);
    // Up as soon as `listening on` is printed.
    let (code, err) = status(&socket);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn a_missing_admin_socket_directory_is_created_0700() {
    let dir = scratch("directory");
    let socket = dir.join("run").join("admin.sock");
    let _daemon = Daemon::start_in_shell(
        &uri("greeter", Some("hello")),
        &[("ADMIN_SOCKET", socket.to_str().unwrap())],
        "umask 000",
    );
    assert_eq!(mode(&dir.join("run")), 0o700);
    assert_eq!(mode(&socket), 0o600);
    let (code, err) = status(&socket);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn an_admin_socket_directory_others_can_write_to_is_warned_about_and_left_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("shared");
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = shared.join("admin.sock");
    let daemon = Daemon::start_with(
        &uri("greeter", Some("hello")),
        &[("ADMIN_SOCKET", socket.to_str().unwrap())],
    );
    wait_for_log(
        &daemon,
        "the admin socket's directory is writable by others",
    )
    .await;
    assert_eq!(mode(&shared), 0o777);
    assert_eq!(mode(&socket), 0o600);
}

#[tokio::test]
async fn an_admin_socket_path_that_is_not_a_socket_is_refused_and_left_alone() {
    let dir = scratch("not-a-socket");
    let target = dir.join("target.txt");
    std::fs::write(&target, "not yours\n").unwrap();

    let file = dir.join("file.sock");
    std::fs::write(&file, "precious\n").unwrap();
    let link = dir.join("link.sock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let fifo = dir.join("fifo.sock");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let directory = dir.join("dir.sock");
    std::fs::create_dir(&directory).unwrap();
    std::fs::write(directory.join("inside"), "kept\n").unwrap();

    for (path, what) in [
        (&file, "a regular file"),
        (&link, "a symbolic link"),
        (&fifo, "a FIFO"),
        (&directory, "a directory"),
    ] {
        let (code, out, err) = serve_expecting_failure(&[("ADMIN_SOCKET", path.to_str().unwrap())]);
        assert_eq!(code, Some(1), "{what}: {err}");
        assert!(!out.contains("listening on"), "{what}: {out}");
        let errors = error_lines(&err);
        assert_eq!(errors.len(), 1, "{what}: {err}");
        assert!(
            errors[0].contains(path.to_str().unwrap())
                && errors[0].contains(what)
                && errors[0].contains("not a socket"),
            "{what}: {err}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious\n");
    assert_eq!(std::fs::read_link(&link).unwrap(), target);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "not yours\n");
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(
        std::fs::read_to_string(directory.join("inside")).unwrap(),
        "kept\n"
    );
}

#[tokio::test]
async fn an_admin_socket_another_invoker_listens_on_is_refused() {
    let dir = scratch("live");
    let socket = dir.join("admin.sock");
    let first = Daemon::start_with(
        &uri("greeter", Some("hello")),
        &[("ADMIN_SOCKET", socket.to_str().unwrap())],
    );
    let (code, out, err) = serve_expecting_failure(&[("ADMIN_SOCKET", socket.to_str().unwrap())]);
    assert_eq!(code, Some(1), "{err}");
    assert!(!out.contains("listening on"), "{out}");
    let errors = error_lines(&err);
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("another process is listening")
            && errors[0].contains(socket.to_str().unwrap()),
        "{err}"
    );
    // The first one still answers on it.
    let (code, err) = status(&socket);
    assert_eq!(code, 0, "{err}");
    drop(first);
}

#[tokio::test]
async fn a_stale_admin_socket_is_replaced() {
    let dir = scratch("stale");
    let socket = dir.join("admin.sock");
    // Bound and closed: the file stays, nobody listens (a process that died).
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(
        std::fs::symlink_metadata(&socket)
            .unwrap()
            .file_type()
            .is_socket()
    );
    let _daemon = Daemon::start_with(
        &uri("greeter", Some("hello")),
        &[("ADMIN_SOCKET", socket.to_str().unwrap())],
    );
    let (code, err) = status(&socket);
    assert_eq!(code, 0, "{err}");
    assert_eq!(mode(&socket), 0o600);
}

#[tokio::test]
async fn at_exit_the_daemon_removes_only_its_own_socket() {
    let dir = scratch("exit");
    let socket = dir.join("admin.sock");
    let mut daemon = Daemon::start_with(
        &uri("greeter", Some("hello")),
        &[("ADMIN_SOCKET", socket.to_str().unwrap())],
    );
    // Someone replaces the socket while the daemon runs.
    std::fs::remove_file(&socket).unwrap();
    std::fs::write(&socket, "someone else's\n").unwrap();
    kill(Pid::from_raw(daemon.child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(daemon.exit_code().await, Some(0), "{}", daemon.stderr());
    assert_eq!(
        std::fs::read_to_string(&socket).unwrap(),
        "someone else's\n"
    );

    // Its own socket it removes.
    std::fs::remove_file(&socket).unwrap();
    let mut daemon = Daemon::start_with(
        &uri("greeter", Some("hello")),
        &[("ADMIN_SOCKET", socket.to_str().unwrap())],
    );
    kill(Pid::from_raw(daemon.child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(daemon.exit_code().await, Some(0), "{}", daemon.stderr());
    assert!(!socket.exists());
}

#[tokio::test]
async fn a_listener_that_cannot_be_bound_fails_start_up_before_listening() {
    let dir = scratch("cannot-bind");
    // Only the last component of the directory is created.
    let socket = dir.join("missing").join("run").join("admin.sock");
    let (code, out, err) = serve_expecting_failure(&[("ADMIN_SOCKET", socket.to_str().unwrap())]);
    assert_eq!(code, Some(1), "{err}");
    assert!(!out.contains("listening on"), "{out}");
    let errors = error_lines(&err);
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains(dir.join("missing").join("run").to_str().unwrap()),
        "{err}"
    );

    // The /metrics port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, out, err) = serve_expecting_failure(&[("METRICS_PORT", &port)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(!out.contains("listening on"), "{out}");
    let errors = error_lines(&err);
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("/metrics"), "{err}");
}

#[tokio::test]
async fn a_metrics_request_that_never_finishes_its_headers_is_closed() {
    let daemon = Daemon::start_with(
        &uri("greeter", Some("hello")),
        &[("METRICS_PORT", "0"), ("METRICS_HEADER_TIMEOUT", "0.5")],
    );
    let addr = daemon.metrics.clone().expect("the metrics address");
    let closed = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        // The request line and one header, and never the blank line that ends them.
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n").unwrap();
        stream.set_read_timeout(Some(HANG)).unwrap();
        let mut answer = Vec::new();
        // Ok once the daemon closes the connection; an error (the read timed out) if not.
        stream.read_to_end(&mut answer).map(|_| answer)
    })
    .await
    .unwrap();
    let answer = closed.expect("the daemon did not close the connection");
    // Whatever hyper answers before closing, it is not the metrics.
    assert!(
        !String::from_utf8_lossy(&answer).contains("invoker_calls_total"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // A whole request is still served.
    let addr = daemon.metrics.clone().unwrap();
    let body = tokio::task::spawn_blocking(move || get_metrics(&addr))
        .await
        .unwrap();
    assert!(body.contains("invoker_calls_total"), "{body}");
}

#[tokio::test]
async fn metrics_connections_are_bounded() {
    let daemon = Daemon::start_with(
        &uri("greeter", Some("hello")),
        &[("METRICS_PORT", "0"), ("METRICS_HEADER_TIMEOUT", "600")],
    );
    let addr = daemon.metrics.clone().expect("the metrics address");
    // Connections that send nothing hold every slot.
    let idle: Vec<_> = (0..invoker::server::metrics::METRICS_MAX_CONNECTIONS)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    wait_for_log(&daemon, "/metrics connection limit reached").await;
    // One more is served once they close.
    let waiting = {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || get_metrics(&addr))
    };
    drop(idle);
    let body = tokio::time::timeout(HANG, waiting)
        .await
        .expect("the waiting connection was never served")
        .unwrap();
    assert!(body.contains("invoker_calls_total"), "{body}");
}

/// GET http://addr/metrics; returns the body.
fn get_metrics(addr: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(HANG)).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}
