//! The command line: flags mirror the environment variables of SPEC §3.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Runs one Rust function, compiled as a cdylib, behind riff's gRPC function protocols.
#[derive(Debug, Parser)]
#[command(name = "invoker", version = version(), about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--version`: the package's version and the ABI version of the libraries it loads.
fn version() -> &'static str {
    static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "{} (ABI version {})",
            env!("CARGO_PKG_VERSION"),
            invoker_abi::ABI_VERSION
        )
    });
    &VERSION
}

/// The settings of the logs, which have no flags (`serve --help`, `run --help`).
const LOG_HELP: &str = "\
Logs (on stderr):
  RUST_LOG    the log filter, such as info or invoker=debug [default: info]
  LOG_FORMAT  text, or json for one JSON object per line [default: text]";

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the function and serve it over gRPC until SIGTERM/SIGINT.
    #[command(after_help = LOG_HELP)]
    Serve(ServeArgs),
    /// Serve the function as an Apache OpenWhisk action runtime: POST /init takes its code,
    /// POST /run runs it, over HTTP/1.1, until SIGTERM/SIGINT.
    #[command(name = "openwhisk", after_help = LOG_HELP)]
    OpenWhisk(OpenWhiskArgs),
    /// Run a function locally: messages from stdin, one per line; results to stdout.
    ///
    /// Exits 0, or with the gRPC status code of the first failed call (2 for a function
    /// error, 3 for input it cannot decode, 13 for a panic).
    #[command(after_help = LOG_HELP)]
    Run(RunArgs),
    /// Scaffold a function crate from an invoker's templates (invoker.yaml).
    Init(InitArgs),
    /// Validate an Invoker resource (invoker.yaml) and install it in the local registry.
    Apply(ApplyArgs),
    /// Send messages to a running invoker in one Call and print the replies.
    ///
    /// Exits with the gRPC status code the call ended with (0 for OK).
    Call(CallArgs),
    /// Print a running invoker's status as JSON (through its admin socket).
    Status(StatusArgs),
    /// Replace a running invoker's function (through its admin socket); calls in flight finish
    /// on the old one. Exits with the gRPC status code (9, FAILED_PRECONDITION, when the new
    /// library does not load; the old one keeps serving).
    Reload(ReloadArgs),
    /// Measure the invoker against a bare tonic echo server, side by side (see BENCHMARKS.md).
    Bench(BenchArgs),
    /// Serve a library's stateful functions to an Apache Flink StateFun cluster (its remote
    /// function endpoint: POST /statefun).
    #[command(after_help = LOG_HELP)]
    Statefun(StatefunArgs),
    /// The bare tonic echo server `invoker bench` compares against.
    #[command(hide = true)]
    ReferenceEcho(ReferenceArgs),
    /// One worker process of `--isolation process`, started by the invoker itself: its stdin
    /// is its channel to the serving process.
    #[command(hide = true)]
    Worker(WorkerArgs),
}

/// `invoker worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The worker's address-space limit in bytes (RLIMIT_AS), set before it loads the library.
    #[arg(long, value_name = "BYTES")]
    pub memory_limit: Option<u64>,
}

/// Where the function runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Isolation {
    /// In the serving process: the fastest; a crash in the function ends the invoker.
    #[default]
    InProcess,
    /// In worker processes: a crash in the function fails only the calls its worker served.
    Process,
}

/// The smallest `--worker-memory-limit` accepted. Measured (release build, x86-64, glibc): a
/// worker serving a 5.6 MB library starts and answers at 44 MiB of address space and not at
/// 40 MiB (below ~28 MiB the library does not even map; between, the first call's allocations
/// abort it); the binary, libc, the library, two threads' stacks and the first malloc arena
/// take that much before the function allocates. 64 MiB leaves room for a larger library;
/// the function's own memory comes on top. A debug build needs about 64 MiB alone.
pub const MIN_WORKER_MEMORY_LIMIT: u64 = 64 << 20;

/// Crash containment (`--isolation process`), shared by `serve`, `openwhisk` and `statefun`.
#[derive(Debug, Clone, Args)]
pub struct IsolationArgs {
    /// Where the function runs: in the serving process, or in worker processes that a crash
    /// in the function takes down alone.
    #[arg(long, env = "ISOLATION", value_enum, default_value_t = Isolation::InProcess)]
    pub isolation: Isolation,

    /// How many worker processes with --isolation process (default: the number of CPUs).
    #[arg(long, env = "WORKERS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,

    /// Each worker process's address-space limit in bytes (RLIMIT_AS), with --isolation
    /// process: the function's allocations beyond it fail, which ends that worker alone. At
    /// least 64 MiB (MIN_WORKER_MEMORY_LIMIT): a worker needs about 44 MiB of address space
    /// before the function allocates anything.
    #[arg(long, env = "WORKER_MEMORY_LIMIT", value_name = "BYTES", value_parser = clap::value_parser!(u64).range(MIN_WORKER_MEMORY_LIMIT..))]
    pub worker_memory_limit: Option<u64>,
}

/// `invoker run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The function: file:///abs/path/libname.so?handler=name, or a path to the library.
    #[arg(
        long = "function-uri",
        visible_alias = "function",
        short = 'f',
        env = "FUNCTION_URI",
        value_name = "URI"
    )]
    pub function_uri: String,

    /// The messages' Content-Type (default: the function's preferred input type, such as
    /// text/plain for text and application/json for a `Json<T>`).
    #[arg(long)]
    pub content_type: Option<String>,

    /// The Accept header of every message.
    #[arg(long)]
    pub accept: Option<String>,

    /// Read and write NDJSON: each input line {"payload": ..., "headers": {...}}, each output
    /// line {"payload": "...", "headers": {...}} with the reply's Content-Type. A bad input
    /// line is reported (its number and why) and skipped; the exit code is then non-zero.
    #[arg(long)]
    pub ndjson: bool,

    #[command(flatten)]
    pub config: ConfigArgs,

    /// On a StateFun library (the in-memory StateFun): what delays and expirations are
    /// multiplied by, a positive number (0.001 makes a minute 60 ms), for tests.
    #[arg(long, env = "STATEFUN_TIME_SCALE", value_name = "FACTOR", value_parser = time_scale)]
    pub time_scale: Option<f64>,
}

/// A positive, finite factor.
fn time_scale(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 => Ok(f),
        _ => Err(format!("'{s}' is not a positive number")),
    }
}

/// `invoker init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The function's name (also the crate's): lowercase letters, digits, '-' and '_'.
    pub name: String,

    /// The installed invoker whose templates to use (see `invoker apply`); `rust`, the one
    /// built into this binary, when none is installed under that name.
    #[arg(long, default_value = "rust")]
    pub invoker: String,

    /// The handler: the Rust function's name (default: from the function's name).
    #[arg(long)]
    pub handler: Option<String>,

    /// Where to create the crate (default: ./NAME).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,

    /// The crates/sdk directory of an invoker checkout (default: the one this binary was built
    /// from), until invoker-sdk is published: the crate's .cargo/config.toml patches
    /// invoker-sdk to it for local builds (an image build uses the invoker image's SDK).
    #[arg(long, env = "INVOKER_SDK_PATH", value_name = "DIR")]
    pub sdk_path: Option<std::path::PathBuf>,

    /// The image the generated riff Function resource names (default: NAME:0.1.0).
    #[arg(long)]
    pub image: Option<String>,

    /// Print the files instead of writing them.
    #[arg(long)]
    pub dry_run: bool,

    /// Scaffold an Apache OpenWhisk action (JSON object in, JSON object out, zipped for `wsk
    /// action create --docker`) instead of a riff function.
    #[arg(long)]
    pub openwhisk: bool,
}

/// `invoker apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The Invoker resource.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: std::path::PathBuf,

    /// Validate and print the resource as it would be applied; install nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `invoker status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The invoker's admin socket.
    #[arg(long, env = "ADMIN_SOCKET", value_name = "PATH")]
    pub admin_socket: std::path::PathBuf,
}

/// `invoker reload`.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The invoker's admin socket.
    #[arg(long, env = "ADMIN_SOCKET", value_name = "PATH")]
    pub admin_socket: std::path::PathBuf,

    /// The handler to serve (default: the current function's name if the library has it,
    /// else its only function).
    #[arg(long)]
    pub handler: Option<String>,

    /// The new library (default: the file FUNCTION_URI names, read again).
    pub library: Option<std::path::PathBuf>,
}

/// `invoker bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Seconds per measurement (each request/reply and streaming figure).
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,

    /// Rounds (invoker, then reference, each round); the best round of each is reported.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,

    /// A quick run that only checks everything works (for CI), not for its figures.
    #[arg(long)]
    pub smoke: bool,

    /// Run only one group of figures, to profile it: request-reply, streaming, large,
    /// memory (resident memory around a burst of idle streams), startup, socket (the invoker's
    /// Unix socket against its TCP port), openwhisk (OpenWhisk's /run of greet against the
    /// same greet over gRPC Call), isolation (the invoker with --isolation process and 2
    /// workers against the same invoker in process) or statefun (batches of 1 and 100 to
    /// invoker statefun's example/greeter against gRPC Calls of a function of the same work).
    #[arg(long, value_parser = ["request-reply", "streaming", "large", "memory", "startup", "socket", "openwhisk", "isolation", "statefun"])]
    pub only: Option<String>,

    /// The invoker binary (or a script that execs one) to measure against this binary's
    /// reference: to compare builds or environments, such as another allocator.
    #[arg(long, value_name = "PATH")]
    pub invoker_exe: Option<std::path::PathBuf>,

    /// Where librot13.so and libstreams.so are (default: beside this binary).
    #[arg(long, value_name = "DIR")]
    pub lib_dir: Option<std::path::PathBuf>,

    /// Drive a server that is already running (say, under a profiler) instead of starting
    /// the invoker and the reference: needs --only, and a server of the function that group
    /// uses (request-reply: rot13 encode; streaming: running_average; large: echo).
    #[arg(long, value_name = "HOST:PORT", requires = "only")]
    pub server: Option<String>,
}

/// `invoker reference-echo`.
#[derive(Debug, Args)]
pub struct ReferenceArgs {
    /// The port (0 picks a free one, printed at start).
    #[arg(long, env = "GRPC_PORT", default_value_t = 0)]
    pub port: u16,

    /// The host to bind.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
}

/// `invoker call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The invoker's address.
    #[arg(
        long,
        short = 'a',
        env = "INVOKER_ADDRESS",
        default_value = "127.0.0.1:10382",
        value_name = "HOST:PORT"
    )]
    pub address: String,

    /// The messages' Content-Type (default: none, which the invoker reads as text/plain; with
    /// --invoke, text/plain).
    #[arg(long)]
    pub content_type: Option<String>,

    /// The media types to accept for replies, as an Accept header. With --invoke, one per
    /// output of the function (repeat it), sent as the StartFrame's expectedContentTypes;
    /// without it, --invoke expects one output of any type (*/*).
    #[arg(long)]
    pub accept: Vec<String>,

    /// Use streaming.Riff/Invoke instead of function.MessageFunction/Call.
    #[arg(long)]
    pub invoke: bool,

    /// With --invoke: the input (argIndex) the payloads are for.
    #[arg(long, default_value_t = 0, requires = "invoke")]
    pub arg_index: i32,

    /// Another header for every message, as NAME=VALUE (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE")]
    pub headers: Vec<String>,

    /// Print each reply's headers (and, with --invoke, its output number) before its payload.
    #[arg(long)]
    pub show_headers: bool,

    /// Call through this Unix socket instead of --address.
    #[arg(
        long,
        env = "INVOKER_SOCKET",
        value_name = "PATH",
        conflicts_with = "socket_dir"
    )]
    pub socket: Option<std::path::PathBuf>,

    /// Call the live instance of --task with the best priority registered in this directory
    /// (see `invoker serve --socket-dir`).
    #[arg(long, value_name = "DIR", requires = "task")]
    pub socket_dir: Option<std::path::PathBuf>,

    /// With --socket-dir: the task.
    #[arg(long, value_name = "NAME", requires = "socket_dir")]
    pub task: Option<String>,

    /// The payloads, one message each, sent in one call. Without payloads (or with `-`), each
    /// line of stdin is one, sent as it is read, and the call ends when stdin does (Ctrl-D);
    /// replies are printed as they arrive.
    pub payloads: Vec<String>,
}

/// `invoker serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The function: file:///abs/path/libname.so?handler=name, or a path to the library.
    #[arg(
        long = "function-uri",
        short = 'f',
        env = "FUNCTION_URI",
        value_name = "URI"
    )]
    pub function_uri: String,

    /// The gRPC port (0 picks a free one, printed at start).
    #[arg(long, env = "GRPC_PORT", default_value_t = 10382)]
    pub port: u16,

    /// The host or address to bind.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Seconds that calls in flight may run on after SIGTERM before they are cancelled.
    #[arg(long = "grace-period", env = "GRACE_PERIOD", default_value = "10", value_parser = parse_seconds, value_name = "SECONDS")]
    pub grace_period: Duration,

    #[command(flatten)]
    pub config: ConfigArgs,

    /// Serve the admin service (status, reload) on this Unix socket.
    #[arg(long, env = "ADMIN_SOCKET", value_name = "PATH")]
    pub admin_socket: Option<std::path::PathBuf>,

    /// Serve Prometheus metrics on http://HOST:PORT/metrics (0 picks a free port, printed).
    #[arg(long, env = "METRICS_PORT", value_name = "PORT")]
    pub metrics_port: Option<u16>,

    /// Seconds a /metrics connection has to send a complete request head (request line and
    /// headers) after it opens, or after the previous response, before it is closed.
    #[arg(long, env = "METRICS_HEADER_TIMEOUT", default_value = "10", value_parser = parse_positive_seconds, value_name = "SECONDS")]
    pub metrics_header_timeout: Duration,

    #[command(flatten)]
    pub socket: SocketArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub isolation: IsolationArgs,
}

/// `invoker openwhisk`.
#[derive(Debug, Args)]
pub struct OpenWhiskArgs {
    /// A function to serve before any /init (file:///abs/path/libname.so?handler=name, or a
    /// path); without it, the code arrives at /init.
    #[arg(
        long = "function-uri",
        short = 'f',
        env = "FUNCTION_URI",
        value_name = "URI"
    )]
    pub function_uri: Option<String>,

    /// The HTTP port (OpenWhisk's action port is 8080; 0 picks a free one, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// The host or address to bind.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Allow /init more than once, each loading the new code (OpenWhisk's runtimes do so when
    /// debugging); without it a second /init is refused with 403.
    #[arg(long, env = "OW_DEBUG")]
    pub debug: bool,

    /// Seconds that activations in flight may run on after SIGTERM before they are ended.
    #[arg(long = "grace-period", env = "GRACE_PERIOD", default_value = "10", value_parser = parse_seconds, value_name = "SECONDS")]
    pub grace_period: Duration,

    #[command(flatten)]
    pub config: ConfigArgs,

    /// The bounds (on OpenWhisk: --max-calls bounds the activations in flight, and
    /// --idle-timeout how long a connection may wait for a request head or a body).
    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub isolation: IsolationArgs,
}

/// Serving on a Unix socket too, or instead (SPEC §11; README, "Unix sockets").
#[derive(Debug, Clone, Default, Args)]
pub struct SocketArgs {
    /// Serve every gRPC service on this Unix socket too (mode 0660; a missing directory is
    /// created 0750).
    #[arg(
        long = "socket",
        env = "GRPC_SOCKET",
        value_name = "PATH",
        conflicts_with = "socket_dir"
    )]
    pub path: Option<std::path::PathBuf>,

    /// Register as an instance of --task on the Unix socket DIR/TASK/NNNN-INSTANCE.sock
    /// (NNNN: --priority in four digits); removed at shutdown before the drain.
    #[arg(long, env = "SOCKET_DIR", value_name = "DIR", requires = "task")]
    pub socket_dir: Option<std::path::PathBuf>,

    /// With --socket-dir: the task's name (letters, digits, '.', '-', '_').
    #[arg(
        long,
        env = "SOCKET_TASK",
        value_name = "NAME",
        requires = "socket_dir"
    )]
    pub task: Option<String>,

    /// With --socket-dir: the priority, 0 to 9999, lower first.
    #[arg(long, env = "SOCKET_PRIORITY", value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=9999))]
    pub priority: u16,

    /// With --socket-dir: the instance's name in the socket's (default: the host name).
    #[arg(long, env = "SOCKET_INSTANCE", value_name = "NAME")]
    pub instance: Option<String>,

    /// Serve on the Unix socket alone (--socket or --socket-dir): open no TCP port.
    #[arg(long, env = "NO_TCP", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_tcp: bool,
}

impl SocketArgs {
    /// Whether a Unix socket is asked for.
    pub fn requested(&self) -> bool {
        self.path.is_some() || self.socket_dir.is_some()
    }
}

/// The function's user configuration (README, "Configuration"), for every command that runs it.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// A JSON file of user configuration (key/value) for the function's Context and init hook
    /// (on OpenWhisk, /init's env adds to it).
    #[arg(long, env = "FUNCTION_CONFIG_FILE", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,

    /// User configuration as a JSON object; its keys override the --config file's.
    #[arg(long, env = "FUNCTION_CONFIG", value_name = "JSON")]
    pub function_config: Option<String>,
}

impl ConfigArgs {
    /// The configuration these name, merged (see `config::load`).
    pub fn load(&self) -> anyhow::Result<std::collections::HashMap<String, String>> {
        crate::config::load(self.config.as_deref(), self.function_config.as_deref())
    }
}

/// The bounds on what callers can make the daemon hold (README, Operations: Limits).
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Request/reply calls running in the function at once, each on a function thread
    /// (default: 16 per CPU).
    #[arg(long, env = "MAX_CONCURRENCY", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrency: Option<u32>,

    /// Request/reply calls waiting for a function thread; past this, calls are refused with
    /// RESOURCE_EXHAUSTED (default: 4 per --max-concurrency).
    #[arg(long, env = "MAX_QUEUED", value_name = "N")]
    pub max_queued: Option<u32>,

    /// Calls (gRPC streams) in flight over all connections; past this, new calls are refused
    /// with RESOURCE_EXHAUSTED.
    #[arg(long, env = "MAX_CALLS", value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_calls: u32,

    /// Connections open at once; more wait in the listen backlog.
    #[arg(long, env = "MAX_CONNECTIONS", value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Streams open at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, env = "MAX_STREAMS_PER_CONNECTION", value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,

    /// Seconds a new connection has to start HTTP/2 before it is closed.
    #[arg(long, env = "HANDSHAKE_TIMEOUT", default_value = "10", value_parser = parse_positive_seconds, value_name = "SECONDS")]
    pub handshake_timeout: Duration,

    /// Seconds a connection may stay open with no call before it is closed.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "300", value_parser = parse_positive_seconds, value_name = "SECONDS")]
    pub idle_timeout: Duration,

    /// Seconds between HTTP/2 keepalive pings on a connection.
    #[arg(long, env = "KEEPALIVE_INTERVAL", default_value = "60", value_parser = parse_positive_seconds, value_name = "SECONDS")]
    pub keepalive_interval: Duration,

    /// Seconds a keepalive ping's answer may take before the connection is closed.
    #[arg(long, env = "KEEPALIVE_TIMEOUT", default_value = "20", value_parser = parse_positive_seconds, value_name = "SECONDS")]
    pub keepalive_timeout: Duration,
}

/// `invoker statefun`.
#[derive(Debug, Args)]
pub struct StatefunArgs {
    /// The library: file:///abs/path/libname.so, or a path to it. Every stateful function
    /// (`#[statefun]`) in it is served, by its StateFun type.
    #[arg(
        long = "function-uri",
        short = 'f',
        env = "FUNCTION_URI",
        value_name = "URI"
    )]
    pub function_uri: String,

    /// The HTTP port (0 picks a free one, printed at start).
    #[arg(long, env = "STATEFUN_PORT", default_value_t = 8000)]
    pub port: u16,

    /// The host or address to bind.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Seconds that batches in flight may run on after SIGTERM before they end with 503.
    #[arg(long = "grace-period", env = "GRACE_PERIOD", default_value = "10", value_parser = parse_seconds, value_name = "SECONDS")]
    pub grace_period: Duration,

    #[command(flatten)]
    pub config: ConfigArgs,

    /// The largest request body in bytes (413 past it), and the most one batch may store and
    /// send (the batch fails past it).
    #[arg(long, env = "MAX_REQUEST_BYTES", default_value_t = 32 << 20, value_parser = clap::value_parser!(u64).range(1024..=(1 << 31)))]
    pub max_request_bytes: u64,

    /// Batches in flight at once; past this, a batch is answered 503 (the cluster retries).
    #[arg(long, env = "MAX_CALLS", value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_calls: u32,

    /// Invocations running in a function at once, each on a function thread (default: 16 per
    /// CPU).
    #[arg(long, env = "MAX_CONCURRENCY", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrency: Option<u32>,

    /// Invocations waiting for a function thread (default: 4 per --max-concurrency); past
    /// this, a batch is answered 503.
    #[arg(long, env = "MAX_QUEUED", value_name = "N")]
    pub max_queued: Option<u32>,

    /// Connections open at once; more wait in the listen backlog.
    #[arg(long, env = "MAX_CONNECTIONS", value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Seconds a connection has to send a request head after it opens or after the previous
    /// response (so also how long it may idle), before it is closed.
    #[arg(long, env = "HEADER_TIMEOUT", default_value = "60", value_parser = parse_positive_seconds, value_name = "SECONDS")]
    pub header_timeout: Duration,

    /// Seconds a request's body may take to arrive (408 past it).
    #[arg(long, env = "BODY_TIMEOUT", default_value = "30", value_parser = parse_positive_seconds, value_name = "SECONDS")]
    pub body_timeout: Duration,

    #[command(flatten)]
    pub isolation: IsolationArgs,
}

/// Parses a positive number of seconds.
fn parse_positive_seconds(s: &str) -> Result<Duration, String> {
    let d = parse_seconds(s)?;
    if d.is_zero() {
        return Err(format!("'{s}' must be more than 0 seconds"));
    }
    Ok(d)
}

/// The longest grace period or timeout accepted: a day.
const MAX_SECONDS: f64 = 86_400.0;

/// Parses a non-negative number of seconds, such as `10` or `0.5`.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let seconds: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if seconds > MAX_SECONDS {
        return Err(format!("'{s}' is more than a day ({MAX_SECONDS} seconds)"));
    }
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("'{s}' is not a non-negative number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from(["invoker", "serve", "-f", "/x.so", "--port", "0"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(args.function_uri, "/x.so");
        assert_eq!(args.port, 0);
    }
}
