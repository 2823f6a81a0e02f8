//! Shared helpers for the integration tests.
#![allow(dead_code)]

pub mod cli;
pub mod tier;
pub mod tools;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The directory cargo builds into (target/debug or target/release).
pub fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_invoker"))
        .parent()
        .expect("the binary has a directory")
        .to_path_buf()
}

/// Path of a workspace function library, e.g. `lib("greeter")` → libgreeter.so, built by the
/// first call in each test binary (see [`libraries`]).
pub fn lib(name: &str) -> PathBuf {
    let name = name.replace('-', "_");
    match libraries() {
        Ok(libraries) => match libraries.get(&name) {
            Some(path) => path.clone(),
            None => panic!("the workspace has no function library named {name}"),
        },
        Err(failure) => panic!("{failure}"),
    }
}

/// Every function library of the workspace (the examples and tests/fixtures: each package with
/// a `cdylib`), by library name, built by the first test of each test binary that needs one,
/// with the tests' own profile and `--target`: `cargo test` alone is enough (no `cargo build`
/// first), and a library edited since the last run is rebuilt. The build lists the packages
/// itself (the workspace's libraries), so a new example or fixture needs no line here.
///
/// They build into a target directory of their own, `target/test-libs`: built in the tests'
/// one, a build of the libraries alone resolves the dependencies' features without the
/// daemon's (resolver 2), so it would compile different libraries to the same file names,
/// and each `cargo test` and each test run would rebuild the other's. `cargo test` no longer
/// holds the target directory's lock when it runs the tests, and cargo takes the lock of
/// `target/test-libs` itself, so test binaries that start at once build one after the other;
/// a build that finds everything fresh leaves the files alone (no test sees one vanish). A
/// failed build fails every test that loads a library, with cargo's errors, without retrying.
fn libraries() -> &'static Result<HashMap<String, PathBuf>, String> {
    static LIBRARIES: OnceLock<Result<HashMap<String, PathBuf>, String>> = OnceLock::new();
    LIBRARIES.get_or_init(build_libraries)
}

fn build_libraries() -> Result<HashMap<String, PathBuf>, String> {
    // CARGO_BIN_EXE_invoker is TARGET/PROFILE/invoker, or TARGET/TRIPLE/PROFILE/invoker when
    // built with --target; cargo marks TARGET itself with a CACHEDIR.TAG.
    let profile_dir = target_dir();
    let above = profile_dir.parent().expect("the profile has a directory");
    let (root, triple) = if above.join("CACHEDIR.TAG").is_file() {
        (above, None)
    } else {
        (
            above.parent().expect("the triple has a directory"),
            above.file_name(),
        )
    };
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("no profile in {}", profile_dir.display()),
    };
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--workspace", "--exclude", "invoker", "--lib"])
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(root.join("test-libs"))
        .arg("--message-format=json-render-diagnostics");
    if let Some(triple) = triple {
        cargo.arg("--target").arg(triple);
    }
    let out = cargo
        .output()
        .map_err(|e| format!("cannot run {}: {e}", env!("CARGO")))?;
    if !out.status.success() {
        return Err(format!(
            "cannot build the workspace's function libraries:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut libraries = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let target = &message["target"];
        let is_cdylib = target["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"));
        if message["reason"] != "compiler-artifact" || !is_cdylib {
            continue;
        }
        let file = message["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(".so"))
            .expect("a cdylib is a .so");
        let name = target["name"].as_str().expect("a target has a name");
        libraries.insert(name.replace('-', "_"), PathBuf::from(file));
    }
    if libraries.is_empty() {
        return Err(format!(
            "cargo built no function library:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(libraries)
}

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use invoker::proto::function::Message;
use invoker::proto::function::message::HeaderValue;
use invoker::proto::function::message_function_client::MessageFunctionClient;
use tonic::transport::Channel;

/// A running `invoker serve`, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    /// The `/metrics` address, when started with METRICS_PORT.
    pub metrics: Option<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    /// Starts `invoker serve` for `FUNCTION_URI=uri` on a free port and waits until it listens.
    pub fn start(uri: &str) -> Daemon {
        Self::start_with(uri, &[])
    }

    /// As [`Daemon::start`], with extra environment variables.
    pub fn start_with(uri: &str, env: &[(&str, &str)]) -> Daemon {
        let mut command = Command::new(env!("CARGO_BIN_EXE_invoker"));
        command.arg("serve");
        Self::spawn(command, uri, env)
    }

    /// As [`Daemon::start_with`], started by `sh`, which runs `script` first and then execs
    /// the daemon (so the process id is the daemon's); e.g. `trap '' SEGV` to start it with
    /// SIGSEGV ignored.
    pub fn start_in_shell(uri: &str, env: &[(&str, &str)], script: &str) -> Daemon {
        let mut command = Command::new("sh");
        command.args([
            "-c",
            &format!("{script}\nexec \"$0\" serve"),
            env!("CARGO_BIN_EXE_invoker"),
        ]);
        Self::spawn(command, uri, env)
    }

    fn spawn(mut command: Command, uri: &str, env: &[(&str, &str)]) -> Daemon {
        command
            .env("FUNCTION_URI", uri)
            .env("GRPC_PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start invoker");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let mut metrics = None;
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("metrics on http://") {
                        metrics = url.strip_suffix("/metrics").map(str::to_owned);
                    }
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        break addr.to_owned();
                    }
                }
                _ => {
                    let status = child.wait().expect("wait");
                    std::thread::sleep(Duration::from_millis(100));
                    panic!(
                        "invoker exited ({status}) before listening:\n{}",
                        stderr.lock().unwrap()
                    );
                }
            }
        };
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Daemon {
            child,
            addr,
            metrics,
            stderr,
        }
    }

    /// Waits (without blocking the async runtime, which drives the test's connections) until
    /// the daemon exits, and returns its exit code. A daemon that has not exited after
    /// [`HANG`] fails the test: it hangs.
    pub async fn exit_code(&mut self) -> Option<i32> {
        let waited = tokio::time::timeout(HANG, async {
            loop {
                if let Some(status) = self.child.try_wait().expect("wait") {
                    return status.code();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        match waited.await {
            Ok(code) => code,
            Err(_) => panic!("the daemon did not exit:\n{}", self.stderr()),
        }
    }

    /// What the daemon has logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// A gRPC client connected to the daemon.
    pub async fn client(&self) -> MessageFunctionClient<Channel> {
        MessageFunctionClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }

    /// A channel to the daemon.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the daemon's log contains `line` (and fails the test after [`HANG`]).
pub async fn wait_for_log(daemon: &Daemon, line: &str) {
    let waited = tokio::time::timeout(HANG, async {
        while !daemon.stderr().contains(line) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    if waited.await.is_err() {
        panic!("'{line}' is not in the log:\n{}", daemon.stderr());
    }
}

/// `file://` URI for a workspace library and handler.
pub fn uri(lib_name: &str, handler: Option<&str>) -> String {
    let path = lib(lib_name);
    match handler {
        Some(h) => format!("file://{}?handler={h}", path.display()),
        None => format!("file://{}", path.display()),
    }
}

/// A message with a payload and headers.
pub fn msg(payload: &str, headers: &[(&str, &str)]) -> Message {
    let mut map = std::collections::BTreeMap::new();
    for (name, value) in headers {
        map.entry(name.to_string())
            .or_insert_with(HeaderValue::default)
            .values
            .push(value.to_string());
    }
    Message {
        payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        headers: map,
    }
}

/// A header's first value.
pub fn header<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.values.first())
        .map(String::as_str)
}

/// The payload as text.
pub fn text(m: &Message) -> String {
    String::from_utf8_lossy(&m.payload).into_owned()
}

/// What a call returned: the messages, then how it ended.
#[derive(Debug)]
pub struct Outcome {
    pub messages: Vec<Message>,
    pub status: tonic::Status,
}

impl Outcome {
    pub fn code(&self) -> tonic::Code {
        self.status.code()
    }
    pub fn texts(&self) -> Vec<String> {
        self.messages.iter().map(text).collect()
    }
}

/// How long a test waits for something that must happen before it calls it a hang: far
/// longer than anything takes, so that it only turns a hang into a failure.
pub const HANG: Duration = Duration::from_secs(60);

/// Sends `messages`, half-closes, and collects everything until the call ends (a call that
/// has not ended after [`HANG`] fails the test).
pub async fn call(client: &mut MessageFunctionClient<Channel>, messages: Vec<Message>) -> Outcome {
    tokio::time::timeout(HANG, call_unbounded(client, messages))
        .await
        .expect("the call hung")
}

async fn call_unbounded(
    client: &mut MessageFunctionClient<Channel>,
    messages: Vec<Message>,
) -> Outcome {
    let request = futures_util::stream::iter(messages);
    let response = match client.call(request).await {
        Ok(r) => r,
        Err(status) => {
            return Outcome {
                messages: vec![],
                status,
            };
        }
    };
    let mut stream = response.into_inner();
    let mut messages = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(m)) => messages.push(m),
            Ok(None) => {
                return Outcome {
                    messages,
                    status: tonic::Status::ok(""),
                };
            }
            Err(status) => return Outcome { messages, status },
        }
    }
}

/// `invoker status --admin-socket SOCKET` as JSON (fails the test if it fails).
pub fn status(socket: &std::path::Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_invoker"))
        .args(["status", "--admin-socket", socket.to_str().unwrap()])
        .output()
        .expect("run invoker status");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "invoker status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("status is not JSON ({e}): {stdout}"))
}

/// Waits (without blocking the async runtime) until the admin status shows `n` calls in
/// flight; fails the test after [`HANG`].
pub async fn wait_for_calls_in_flight(socket: &std::path::Path, n: u64) {
    let socket = socket.to_path_buf();
    let waited = tokio::time::timeout(HANG, async move {
        loop {
            let socket = socket.clone();
            let status = tokio::task::spawn_blocking(move || status(&socket))
                .await
                .unwrap();
            if status["calls_in_flight"].as_u64() == Some(n) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    waited.await.expect("the calls never were in flight");
}

/// A fresh directory of `$TMPDIR` for one test's files, `invoker-PREFIX-NAME-PID`, removed
/// with what it holds when the test ends, passing or panicking (a test run leaves nothing
/// behind: the runtime image's files alone are over 100 MB).
pub fn scratch(prefix: &str, name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("invoker-{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// A directory removed with what it holds when dropped; see [`scratch`].
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
