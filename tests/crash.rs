//! What a crashing or panicking function leaves in the log, through the real binary: a fatal
//! signal is one line naming the signal, the function and the call, and a distinct exit code; a
//! caught panic is one structured event per call (rate-limited), never the standard report.

mod common;

use std::time::Duration;

use common::{Daemon, call, msg, uri};
use serde_json::Value;
use tonic::Code;

/// Every line of the log as JSON; fails the test on a line that is not.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{log}"))
        })
        .collect()
}

/// Calls the daemon's function once and expects the daemon to die of it: returns its exit
/// code and its log.
async fn crash(
    daemon: &mut Daemon,
    messages: Vec<invoker::proto::function::Message>,
) -> (Option<i32>, String) {
    let mut client = daemon.client().await;
    let out = call(&mut client, messages).await;
    assert_ne!(out.code(), Code::Ok, "{out:?}");
    let code = daemon.exit_code().await;
    // The log's reader thread sees the last line shortly after the exit.
    let line = "fatal signal";
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while !daemon.stderr().contains(line) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    (code, daemon.stderr())
}

#[tokio::test]
async fn an_abort_names_the_signal_the_function_and_the_call_and_exits_134() {
    let mut daemon = Daemon::start(&uri("probe", Some("abort_now")));
    let (code, log) = crash(&mut daemon, vec![msg("", &[])]).await;
    assert!(
        log.contains(
            "invoker: fatal signal SIGABRT in function 'abort_now' (call 1): the process exits with code 134\n"
        ),
        "{log}"
    );
    assert_eq!(code, Some(134), "{log}");
}

#[tokio::test]
async fn a_stack_overflow_is_one_json_event_naming_the_call_and_exits_139() {
    let mut daemon = Daemon::start_with(&uri("probe", Some("overflow")), &[("LOG_FORMAT", "json")]);
    let (code, log) = crash(&mut daemon, vec![msg("1", &[])]).await;
    assert!(!log.contains("overflowed its stack"), "{log}");
    let events = json_lines(&log);
    let crash = events
        .iter()
        .find(|e| e["fields"]["signal"].is_string())
        .unwrap_or_else(|| panic!("no crash event in:\n{log}"));
    assert_eq!(crash["level"], "ERROR", "{crash}");
    assert_eq!(crash["fields"]["signal"], "SIGSEGV", "{crash}");
    assert_eq!(crash["fields"]["function"], "overflow", "{crash}");
    assert_eq!(crash["fields"]["call"], 1, "{crash}");
    assert_eq!(crash["fields"]["exit_code"], 139, "{crash}");
    assert_eq!(
        crash["fields"]["message"],
        "fatal signal SIGSEGV in function 'overflow' (call 1): the process exits with code 139"
    );
    assert_eq!(code, Some(139), "{log}");
}

#[tokio::test]
async fn a_stack_overflow_is_logged_on_threads_std_gave_no_signal_stack() {
    // With SIGSEGV ignored at exec, Rust's std installs no handler of its own and gives its
    // threads no alternate signal stack: the invoker gives one to each thread that calls the
    // function, or the handler would overflow the stack too.
    let mut daemon =
        Daemon::start_in_shell(&uri("probe", Some("overflow")), &[], "trap '' SEGV BUS");
    let (code, log) = crash(&mut daemon, vec![msg("1", &[])]).await;
    assert!(
        log.contains("fatal signal SIGSEGV in function 'overflow' (call 1)"),
        "{log}"
    );
    assert_eq!(code, Some(139), "{log}");
}

#[tokio::test]
async fn a_crash_while_a_stream_is_polled_names_the_call() {
    let mut daemon = Daemon::start(&uri("probe", Some("abort_streaming")));
    let (code, log) = crash(&mut daemon, vec![msg("one", &[])]).await;
    assert!(
        log.contains("fatal signal SIGABRT in function 'abort_streaming' (call 1)"),
        "{log}"
    );
    assert_eq!(code, Some(134), "{log}");
}

/// The panic events (`panic` field) of a JSON log.
fn panic_events(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["fields"]["panic"].is_string())
        .collect()
}

#[tokio::test]
async fn a_panic_is_one_structured_event_per_call_with_its_location() {
    let daemon = Daemon::start_with(&uri("shapes", Some("panics")), &[("LOG_FORMAT", "json")]);
    let mut client = daemon.client().await;
    for word in ["first", "second", "third"] {
        let out = call(&mut client, vec![msg(word, &[])]).await;
        // What the caller sees is as it was.
        assert_eq!(out.code(), Code::Internal, "{out:?}");
        assert_eq!(
            out.status.message(),
            format!("Invoker: Function Panicked: {word}")
        );
    }
    common::wait_for_log(&daemon, "third").await;
    let log = daemon.stderr();
    assert!(!log.contains("panicked at"), "{log}");
    let events = json_lines(&log);
    let panics = panic_events(&events);
    assert_eq!(panics.len(), 3, "{log}");
    for (event, word) in panics.iter().zip(["first", "second", "third"]) {
        let fields = &event["fields"];
        assert_eq!(event["level"], "ERROR", "{event}");
        assert_eq!(fields["message"], "the function panicked", "{event}");
        assert_eq!(fields["panic"], word, "{event}");
        assert_eq!(fields["function"], "panics", "{event}");
        assert!(fields["call"].as_u64().is_some(), "{event}");
        let location = fields["location"].as_str().unwrap_or_default();
        assert!(
            location.starts_with("examples/shapes/src/lib.rs:"),
            "{event}"
        );
    }
}

#[tokio::test]
async fn a_panic_in_a_stream_is_logged_with_its_location() {
    let daemon = Daemon::start_with(
        &uri("probe", Some("panics_later")),
        &[("LOG_FORMAT", "json")],
    );
    let mut client = daemon.client().await;
    let out = call(&mut client, vec![msg("a", &[]), msg("b", &[])]).await;
    assert_eq!(out.code(), Code::Internal, "{out:?}");
    assert_eq!(
        out.status.message(),
        "Invoker: Function Panicked: second item: b"
    );
    common::wait_for_log(&daemon, "second item: b").await;
    let log = daemon.stderr();
    assert!(!log.contains("panicked at"), "{log}");
    let events = json_lines(&log);
    let panics = panic_events(&events);
    assert_eq!(panics.len(), 1, "{log}");
    assert_eq!(panics[0]["fields"]["function"], "panics_later");
    let location = panics[0]["fields"]["location"].as_str().unwrap_or_default();
    assert!(
        location.starts_with("tests/fixtures/probe/src/lib.rs:"),
        "{log}"
    );
}

#[tokio::test]
async fn a_panic_storm_is_rate_limited_and_every_panic_is_counted() {
    const CALLS: u64 = 2000;
    const CLIENTS: u64 = 8;
    let mut daemon = Daemon::start_with(&uri("shapes", Some("panics")), &[("LOG_FORMAT", "json")]);
    let client = daemon.client().await;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                for _ in 0..CALLS / CLIENTS {
                    let out = call(&mut client, vec![msg("boom", &[])]).await;
                    assert_eq!(out.status.message(), "Invoker: Function Panicked: boom");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("the calls");
    }
    // At shutdown, the panics not logged yet are counted too.
    let pid = nix::unistd::Pid::from_raw(daemon.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    assert_eq!(daemon.exit_code().await, Some(0));
    // Every panic is either logged or counted as not logged.
    let counted = |log: &str| {
        let events = json_lines(log);
        let logged = panic_events(&events).len() as u64;
        let suppressed: u64 = events
            .iter()
            .filter_map(|e| e["fields"]["suppressed"].as_u64())
            .sum();
        (logged, suppressed)
    };
    let waited = tokio::time::timeout(common::HANG, async {
        loop {
            let (logged, suppressed) = counted(&daemon.stderr());
            if logged + suppressed == CALLS {
                return logged;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let Ok(logged) = waited.await else {
        panic!("not every panic is counted:\n{}", daemon.stderr());
    };
    let log = daemon.stderr();
    assert!(!log.contains("panicked at"));
    let lines = log.lines().count() as u64;
    assert!(
        lines < CALLS / 10,
        "{lines} lines for {CALLS} panics ({logged} logged):\n{log}"
    );
}
