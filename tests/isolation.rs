//! `--isolation process` through the real binary: a crash in the function fails only the call
//! that crashed, the worker comes back, the daemon never exits; streams keep backpressure
//! across the channel; reload under load fails no call; the memory limit holds.

mod common;

use std::time::Duration;

use common::{Daemon, call, msg, uri};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn process(workers: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ISOLATION", "process".to_owned()),
        ("WORKERS", workers.to_owned()),
    ]
}

fn start(handler: &str, extra: &[(&str, &str)]) -> Daemon {
    start_uri(&uri("probe", Some(handler)), "4", extra)
}

fn start_uri(function_uri: &str, workers: &str, extra: &[(&str, &str)]) -> Daemon {
    let mut env: Vec<(&str, String)> = process(workers);
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Daemon::start_with(function_uri, &env)
}

/// Runs 16 good calls in a loop each while `crash` is called once; counts every good call.
async fn crash_under_load(daemon: &Daemon, kind: &str, timeout: Option<&str>) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut good = Vec::new();
    for _ in 0..16 {
        let mut client = daemon.client().await;
        let stop = stop.clone();
        good.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || ok == 0 {
                let out = call(&mut client, vec![msg("ok", &[])]).await;
                match out.code() {
                    Code::Ok => ok += 1,
                    _ => failed.push(format!("{out:?}")),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut client = daemon.client().await;
    let mut request = tonic::Request::new(tokio_stream::iter(vec![msg(kind, &[])]));
    if let Some(t) = timeout {
        request
            .metadata_mut()
            .insert("grpc-timeout", t.parse().unwrap());
    }
    let crashed = client.call(request).await;
    let crashed = match crashed {
        Ok(response) => {
            let mut stream = response.into_inner();
            match stream.message().await {
                Ok(Some(m)) => panic!("{kind}: answered {m:?}"),
                Ok(None) => panic!("{kind}: ended OK"),
                Err(status) => status,
            }
        }
        Err(status) => status,
    };
    // Good calls go on while the worker restarts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for task in good {
        let (ok, failed) = task.await.unwrap();
        assert!(
            failed.is_empty(),
            "{kind}: good calls failed: {failed:?}\n{}",
            daemon.stderr()
        );
        total += ok;
    }
    assert!(total >= 16, "{kind}: {total}");
    match timeout {
        None => {
            assert_eq!(crashed.code(), Code::Unavailable, "{kind}: {crashed:?}");
            assert!(
                crashed.message().starts_with("Invoker: Function Crashed"),
                "{kind}: {crashed:?}"
            );
        }
        Some(_) => assert_eq!(
            crashed.code(),
            Code::DeadlineExceeded,
            "{kind}: {crashed:?}"
        ),
    }
    eprintln!(
        "{kind}: {total} good calls, 0 lost; the crash: {}",
        crashed.message()
    );
}

#[tokio::test]
async fn each_crash_fails_only_its_own_call_and_the_worker_comes_back() {
    let daemon = start("crash_on", &[]);
    for (kind, signal) in [
        ("abort", "SIGABRT"),
        ("overflow", "SIGSEGV"),
        ("null", "SIGSEGV"),
        ("exit", "exit status 3"),
    ] {
        crash_under_load(&daemon, kind, None).await;
        let log = daemon.stderr();
        assert!(log.contains(signal), "{kind}: {log}");
    }
    // A call that never returns: its deadline fails it; its worker is killed and restarted.
    crash_under_load(&daemon, "hang", Some("300m")).await;
    common::wait_for_log(&daemon, "a cancelled call was still running").await;
    // Every worker serves again; the daemon is still up.
    for _ in 0..8 {
        let mut client = daemon.client().await;
        assert_eq!(
            call(&mut client, vec![msg("ok", &[])]).await.texts(),
            ["ok"]
        );
    }
    let mut daemon = daemon;
    assert!(daemon.child.try_wait().unwrap().is_none());
}

#[tokio::test]
async fn the_memory_limit_ends_the_worker_not_the_daemon() {
    let daemon = start("crash_on", &[("WORKER_MEMORY_LIMIT", "536870912")]);
    crash_under_load(&daemon, "grow", None).await;
}

#[tokio::test]
async fn a_crash_in_the_init_of_a_worker_is_a_start_error() {
    let daemon = std::process::Command::new(env!("CARGO_BIN_EXE_invoker"))
        .arg("serve")
        .env("FUNCTION_URI", uri("probe", Some("no_such_handler")))
        .env("GRPC_PORT", "0")
        .env("ISOLATION", "process")
        .env("WORKERS", "2")
        .output()
        .unwrap();
    assert_eq!(daemon.status.code(), Some(1));
    let err = String::from_utf8_lossy(&daemon.stderr);
    assert!(err.contains("no_such_handler"), "{err}");
}

#[tokio::test]
async fn a_stalled_client_stops_a_firehose_in_a_worker() {
    let daemon = start("firehose", &[]);
    let mut client = daemon.client().await;
    let (tx, rx) = mpsc::channel::<invoker::proto::function::Message>(1);
    let mut replies = client
        .call(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = replies.message().await.unwrap().unwrap();
    assert_eq!(first.payload.len(), 1024);
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(replies);
    drop(tx);
    common::wait_for_log(&daemon, "firehose: produced ").await;
    let log = daemon.stderr();
    let produced: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("firehose: produced "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the count");
    assert!(
        produced < 50_000,
        "{produced} KiB produced for a caller that read 1 KiB"
    );
}

#[tokio::test]
async fn request_reply_and_streaming_work_in_process_mode() {
    let daemon = start("bytes_echo", &[]);
    let mut client = daemon.client().await;
    let out = call(&mut client, vec![msg("hello", &[])]).await;
    assert_eq!(out.texts(), ["hello"], "{out:?}");
    let daemon = start("take_two", &[]);
    let mut client = daemon.client().await;
    let out = call(&mut client, vec![msg("a", &[]), msg("b", &[])]).await;
    assert_eq!(out.texts(), ["a", "b"], "{out:?}");
}

/// Starts a call of `payload` that waits for its reply (so it is not cancelled) until the
/// returned task is aborted (which drops the call, as a caller that goes away).
async fn call_in_background(daemon: &Daemon, payload: &str) -> tokio::task::JoinHandle<()> {
    let mut client = daemon.client().await;
    let message = msg(payload, &[]);
    tokio::spawn(async move {
        if let Ok(response) = client.call(tokio_stream::iter(vec![message])).await {
            let _ = response.into_inner().message().await;
        }
    })
}

/// A call that blocks in one worker delays no other call while another worker is free: the
/// calls queued behind it go back to the host and on to the other worker, and no new call
/// queues behind it. Before, calls queued behind the blocked one as soon as the free worker
/// held more than it, and waited for it: here, for ever.
#[tokio::test]
async fn a_call_that_blocks_delays_no_call_while_another_worker_is_free() {
    let daemon = start_uri(&uri("probe", Some("sleep_ms")), "2", &[]);
    let blocked = call_in_background(&daemon, "3600000").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Calls of 2 ms, more at once than one worker runs: they pile up on the free worker.
    let mut good = Vec::new();
    for _ in 0..32 {
        let mut client = daemon.client().await;
        good.push(tokio::spawn(async move {
            let mut answered = 0;
            for _ in 0..5 {
                // `call` fails the test if a call hangs.
                let out = call(&mut client, vec![msg("2", &[])]).await;
                assert_eq!(out.code(), Code::Ok, "{out:?}");
                answered += 1;
            }
            answered
        }));
    }
    let mut answered = 0;
    for task in good {
        answered += task.await.unwrap();
    }
    assert_eq!(answered, 32 * 5, "{}", daemon.stderr());
    blocked.abort();
}

/// A caller that goes away, and a deadline that passes, reach the function running in a
/// worker as in process: its context says the call is cancelled.
#[tokio::test]
async fn cancellation_and_deadlines_reach_the_function_in_a_worker() {
    // The caller goes away (no deadline): only the serving process can tell the worker.
    let daemon = start_uri(&uri("context", Some("until_cancelled")), "1", &[]);
    let abandoned = call_in_background(&daemon, "600000").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    abandoned.abort();
    common::wait_for_log(&daemon, "until_cancelled: saw the call cancelled").await;

    // A deadline.
    let daemon = start_uri(&uri("context", Some("until_cancelled")), "1", &[]);
    let mut client = daemon.client().await;
    let mut request = tonic::Request::new(tokio_stream::iter(vec![msg("600000", &[])]));
    request.set_timeout(Duration::from_millis(300));
    let status = match client.call(request).await {
        Err(status) => status,
        Ok(response) => response
            .into_inner()
            .message()
            .await
            .expect_err("the call ends with a status"),
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    common::wait_for_log(&daemon, "until_cancelled: saw the call cancelled").await;
}

/// Kills the processes whose command line is `sleep SECONDS`.
fn kill_sleepers(seconds: &str) {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.len() >= 2 && args[0].ends_with(b"sleep") && args[1] == seconds.as_bytes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A process the function starts (which inherits its open files, as `Command` does by
/// default) does not hold the worker's channel open: the worker's crash is seen, and fails
/// the call, although that process lives on. Before, the channel was the worker's stdin, the
/// process inherited it, and the call waited for as long as the process lived.
#[tokio::test]
async fn a_process_the_function_starts_does_not_hide_its_crash() {
    const ORPHAN_SLEEP: &str = "86400.25";
    /// Kills the function's process at the end, whatever happens.
    struct Reaper;
    impl Drop for Reaper {
        fn drop(&mut self) {
            kill_sleepers(ORPHAN_SLEEP);
        }
    }
    let _reaper = Reaper;
    let daemon = start_uri(&uri("probe", Some("crash_on")), "1", &[]);
    let mut client = daemon.client().await;
    let out = call(&mut client, vec![msg("orphan", &[])]).await;
    assert_eq!(out.code(), Code::Unavailable, "{out:?}");
    assert!(
        out.status
            .message()
            .starts_with("Invoker: Function Crashed"),
        "{out:?}"
    );
    let out = call(&mut client, vec![msg("ok", &[])]).await;
    assert_eq!(out.texts(), ["ok"], "{out:?}");
}

#[tokio::test]
async fn inputs_sent_ahead_to_a_worker_and_never_read_fail_the_call_as_in_process() {
    // The host forwards a window of inputs ahead of the worker's function: those it never
    // reads are reported back, and the call ends as in process, not OK.
    let daemon = start("take_two", &[]);
    let mut client = daemon.client().await;
    for _ in 0..3 {
        let out = call(
            &mut client,
            vec![msg("a", &[]), msg("b", &[]), msg("c", &[]), msg("d", &[])],
        )
        .await;
        assert_eq!(out.texts(), ["a", "b"], "{out:?}");
        assert_eq!(out.code(), Code::FailedPrecondition, "{out:?}");
        // Exactly what it reads: OK.
        let out = call(&mut client, vec![msg("a", &[]), msg("b", &[])]).await;
        assert_eq!(out.texts(), ["a", "b"], "{out:?}");
        assert_eq!(out.code(), Code::Ok, "{out:?}");
    }
}

#[tokio::test]
async fn the_first_accept_chooses_the_output_type_of_a_stream_in_a_worker() {
    // The deciding input is held back one poll by the engine; the worker must hear of the new
    // output type before it is forwarded that input, every time.
    let daemon = start_uri(&uri("streams", Some("running_average")), "2", &[]);
    let mut client = daemon.client().await;
    for _ in 0..20 {
        let out = call(
            &mut client,
            vec![
                msg("1", &[("Accept", "application/json")]),
                msg("2", &[("Accept", "text/plain")]),
            ],
        )
        .await;
        assert_eq!(out.texts(), ["1.0", "1.5"], "{out:?}");
    }
}

#[tokio::test]
async fn a_long_stream_crosses_the_channel_in_order() {
    // Many more inputs than the window, in order, each answered.
    let daemon = start("counted", &[]);
    let mut client = daemon.client().await;
    let words: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
    let out = call(&mut client, words.iter().map(|w| msg(w, &[])).collect()).await;
    assert_eq!(out.code(), Code::Ok, "{:?}", out.status);
    assert_eq!(out.texts(), words);
}

/// GET http://addr/metrics; returns the body.
fn get_metrics(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .expect("an HTTP response")
        .1
        .to_owned()
}

/// The value of the sample `name` (without labels) in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn status_metrics_and_health_follow_the_workers() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let dir = common::scratch("isolation", "status");
    let socket = dir.join("admin.sock");
    // One worker: while it restarts, none is up.
    let daemon = start_uri(
        &uri("probe", Some("crash_on")),
        "1",
        &[
            ("ADMIN_SOCKET", socket.to_str().unwrap()),
            ("METRICS_PORT", "0"),
        ],
    );
    let status = common::status(&socket);
    assert_eq!(status["isolation"], "process", "{status}");
    assert_eq!(status["workers"]["configured"], 1, "{status}");
    assert_eq!(status["workers"]["up"], 1, "{status}");
    assert_eq!(status["workers"]["restarts"], 0, "{status}");
    assert_eq!(status["workers"]["last_crash"], serde_json::Value::Null);

    let mut health = HealthClient::new(daemon.channel().await);
    let mut watched = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watched.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    let mut client = daemon.client().await;
    let crashed = call(&mut client, vec![msg("abort", &[])]).await;
    assert_eq!(crashed.code(), Code::Unavailable, "{crashed:?}");
    // No worker is up until the restart: NOT_SERVING, then SERVING again.
    let seen = tokio::time::timeout(common::HANG, async {
        let mut seen = Vec::new();
        while let Some(reply) = watched.message().await.unwrap() {
            seen.push(reply.status());
            if reply.status() == ServingStatus::Serving {
                return seen;
            }
        }
        seen
    })
    .await
    .expect("health never came back");
    assert_eq!(
        seen,
        [ServingStatus::NotServing, ServingStatus::Serving],
        "{}",
        daemon.stderr()
    );
    assert_eq!(
        call(&mut client, vec![msg("ok", &[])]).await.texts(),
        ["ok"]
    );

    let status = common::status(&socket);
    let workers = &status["workers"];
    assert_eq!(workers["up"], 1, "{status}");
    assert_eq!(workers["restarts"], 1, "{status}");
    assert_eq!(workers["crashes"], 1, "{status}");
    assert!(
        workers["last_crash"].as_str().unwrap().contains("SIGABRT"),
        "{status}"
    );
    assert!(workers["last_crash_unix_millis"].as_u64().unwrap() > 1_700_000_000_000);
    // A crash is counted as such, not as the function's error.
    assert_eq!(status["crashes"], 1, "{status}");
    assert_eq!(status["user_errors"], 0, "{status}");
    assert_eq!(status["panics"], 0, "{status}");

    let addr = daemon.metrics.clone().expect("the metrics address");
    let text = tokio::task::spawn_blocking(move || get_metrics(&addr))
        .await
        .unwrap();
    assert_eq!(sample(&text, "invoker_workers"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "invoker_workers_up"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "invoker_worker_restarts_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "invoker_worker_crashes_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "invoker_function_crashes_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "invoker_function_errors_total"),
        Some(0.0),
        "{text}"
    );
}

#[tokio::test]
async fn reload_under_load_in_process_mode_fails_no_call() {
    let dir = common::scratch("isolation", "reload");
    let socket = dir.join("admin.sock");
    let daemon = start_uri(
        &uri("probe", Some("crash_on")),
        "2",
        &[("ADMIN_SOCKET", socket.to_str().unwrap())],
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let mut client = daemon.client().await;
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = call(&mut client, vec![msg("ok", &[])]).await;
                match (out.code(), out.texts().as_slice()) {
                    (Code::Ok, [one]) if one == "ok" => ok += 1,
                    _ => failed.push(format!("{out:?}")),
                }
            }
            (ok, failed)
        }));
    }
    let library = common::lib("probe");
    for generation in 2..=6u64 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        if generation % 2 == 0 {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(daemon.child.id() as i32),
                nix::sys::signal::Signal::SIGHUP,
            )
            .unwrap();
        } else {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_invoker"))
                .args(["reload", "--admin-socket", socket.to_str().unwrap()])
                .arg(&library)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        let socket = socket.clone();
        tokio::time::timeout(common::HANG, async move {
            loop {
                let socket = socket.clone();
                let status = tokio::task::spawn_blocking(move || common::status(&socket))
                    .await
                    .unwrap();
                if status["generation"].as_u64() == Some(generation) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the reload never happened");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for client in clients {
        let (ok, failed) = client.await.unwrap();
        assert!(
            failed.is_empty(),
            "calls failed during reloads: {failed:?}\n{}",
            daemon.stderr()
        );
        total += ok;
    }
    let status = common::status(&socket);
    assert_eq!(status["generation"], 6, "{status}");
    // The old workers were drained (they exited when their calls were done), not crashed.
    assert_eq!(status["workers"]["crashes"], 0, "{status}");
    assert_eq!(status["crashes"], 0, "{status}");
    assert!(total >= 16, "{total}");
    eprintln!("{total} calls over 5 reloads, 0 failed");
}

mod invoke {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use invoker::proto::streaming::riff_client::RiffClient;
    use invoker::proto::streaming::{
        InputFrame, InputSignal, OutputFrame, StartFrame, input_signal, output_signal,
    };
    use tonic::Code;

    use super::common::{self, Daemon, uri};

    fn start(expected: &[&str]) -> InputSignal {
        InputSignal {
            frame: Some(input_signal::Frame::Start(StartFrame {
                expected_content_types: expected.iter().map(|s| s.to_string()).collect(),
                input_names: vec![],
                output_names: vec![],
            })),
        }
    }

    fn text(payload: &str) -> InputSignal {
        InputSignal {
            frame: Some(input_signal::Frame::Data(InputFrame {
                payload: Bytes::copy_from_slice(payload.as_bytes()),
                content_type: "text/plain".to_owned(),
                headers: BTreeMap::new(),
                arg_index: 0,
            })),
        }
    }

    /// Sends `signals`, half-closes, and collects (resultIndex, payload, content type) of
    /// each frame and the status.
    async fn invoke(daemon: &Daemon, signals: Vec<InputSignal>) -> (Vec<OutputFrame>, Code) {
        let mut client = RiffClient::connect(format!("http://{}", daemon.addr))
            .await
            .unwrap();
        let called = async move {
            let mut replies = match client.invoke(futures_util::stream::iter(signals)).await {
                Ok(response) => response.into_inner(),
                Err(status) => return (vec![], status.code()),
            };
            let mut frames = Vec::new();
            loop {
                match replies.message().await {
                    Ok(Some(signal)) => match signal.frame {
                        Some(output_signal::Frame::Data(frame)) => frames.push(frame),
                        None => panic!("an OutputSignal without a frame"),
                    },
                    Ok(None) => return (frames, Code::Ok),
                    Err(status) => return (frames, status.code()),
                }
            }
        };
        tokio::time::timeout(common::HANG, called)
            .await
            .expect("the call hung")
    }

    fn results(frames: &[OutputFrame]) -> Vec<(i32, String)> {
        frames
            .iter()
            .map(|f| {
                (
                    f.result_index,
                    String::from_utf8_lossy(&f.payload).into_owned(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn invoke_works_in_process_mode() {
        // Request/reply, mapped over every frame.
        let daemon = super::start_uri(&uri("greeter", Some("hello")), "2", &[]);
        let (frames, code) = invoke(
            &daemon,
            vec![start(&["text/plain"]), text("a"), text("b"), text("c")],
        )
        .await;
        assert_eq!(code, Code::Ok, "{frames:?}");
        assert_eq!(
            results(&frames),
            [
                (0, "Hello a".into()),
                (0, "Hello b".into()),
                (0, "Hello c".into())
            ]
        );
        // Streaming, with two outputs each of its own type.
        let daemon = super::start_uri(&uri("streams", Some("partition")), "2", &[]);
        let mut signals = vec![start(&["application/json", "text/plain"])];
        signals.extend((1..=6).map(|i| text(&i.to_string())));
        let (frames, code) = invoke(&daemon, signals).await;
        assert_eq!(code, Code::Ok, "{frames:?}\n{}", daemon.stderr());
        let of = |index: i32| -> Vec<(String, String)> {
            frames
                .iter()
                .filter(|f| f.result_index == index)
                .map(|f| {
                    (
                        String::from_utf8_lossy(&f.payload).into_owned(),
                        f.content_type.clone(),
                    )
                })
                .collect()
        };
        let json = |n: &str| (n.to_owned(), "application/json".to_owned());
        let plain = |n: &str| (n.to_owned(), "text/plain".to_owned());
        assert_eq!(of(0), [json("2"), json("4"), json("6")]);
        assert_eq!(of(1), [plain("1"), plain("3"), plain("5")]);
    }
}

#[test]
fn a_memory_limit_below_what_a_worker_needs_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_invoker"))
        .args(["serve", "--isolation", "process"])
        .args(["--worker-memory-limit", &(32u64 << 20).to_string()])
        .env("FUNCTION_URI", uri("probe", Some("crash_on")))
        .env("GRPC_PORT", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&(64u64 << 20).to_string()), "{err}");
}
