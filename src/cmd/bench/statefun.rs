//! `invoker bench --only statefun`: batches of 1 and of 100 invocations of `example/greeter`
//! (libstatefun.so, with its state) POSTed to `invoker statefun`, against a gRPC Call of a
//! function of the same work (`hello` of libgreeter.so: a string in, a formatted string out)
//! served by `invoker serve`.
//!
//! The StateFun side is driven as a cluster drives an endpoint: [`IN_FLIGHT`] keep-alive
//! HTTP/1.1 connections, each POSTing one prost-encoded `ToFunction` at a time (built once,
//! with the greeter's `seen` value) and reading the `FromFunction` by its Content-Length; the
//! first answer of each connection is decoded and checked (one egress record per invocation),
//! the others only for their status, so that the client costs little beside the server. The
//! gRPC side runs the same number of Calls at a time. Invocations/s count each invocation of
//! a batch; the server's CPU (user + system, from /proc) is divided by the invocations (or
//! calls) it served.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use prost::Message as _;

use super::openwhisk::{Connection, connect};
use super::{Figure, Server, Setup, Side, figure};
use crate::proto::statefun::reqreply::{
    Address, FromFunction, ToFunction, TypedValue, from_function, to_function,
};
use crate::proto::statefun::types::{IntWrapper, StringWrapper};

/// The library of the StateFun side, and the reference's library and handler.
pub(super) const LIBRARY: &str = "libstatefun.so";
pub(super) const REFERENCE: (&str, &str) = ("libgreeter.so", "hello");
/// Batches (or Calls) in flight at once.
const IN_FLIGHT: usize = 4;

/// The StateFun group's figures: StateFun in the first column, gRPC Call in the second.
pub(super) struct StatefunBench {
    figures: Vec<Figure>,
}

impl StatefunBench {
    pub(super) fn new() -> StatefunBench {
        StatefunBench {
            figures: vec![
                figure("greeter, batches of 1", "inv/s", true),
                figure("  p50 latency, batches of 1", "µs", false),
                figure("server CPU per inv, batch 1", "µs", false),
                figure("greeter, batches of 100", "inv/s", true),
                figure("server CPU per inv, batch 100", "µs", false),
            ],
        }
    }

    /// One round: `invoker statefun` for [`Side::Invoker`], `invoker serve` of the
    /// reference function over gRPC Call for [`Side::Reference`].
    pub(super) async fn round(
        &mut self,
        setup: &Setup,
        side: Side,
        duration: Duration,
    ) -> anyhow::Result<()> {
        match side {
            Side::Invoker => {
                let uri = format!("file://{}", setup.lib_dir.join(LIBRARY).display());
                let (server, _) = Server::spawn(
                    &setup.invoker_exe,
                    &["statefun"],
                    &[("FUNCTION_URI", uri), ("STATEFUN_PORT", "0".to_owned())],
                )?;
                for (batch, rate_at, p50_at, cpu_at) in
                    [(1, Some(0), Some(1), 2), (100, Some(3), None, 4)]
                {
                    let cpu = server.cpu_seconds().ok();
                    let (rate, invocations, p50) = drive(&server.addr, batch, duration).await?;
                    if let Some(at) = rate_at {
                        self.figures[at].keep_best(side, rate);
                    }
                    if let Some(at) = p50_at {
                        self.figures[at].keep_best(side, p50.as_secs_f64() * 1e6);
                    }
                    if let Some(cpu) = cpu {
                        let used = server.cpu_seconds()? - cpu;
                        self.figures[cpu_at].keep_best(side, used / invocations * 1e6);
                    }
                }
            }
            Side::Reference => {
                let (server, _) = setup.start(Side::Invoker, REFERENCE.0, REFERENCE.1)?;
                let channel = server.channel().await?;
                let cpu = server.cpu_seconds().ok();
                let started = Instant::now();
                let (rate, p50, _) = super::request_reply(channel, IN_FLIGHT, duration).await?;
                let calls = rate * started.elapsed().as_secs_f64();
                // One call is the reference for both batch sizes.
                for at in [0, 3] {
                    self.figures[at].keep_best(side, rate);
                }
                self.figures[1].keep_best(side, p50.as_secs_f64() * 1e6);
                if let Some(cpu) = cpu {
                    let per_call = (server.cpu_seconds()? - cpu) / calls * 1e6;
                    for at in [2, 4] {
                        self.figures[at].keep_best(side, per_call);
                    }
                }
            }
        }
        Ok(())
    }

    /// Prints the group's table, in `invoker bench`'s format.
    pub(super) fn print(&self) {
        println!();
        super::print_table(
            ["statefun vs gRPC Call", "statefun", "grpc call"],
            super::Figure::rows(&self.figures),
        );
    }
}

/// The HTTP request of a batch of `size` invocations of `example/greeter`, `seen` being 41.
fn request(addr: &str, size: usize) -> Vec<u8> {
    let string = |s: &str| TypedValue {
        typename: "io.statefun.types/string".into(),
        has_value: true,
        value: StringWrapper { value: s.into() }.encode_to_vec().into(),
    };
    let batch = to_function::InvocationBatchRequest {
        target: Some(Address {
            namespace: "example".into(),
            r#type: "greeter".into(),
            id: "Ada".into(),
        }),
        state: vec![to_function::PersistedValue {
            state_name: "seen".into(),
            state_value: Some(TypedValue {
                typename: "io.statefun.types/int".into(),
                has_value: true,
                value: IntWrapper { value: 41 }.encode_to_vec().into(),
            }),
        }],
        invocations: (0..size)
            .map(|_| to_function::Invocation {
                caller: None,
                argument: Some(string("Ada")),
            })
            .collect(),
    };
    let body = ToFunction {
        request: Some(to_function::Request::Invocation(batch)),
    }
    .encode_to_vec();
    let mut request = format!(
        "POST /statefun HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

/// One batch on `connection`; with `check`, its answer decoded and checked.
async fn post(
    connection: &mut Connection,
    request: &[u8],
    size: usize,
    check: bool,
) -> anyhow::Result<()> {
    let (status, body) = connection.exchange(request).await?;
    if status != 200 {
        bail!(
            "/statefun answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    if check {
        let answer = FromFunction::decode(body.as_slice()).context("not a FromFunction")?;
        let egresses = match answer.response {
            Some(from_function::Response::InvocationResult(result)) => {
                result.outgoing_egresses.len()
            }
            other => bail!("/statefun answered {other:?}"),
        };
        if egresses != size {
            bail!("{egresses} egress records for {size} invocations");
        }
    }
    Ok(())
}

/// Batches of `size`, [`IN_FLIGHT`] at a time, for `duration`: (invocations/s, invocations,
/// p50 latency of a batch).
async fn drive(
    addr: &str,
    size: usize,
    duration: Duration,
) -> anyhow::Result<(f64, f64, Duration)> {
    let request = request(addr, size);
    let mut workers = Vec::with_capacity(IN_FLIGHT);
    let mut connections = Vec::with_capacity(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        let mut connection = connect(addr).await?;
        post(&mut connection, &request, size, true).await?;
        connections.push(connection);
    }
    let deadline = Instant::now() + duration;
    for mut connection in connections {
        let request = request.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                post(&mut connection, &request, size, false).await?;
                latencies.push(started.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let (latencies, elapsed) = super::gather(workers).await?;
    let p50 = super::quantile(&latencies, 0.50);
    let invocations = (latencies.len() * size) as f64;
    Ok((invocations / elapsed, invocations, p50))
}
