//! The gRPC services on a Unix socket (SPEC §11), through the real binary: Python's grpcio on
//! a `unix:` target (it sends the percent-encoded path as `:authority`), socket-only mode,
//! registration by priority, stale and live sockets, deregistration before the drain, modes,
//! and the deadline.

mod common;

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, HANG, uri, wait_for_calls_in_flight};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

fn scratch(name: &str) -> common::Scratch {
    common::scratch("sockets", name)
}

/// The permission bits of `path` itself.
fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// Runs one request through the Python grpcio client (tests/interop/client.py) at `target`
/// (`unix:PATH`). Fails, naming it, when Python or grpcio is missing.
fn grpcio(target: &str, request: Value) -> Value {
    let python = common::tools::python(&["grpc", "grpc_tools"]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/client.py");
    let mut child = Command::new(python)
        .arg(script)
        .args(["--target", target])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Python client");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON result")
}

fn payloads(result: &Value) -> Vec<&str> {
    result["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect()
}

/// `invoker call ARGS`: (exit code, stdout, stderr).
fn invoker_call(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .arg("call")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run invoker call");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `invoker serve` with `env`, expecting it to fail at start-up: (exit code, stderr).
fn serve_expecting_failure(function: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .arg("serve")
        .env("FUNCTION_URI", function)
        .env("GRPC_PORT", "0")
        .env("HOST", "127.0.0.1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start invoker");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > HANG {
            let _ = child.kill();
            panic!("the daemon started instead of failing");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn grpcio_calls_invokes_and_checks_health_over_the_socket() {
    let dir = scratch("grpcio");
    let socket = dir.join("fn.sock");
    let target = format!("unix:{}", socket.display());
    let greeter = Daemon::start_with(
        &uri("greeter", Some("hello")),
        &[("GRPC_SOCKET", socket.to_str().unwrap())],
    );
    let result = grpcio(
        &target,
        json!({"rpc": "call", "messages": [
            {"payload": "Python", "headers": {"Content-Type": ["text/plain"], "correlationId": ["py-1"]}}
        ]}),
    );
    assert_eq!(result["code"], "OK", "{result}");
    assert_eq!(payloads(&result), ["Hello Python"]);
    assert_eq!(
        result["messages"][0]["headers"]["correlationId"],
        json!(["py-1"])
    );
    let result = grpcio(&target, json!({"rpc": "health", "service": ""}));
    assert_eq!(result["status"], "SERVING", "{result}");
    // The TCP port serves as well.
    let (code, out, err) = invoker_call(&["--address", &greeter.addr, "TCP"]);
    assert_eq!((code, out.as_str()), (0, "Hello TCP\n"), "{err}");
    drop(greeter);

    let _streams = Daemon::start_with(
        &uri("streams", Some("partition")),
        &[("GRPC_SOCKET", socket.to_str().unwrap())],
    );
    let frames: Vec<Value> = (1..=4)
        .map(|i| json!({"payload": i.to_string(), "contentType": "text/plain", "argIndex": 0}))
        .collect();
    let result = grpcio(
        &target,
        json!({"rpc": "invoke", "start": {"expectedContentTypes": ["text/plain", "application/json"]}, "frames": frames}),
    );
    assert_eq!(result["code"], "OK", "{result}");
    let mut got: Vec<(i64, String)> = result["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["resultIndex"].as_i64().unwrap(),
                m["payload"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (0, "2".into()),
            (0, "4".into()),
            (1, "1".into()),
            (1, "3".into())
        ]
    );
}

#[test]
fn the_deadline_is_enforced_on_the_socket() {
    let dir = scratch("deadline");
    let socket = dir.join("fn.sock");
    let _daemon = Daemon::start_with(
        &uri("probe", Some("sleep_ms")),
        &[
            ("GRPC_SOCKET", socket.to_str().unwrap()),
            ("NO_TCP", "true"),
        ],
    );
    let started = Instant::now();
    let result = grpcio(
        &format!("unix:{}", socket.display()),
        json!({"rpc": "call", "timeout": 0.5, "messages": [{"payload": "5000"}]}),
    );
    assert_eq!(result["code"], "DEADLINE_EXCEEDED", "{result}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the call ran on past its deadline: {:?}",
        started.elapsed()
    );
}

/// The inodes of the TCP sockets in LISTEN state that process `pid` holds.
fn tcp_listeners(pid: u32) -> Vec<String> {
    let mut inodes = std::collections::HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        if let Ok(target) = std::fs::read_link(fd.unwrap().path())
            && let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let mut listening = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // st (the fourth field) 0A is LISTEN; the tenth is the inode.
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                listening.push(fields[1].to_owned());
            }
        }
    }
    listening
}

#[test]
fn socket_only_mode_opens_no_tcp_port() {
    let dir = scratch("no-tcp");
    let socket = dir.join("fn.sock");
    let both = Daemon::start_with(
        &uri("greeter", Some("hello")),
        &[("GRPC_SOCKET", socket.to_str().unwrap())],
    );
    // The check sees the port when there is one.
    assert_eq!(tcp_listeners(both.child.id()).len(), 1);
    drop(both);

    let alone = Daemon::start_with(
        &uri("greeter", Some("hello")),
        &[
            ("GRPC_SOCKET", socket.to_str().unwrap()),
            ("NO_TCP", "true"),
        ],
    );
    assert_eq!(alone.addr, format!("unix:{}", socket.display()));
    assert_eq!(tcp_listeners(alone.child.id()), Vec::<String>::new());
    let (code, out, err) = invoker_call(&["--socket", socket.to_str().unwrap(), "alone"]);
    assert_eq!((code, out.as_str()), (0, "Hello alone\n"), "{err}");

    // --no-tcp without a socket would serve nothing: refused.
    let (code, err) = serve_expecting_failure(&uri("greeter", Some("hello")), &[("NO_TCP", "1")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--no-tcp"), "{err}");
}

fn register(function: &str, dir: &Path, priority: &str, instance: &str) -> Daemon {
    Daemon::start_with(
        function,
        &[
            ("SOCKET_DIR", dir.to_str().unwrap()),
            ("SOCKET_TASK", "resize"),
            ("SOCKET_PRIORITY", priority),
            ("SOCKET_INSTANCE", instance),
            ("NO_TCP", "1"),
        ],
    )
}

fn call_task(dir: &Path, payload: &str) -> (i32, String, String) {
    invoker_call(&[
        "--socket-dir",
        dir.to_str().unwrap(),
        "--task",
        "resize",
        payload,
    ])
}

#[test]
fn call_picks_the_live_instance_of_best_priority_and_stale_sockets_are_cleaned() {
    let dir = scratch("priority");
    let task = dir.join("resize");
    let hello = uri("greeter", Some("hello"));
    let rot13 = uri("rot13", None);
    // Started out of order: 10, 9, then 2.
    let _ten = register(&hello, &dir, "10", "c");
    let _nine = register(&rot13, &dir, "9", "b");
    let mut two = register(&hello, &dir, "2", "a");
    let mut names: Vec<String> = std::fs::read_dir(&task)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["0002-a.sock", "0009-b.sock", "0010-c.sock"]);
    let (code, out, err) = call_task(&dir, "x");
    assert_eq!((code, out.as_str()), (0, "Hello x\n"), "{err}");

    // A crash leaves the socket behind, stale: call skips it.
    two.child.kill().unwrap();
    two.child.wait().unwrap();
    assert!(
        std::fs::symlink_metadata(task.join("0002-a.sock"))
            .unwrap()
            .file_type()
            .is_socket()
    );
    let (code, out, err) = call_task(&dir, "x");
    assert_eq!((code, out.as_str()), (0, "k\n"), "{err}");

    // A live instance under the same name is refused, and left serving.
    let (code, err) = serve_expecting_failure(
        &rot13,
        &[
            ("SOCKET_DIR", dir.to_str().unwrap()),
            ("SOCKET_TASK", "resize"),
            ("SOCKET_PRIORITY", "9"),
            ("SOCKET_INSTANCE", "b"),
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("another instance is registered and live"),
        "{err}"
    );
    assert!(err.contains("0009-b.sock"), "{err}");

    // The next start of the crashed instance removes its stale socket and binds.
    let again = register(&hello, &dir, "2", "a");
    assert!(
        again.stderr().contains("replaced a stale gRPC socket"),
        "{}",
        again.stderr()
    );
    let (code, out, err) = call_task(&dir, "y");
    assert_eq!((code, out.as_str()), (0, "Hello y\n"), "{err}");

    // Priorities past four digits are refused.
    let (code, err) = serve_expecting_failure(
        &hello,
        &[
            ("SOCKET_DIR", dir.to_str().unwrap()),
            ("SOCKET_TASK", "resize"),
            ("SOCKET_PRIORITY", "10000"),
        ],
    );
    assert_eq!(code, Some(2), "{err}");
}

#[tokio::test]
async fn the_socket_is_removed_at_sigterm_before_the_drain_ends() {
    let dir = scratch("deregister");
    let admin = dir.join("admin.sock");
    let mut daemon = Daemon::start_with(
        &uri("probe", Some("sleep_ms")),
        &[
            ("SOCKET_DIR", dir.to_str().unwrap()),
            ("SOCKET_TASK", "resize"),
            ("SOCKET_PRIORITY", "1"),
            ("SOCKET_INSTANCE", "slow"),
            ("NO_TCP", "1"),
            ("ADMIN_SOCKET", admin.to_str().unwrap()),
        ],
    );
    let socket = dir.join("resize").join("0001-slow.sock");
    let mut call = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .args(["call", "--socket", socket.to_str().unwrap(), "2000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_calls_in_flight(&admin, 1).await;
    kill(Pid::from_raw(daemon.child.id() as i32), Signal::SIGTERM).unwrap();
    let waited = tokio::time::timeout(HANG, async {
        while socket.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    waited.await.expect("the socket was not removed");
    assert!(
        call.try_wait().unwrap().is_none(),
        "the call had ended before the socket was removed"
    );
    let out = tokio::task::spawn_blocking(move || call.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "slept 2000 ms\n");
    assert_eq!(daemon.exit_code().await, Some(0), "{}", daemon.stderr());
}

#[test]
fn the_socket_is_0660_and_its_directories_0750_whatever_the_umask() {
    let dir = scratch("modes");
    let registered = Daemon::start_in_shell(
        &uri("greeter", Some("hello")),
        &[
            ("SOCKET_DIR", dir.join("tasks").to_str().unwrap()),
            ("SOCKET_TASK", "resize"),
            ("SOCKET_INSTANCE", "m"),
        ],
        "umask 077",
    );
    assert_eq!(mode(&dir.join("tasks")), 0o750);
    assert_eq!(mode(&dir.join("tasks/resize")), 0o750);
    assert_eq!(mode(&dir.join("tasks/resize/0000-m.sock")), 0o660);
    drop(registered);

    let socket = dir.join("run").join("fn.sock");
    let _plain = Daemon::start_in_shell(
        &uri("greeter", Some("hello")),
        &[("GRPC_SOCKET", socket.to_str().unwrap())],
        "umask 000",
    );
    assert_eq!(mode(&dir.join("run")), 0o750);
    assert_eq!(mode(&socket), 0o660);
}

#[test]
fn a_task_directory_that_is_a_symbolic_link_is_refused() {
    let dir = scratch("symlink");
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("resize")).unwrap();
    let (code, err) = serve_expecting_failure(
        &uri("greeter", Some("hello")),
        &[
            ("SOCKET_DIR", dir.to_str().unwrap()),
            ("SOCKET_TASK", "resize"),
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is a symbolic link"), "{err}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn the_connection_bounds_and_malformed_frames_close_connections_on_the_socket() {
    use std::io::Read;
    let dir = scratch("bounds");
    let socket = dir.join("fn.sock");
    let _daemon = Daemon::start_with(
        &uri("greeter", Some("hello")),
        &[
            ("GRPC_SOCKET", socket.to_str().unwrap()),
            ("NO_TCP", "1"),
            ("HANDSHAKE_TIMEOUT", "0.3"),
        ],
    );
    let closed = |mut stream: std::os::unix::net::UnixStream| {
        stream.set_read_timeout(Some(HANG)).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        // The server's SETTINGS may come first; then the end of the connection.
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    };
    // A client that never starts HTTP/2 is closed at the handshake timeout.
    let silent = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    assert!(closed(silent) < Duration::from_secs(5));
    // A CONTINUATION with no header block open: the connection is closed, the server goes on.
    let mut rude = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    rude.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    rude.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).unwrap(); // SETTINGS
    rude.write_all(&[0, 0, 1, 0x9, 0x4, 0, 0, 0, 1, 0x82])
        .unwrap(); // CONTINUATION
    assert!(closed(rude) < Duration::from_secs(5));
    let (code, out, err) = invoker_call(&["--socket", socket.to_str().unwrap(), "still"]);
    assert_eq!((code, out.as_str()), (0, "Hello still\n"), "{err}");
}
