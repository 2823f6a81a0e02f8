//! What an attacker or an unlucky operator can do to a running invoker, through the real
//! binary: other local users, clients that give up, never read or open too much, and functions
//! that block.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Daemon, call, lib, msg, status, uri, wait_for_calls_in_flight};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn scratch(name: &str) -> common::Scratch {
    common::scratch("hardening", name)
}

/// Calls until the function answers `World` with `expected` (a reload has taken effect).
async fn wait_for_reply(daemon: &Daemon, expected: &str) {
    let mut client = daemon.client().await;
    let waited = tokio::time::timeout(common::HANG, async {
        loop {
            let outcome = call(&mut client, vec![msg("World", &[])]).await;
            if outcome.texts() == [expected] {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    if waited.await.is_err() {
        panic!("never answered {expected}:\n{}", daemon.stderr());
    }
}

#[tokio::test]
async fn another_user_cannot_plant_files_where_a_reload_loads_from() {
    let dir = scratch("plant");
    let function = dir.join("libfunction.so");
    std::fs::copy(lib("rot13"), &function).unwrap();
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    let daemon = Daemon::start_with(
        function.to_str().unwrap(),
        &[("TMPDIR", tmp.to_str().unwrap())],
    );
    // Whoever can write to TMPDIR pre-creates the paths a load could use: by process id and
    // attempt number, symlinks to a file the daemon may write, and FIFOs.
    let trap = tmp.join(format!("invoker-{}", daemon.child.id()));
    std::fs::create_dir_all(&trap).unwrap();
    for attempt in 1..=8 {
        let planted = trap.join(format!("{attempt}-libfunction.so"));
        if attempt % 2 == 0 {
            std::os::unix::fs::symlink(&victim, &planted).unwrap();
        } else {
            nix::unistd::mkfifo(&planted, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
        }
    }
    let planted_before = listing(&trap);

    for (library, reply) in [("version2", "v2:World"), ("rot13", "Jbeyq")] {
        std::fs::copy(lib(library), &function).unwrap();
        kill(Pid::from_raw(daemon.child.id() as i32), Signal::SIGHUP).unwrap();
        wait_for_reply(&daemon, reply).await;
    }
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious",
        "a reload wrote through a planted symlink"
    );
    assert_eq!(
        listing(&trap),
        planted_before,
        "a reload touched the planted paths"
    );
    assert_eq!(
        listing(&tmp),
        ["invoker-".to_owned() + &daemon.child.id().to_string()]
    );
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_function_uri_that_is_not_a_regular_file_is_refused() {
    let dir = scratch("fifo");
    let fifo = dir.join("libfunction.so");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .args(["serve", "--port", "0"])
        .env("FUNCTION_URI", &fifo)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot read function library {}: it is not a regular file",
            fifo.display()
        )),
        "{stderr}"
    );
}

fn sigterm(daemon: &Daemon) {
    kill(Pid::from_raw(daemon.child.id() as i32), Signal::SIGTERM).unwrap();
}

async fn health(daemon: &Daemon) -> ServingStatus {
    let mut health = HealthClient::new(daemon.channel().await);
    let reply = tokio::time::timeout(
        common::HANG,
        health.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("the health check hung")
    .unwrap();
    reply.into_inner().status()
}

#[tokio::test]
async fn a_blocked_call_stalls_no_other_call_nor_health_nor_sigterm() {
    let dir = scratch("blocked");
    let socket = dir.join("admin.sock");
    let daemon = Daemon::start_with(
        &uri("probe", Some("sleep_ms")),
        &[
            ("ADMIN_SOCKET", socket.to_str().unwrap()),
            ("GRACE_PERIOD", "1"),
        ],
    );
    let mut client = daemon.client().await;
    // Fast calls first (an earlier blocking policy then ran calls inline on an async worker).
    for _ in 0..100 {
        let outcome = call(&mut client, vec![msg("0", &[])]).await;
        assert_eq!(outcome.texts(), ["slept 0 ms"], "{outcome:?}");
    }
    // Then one call that blocks for ten minutes.
    let mut blocked_client = client.clone();
    let blocked =
        tokio::spawn(async move { call(&mut blocked_client, vec![msg("600000", &[])]).await });
    wait_for_calls_in_flight(&socket, 1).await;
    // Everything else goes on: calls on the same connection and on new ones, and health.
    for _ in 0..20 {
        let outcome = call(&mut client, vec![msg("0", &[])]).await;
        assert_eq!(outcome.texts(), ["slept 0 ms"], "{outcome:?}");
        let outcome = call(&mut daemon.client().await, vec![msg("0", &[])]).await;
        assert_eq!(outcome.texts(), ["slept 0 ms"], "{outcome:?}");
        assert_eq!(health(&daemon).await, ServingStatus::Serving);
    }
    // SIGTERM ends the process whatever the blocked call does.
    sigterm(&daemon);
    let outcome = blocked.await.unwrap();
    let mut daemon = daemon;
    match daemon.exit_code().await {
        // The call ran on a function thread: it ends with UNAVAILABLE at the end of the grace
        // period, and the drain is done.
        Some(0) => assert_eq!(outcome.code(), Code::Unavailable, "{outcome:?}"),
        // The call ran inline (the fast calls earned it): nothing can stop it, so the process
        // ends a second after the grace period, and says why.
        Some(1) => assert!(
            daemon
                .stderr()
                .contains("the drain did not end within the grace period and a second"),
            "{}",
            daemon.stderr()
        ),
        other => panic!("exit {other:?}:\n{}", daemon.stderr()),
    }
}

#[tokio::test]
async fn sigterm_ends_the_process_even_when_a_streaming_function_spins() {
    let mut daemon = Daemon::start_with(&uri("probe", Some("spin")), &[("GRACE_PERIOD", "1")]);
    let mut client = daemon.client().await;
    // The call never half-closes; it is enough that the function is spinning.
    let _spinning = tokio::spawn(async move {
        client
            .call(futures_util::stream::pending::<
                invoker::proto::function::Message,
            >())
            .await
    });
    common::wait_for_log(&daemon, "spin: spinning").await;
    sigterm(&daemon);
    assert_eq!(daemon.exit_code().await, Some(1), "{}", daemon.stderr());
    assert!(
        daemon
            .stderr()
            .contains("the drain did not end within the grace period and a second"),
        "{}",
        daemon.stderr()
    );
}

/// One Call to `daemon` carrying `payload` with the `grpc-timeout` header `timeout`, made with
/// a bare HTTP/2 client (tonic's client would enforce the timeout itself): the call's status.
async fn call_with_timeout(daemon: &Daemon, payload: &str, timeout: &str) -> (Code, String) {
    let raw = async {
        let tcp = tokio::net::TcpStream::connect(&daemon.addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{}/function.MessageFunction/Call",
                daemon.addr
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", timeout)
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        // One length-prefixed message: field 1 (payload), no headers.
        let mut message = vec![0x0a, payload.len() as u8];
        message.extend_from_slice(payload.as_bytes());
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        let _ = body.send_data(frame.into(), true);
        let response = response.await.unwrap();
        let (head, mut received) = response.into_parts();
        // A trailers-only response carries the status in its headers.
        let mut fields = head.headers;
        if !fields.contains_key("grpc-status") {
            while let Some(data) = received.data().await {
                data.unwrap();
            }
            fields = received.trailers().await.unwrap().unwrap_or_default();
        }
        let code = fields["grpc-status"]
            .to_str()
            .unwrap()
            .parse::<i32>()
            .unwrap();
        let message = fields
            .get("grpc-message")
            .map(|m| percent_decode(m.to_str().unwrap()))
            .unwrap_or_default();
        (Code::from(code), message)
    };
    tokio::time::timeout(common::HANG, raw)
        .await
        .expect("the call hung")
}

/// Decodes grpc-message's percent-encoding.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn an_expired_or_malformed_grpc_timeout_runs_nothing() {
    let daemon = Daemon::start(&uri("rot13", None));
    let (code, message) = call_with_timeout(&daemon, "World", "0n").await;
    assert_eq!(code, Code::DeadlineExceeded, "{message}");
    assert_eq!(
        message,
        "Invoker: the call's deadline had passed when it arrived"
    );
    for malformed in ["soon", "5x", "123456789S", "S"] {
        let (code, message) = call_with_timeout(&daemon, "World", malformed).await;
        assert_eq!(code, Code::InvalidArgument, "{malformed}: {message}");
        assert!(
            message.starts_with("Invoker: malformed grpc-timeout"),
            "{message}"
        );
    }
    let (code, message) = call_with_timeout(&daemon, "World", "10S").await;
    assert_eq!(code, Code::Ok, "{message}");
}

#[tokio::test]
async fn calls_past_the_concurrency_and_queue_bounds_are_refused() {
    let dir = scratch("bounds");
    let socket = dir.join("admin.sock");
    let daemon = Daemon::start_with(
        &uri("probe", Some("sleep_ms")),
        &[
            ("ADMIN_SOCKET", socket.to_str().unwrap()),
            ("MAX_CONCURRENCY", "2"),
            ("MAX_QUEUED", "2"),
        ],
    );
    // Ten calls to a ten-minute function whose callers give up after two seconds: two run,
    // two wait, the rest are refused at once, and none holds a thread beyond the two.
    let calls: Vec<_> = (0..10)
        .map(|_| call_with_timeout(&daemon, "600000", "2S"))
        .collect();
    let outcomes = futures_util::future::join_all(calls).await;
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|(code, _)| *code == Code::ResourceExhausted)
        .collect();
    let expired = outcomes
        .iter()
        .filter(|(code, _)| *code == Code::DeadlineExceeded)
        .count();
    assert_eq!((refused.len(), expired), (6, 4), "{outcomes:?}");
    assert!(
        refused[0]
            .1
            .starts_with("Invoker: too many calls: 2 running and 2 waiting"),
        "{refused:?}"
    );
    let status = tokio::task::spawn_blocking(move || status(&socket))
        .await
        .unwrap();
    assert_eq!(status["calls_running"], 2, "{status}");
    assert_eq!(status["calls_rejected"], 6, "{status}");
    assert_eq!(status["max_concurrency"], 2, "{status}");
    assert_eq!(status["max_queued"], 2, "{status}");
    // Waiting places held by callers that gave up are freed for new calls.
    let (code, message) = call_with_timeout(&daemon, "0", "1S").await;
    assert_eq!(code, Code::DeadlineExceeded, "{message}");
}

/// Opens a Call whose input stays open: the call is in flight (an idle stream) until dropped.
async fn idle_call(
    daemon: &Daemon,
) -> Result<
    (
        tokio::sync::mpsc::Sender<invoker::proto::function::Message>,
        tonic::Response<tonic::Streaming<invoker::proto::function::Message>>,
    ),
    tonic::Status,
> {
    let mut client = daemon.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let response = tokio::time::timeout(
        common::HANG,
        client.call(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("opening the call hung")?;
    Ok((tx, response))
}

#[tokio::test]
async fn connections_advertise_their_stream_limit_and_calls_are_bounded() {
    let daemon = Daemon::start_with(
        &uri("rot13", None),
        &[("MAX_STREAMS_PER_CONNECTION", "7"), ("MAX_CALLS", "3")],
    );
    // The server's SETTINGS carry the limit.
    let tcp = tokio::net::TcpStream::connect(&daemon.addr).await.unwrap();
    let (client, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let mut client = client;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/grpc.health.v1.Health/Check",
            daemon.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    let _ = body.send_data(vec![0u8, 0, 0, 0, 0].into(), true);
    tokio::select! {
        response = response => { response.unwrap(); }
        _ = &mut connection => panic!("the connection ended"),
    }
    assert_eq!(connection.max_concurrent_send_streams(), 7);

    // Calls in flight over every connection are bounded.
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(idle_call(&daemon).await.expect("a call within the limit"));
    }
    let refused = idle_call(&daemon).await.expect_err("a call past the limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .starts_with("Invoker: too many calls in flight (3, --max-calls)"),
        "{refused:?}"
    );
    // Once they end (the server sees the resets a moment later), calls are admitted again.
    drop(open);
    let mut client = daemon.client().await;
    let admitted = tokio::time::timeout(common::HANG, async {
        loop {
            let outcome = call(&mut client, vec![msg("World", &[])]).await;
            if outcome.code() != Code::ResourceExhausted {
                return outcome;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let outcome = admitted.await.expect("calls were never admitted again");
    assert_eq!(outcome.texts(), ["Jbeyq"], "{outcome:?}");
}

/// Reads from `stream` until the server closes it (EOF or reset); fails after [`common::HANG`].
async fn closed_by_server(stream: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(common::HANG, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    closed
        .await
        .expect("the server never closed the connection");
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed_but_busy_ones_are_not() {
    let daemon = Daemon::start_with(
        &uri("probe", Some("sleep_ms")),
        &[("HANDSHAKE_TIMEOUT", "0.5"), ("IDLE_TIMEOUT", "1")],
    );
    // A client that connects and sends nothing, and one that sends half the preface.
    let mut silent = tokio::net::TcpStream::connect(&daemon.addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(&daemon.addr).await.unwrap();
    {
        use tokio::io::AsyncWriteExt;
        slow.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    }
    closed_by_server(&mut silent).await;
    closed_by_server(&mut slow).await;

    // A connection that made its handshake and then no call.
    let tcp = tokio::net::TcpStream::connect(&daemon.addr).await.unwrap();
    let (_client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::time::timeout(common::HANG, connection)
        .await
        .expect("the idle connection was never closed")
        .ok();

    // A call longer than the idle timeout keeps its connection.
    let mut client = daemon.client().await;
    let outcome = call(&mut client, vec![msg("2500", &[])]).await;
    assert_eq!(outcome.texts(), ["slept 2500 ms"], "{outcome:?}");
}

#[tokio::test]
async fn past_the_connection_limit_new_connections_wait() {
    let daemon = Daemon::start_with(
        &uri("rot13", None),
        &[("MAX_CONNECTIONS", "1"), ("HANDSHAKE_TIMEOUT", "1")],
    );
    // One silent connection takes the only place until the handshake timeout closes it.
    let _silent = tokio::net::TcpStream::connect(&daemon.addr).await.unwrap();
    common::wait_for_log(&daemon, "connection limit reached").await;
    let mut client = daemon.client().await;
    let outcome = call(&mut client, vec![msg("World", &[])]).await;
    assert_eq!(outcome.texts(), ["Jbeyq"], "{outcome:?}");
}

#[tokio::test]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_says_so_once() {
    let daemon = Daemon::start(&uri("rot13", None));
    let pid = daemon.child.id().to_string();
    // Leave the daemon a few descriptors above those it has open.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    // Only the soft limit, so that it can be raised again.
    let limit = format!("--nofile={}:", open + 2);
    let prlimit = Command::new("prlimit")
        .args(["--pid", &pid, &limit])
        .status()
        .unwrap();
    assert!(prlimit.success());
    let mut flood = Vec::new();
    for _ in 0..20 {
        flood.push(tokio::net::TcpStream::connect(&daemon.addr).await.unwrap());
    }
    common::wait_for_log(&daemon, "cannot accept connections").await;
    // Give the loop time to have failed many times over (it logs only once).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logged = daemon.stderr().matches("cannot accept connections").count();
    assert_eq!(logged, 1, "{}", daemon.stderr());
    // With descriptors again, it accepts again.
    drop(flood);
    let prlimit = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=1024:"])
        .status()
        .unwrap();
    assert!(prlimit.success());
    let mut client = daemon.client().await;
    let outcome = call(&mut client, vec![msg("World", &[])]).await;
    assert_eq!(outcome.texts(), ["Jbeyq"], "{outcome:?}");
}
