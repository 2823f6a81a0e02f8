//! `invoker bench --only openwhisk`: OpenWhisk's `/run` of `greet` (libopenwhisk.so) against
//! the same `greet` over gRPC Call, both served by the invoker under test.
//!
//! The two sides of the comparison are the two fronts of one engine: `invoker openwhisk`
//! driven by a small HTTP/1.1 keep-alive client over a TcpStream (one connection per
//! activation in flight, as OpenWhisk's invoker holds one per concurrent activation), and
//! `invoker serve` with `FUNCTION_URI` naming the same handler, driven by tonic as the
//! request/reply figures are. The client writes one pre-built request and reads one answer by
//! its Content-Length, so that it costs little beside the server it measures.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;

use super::{Figure, Server, Setup, Side, figure, message};
use crate::proto::function::message_function_client::MessageFunctionClient;

/// The library and handler both sides serve.
pub(super) const LIBRARY: &str = "libopenwhisk.so";
const HANDLER: &str = "greet";
/// The activation's parameters, and the answer each must get.
const PARAMS: &[u8] = br#"{"name":"Ada"}"#;
const ANSWER: &[u8] = br#"{"greeting":"Hello Ada"}"#;

/// The OpenWhisk group's figures: OpenWhisk in the first column, gRPC Call in the second.
pub(super) struct OpenWhiskBench {
    figures: Vec<Figure>,
}

impl OpenWhiskBench {
    pub(super) fn new() -> OpenWhiskBench {
        OpenWhiskBench {
            figures: vec![
                figure("greet, 1 in flight", "calls/s", true),
                figure("  p50 latency, 1 in flight", "µs", false),
                figure("  p99 latency, 1 in flight", "µs", false),
                figure("greet, 32 in flight", "calls/s", true),
                figure("  p50 latency, 32 in flight", "µs", false),
                figure("  p99 latency, 32 in flight", "µs", false),
                figure("server CPU per call, 32", "µs", false),
                figure("exec to first answer", "ms", false),
            ],
        }
    }

    /// One round of every figure: OpenWhisk for [`Side::Invoker`], gRPC Call for
    /// [`Side::Reference`].
    pub(super) async fn round(
        &mut self,
        setup: &Setup,
        side: Side,
        duration: Duration,
    ) -> anyhow::Result<()> {
        // The zip is made before the clock starts: OpenWhisk has it ready.
        let code = match side {
            Side::Invoker => action_code(&setup.lib_dir.join(LIBRARY))?,
            Side::Reference => String::new(),
        };
        let (server, started) = match side {
            Side::Invoker => start_openwhisk(setup)?,
            // `invoker serve` with FUNCTION_URI (the invoker's side of the other figures).
            Side::Reference => setup.start(Side::Invoker, LIBRARY, HANDLER)?,
        };
        // Exec to the first answer: for OpenWhisk through /init (the zip, as `wsk` sends it)
        // and the first /run; for gRPC, the library loaded from FUNCTION_URI and a first Call.
        let client = match side {
            Side::Invoker => {
                let mut connection = connect(&server.addr).await?;
                let init =
                    format!(r#"{{"value":{{"code":"{code}","binary":true,"main":"{HANDLER}"}}}}"#);
                let (status, body) = connection.post("/init", init.as_bytes()).await?;
                if status != 200 {
                    bail!(
                        "/init answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                let run = run_request(&server.addr);
                connection.expect_answer(&run).await?;
                Client::OpenWhisk(run)
            }
            Side::Reference => {
                let channel = first_channel(&server).await?;
                greet_call(&mut MessageFunctionClient::new(channel.clone())).await?;
                Client::Grpc(channel)
            }
        };
        self.figures[7].keep_best(side, started.elapsed().as_secs_f64() * 1e3);

        let (rate, p50, p99) = client.drive(&server.addr, 1, duration).await?;
        self.figures[0].keep_best(side, rate);
        self.figures[1].keep_best(side, micros(p50));
        self.figures[2].keep_best(side, micros(p99));
        let cpu = server.cpu_seconds().ok();
        let started = Instant::now();
        let (rate, p50, p99) = client.drive(&server.addr, 32, duration).await?;
        let calls = rate * started.elapsed().as_secs_f64();
        self.figures[3].keep_best(side, rate);
        self.figures[4].keep_best(side, micros(p50));
        self.figures[5].keep_best(side, micros(p99));
        if let Some(cpu) = cpu {
            self.figures[6].keep_best(side, (server.cpu_seconds()? - cpu) / calls * 1e6);
        }
        Ok(())
    }

    /// Prints the group's table, in `invoker bench`'s format.
    pub(super) fn print(&self) {
        println!();
        super::print_table(
            ["openwhisk /run vs gRPC Call", "openwhisk", "grpc call"],
            super::Figure::rows(&self.figures),
        );
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `invoker openwhisk` on a free port, without a function: the code arrives at /init. Its
/// stdout and stderr, which get the sentinel line after each activation, are read to the end
/// as OpenWhisk's log collection reads them (and kept off the bench's own output).
fn start_openwhisk(setup: &Setup) -> anyhow::Result<(Server, Instant)> {
    let started = Instant::now();
    let mut child = Command::new(&setup.invoker_exe)
        .args(["openwhisk", "--port", "0"])
        .env("HOST", "127.0.0.1")
        .env_remove("FUNCTION_URI")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start invoker openwhisk")?;
    let stderr = child.stderr.take().context("no stderr")?;
    std::thread::spawn(move || std::io::copy(&mut { stderr }, &mut std::io::sink()));
    Ok((Server::listening(child, "invoker openwhisk")?, started))
}

/// The library zipped and in base64, as `wsk action create --docker IMAGE ACTION.zip` sends it.
fn action_code(library: &std::path::Path) -> anyhow::Result<String> {
    use base64::Engine as _;
    use std::io::Write as _;
    let bytes =
        std::fs::read(library).with_context(|| format!("cannot read {}", library.display()))?;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file(LIBRARY, options)?;
    zip.write_all(&bytes)?;
    let zip = zip.finish()?.into_inner();
    Ok(base64::engine::general_purpose::STANDARD.encode(zip))
}

/// A `/run` request, as OpenWhisk's invoker sends one: the parameters and the activation's
/// metadata, with a deadline a minute away.
fn run_request(addr: &str) -> Vec<u8> {
    let deadline = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        + Duration::from_secs(60))
    .as_millis();
    let body = format!(
        r#"{{"value":{},"namespace":"guest","action_name":"hello","activation_id":"5e1d0a7f6c3b4a2d9e1d0a7f6c3b4a2d","transaction_id":"tid_bench","deadline":"{deadline}","api_key":"not-a-key"}}"#,
        String::from_utf8_lossy(PARAMS)
    );
    let mut request = format!(
        "POST /run HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body.as_bytes());
    request
}

/// The first channel to a server that is starting.
async fn first_channel(server: &Server) -> anyhow::Result<Channel> {
    let started = Instant::now();
    loop {
        match server.channel().await {
            Ok(channel) => return Ok(channel),
            Err(e) if started.elapsed() > Duration::from_secs(10) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_micros(200)).await,
        }
    }
}

/// One Call of greet with the activation's parameters as JSON.
async fn greet_call(client: &mut MessageFunctionClient<Channel>) -> anyhow::Result<()> {
    let request = futures_util::stream::iter([message(PARAMS, "application/json")]);
    let mut replies = client.call(request).await?.into_inner();
    let mut got = 0;
    while let Some(reply) = replies.message().await? {
        if reply.payload != ANSWER {
            bail!(
                "greet answered {:?}",
                String::from_utf8_lossy(&reply.payload)
            );
        }
        got += 1;
    }
    if got != 1 {
        bail!("expected one reply, got {got}");
    }
    Ok(())
}

/// How a side is driven once started.
enum Client {
    /// The `/run` request to send.
    OpenWhisk(Vec<u8>),
    Grpc(Channel),
}

impl Client {
    /// Activations (or calls) `in_flight` at a time for `duration`: (per second, p50, p99).
    async fn drive(
        &self,
        addr: &str,
        in_flight: usize,
        duration: Duration,
    ) -> anyhow::Result<(f64, Duration, Duration)> {
        let deadline = Instant::now() + duration;
        let mut workers = Vec::with_capacity(in_flight);
        for _ in 0..in_flight {
            let worker = match self {
                Client::OpenWhisk(run) => {
                    let mut connection = connect(addr).await?;
                    let run = run.clone();
                    tokio::spawn(async move {
                        let mut latencies = Vec::new();
                        while Instant::now() < deadline {
                            let started = Instant::now();
                            connection.expect_answer(&run).await?;
                            latencies.push(started.elapsed());
                        }
                        Ok::<_, anyhow::Error>(latencies)
                    })
                }
                Client::Grpc(channel) => {
                    let mut client = MessageFunctionClient::new(channel.clone());
                    tokio::spawn(async move {
                        let mut latencies = Vec::new();
                        while Instant::now() < deadline {
                            let started = Instant::now();
                            greet_call(&mut client).await?;
                            latencies.push(started.elapsed());
                        }
                        Ok::<_, anyhow::Error>(latencies)
                    })
                }
            };
            workers.push(worker);
        }
        let (latencies, elapsed) = super::gather(workers).await?;
        Ok((
            latencies.len() as f64 / elapsed,
            super::quantile(&latencies, 0.50),
            super::quantile(&latencies, 0.99),
        ))
    }
}

/// An HTTP/1.1 keep-alive connection: one request at a time, answers read by Content-Length.
pub(super) struct Connection {
    stream: TcpStream,
    /// What has been read and not yet consumed.
    buffer: Vec<u8>,
}

pub(super) async fn connect(addr: &str) -> anyhow::Result<Connection> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(Connection {
        stream,
        buffer: Vec::with_capacity(4096),
    })
}

impl Connection {
    /// POSTs `body` as JSON: the answer's status and body.
    async fn post(&mut self, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.exchange(&request).await
    }

    /// Sends a `/run` request and checks its answer is greet's.
    async fn expect_answer(&mut self, request: &[u8]) -> anyhow::Result<()> {
        let (status, body) = self.exchange(request).await?;
        if status != 200 || body != ANSWER {
            bail!("/run answered {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }

    /// Writes `request` and reads one answer.
    pub(super) async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        self.stream.write_all(request).await?;
        let head_end = loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buffer[..head_end]).context("a non-UTF-8 head")?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status line")?;
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .context("an answer without Content-Length")?;
        while self.buffer.len() < head_end + length {
            self.fill().await?;
        }
        let body = self.buffer[head_end..head_end + length].to_vec();
        self.buffer.drain(..head_end + length);
        Ok((status, body))
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
