//! `invoker bench`: measures the invoker against a reference server in the same run.
//!
//! The reference (`invoker reference-echo`) is a bare tonic server built from the same proto
//! that echoes each message: the ceiling of this stack. Both run as child processes started
//! the same way, on loopback, and each figure is measured for the invoker and the reference in
//! alternating rounds; the best round of each is reported, with the ratio.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

mod openwhisk;
mod statefun;

use super::Exit;
use crate::cli::{BenchArgs, ReferenceArgs};
use crate::proto::function::Message;
use crate::proto::function::message::HeaderValue;
use crate::proto::function::message_function_client::MessageFunctionClient;
use crate::proto::function::message_function_server::{MessageFunction, MessageFunctionServer};

// ---------------------------------------------------------------------------------------------
// The reference server

/// Echoes every message of a call, unchanged.
#[derive(Debug, Default)]
struct Echo;

type EchoStream = Pin<Box<dyn Stream<Item = Result<Message, Status>> + Send>>;

#[tonic::async_trait]
impl MessageFunction for Echo {
    type CallStream = EchoStream;

    async fn call(
        &self,
        request: Request<Streaming<Message>>,
    ) -> Result<Response<EchoStream>, Status> {
        Ok(Response::new(Box::pin(request.into_inner())))
    }
}

/// `invoker reference-echo`: the bare tonic echo server the benchmark compares against.
pub fn reference_echo(args: ReferenceArgs) -> anyhow::Result<Exit> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
        println!("listening on {}", listener.local_addr()?);
        tonic::transport::Server::builder()
            .add_service(MessageFunctionServer::new(Echo))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await?;
        Ok(Exit::SUCCESS)
    })
}

// ---------------------------------------------------------------------------------------------
// Servers under test

/// A server under test: a child process, or (`--server`) one already running elsewhere.
struct Server {
    child: Option<Child>,
    addr: String,
}

impl Server {
    fn spawn(
        exe: &Path,
        args: &[&str],
        env: &[(&str, String)],
    ) -> anyhow::Result<(Server, Instant)> {
        let started = Instant::now();
        let mut command = Command::new(exe);
        command
            .args(args)
            .env("GRPC_PORT", "0")
            .env("HOST", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().context("cannot start a server")?;
        Ok((Server::listening(child, "the server")?, started))
    }

    /// A server started with its stdout piped, once it says where it listens (`what` names it
    /// in the error if it ends first); the rest of its stdout is read to the end.
    fn listening(mut child: Child, what: &str) -> anyhow::Result<Server> {
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        break addr.to_owned();
                    }
                }
                _ => bail!("{what} exited before listening"),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let child = Some(child);
        Ok(Server { child, addr })
    }

    /// The child's process id: figures read from /proc need one.
    fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .context("not measured for a server started elsewhere")
    }

    /// CPU time the server has used so far (user + system), from /proc.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?))?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = stat.rsplit_once(')').context("malformed /proc stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
        let ticks: u64 = fields
            .get(11..13)
            .context("short /proc stat")?
            .iter()
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .sum();
        // USER_HZ is 100 on Linux.
        Ok(ticks as f64 / 100.0)
    }

    /// Resident memory of the server and its children (the worker processes of
    /// `--isolation process`; other servers have none).
    fn rss_kib(&self) -> anyhow::Result<u64> {
        let pid = self.pid()?;
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let mut total = rss_of(pid)?;
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            // A worker that ended meanwhile has nothing resident.
            total += rss_of(child).unwrap_or(0);
        }
        Ok(total)
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Endpoint::from_shared(format!("http://{}", self.addr))?
            .tcp_nodelay(true)
            .connect()
            .await?)
    }
}

/// A process's resident memory (VmRSS), in KiB.
fn rss_of(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// A channel to the invoker's Unix socket at `path`.
async fn unix_channel(path: &Path) -> anyhow::Result<Channel> {
    let path = path.to_path_buf();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    Ok(Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await?)
}

/// A directory of `$TMPDIR` for the socket the bench serves on, removed when dropped.
struct SocketDir(PathBuf);

impl SocketDir {
    fn create() -> anyhow::Result<SocketDir> {
        let dir = std::env::temp_dir().join(format!("invoker-bench-{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(SocketDir(dir))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Which side of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Invoker,
    Reference,
}

struct Setup {
    exe: PathBuf,
    /// `--invoker-exe`: the invoker to measure (default: this binary, like the reference).
    invoker_exe: PathBuf,
    lib_dir: PathBuf,
    /// `--server`: the one server to drive, already running.
    external: Option<String>,
}

impl Setup {
    fn start(&self, side: Side, library: &str, handler: &str) -> anyhow::Result<(Server, Instant)> {
        self.start_with(side, library, handler, &[])
    }

    /// Starts a server, the invoker with `limits` (environment variables) added.
    fn start_with(
        &self,
        side: Side,
        library: &str,
        handler: &str,
        limits: &[(&str, String)],
    ) -> anyhow::Result<(Server, Instant)> {
        if let Some(addr) = &self.external {
            let server = Server {
                child: None,
                addr: addr.clone(),
            };
            return Ok((server, Instant::now()));
        }
        match side {
            Side::Invoker => {
                let uri = format!(
                    "file://{}?handler={handler}",
                    self.lib_dir.join(library).display()
                );
                let mut env = vec![("FUNCTION_URI", uri)];
                env.extend(limits.iter().cloned());
                Server::spawn(&self.invoker_exe, &["serve"], &env)
            }
            Side::Reference => Server::spawn(&self.exe, &["reference-echo"], &[]),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads

fn message(payload: &[u8], content_type: &str) -> Message {
    let mut headers = BTreeMap::new();
    headers.insert(
        "Content-Type".to_owned(),
        HeaderValue {
            values: vec![content_type.to_owned()],
        },
    );
    Message {
        payload: bytes::Bytes::copy_from_slice(payload),
        headers,
    }
}

/// Request/reply calls, `in_flight` at a time, for `duration`: (calls/s, p50, p99).
async fn request_reply(
    channel: Channel,
    in_flight: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let deadline = Instant::now() + duration;
    let workers = (0..in_flight).map(|_| {
        let mut client = MessageFunctionClient::new(channel.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                let request = futures_util::stream::iter([message(b"Hello World", "text/plain")]);
                let mut replies = client.call(request).await?.into_inner();
                let mut got = 0;
                while replies.message().await?.is_some() {
                    got += 1;
                }
                if got != 1 {
                    bail!("expected one reply, got {got}");
                }
                latencies.push(started.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        })
    });
    let (latencies, elapsed) = gather(workers).await?;
    Ok((
        latencies.len() as f64 / elapsed,
        quantile(&latencies, 0.50),
        quantile(&latencies, 0.99),
    ))
}

/// Waits for a run's tasks, spawned just before, each with the latencies of its calls: every
/// latency, sorted, and the seconds the wait took (the run's length).
async fn gather(
    workers: impl IntoIterator<Item = tokio::task::JoinHandle<anyhow::Result<Vec<Duration>>>>,
) -> anyhow::Result<(Vec<Duration>, f64)> {
    let started = Instant::now();
    let mut latencies = Vec::new();
    for worker in futures_util::future::join_all(workers).await {
        latencies.extend(worker??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    Ok((latencies, elapsed))
}

/// The `p` quantile (0 to 1) of sorted latencies; zero if there are none.
fn quantile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or_default()
}

/// Messages on `streams` concurrent streams, each sending payloads for `duration` (and at
/// least `min_per_stream` of them): messages/s, counted as replies received.
async fn streaming(
    channel: Channel,
    streams: usize,
    duration: Duration,
    min_per_stream: usize,
    payload: Vec<u8>,
    content_type: &'static str,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let workers = (0..streams).map(|_| {
        let mut client = MessageFunctionClient::new(channel.clone());
        let payload = payload.clone();
        tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(128);
            let sender = tokio::spawn(async move {
                let mut sent = 0;
                while sent < min_per_stream || started.elapsed() < duration {
                    if tx.send(message(&payload, content_type)).await.is_err() {
                        break;
                    }
                    sent += 1;
                }
                sent
            });
            let mut replies = client.call(ReceiverStream::new(rx)).await?.into_inner();
            let mut got = 0;
            while replies.message().await?.is_some() {
                got += 1;
            }
            let sent = sender.await?;
            if got != sent {
                bail!("sent {sent} messages, got {got} replies");
            }
            Ok::<_, anyhow::Error>(got)
        })
    });
    let mut total = 0;
    for worker in futures_util::future::join_all(workers).await {
        total += worker??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Resident memory per open idle stream, in KiB, with `streams` streams open.
async fn idle_memory(server: &Server, streams: usize) -> anyhow::Result<f64> {
    let channel = server.channel().await?;
    // Warm up the connection and the allocator with one completed call.
    let mut client = MessageFunctionClient::new(channel.clone());
    client
        .call(futures_util::stream::iter([message(b"1", "text/plain")]))
        .await?
        .into_inner()
        .message()
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = server.rss_kib()?;
    let mut open = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut client = MessageFunctionClient::new(channel.clone());
        let (tx, rx) = mpsc::channel::<Message>(1);
        let response = client.call(ReceiverStream::new(rx)).await?;
        open.push((tx, response));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss_kib()?;
    drop(open);
    Ok(after.saturating_sub(before) as f64 / streams as f64)
}

/// How long a burst is measured for, and how big it is.
struct Burst {
    streams: usize,
    connections: usize,
    /// How long all streams stay open before the reading.
    open_for: Duration,
    /// When resident memory is read again after all are closed (two readings).
    after: [Duration; 2],
}

/// Resident memory (KiB) around a burst of idle streams spread over several connections:
/// before, with all open, and at the two `after` times once they are all closed.
async fn burst_memory(server: &Server, burst: &Burst) -> anyhow::Result<[u64; 4]> {
    let mut channels = Vec::with_capacity(burst.connections);
    for _ in 0..burst.connections {
        channels.push(server.channel().await?);
    }
    // Warm up the server and its allocator with one completed call.
    MessageFunctionClient::new(channels[0].clone())
        .call(futures_util::stream::iter([message(b"1", "text/plain")]))
        .await?
        .into_inner()
        .message()
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = server.rss_kib()?;
    // Open the streams, each connection's share from its own task.
    let per_connection = burst.streams.div_ceil(burst.connections);
    let openers = channels.iter().enumerate().map(|(i, channel)| {
        let channel = channel.clone();
        let count = per_connection.min(burst.streams.saturating_sub(i * per_connection));
        tokio::spawn(async move {
            let mut open = Vec::with_capacity(count);
            for _ in 0..count {
                let mut client = MessageFunctionClient::new(channel.clone());
                let (tx, rx) = mpsc::channel::<Message>(1);
                let response = client.call(ReceiverStream::new(rx)).await?;
                open.push((tx, response));
            }
            Ok::<_, anyhow::Error>(open)
        })
    });
    let mut open = Vec::with_capacity(burst.connections);
    for opener in futures_util::future::join_all(openers).await {
        open.push(opener??);
    }
    tokio::time::sleep(burst.open_for).await;
    let during = server.rss_kib()?;
    // Close every stream and connection.
    drop(open);
    drop(channels);
    let closed = Instant::now();
    let mut after = [0; 2];
    for (reading, wait) in after.iter_mut().zip(burst.after) {
        tokio::time::sleep(wait.saturating_sub(closed.elapsed())).await;
        *reading = server.rss_kib()?;
    }
    Ok([before, during, after[0], after[1]])
}

/// Time from spawning the process to the first reply.
async fn first_reply(
    setup: &Setup,
    side: Side,
    env: &[(&str, String)],
) -> anyhow::Result<Duration> {
    let (server, started) = setup.start_with(side, "librot13.so", "encode", env)?;
    loop {
        if let Ok(channel) = server.channel().await {
            let mut client = MessageFunctionClient::new(channel);
            let call = client
                .call(futures_util::stream::iter([message(
                    b"Hello World",
                    "text/plain",
                )]))
                .await;
            if let Ok(response) = call
                && response.into_inner().message().await?.is_some()
            {
                return Ok(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The run

struct Figure {
    name: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    invoker: f64,
    reference: f64,
}

/// Prints a table of figures side by side with their ratio: `header` names the figures' column
/// and the two sides; a row is a name, the two values and a unit. No ratio (`n/a`) to a second
/// side not measured (`--server`) or measured as nothing.
fn print_table<'a>(
    header: [&str; 3],
    rows: impl IntoIterator<Item = (&'a str, f64, f64, &'a str)>,
) {
    let [figure, first, second] = header;
    println!("{figure:<30} {first:>14} {second:>14} {:>8}  unit", "ratio");
    for (name, a, b, unit) in rows {
        let ratio = a / b;
        let ratio = match ratio.is_finite() {
            true => format!("{ratio:.2}"),
            false => "n/a".to_owned(),
        };
        println!("{name:<30} {a:>14.1} {b:>14.1} {ratio:>8}  {unit}");
    }
}

impl Figure {
    /// The rows of [`print_table`] of the figures measured.
    fn rows(figures: &[Figure]) -> impl Iterator<Item = (&'static str, f64, f64, &'static str)> {
        figures
            .iter()
            .filter(|f| !f.invoker.is_nan())
            .map(|f| (f.name, f.invoker, f.reference, f.unit))
    }

    fn keep_best(&mut self, side: Side, value: f64) {
        let slot = match side {
            Side::Invoker => &mut self.invoker,
            Side::Reference => &mut self.reference,
        };
        let better = if self.higher_is_better {
            value > *slot
        } else {
            value < *slot
        };
        if slot.is_nan() || better {
            *slot = value;
        }
    }
}

fn figure(name: &'static str, unit: &'static str, higher_is_better: bool) -> Figure {
    Figure {
        name,
        unit,
        higher_is_better,
        invoker: f64::NAN,
        reference: f64::NAN,
    }
}

/// `invoker bench`.
pub fn bench(args: BenchArgs) -> anyhow::Result<Exit> {
    let exe = std::env::current_exe().context("cannot find the invoker binary")?;
    let lib_dir = match args.lib_dir {
        Some(dir) => std::path::absolute(dir)?,
        None => exe
            .parent()
            .context("the binary has no directory")?
            .to_path_buf(),
    };
    for lib in ["librot13.so", "libstreams.so"] {
        if args.server.is_none() && !lib_dir.join(lib).is_file() {
            bail!(
                "{} is missing: build the examples (cargo build --release) or pass --lib-dir",
                lib_dir.join(lib).display()
            );
        }
    }
    if args.server.is_none()
        && args.only.as_deref().is_none_or(|only| only == "openwhisk")
        && !lib_dir.join(openwhisk::LIBRARY).is_file()
    {
        bail!(
            "{} is missing: build the examples (cargo build --release) or pass --lib-dir",
            lib_dir.join(openwhisk::LIBRARY).display()
        );
    }
    for lib in [statefun::LIBRARY, statefun::REFERENCE.0] {
        if args.server.is_none()
            && args.only.as_deref().is_none_or(|only| only == "statefun")
            && !lib_dir.join(lib).is_file()
        {
            bail!(
                "{} is missing: build the examples (cargo build --release) or pass --lib-dir",
                lib_dir.join(lib).display()
            );
        }
    }
    if args.server.is_some()
        && matches!(
            args.only.as_deref(),
            Some("startup" | "memory" | "openwhisk" | "statefun")
        )
    {
        bail!(
            "--server measures a running server: startup, memory, openwhisk and statefun need servers started by the bench"
        );
    }
    // With --server there is one side, reported in the invoker's column.
    let sides: &[Side] = match args.server {
        Some(_) => &[Side::Invoker],
        None => &[Side::Invoker, Side::Reference],
    };
    let setup = Setup {
        invoker_exe: args.invoker_exe.unwrap_or_else(|| exe.clone()),
        exe,
        lib_dir,
        external: args.server,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (duration, min_messages, idle_streams, rounds) = if args.smoke {
        (Duration::from_millis(200), 20, 200, 1)
    } else {
        (
            Duration::from_secs_f64(args.seconds),
            1000,
            1000,
            args.rounds,
        )
    };
    // 50 000 idle streams over 10 connections, as in the burst that left 585 MB resident.
    let burst = if args.smoke {
        Burst {
            streams: 200,
            connections: 2,
            open_for: Duration::from_millis(100),
            after: [Duration::from_millis(100), Duration::from_millis(200)],
        }
    } else {
        Burst {
            streams: 50_000,
            connections: 10,
            open_for: Duration::from_secs(1),
            after: [Duration::from_secs(1), Duration::from_secs(10)],
        }
    };
    // The invoker's limits raised so that the whole burst is admitted.
    let burst_limits = [
        ("MAX_CALLS", (burst.streams + 1000).to_string()),
        (
            "MAX_STREAMS_PER_CONNECTION",
            burst.streams.div_ceil(burst.connections).to_string(),
        ),
    ];
    let mut figures = vec![
        figure("request/reply, 1 in flight", "calls/s", true),
        figure("  p50 latency, 1 in flight", "µs", false),
        figure("  p99 latency, 1 in flight", "µs", false),
        figure("request/reply, 64 in flight", "calls/s", true),
        figure("  p99 latency, 64 in flight", "µs", false),
        figure("streaming, 1 stream", "msgs/s", true),
        figure("streaming, 8 streams", "msgs/s", true),
        figure("streaming 16 KiB, 1 stream", "msgs/s", true),
        figure("memory per idle stream", "KiB", false),
        figure("exec to first reply", "ms", false),
        figure("server CPU per call, 64 in flight", "µs", false),
        figure("server CPU per message, 8 streams", "µs", false),
        figure("burst: resident before", "MiB", false),
        figure("burst: resident, all open", "MiB", false),
        figure("burst: resident 1 s after", "MiB", false),
        figure("burst: resident 10 s after", "MiB", false),
    ];
    // The invoker on its Unix socket against the same invoker on TCP loopback (same process,
    // same run): calls/s and p99 at 1 in flight; [socket, tcp] each.
    let mut socket_figures = [[f64::NAN; 2]; 3];
    let mut openwhisk = openwhisk::OpenWhiskBench::new();
    // The invoker with --isolation process (2 workers) against the same invoker in process
    // (same run): [process, in-process] each, in the order of ISOLATION_FIGURES.
    let mut isolation_figures = [[f64::NAN; 2]; ISOLATION_FIGURES.len()];
    let mut statefun = statefun::StatefunBench::new();
    let run = |group: &str| args.only.as_deref().is_none_or(|only| only == group);
    runtime.block_on(async {
        for round in 0..rounds {
            for &side in sides {
                eprintln!("round {} of {rounds}: {side:?}", round + 1);
                if run("request-reply") {
                    let (server, _) = setup.start(side, "librot13.so", "encode")?;
                    let channel = server.channel().await?;
                    let (rate, p50, p99) = request_reply(channel.clone(), 1, duration).await?;
                    figures[0].keep_best(side, rate);
                    figures[1].keep_best(side, p50.as_secs_f64() * 1e6);
                    figures[2].keep_best(side, p99.as_secs_f64() * 1e6);
                    let cpu = server.cpu_seconds().ok();
                    let started = Instant::now();
                    let (rate, _, p99) = request_reply(channel, 64, duration).await?;
                    let calls = rate * started.elapsed().as_secs_f64();
                    figures[3].keep_best(side, rate);
                    figures[4].keep_best(side, p99.as_secs_f64() * 1e6);
                    if let Some(cpu) = cpu {
                        let cpu = server.cpu_seconds()? - cpu;
                        figures[10].keep_best(side, cpu / calls * 1e6);
                    }
                }

                if run("streaming") {
                    let (server, _) = setup.start(side, "libstreams.so", "running_average")?;
                    let channel = server.channel().await?;
                    let numbers = b"2.5".to_vec();
                    figures[5].keep_best(
                        side,
                        streaming(
                            channel.clone(),
                            1,
                            duration,
                            min_messages,
                            numbers.clone(),
                            "text/plain",
                        )
                        .await?,
                    );
                    let cpu = server.cpu_seconds().ok();
                    let started = Instant::now();
                    let rate = streaming(channel, 8, duration, min_messages, numbers, "text/plain")
                        .await?;
                    let messages = rate * started.elapsed().as_secs_f64();
                    figures[6].keep_best(side, rate);
                    if let Some(cpu) = cpu {
                        let cpu = server.cpu_seconds()? - cpu;
                        figures[11].keep_best(side, cpu / messages * 1e6);
                        figures[8].keep_best(side, idle_memory(&server, idle_streams).await?);
                    }
                }

                if run("large") {
                    let (server, _) = setup.start(side, "libstreams.so", "echo")?;
                    let channel = server.channel().await?;
                    let big = vec![b'x'; 16 * 1024];
                    figures[7].keep_best(
                        side,
                        streaming(
                            channel,
                            1,
                            duration,
                            min_messages,
                            big,
                            "application/octet-stream",
                        )
                        .await?,
                    );
                }

                if run("memory") {
                    let (server, _) = setup.start_with(
                        side,
                        "libstreams.so",
                        "running_average",
                        &burst_limits,
                    )?;
                    let readings = burst_memory(&server, &burst).await?;
                    for (figure, kib) in figures[12..16].iter_mut().zip(readings) {
                        figure.keep_best(side, kib as f64 / 1024.0);
                    }
                }

                if run("startup") {
                    let first = first_reply(&setup, side, &[]).await?;
                    figures[9].keep_best(side, first.as_secs_f64() * 1e3);
                }

                if run("socket") && side == Side::Invoker && setup.external.is_none() {
                    let dir = SocketDir::create()?;
                    let socket = dir.0.join("bench.sock");
                    let (server, _) = setup.start_with(
                        side,
                        "librot13.so",
                        "encode",
                        &[("GRPC_SOCKET", socket.display().to_string())],
                    )?;
                    let channels = [unix_channel(&socket).await?, server.channel().await?];
                    for (i, channel) in channels.into_iter().enumerate() {
                        let (rate, p50, p99) = request_reply(channel, 1, duration).await?;
                        for (slot, value, higher) in [
                            (0, rate, true),
                            (1, p50.as_secs_f64() * 1e6, false),
                            (2, p99.as_secs_f64() * 1e6, false),
                        ] {
                            let best = &mut socket_figures[slot][i];
                            if best.is_nan() || (value > *best) == higher {
                                *best = value;
                            }
                        }
                    }
                }

                // OpenWhisk's /run in the invoker's column, the same greet over gRPC Call in
                // the reference's.
                if run("openwhisk") {
                    openwhisk.round(&setup, side, duration).await?;
                }

                if run("isolation") && side == Side::Invoker && setup.external.is_none() {
                    let process = [
                        ("ISOLATION", "process".to_owned()),
                        ("WORKERS", "2".to_owned()),
                    ];
                    for (i, env) in [&process[..], &[]].into_iter().enumerate() {
                        let readings =
                            isolation(&setup, env, duration, min_messages, idle_streams).await?;
                        for ((best, value), (_, _, higher)) in isolation_figures
                            .iter_mut()
                            .map(|pair| &mut pair[i])
                            .zip(readings)
                            .zip(ISOLATION_FIGURES)
                        {
                            if best.is_nan() || (value > *best) == higher {
                                *best = value;
                            }
                        }
                    }
                }

                // Batches to `invoker statefun` in the invoker's column, gRPC Calls of a
                // function of the same work in the reference's.
                if run("statefun") {
                    statefun.round(&setup, side, duration).await?;
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    print_table(["figure", "invoker", "reference"], Figure::rows(&figures));
    if !socket_figures[0][0].is_nan() {
        println!();
        let names = [
            ("socket: request/reply, 1 in flight", "calls/s"),
            ("socket:   p50 latency, 1 in flight", "µs"),
            ("socket:   p99 latency, 1 in flight", "µs"),
        ];
        print_table(
            ["the invoker on", "unix socket", "tcp loopback"],
            names
                .into_iter()
                .zip(socket_figures)
                .map(|((name, unit), [socket, tcp])| (name, socket, tcp, unit)),
        );
    }
    if !isolation_figures[0][0].is_nan() {
        println!();
        print_table(
            ["the invoker with", "process (2)", "in-process"],
            ISOLATION_FIGURES
                .into_iter()
                .zip(isolation_figures)
                .map(|((name, unit, _), [process, in_process])| (name, process, in_process, unit)),
        );
    }
    if run("openwhisk") {
        openwhisk.print();
    }
    if run("statefun") {
        statefun.print();
    }
    Ok(Exit::SUCCESS)
}

/// The figures of `--only isolation`: name, unit, whether higher is better.
const ISOLATION_FIGURES: [(&str, &str, bool); 8] = [
    ("isolation: request/reply, 1", "calls/s", true),
    ("isolation:   p99 latency, 1", "µs", false),
    ("isolation: request/reply, 64", "calls/s", true),
    ("isolation:   p99 latency, 64", "µs", false),
    ("isolation: streaming, 1 stream", "msgs/s", true),
    ("isolation: streaming, 8", "msgs/s", true),
    ("isolation: memory/idle stream", "KiB", false),
    ("isolation: exec to first reply", "ms", false),
];

/// One reading of each of [`ISOLATION_FIGURES`] for the invoker started with `env`
/// (`ISOLATION=process WORKERS=2`, or nothing: in process). Memory counts the workers too.
async fn isolation(
    setup: &Setup,
    env: &[(&str, String)],
    duration: Duration,
    min_messages: usize,
    idle_streams: usize,
) -> anyhow::Result<[f64; ISOLATION_FIGURES.len()]> {
    let (server, _) = setup.start_with(Side::Invoker, "librot13.so", "encode", env)?;
    let channel = server.channel().await?;
    let (rate_1, _, p99_1) = request_reply(channel.clone(), 1, duration).await?;
    let (rate_64, _, p99_64) = request_reply(channel, 64, duration).await?;
    drop(server);
    let (server, _) = setup.start_with(Side::Invoker, "libstreams.so", "running_average", env)?;
    let channel = server.channel().await?;
    let numbers = b"2.5".to_vec();
    let one = streaming(
        channel.clone(),
        1,
        duration,
        min_messages,
        numbers.clone(),
        "text/plain",
    )
    .await?;
    let eight = streaming(channel, 8, duration, min_messages, numbers, "text/plain").await?;
    let memory = idle_memory(&server, idle_streams).await?;
    drop(server);
    let first = first_reply(setup, Side::Invoker, env).await?;
    Ok([
        rate_1,
        p99_1.as_secs_f64() * 1e6,
        rate_64,
        p99_64.as_secs_f64() * 1e6,
        one,
        eight,
        memory,
        first.as_secs_f64() * 1e3,
    ])
}
