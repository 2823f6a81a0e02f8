//! `invoker openwhisk` (SPEC §9) through the real binary and a small HTTP/1.1 client over a
//! TcpStream: every status and body of /init and /run, the sentinel after each activation, the
//! `__OW_*` context and deadline, concurrency, panics, limits, re-init and the drain.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::{HANG, lib, scratch};
use serde_json::{Value, json};

const SENTINEL: &str = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX";

/// A running `invoker openwhisk`, killed when dropped, with its stdout and stderr kept.
struct Runtime {
    child: Child,
    addr: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Runtime {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Runtime {
        let mut command = Command::new(env!("CARGO_BIN_EXE_invoker"));
        command
            .arg("openwhisk")
            .args(["--port", "0"])
            .args(args)
            .env_remove("FUNCTION_URI")
            .env_remove("OW_DEBUG")
            .env("HOST", "127.0.0.1")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start invoker openwhisk");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        for (pipe, sink) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
                stdout.clone(),
            ),
            (Box::new(child.stderr.take().unwrap()), stderr.clone()),
        ] {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
        let started = Instant::now();
        let addr = loop {
            if let Some(addr) = stdout
                .lock()
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("listening on "))
            {
                break addr.to_owned();
            }
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "invoker openwhisk exited ({status}) before listening:\n{}",
                    stderr.lock().unwrap()
                );
            }
            assert!(started.elapsed() < HANG, "invoker openwhisk never listened");
            std::thread::sleep(Duration::from_millis(20));
        };
        Runtime {
            child,
            addr,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// POSTs `body` to `path`: the status, the Content-Type and the body.
    fn post(&self, path: &str, body: &[u8]) -> Answer {
        post(&self.addr, path, body)
    }

    /// POSTs JSON to `path`.
    fn post_json(&self, path: &str, body: &Value) -> Answer {
        self.post(path, body.to_string().as_bytes())
    }

    /// `/init` with `code` (base64) and `main`, and `env`.
    fn init(&self, code: &[u8], main: &str, env: Value) -> Answer {
        self.post_json(
            "/init",
            &json!({"value": {
                "code": base64::engine::general_purpose::STANDARD.encode(code),
                "binary": true,
                "main": main,
                "env": env,
            }}),
        )
    }

    /// `/run` with `value`.
    fn run(&self, value: Value) -> Answer {
        self.post_json("/run", &json!({ "value": value }))
    }

    /// Waits until stdout and stderr each hold `n` sentinel lines.
    fn wait_for_sentinels(&self, n: usize) {
        let started = Instant::now();
        loop {
            let (out, err) = (sentinels(&self.stdout()), sentinels(&self.stderr()));
            if out == n && err == n {
                return;
            }
            assert!(
                out <= n && err <= n && started.elapsed() < HANG,
                "wanted {n} sentinels; stdout has {out}, stderr {err}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the exit code.
    fn terminate(&mut self) -> Option<i32> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(started.elapsed() < HANG, "did not exit:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sentinel lines in `log`: each alone on its line.
fn sentinels(log: &str) -> usize {
    log.lines().filter(|l| *l == SENTINEL).count()
}

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// Asserts the status, that the body is JSON, and returns it.
    fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/json"),
            "{self:?}"
        );
        self.json()
    }

    /// Asserts an error answer `{"error": ...}` with `status`, and returns the error text.
    fn error(&self, status: u16) -> String {
        let body = self.expect(status);
        assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{self:?}");
        body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error text: {self:?}"))
            .to_owned()
    }
}

/// A request head with `Connection: close`, then `body`; the answer read to the end.
fn post(addr: &str, path: &str, body: &[u8]) -> Answer {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    exchange(addr, head.as_bytes(), body)
}

fn exchange(addr: &str, head: &[u8], body: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(HANG)).unwrap();
    stream.write_all(head).unwrap();
    // A refused body may be cut short by the answer: what matters is the answer.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .expect("an answer before the timeout");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let content_type = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-type")
            .then(|| value.trim().to_owned())
    });
    Answer {
        status,
        content_type,
        body: body.to_owned(),
    }
}

/// A zip of `files` (name, bytes), deflated.
fn zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in files {
        writer.start_file(*name, options).unwrap();
        writer.write_all(bytes).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// libopenwhisk.so, zipped as `wsk action create` takes it: in a directory, beside a file.
fn action_zip() -> Vec<u8> {
    let library = std::fs::read(lib("openwhisk")).unwrap();
    zip(&[
        ("README.md", b"hello"),
        ("target/release/libopenwhisk.so", &library),
    ])
}

fn epoch_ms_in(later: Duration) -> String {
    (SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + later)
        .as_millis()
        .to_string()
}

#[test]
fn init_then_run_answers_as_openwhisk_does() {
    let ow = Runtime::start(&[], &[]);
    let e = ow.run(json!({"name": "Ada"})).error(500);
    assert!(e.contains("no action defined yet"), "{e}");
    let e = ow.post("/init", b"{\"value\": {\"code\": ").error(400);
    assert!(e.contains("not the JSON"), "{e}");
    let e = ow
        .post_json("/init", &json!({"value": {"main": "greet"}}))
        .error(403);
    assert!(e.contains("no code"), "{e}");
    let e = ow.run(json!({})).error(500);
    assert!(e.contains("no action defined yet"), "{e}");

    let answer = ow.init(&action_zip(), "greet", json!({"greeting": "hi"}));
    assert_eq!(answer.expect(200), json!({"ok": true}));
    assert_eq!(
        ow.run(json!({"name": "Ada"})).expect(200),
        json!({"greeting": "Hello Ada"})
    );
    assert_eq!(
        ow.run(json!({})).expect(200),
        json!({"greeting": "Hello stranger"})
    );
    assert_eq!(
        ow.post_json("/run", &json!({"unknown": true})).expect(200),
        json!({"greeting": "Hello stranger"})
    );
    assert_eq!(
        ow.run(json!({"name": "Riff"})).error(200),
        "error condition"
    );
    let e = ow.post("/run", b"{\"value\": ").error(400);
    assert!(e.contains("not the JSON"), "{e}");
    let e = ow.run(json!({"name": 3})).error(200);
    assert!(e.starts_with("Invoker: Bad Input Signal"), "{e}");

    // Init once: a second /init is refused, and the first keeps serving.
    let e = ow.init(&action_zip(), "text", json!({})).error(403);
    assert!(e.contains("more than once"), "{e}");
    assert_eq!(
        ow.run(json!({"name": "Ada"})).expect(200),
        json!({"greeting": "Hello Ada"})
    );
    let e = ow.post("/nowhere", b"{}").error(404);
    assert!(e.contains("/init"), "{e}");
    // Every /run is an activation: 9 of them, each ended on both streams.
    ow.wait_for_sentinels(9);
}

#[test]
fn the_sentinel_follows_the_activations_log_lines() {
    let ow = Runtime::start(&[], &[]);
    ow.init(&action_zip(), "activation", json!({})).expect(200);
    for n in 1..=3 {
        ow.run(json!({})).expect(200);
        ow.wait_for_sentinels(n);
    }
    let stderr = ow.stderr();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| *l == SENTINEL || l.contains("activation: describing the activation"))
        .collect();
    let mut expected = Vec::new();
    for _ in 0..3 {
        expected.push("log");
        expected.push("sentinel");
    }
    let seen: Vec<&str> = lines
        .iter()
        .map(|l| if *l == SENTINEL { "sentinel" } else { "log" })
        .collect();
    assert_eq!(seen, expected, "{stderr}");
}

#[test]
fn the_activation_reaches_the_context_and_the_api_key_is_never_logged() {
    const KEY: &str = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:SECRETSECRETSECRET";
    let ow = Runtime::start(&[], &[("RUST_LOG", "debug")]);
    ow.init(
        &action_zip(),
        "activation",
        json!({"greeting": "hi", "answer": 42, "__OW_API_KEY": KEY}),
    )
    .expect(200);
    let deadline = epoch_ms_in(Duration::from_secs(60));
    let answer = ow.post_json(
        "/run",
        &json!({
            "value": {"x": 1},
            "namespace": "guest",
            "action_name": "/guest/hello",
            "activation_id": "a1b2c3",
            "transaction_id": "tid-9",
            "deadline": deadline,
            "api_key": KEY,
        }),
    );
    let activation = answer.expect(200);
    assert_eq!(activation["activation_id"], "a1b2c3", "{activation}");
    assert_eq!(activation["action_name"], "/guest/hello");
    assert_eq!(activation["namespace"], "guest");
    assert_eq!(activation["transaction_id"], "tid-9");
    assert_eq!(activation["deadline"], deadline.as_str());
    let left = activation["deadline_ms_left"].as_u64().expect("a deadline");
    assert!(left > 50_000 && left <= 60_000, "{activation}");
    // env is the user configuration, without OpenWhisk's own keys; non-strings as JSON.
    assert_eq!(
        activation["config"],
        json!({"answer": "42", "greeting": "hi"})
    );
    // Nor does a run without a deadline have one.
    let activation = ow.run(json!({})).expect(200);
    assert_eq!(activation["deadline_ms_left"], Value::Null, "{activation}");
    ow.wait_for_sentinels(2);
    let (stdout, stderr) = (ow.stdout(), ow.stderr());
    assert!(stderr.contains("DEBUG"), "not at debug level:\n{stderr}");
    assert!(!stderr.contains("SECRETSECRET"), "{stderr}");
    assert!(!stdout.contains("SECRETSECRET"), "{stdout}");
}

#[test]
fn results_that_are_not_dictionaries_and_panics_are_502_and_the_runtime_serves_on() {
    let ow = Runtime::start(&["--debug"], &[]);
    ow.init(&action_zip(), "text", json!({})).expect(200);
    assert_eq!(
        ow.run(json!({"text": "x"})).error(502),
        "The action did not return a dictionary or array."
    );
    // --debug: /init again reloads.
    ow.init(&action_zip(), "panics", json!({})).expect(200);
    for _ in 0..2 {
        let e = ow.run(json!({})).error(502);
        assert!(e.starts_with("Invoker: Function Panicked"), "{e}");
        assert!(e.contains("boom"), "{e}");
    }
    ow.init(&action_zip(), "greet", json!({})).expect(200);
    assert_eq!(
        ow.run(json!({"name": "Ada"})).expect(200),
        json!({"greeting": "Hello Ada"})
    );
    ow.wait_for_sentinels(4);
}

/// The worker processes among a process's children.
fn workers_of(pid: u32) -> Vec<u32> {
    let mut workers = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            if cmdline.split(|&b| b == 0).any(|arg| arg == b"worker") {
                workers.push(child);
            }
        }
    }
    workers
}

/// In process mode a `--debug` re-init starts workers on the new code and lets the old ones
/// go (they run their shutdown hook and exit once their activations are done), as a reload
/// does: re-inits do not pile up processes.
#[test]
fn a_debug_reinit_in_process_mode_lets_the_old_workers_go() {
    let ow = Runtime::start(
        &["--debug", "--isolation", "process", "--workers", "1"],
        &[],
    );
    ow.init(&action_zip(), "greet", json!({})).expect(200);
    let first = workers_of(ow.child.id());
    assert_eq!(first.len(), 1, "{first:?}");
    for _ in 0..3 {
        ow.init(&action_zip(), "greet", json!({})).expect(200);
        assert_eq!(
            ow.run(json!({"name": "Ada"})).expect(200),
            json!({"greeting": "Hello Ada"})
        );
    }
    let started = Instant::now();
    let workers = loop {
        let workers = workers_of(ow.child.id());
        if workers.len() == 1 || started.elapsed() > common::HANG {
            break workers;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(workers.len(), 1, "workers left behind: {workers:?}");
    assert!(!workers.contains(&first[0]), "the first worker still runs");
}

#[test]
fn the_deadline_stops_the_action() {
    let ow = Runtime::start(&[], &[]);
    ow.init(&action_zip(), "sleep", json!({})).expect(200);
    assert_eq!(ow.run(json!({"ms": 20})).expect(200), json!({"slept": 20}));
    let started = Instant::now();
    let answer = ow.post_json(
        "/run",
        &json!({"value": {"ms": 30_000}, "deadline": epoch_ms_in(Duration::from_millis(300))}),
    );
    let e = answer.error(502);
    assert!(e.contains("deadline"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10), "{e}");
    // Already past: not run at all.
    let answer = ow.post_json(
        "/run",
        &json!({"value": {"ms": 30_000}, "deadline": "1000"}),
    );
    let e = answer.error(502);
    assert!(e.contains("deadline had passed"), "{e}");
    // The cancelled sleep ended: the runtime serves on.
    assert_eq!(ow.run(json!({"ms": 1})).expect(200), json!({"slept": 1}));
    ow.wait_for_sentinels(4);
}

#[test]
fn concurrent_activations_run_concurrently() {
    let ow = Arc::new(Runtime::start(&[], &[]));
    ow.init(&action_zip(), "greet", json!({})).expect(200);
    let runs: Vec<_> = (0..50)
        .map(|i| {
            let ow = ow.clone();
            std::thread::spawn(move || {
                let answer = ow.run(json!({"name": format!("n{i}")}));
                assert_eq!(
                    answer.expect(200),
                    json!({"greeting": format!("Hello n{i}")})
                );
            })
        })
        .collect();
    for run in runs {
        run.join().unwrap();
    }
    ow.wait_for_sentinels(50);

    // 20 sleeps of 500 ms: one after the other they would take 10 s.
    let ow = Runtime::start(&["--max-concurrency", "32"], &[]);
    ow.init(&action_zip(), "sleep", json!({})).expect(200);
    let ow = Arc::new(ow);
    let started = Instant::now();
    let runs: Vec<_> = (0..20)
        .map(|_| {
            let ow = ow.clone();
            std::thread::spawn(move || {
                assert_eq!(
                    ow.run(json!({"ms": 500})).expect(200),
                    json!({"slept": 500})
                );
            })
        })
        .collect();
    for run in runs {
        run.join().unwrap();
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn oversized_bodies_are_413() {
    let ow = Runtime::start(&[], &[]);
    for path in ["/init", "/run"] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\nConnection: close\r\n\r\n"
        );
        let answer = exchange(&ow.addr, head.as_bytes(), b"");
        let e = answer.error(413);
        assert!(e.contains("larger than"), "{e}");
    }
    // Without a Content-Length: read up to the limit, then refused.
    let head =
        "POST /run HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let mut body = Vec::new();
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..17 {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let answer = exchange(&ow.addr, head.as_bytes(), &body);
    answer.error(413);
}

#[test]
fn bad_code_is_502_and_leaves_the_runtime_ready_for_good_code() {
    let ow = Runtime::start(&[], &[]);
    let library = std::fs::read(lib("openwhisk")).unwrap();
    let two = zip(&[("a/libone.so", &library), ("libtwo.so", &library)]);
    let e = ow.init(&two, "greet", json!({})).error(502);
    assert!(e.contains("2 libraries (a/libone.so, libtwo.so)"), "{e}");
    let e = ow
        .init(&zip(&[("main.rs", b"fn main() {}")]), "greet", json!({}))
        .error(502);
    assert!(e.contains("no library"), "{e}");
    let e = ow
        .init(b"#!/bin/sh\necho hi\n", "greet", json!({}))
        .error(502);
    assert!(e.contains("not a loadable shared library"), "{e}");
    let e = ow.init(&action_zip(), "nope", json!({})).error(502);
    assert!(e.contains("nope") && e.contains("greet"), "{e}");
    let e = ow
        .init(&action_zip(), "greet", json!({"fail_init": "no database"}))
        .error(502);
    assert!(e.contains("init failed: no database"), "{e}");
    let e = ow
        .post_json(
            "/init",
            &json!({"value": {"code": "not base64!", "binary": true}}),
        )
        .error(400);
    assert!(e.contains("base64"), "{e}");
    ow.run(json!({})).error(500);
    // The library itself, not zipped, with `main`: its only function? It has five, so `main`
    // names none and the error lists them.
    let e = ow.init(&library, "main", json!({})).error(502);
    assert!(e.contains("greet"), "{e}");
    ow.init(&library, "greet", json!({})).expect(200);
    assert_eq!(
        ow.run(json!({"name": "Ada"})).expect(200),
        json!({"greeting": "Hello Ada"})
    );
}

#[test]
fn main_means_the_only_function_of_a_library_without_main() {
    let ow = Runtime::start(&[], &[]);
    // rot13's library has two functions; greeter's several; probe's many: shapes has none
    // called main either. A library of one function: `version2`'s fixture.
    let library = std::fs::read(lib("version2")).unwrap();
    let answer = ow.init(&zip(&[("libversion2.so", &library)]), "main", json!({}));
    answer.expect(200);
}

#[test]
fn function_uri_preloads_the_action_and_sigterm_drains_and_runs_the_shutdown_hook() {
    let dir = scratch("openwhisk", "preload");
    let hook = dir.join("shutdown");
    let config = json!({"shutdown_file": hook.to_str().unwrap()}).to_string();
    let uri = format!("file://{}?handler=sleep", lib("openwhisk").display());
    let mut ow = Runtime::start(
        &["--grace-period", "10"],
        &[
            ("FUNCTION_URI", uri.as_str()),
            ("FUNCTION_CONFIG", config.as_str()),
        ],
    );
    // No code: the function FUNCTION_URI loaded serves.
    assert_eq!(
        ow.post_json("/init", &json!({"value": {"main": "main"}}))
            .expect(200),
        json!({"ok": true})
    );
    assert_eq!(ow.run(json!({"ms": 1})).expect(200), json!({"slept": 1}));
    // An activation in flight at SIGTERM finishes within the grace period.
    let addr = ow.addr.clone();
    let in_flight = std::thread::spawn(move || {
        post(
            &addr,
            "/run",
            json!({"value": {"ms": 1500}}).to_string().as_bytes(),
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ow.terminate(), Some(0), "{}", ow.stderr());
    assert_eq!(
        in_flight.join().unwrap().expect(200),
        json!({"slept": 1500})
    );
    assert_eq!(
        std::fs::read_to_string(&hook).ok().as_deref(),
        Some("shutdown hook ran\n"),
        "{}",
        ow.stderr()
    );
}

/// `--isolation process`: `/init`'s code runs in worker processes (the runtime's own process
/// never maps it); a crashing activation is `502` `Invoker: Function Crashed` and fails only
/// itself: the activations running beside it answer, and the runtime serves on.
#[test]
fn in_process_mode_a_crash_fails_only_its_activation() {
    let ow = Runtime::start(&["--isolation", "process", "--workers", "2"], &[]);
    let library = std::fs::read(lib("probe")).unwrap();
    ow.init(&library, "crash_on_json", json!({})).expect(200);
    assert_eq!(ow.run(json!({})).expect(200), json!({"ok": true}));
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", ow.child.id())).unwrap();
    assert!(
        !maps.contains("memfd:"),
        "the runtime's process loaded the code:\n{maps}"
    );

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let good: Vec<_> = (0..8)
        .map(|_| {
            let (addr, stop) = (ow.addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || ok == 0 {
                    let answer = post(&addr, "/run", json!({"value": {}}).to_string().as_bytes());
                    match answer.status {
                        200 if answer.json() == json!({"ok": true}) => ok += 1,
                        _ => failed.push(format!("{} {}", answer.status, answer.body)),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let e = ow.run(json!({"crash": "abort"})).error(502);
    assert!(e.starts_with("Invoker: Function Crashed"), "{e}");
    assert!(e.contains("SIGABRT"), "{e}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for thread in good {
        let (ok, failed) = thread.join().unwrap();
        assert!(failed.is_empty(), "good activations failed: {failed:?}");
        total += ok;
    }
    assert!(total >= 8, "{total}");
    // The worker is back; the runtime still serves.
    for _ in 0..4 {
        assert_eq!(ow.run(json!({})).expect(200), json!({"ok": true}));
    }
}
