//! Apache OpenWhisk's action interface (SPEC §9): `POST /init` takes the function's code,
//! `POST /run` is one activation, over HTTP/1.1 (an axum router on hyper's connection, as
//! `/metrics` is served).
//!
//! An activation is one call through the same path as `function.MessageFunction/Call`: one
//! [`Inbound`] message (the activation's `value` as `application/json`, Accept
//! `application/json`, its metadata as `__OW_*` headers), a [`CallMeta`] carrying the
//! activation's deadline, admitted by [`Calls::enter`] and run under [`CallGuard::wrap`], so the
//! deadline and the drain are enforced as for gRPC calls. The engine's status is then answered
//! as SPEC §9 says.
//!
//! Bounds: a `/init` body of at most [`INIT_BODY_LIMIT`], a `/run` body of at most
//! [`RUN_BODY_LIMIT`] (413 past them, refused from the Content-Length before anything is
//! read); a zip of at most [`ZIP_MAX_ENTRIES`] entries, whose library is at most
//! [`LIBRARY_LIMIT`] once inflated (only the library is inflated); connections as for
//! `/metrics`: at most `max_connections` at once, and a request head (and a request body) must
//! arrive within `header_timeout`.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http_body_util::BodyExt as _;
use serde::Deserialize;
use serde_json::Value;
use tonic::Code;

use super::drain::Calls;
use super::http::{Connections, Limits};
use crate::engine::pool::Pool;
use crate::engine::{CallMeta, Inbound};
use crate::function::worker::{self, WorkerOptions};
use crate::function::{Library, Text};
use crate::live::{Live, Named};
use crate::stats::Stats;

/// The largest `/init` body: OpenWhisk's largest action (48 MB by default) in base64, with room.
pub const INIT_BODY_LIMIT: usize = 64 << 20;

/// The largest `/run` body (OpenWhisk's default payload limit is 1 MB).
pub const RUN_BODY_LIMIT: usize = 16 << 20;

/// The largest library a zip may inflate to.
pub const LIBRARY_LIMIT: u64 = 256 << 20;

/// The most entries a zip may have (its central directory is read whole).
pub const ZIP_MAX_ENTRIES: u64 = 10_000;

/// The line written to stdout and stderr after each activation: OpenWhisk's log collection
/// reads an activation's logs up to it.
pub const SENTINEL: &str = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX";

/// How long connections may take to finish after the drain.
const LINGER: Duration = Duration::from_millis(500);

/// The action's answer when its result is not a JSON object or array (as OpenWhisk's runtimes
/// word it).
const NOT_A_DICTIONARY: &str = "The action did not return a dictionary or array.";

/// What the runtime needs to load and serve the action.
#[derive(Debug)]
pub struct Settings {
    /// Whether `/init` may come again (and reload).
    pub debug: bool,
    /// The grace period of the drain.
    pub grace: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// How long a connection may take to send a request head (or stay idle between requests),
    /// and a request's body.
    pub header_timeout: Duration,
    /// This instance's id.
    pub instance_id: String,
    /// The user configuration from `--config` and `FUNCTION_CONFIG`; `/init`'s `env` adds to it.
    pub config: HashMap<String, String>,
    /// The counters.
    pub stats: Arc<Stats>,
    /// The function threads.
    pub pool: Arc<Pool>,
    /// With `--isolation process`: the worker processes each `/init`'s code runs in (this
    /// process then never loads it).
    pub isolation: Option<WorkerOptions>,
}

/// A function loaded, as the end of the runtime needs it: to run its shutdown hook.
#[derive(Debug)]
enum Loaded {
    /// In process: the function (its library stays loaded until the end in any case).
    InProcess(Arc<Live>),
    /// In worker processes: handles that do not keep them, so that the workers of a function
    /// a `--debug` re-init replaced run their hook and exit once their activations are done,
    /// as after a reload, rather than at the end.
    Workers(Vec<worker::WorkersWatch>),
}

impl Loaded {
    fn of(live: &Arc<Live>) -> Loaded {
        match live.worker_watches() {
            Some(watches) => Loaded::Workers(watches),
            None => Loaded::InProcess(live.clone()),
        }
    }
}

/// The action runtime: the function, once it is loaded, and the activations in flight.
#[derive(Debug)]
pub struct Runtime {
    settings: Settings,
    calls: Arc<Calls>,
    /// The function serving `/run`; `None` until an `/init` (or `FUNCTION_URI`) loaded one.
    live: RwLock<Option<Arc<Live>>>,
    /// Every function loaded, for their shutdown hooks.
    lives: Mutex<Vec<Loaded>>,
    /// Whether an `/init` has succeeded (or found the function `FUNCTION_URI` loaded).
    initialized: AtomicBool,
    /// Serialises `/init`s.
    init: tokio::sync::Mutex<()>,
}

impl Runtime {
    /// A runtime serving `preloaded` (from `FUNCTION_URI`), or nothing until `/init`; `calls`
    /// admits activations.
    pub fn new(settings: Settings, calls: Arc<Calls>, preloaded: Option<Live>) -> Runtime {
        let preloaded = preloaded.map(Arc::new);
        Runtime {
            settings,
            calls,
            lives: Mutex::new(preloaded.iter().map(Loaded::of).collect()),
            live: RwLock::new(preloaded),
            initialized: AtomicBool::new(false),
            init: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs the shutdown hook of every function loaded, once each.
    pub fn shutdown(&self) {
        for loaded in crate::sync::lock(&self.lives).iter().rev() {
            match loaded {
                Loaded::InProcess(live) => live.shutdown(),
                Loaded::Workers(watches) => {
                    for set in watches.iter().rev() {
                        set.shutdown(crate::live::WORKER_SHUTDOWN_WAIT);
                    }
                }
            }
        }
    }

    fn live(&self) -> Option<Arc<Live>> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `POST /init`.
    async fn init(self: Arc<Self>, body: Bytes) -> Response {
        let _one_at_a_time = self.init.lock().await;
        if self.calls.is_draining() {
            return error(StatusCode::SERVICE_UNAVAILABLE, "Invoker: shutting down");
        }
        if self.initialized.load(Ordering::Acquire) && !self.settings.debug {
            return error(
                StatusCode::FORBIDDEN,
                "Cannot initialize the action more than once (start the runtime with --debug to allow it).",
            );
        }
        let request: InitRequest = match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("Invoker: the /init body is not the JSON OpenWhisk sends: {e}"),
                );
            }
        };
        let value = request.value.unwrap_or_default();
        if tracing::enabled!(tracing::Level::DEBUG) {
            // Names only: env's values may be secrets (OpenWhisk's API key among them).
            let env: Vec<&str> = value
                .env
                .iter()
                .flatten()
                .map(|(k, _)| k.as_str())
                .collect();
            tracing::debug!(
                main = ?value.main,
                binary = ?value.binary,
                code_bytes = value.code.as_ref().map_or(0, String::len),
                ?env,
                "/init"
            );
        }
        let Some(code) = value.code.filter(|c| !c.is_empty()) else {
            if self.live().is_some() {
                self.initialized.store(true, Ordering::Release);
                return ok();
            }
            return error(
                StatusCode::FORBIDDEN,
                "Missing main/no code to execute: send the library (base64) in value.code, or set FUNCTION_URI.",
            );
        };
        let code = if value.binary.unwrap_or(true) {
            match base64::engine::general_purpose::STANDARD.decode(code.trim()) {
                Ok(code) => code,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("Invoker: value.code is not base64: {e}"),
                    );
                }
            }
        } else {
            code.into_bytes()
        };
        let handler = value.main.filter(|m| !m.is_empty());
        let handler = handler.unwrap_or_else(|| "main".to_owned());
        let mut config = self.settings.config.clone();
        for (key, value) in value.env.unwrap_or_default() {
            if key.starts_with("__OW_") {
                continue;
            }
            let value = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            config.insert(key, value);
        }
        let this = self.clone();
        let loaded = tokio::task::spawn_blocking(move || this.load(&code, &handler, config)).await;
        match loaded {
            Ok(Ok(live)) => {
                let current = live.current();
                tracing::info!(
                    function = %current.function,
                    library = %current.library.display(),
                    sdk = %current.sdk_version,
                    "/init: function loaded"
                );
                crate::sync::lock(&self.lives).push(Loaded::of(&live));
                *self.live.write().unwrap_or_else(|p| p.into_inner()) = Some(live);
                self.initialized.store(true, Ordering::Release);
                ok()
            }
            Ok(Err(e)) => {
                tracing::warn!("/init failed: {e:#}");
                error(StatusCode::BAD_GATEWAY, &format!("{e:#}"))
            }
            Err(e) => error(
                StatusCode::BAD_GATEWAY,
                &format!("Invoker: loading the code failed: {e}"),
            ),
        }
    }

    /// Loads the code of an `/init`: a zip holding one library, or the library itself; then
    /// `handler` of it, with `config`, and its init hook.
    fn load(
        &self,
        code: &[u8],
        handler: &str,
        config: HashMap<String, String>,
    ) -> anyhow::Result<Arc<Live>> {
        let (name, bytes) = match is_zip(code) {
            true => {
                let (name, bytes) = library_from_zip(code).map_err(anyhow::Error::msg)?;
                (PathBuf::from(name), std::borrow::Cow::Owned(bytes))
            }
            false => (
                PathBuf::from("the /init code"),
                std::borrow::Cow::Borrowed(code),
            ),
        };
        if let Some(options) = &self.settings.isolation {
            // The workers load the code; this process never does. OpenWhisk's default `main`
            // means the library's only function unless it has one called `main`.
            let select = match handler {
                "main" => worker::Select::PreferNamed(handler.to_owned()),
                _ => worker::Select::Named(handler.to_owned()),
            };
            let source = worker::Source::Bytes {
                name,
                bytes: Arc::from(bytes.into_owned()),
            };
            let live = Live::start_in_workers(
                source,
                select,
                Named::Init,
                &self.settings.instance_id,
                config,
                self.settings.stats.clone(),
                self.settings.pool.clone(),
                options.clone(),
            )?;
            return Ok(Arc::new(live));
        }
        let library = Library::load_bytes(&name, &bytes)?;
        // OpenWhisk sends `main` when the action names no handler: then the library's only
        // function, unless it has one called `main`.
        let handler =
            (handler != "main" || library.handlers().contains(&"main")).then_some(handler);
        let live = Live::start_loaded(
            library,
            &name,
            handler,
            Named::Init,
            &self.settings.instance_id,
            config,
            self.settings.stats.clone(),
            self.settings.pool.clone(),
        )?;
        Ok(Arc::new(live))
    }

    /// `POST /run`: one activation.
    async fn run(self: Arc<Self>, body: Bytes) -> Response {
        let response = self.activate(body).await;
        end_of_activation();
        response
    }

    async fn activate(&self, body: Bytes) -> Response {
        let Some(live) = self.live() else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no action defined yet: POST /init first",
            );
        };
        let request: RunRequest = match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("Invoker: the /run body is not the JSON OpenWhisk sends: {e}"),
                );
            }
        };
        tracing::debug!(
            activation_id = ?request.activation_id,
            action_name = ?request.action_name,
            deadline = ?request.deadline,
            "/run"
        );
        let guard = match self.calls.enter() {
            Ok(guard) => guard,
            Err(status) => return error(StatusCode::SERVICE_UNAVAILABLE, status.message()),
        };
        let timeout = match request.deadline.as_ref().and_then(text).map(|d| left(&d)) {
            None | Some(None) => None,
            Some(Some(left)) if left.is_zero() => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    "Invoker: the activation's deadline had passed when it arrived; the action did not run",
                );
            }
            Some(Some(left)) => Some(left),
        };
        let meta = CallMeta::new(timeout);
        let mut headers: Vec<(Text, Text)> = vec![
            ("Content-Type".into(), "application/json".into()),
            ("Accept".into(), "application/json".into()),
        ];
        for (name, field) in [
            ("__OW_ACTIVATION_ID", &request.activation_id),
            ("__OW_ACTION_NAME", &request.action_name),
            ("__OW_NAMESPACE", &request.namespace),
            ("__OW_TRANSACTION_ID", &request.transaction_id),
            ("__OW_DEADLINE", &request.deadline),
        ] {
            if let Some(value) = field.as_ref().and_then(text) {
                headers.push((name.into(), value.into()));
            }
        }
        let payload = match request.value {
            None | Some(Value::Null) => Bytes::from_static(b"{}"),
            Some(value) => Bytes::from(value.to_string()),
        };
        let engine = live.engine();
        let stats = engine.stats().clone();
        let (mut received, mut sent) = (stats.received_by_call(), stats.sent_by_call());
        let inbound = match engine.function().info().inputs.is_empty() {
            true => stream::empty().boxed(),
            false => {
                received.inc();
                stream::iter([Ok(Inbound { payload, headers })]).boxed()
            }
        };
        let outbound = engine
            .call(inbound, meta.clone())
            .map(move |r| r.inspect(|_| sent.inc()));
        let mut results = guard.wrap(outbound, &meta, stats);
        let result = match results.next().await {
            None => Ok(None),
            Some(Ok(out)) => match results.next().await {
                None => Ok(Some(out.payload)),
                Some(Ok(_)) => {
                    return error(
                        StatusCode::BAD_GATEWAY,
                        "Invoker: the action returned more than one result",
                    );
                }
                Some(Err(status)) => Err(status),
            },
            Some(Err(status)) => Err(status),
        };
        match result {
            // A function without output returns an empty dictionary.
            Ok(None) => json_response(StatusCode::OK, Bytes::from_static(b"{}")),
            Ok(Some(payload)) if is_dictionary_or_array(&payload) => {
                json_response(StatusCode::OK, payload)
            }
            Ok(Some(_)) => error(StatusCode::BAD_GATEWAY, NOT_A_DICTIONARY),
            Err(status) => {
                let code = match status.code() {
                    // The function's own error, and parameters it cannot take: application
                    // errors, answered 200 (a non-200 is a developer error to OpenWhisk).
                    Code::Unknown => StatusCode::OK,
                    Code::InvalidArgument
                        if status.message().starts_with("Invoker: Bad Input Signal") =>
                    {
                        StatusCode::OK
                    }
                    // With --isolation process, the worker running this activation died: a
                    // developer error like a panic (502), and only this activation fails.
                    Code::Unavailable
                        if status.message().starts_with("Invoker: Function Crashed") =>
                    {
                        StatusCode::BAD_GATEWAY
                    }
                    Code::Unavailable | Code::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
                    // A panic, the deadline, a function that cannot speak JSON.
                    _ => StatusCode::BAD_GATEWAY,
                };
                let message = match status.code() {
                    Code::DeadlineExceeded => {
                        "Invoker: the activation's deadline passed; the action was stopped"
                    }
                    _ => status.message(),
                };
                error(code, message)
            }
        }
    }
}

/// `/init`'s body.
#[derive(Debug, Deserialize)]
struct InitRequest {
    value: Option<InitValue>,
}

/// `/init`'s `value`; other fields are ignored.
#[derive(Debug, Default, Deserialize)]
struct InitValue {
    code: Option<String>,
    binary: Option<bool>,
    main: Option<String>,
    env: Option<serde_json::Map<String, Value>>,
}

/// `/run`'s body; other fields (`api_key` among them) are ignored, and never logged.
#[derive(Debug, Deserialize)]
struct RunRequest {
    value: Option<Value>,
    namespace: Option<Value>,
    action_name: Option<Value>,
    activation_id: Option<Value>,
    transaction_id: Option<Value>,
    deadline: Option<Value>,
}

/// A metadata field as text: a string as it is, a number in decimal.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The time left until `deadline` (milliseconds since the epoch), zero if it has passed;
/// `None` if it is not a number.
fn left(deadline: &str) -> Option<Duration> {
    let millis: u64 = deadline.trim().parse().ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    Some(Duration::from_millis(millis).saturating_sub(now))
}

/// Whether a JSON result is an object or an array.
fn is_dictionary_or_array(payload: &[u8]) -> bool {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    matches!(first, Some(b'{' | b'['))
        && serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
}

/// Writes the end of an activation to stdout and stderr, each on its own line.
fn end_of_activation() {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{SENTINEL}");
    let _ = out.flush();
    drop(out);
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{SENTINEL}");
    let _ = err.flush();
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn ok() -> Response {
    json_response(StatusCode::OK, Bytes::from_static(br#"{"ok":true}"#))
}

/// `{"error": message}`.
fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    json_response(status, Bytes::from(body))
}

/// Whether the code is a zip archive (a local file header, or the end record of an empty one).
fn is_zip(code: &[u8]) -> bool {
    code.starts_with(b"PK\x03\x04") || code.starts_with(b"PK\x05\x06")
}

/// The one `*.so` of a zip, at any depth: its name and its bytes. Only that entry is inflated,
/// to at most [`LIBRARY_LIMIT`]; an archive of more than [`ZIP_MAX_ENTRIES`] entries is refused
/// before its directory is read.
pub(crate) fn library_from_zip(zip: &[u8]) -> Result<(String, Vec<u8>), String> {
    library_from_zip_within(zip, LIBRARY_LIMIT)
}

/// As [`library_from_zip`], for a library of at most `limit` bytes.
fn library_from_zip_within(zip: &[u8], limit: u64) -> Result<(String, Vec<u8>), String> {
    let entries = zip_entries(zip);
    if entries > ZIP_MAX_ENTRIES {
        return Err(format!(
            "Invoker: the zip has {entries} entries, more than {ZIP_MAX_ENTRIES}: zip the library alone"
        ));
    }
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip))
        .map_err(|e| format!("Invoker: the code is not a readable zip: {e}"))?;
    let mut libraries = Vec::new();
    for index in 0..archive.len() {
        if let Some(Ok(name)) = archive.name_for_index(index)
            && name.ends_with(".so")
        {
            libraries.push((index, name.into_owned()));
        }
    }
    let (index, name) = match libraries.as_slice() {
        [] => {
            return Err(
                "Invoker: the zip holds no library (*.so): zip the function's lib*.so".into(),
            );
        }
        [one] => one.clone(),
        several => {
            let names: Vec<&str> = several.iter().map(|(_, n)| n.as_str()).collect();
            return Err(format!(
                "Invoker: the zip holds {} libraries ({}): it must hold exactly one *.so",
                names.len(),
                names.join(", ")
            ));
        }
    };
    let too_large = || {
        format!(
            "Invoker: {name} inflates to more than {} MiB: too large for a function library (a zip bomb?)",
            limit >> 20
        )
    };
    let file = archive
        .by_index(index)
        .map_err(|e| format!("Invoker: cannot read {name} from the zip: {e}"))?;
    if file.size() > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(file.size().min(limit) as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("Invoker: cannot inflate {name} from the zip: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok((name, bytes))
}

/// The most entries any end-of-central-directory record near the end of `zip` claims (the
/// zip64 record's count where the classic one says to look there); 0 if there is none.
fn zip_entries(zip: &[u8]) -> u64 {
    const EOCD: &[u8] = b"PK\x05\x06";
    const LOCATOR: &[u8] = b"PK\x06\x07";
    const EOCD64: &[u8] = b"PK\x06\x06";
    let u16_at = |at: usize| {
        zip.get(at..at + 2)
            .map_or(0, |b| u64::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let u64_at = |at: usize| {
        zip.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    // The record is 22 bytes and a comment of at most 65 535.
    let start = zip.len().saturating_sub(22 + 65_535);
    let mut most = 0;
    for at in (start..zip.len().saturating_sub(3)).filter(|&i| &zip[i..i + 4] == EOCD) {
        most = most.max(u16_at(at + 10));
        if let Some(locator) = at.checked_sub(20)
            && &zip[locator..locator + 4] == LOCATOR
        {
            let record = u64_at(locator + 8);
            if let Ok(record) = usize::try_from(record)
                && zip.get(record..record + 4) == Some(EOCD64)
            {
                most = most.max(u64_at(record + 32));
            }
        }
    }
    most
}

/// Reads a request's body, at most `limit` bytes, within `timeout`: 413 past the limit (from
/// the Content-Length, before reading anything, when there is one), 408 past the time.
async fn read_body(
    request: axum::http::Request<Body>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Response> {
    let path = request.uri().path().to_owned();
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "Invoker: the body is larger than {} MiB, the most {path} takes",
                limit >> 20
            ),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(request.into_body(), limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("Invoker: cannot read the body: {e}"),
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "Invoker: the body did not arrive in time",
        )),
    }
}

/// Serves `/init` and `/run` on `listener` until `terminate` completes and the drain is done:
/// then activations in flight get the grace period to finish (new ones are answered 503),
/// those still running are ended, and connections get a moment to close.
pub async fn serve(
    listener: tokio::net::TcpListener,
    runtime: Arc<Runtime>,
    terminate: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use axum::routing::post;

    let header_timeout = runtime.settings.header_timeout;
    let init = {
        let runtime = runtime.clone();
        move |request: axum::http::Request<Body>| {
            let runtime = runtime.clone();
            async move {
                match read_body(request, INIT_BODY_LIMIT, header_timeout).await {
                    Ok(body) => runtime.init(body).await,
                    Err(response) => response,
                }
            }
        }
    };
    let run = {
        let runtime = runtime.clone();
        move |request: axum::http::Request<Body>| {
            let runtime = runtime.clone();
            async move {
                match read_body(request, RUN_BODY_LIMIT, header_timeout).await {
                    Ok(body) => runtime.run(body).await,
                    Err(response) => response,
                }
            }
        }
    };
    let app = axum::Router::new()
        .route("/init", post(init))
        .route("/run", post(run))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "Invoker: not found: an OpenWhisk action runtime serves POST /init and POST /run",
            )
        });
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving the OpenWhisk action interface");
    println!("listening on {addr}");
    let calls = runtime.calls.clone();
    let grace = runtime.settings.grace;
    let drain = async move {
        terminate.await;
        tracing::info!(
            in_flight = calls.in_flight(),
            "shutting down: draining activations in flight"
        );
        calls.start_draining();
        calls.run_out(grace).await;
        tracing::info!("drained");
    };
    let limits = Limits {
        max_connections: runtime.settings.max_connections,
        header_timeout: runtime.settings.header_timeout,
    };
    let mut connections = Connections::default();
    tokio::select! {
        () = connections.accept(&listener, app, limits, "OpenWhisk") => {}
        () = drain => {}
    }
    connections.close(LINGER).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        // A stored (uncompressed) zip, written by hand: local headers, then the directory.
        let mut out = Vec::new();
        let mut directory = Vec::new();
        for (name, data) in files {
            let offset = out.len() as u32;
            let crc = crc32(data);
            let mut header = Vec::new();
            header.extend_from_slice(&[0x50, 0x4b, 0x03, 0x04, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            header.extend_from_slice(&crc.to_le_bytes());
            header.extend_from_slice(&(data.len() as u32).to_le_bytes());
            header.extend_from_slice(&(data.len() as u32).to_le_bytes());
            header.extend_from_slice(&(name.len() as u16).to_le_bytes());
            header.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&header);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            directory
                .extend_from_slice(&[0x50, 0x4b, 0x01, 0x02, 20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            directory.extend_from_slice(&crc.to_le_bytes());
            directory.extend_from_slice(&(data.len() as u32).to_le_bytes());
            directory.extend_from_slice(&(data.len() as u32).to_le_bytes());
            directory.extend_from_slice(&(name.len() as u16).to_le_bytes());
            directory.extend_from_slice(&[0; 12]);
            directory.extend_from_slice(&offset.to_le_bytes());
            directory.extend_from_slice(name.as_bytes());
        }
        let start = out.len() as u32;
        out.extend_from_slice(&directory);
        out.extend_from_slice(&[0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0]);
        out.extend_from_slice(&(files.len() as u16).to_le_bytes());
        out.extend_from_slice(&(files.len() as u16).to_le_bytes());
        out.extend_from_slice(&(directory.len() as u32).to_le_bytes());
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for byte in data {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn the_one_library_of_a_zip_is_found_at_any_depth() {
        let zip = zip_of(&[("README", b"hi"), ("target/release/libf.so", b"\x7fELF..")]);
        assert!(is_zip(&zip));
        assert_eq!(zip_entries(&zip), 2);
        let (name, bytes) = library_from_zip(&zip).unwrap();
        assert_eq!(name, "target/release/libf.so");
        assert_eq!(bytes, b"\x7fELF..");
    }

    #[test]
    fn a_zip_with_several_libraries_or_none_is_refused() {
        let zip = zip_of(&[("a/liba.so", b"a"), ("libb.so", b"b")]);
        let e = library_from_zip(&zip).unwrap_err();
        assert!(e.contains("2 libraries (a/liba.so, libb.so)"), "{e}");
        let e = library_from_zip(&zip_of(&[("main.rs", b"fn main() {}")])).unwrap_err();
        assert!(e.contains("no library"), "{e}");
        let e = library_from_zip(b"PK\x03\x04 and then nothing").unwrap_err();
        assert!(e.contains("not a readable zip"), "{e}");
    }

    #[test]
    fn a_zip_claiming_too_many_entries_is_refused_before_reading_them() {
        let mut zip = zip_of(&[("libf.so", b"f")]);
        let eocd = zip.len() - 22;
        zip[eocd + 8..eocd + 10].copy_from_slice(&u16::MAX.to_le_bytes());
        zip[eocd + 10..eocd + 12].copy_from_slice(&u16::MAX.to_le_bytes());
        let e = library_from_zip(&zip).unwrap_err();
        assert!(e.contains("65535 entries"), "{e}");
    }

    #[test]
    fn a_library_inflating_past_the_limit_is_refused() {
        use std::io::Write as _;
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        writer.start_file("libbomb.so", options).unwrap();
        writer.write_all(&vec![0; 1 << 20]).unwrap();
        let zip = writer.finish().unwrap().into_inner();
        assert!(zip.len() < 64 << 10, "{} bytes", zip.len());
        let e = library_from_zip_within(&zip, 64 << 10).unwrap_err();
        assert!(e.contains("libbomb.so inflates to more than"), "{e}");
        let (_, bytes) = library_from_zip_within(&zip, 1 << 20).unwrap();
        assert_eq!(bytes.len(), 1 << 20);
    }

    #[test]
    fn results_must_be_dictionaries_or_arrays() {
        assert!(is_dictionary_or_array(br#"{"a":1}"#));
        assert!(is_dictionary_or_array(b" [1,2]"));
        assert!(!is_dictionary_or_array(br#""x""#));
        assert!(!is_dictionary_or_array(b"3"));
        assert!(!is_dictionary_or_array(b"{"));
    }

    #[test]
    fn deadlines_are_epoch_milliseconds() {
        assert_eq!(left("1000"), Some(Duration::ZERO));
        assert_eq!(left("soon"), None);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let later = (now + Duration::from_secs(60)).as_millis().to_string();
        let left = left(&later).unwrap();
        assert!(left > Duration::from_secs(59) && left <= Duration::from_secs(60));
    }
}
