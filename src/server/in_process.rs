//! The server inside the calling process, for the fast test tier (`tests/engine.rs`): the same
//! pieces `invoker serve` wires together (`Live`, the function threads' `Pool`, `Stats`,
//! `Calls`, [`ServeOptions`]) served by the same [`serve_on`], on a runtime of its own (the
//! daemon's, [`crate::engine::runtime`]) and a thread of its own, so a test's own runtime only
//! drives its clients.
//!
//! What only a process shows stays with the tests of the real binary: no signal handler (the
//! drain starts with [`InProcess::drain`] or on drop), no fatal-signal handler (it is
//! process-wide, and a crash would end the test binary), no admin socket, `/metrics` or SIGHUP.
//! Loading a library again in the same process is fine: each load copies it into a fresh
//! memory file, so its statics are fresh.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::drain::Calls;
use super::{Listeners, ServeOptions, serve_on};
use crate::cli::ServeArgs;
use crate::engine::pool::{Limits as PoolLimits, Pool};
use crate::function::uri::FunctionUri;
use crate::live::Live;
use crate::stats::Stats;

/// A server running in this process; dropping it starts the drain (as SIGTERM does) and lets
/// it finish on its own thread.
#[derive(Debug)]
pub struct InProcess {
    addr: SocketAddr,
    calls: Arc<Calls>,
    stop: CancellationToken,
    done: Option<tokio::sync::oneshot::Receiver<anyhow::Result<()>>>,
}

impl InProcess {
    /// Loads the function `args` name, runs its init hook, binds `args.host`:`args.port` and
    /// serves, as `invoker serve` does with the same arguments (its limits, grace period and
    /// user configuration). Returns once the port is open. The admin socket and `/metrics` are
    /// not served here: asking for them is an error, not silently ignored.
    pub fn start(args: ServeArgs) -> anyhow::Result<InProcess> {
        if args.admin_socket.is_some() || args.metrics_port.is_some() || args.socket.requested() {
            anyhow::bail!(
                "the in-process server serves no admin socket, no /metrics and no Unix socket"
            );
        }
        let uri = FunctionUri::parse(&args.function_uri)?;
        let config = args.config.load()?;
        let stats = Arc::new(Stats::new());
        let pool = Arc::new(Pool::new(
            PoolLimits::from_args(&args.limits),
            stats.clone(),
        ));
        let live = Arc::new(Live::start(
            &uri.path,
            uri.handler.as_deref(),
            &format!("in-process-{}", std::process::id()),
            config,
            stats,
            pool,
        )?);
        let listener = std::net::TcpListener::bind((args.host.as_str(), args.port))
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = crate::engine::runtime().context("cannot start the async runtime")?;
        let calls = Arc::new(Calls::with_max(args.limits.max_calls as usize));
        let options = ServeOptions::from_args(&args);
        let stop = CancellationToken::new();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let serving = {
            let (calls, stop) = (calls.clone(), stop.clone());
            move || {
                let served = runtime.block_on(async {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let listeners = Listeners {
                        tcp: Some(listener),
                        unix: None,
                    };
                    serve_on(
                        listeners,
                        &options,
                        live.clone(),
                        calls,
                        stop.cancelled_owned(),
                    )
                    .await
                });
                // As `invoker serve`: a call still blocked in the function cannot hold the end.
                runtime.shutdown_timeout(BLOCKED_CALL_WAIT);
                live.shutdown();
                let _ = done_tx.send(served);
            }
        };
        std::thread::Builder::new()
            .name("invoker-in-process".into())
            .spawn(serving)
            .context("cannot start the server's thread")?;
        Ok(InProcess {
            addr,
            calls,
            stop,
            done: Some(done),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Calls in flight (what `invoker status` shows as `calls_in_flight`).
    pub fn in_flight(&self) -> usize {
        self.calls.in_flight()
    }

    /// Starts the drain, as SIGTERM does: health turns NOT_SERVING, new calls are refused,
    /// calls in flight run on for the grace period.
    pub fn drain(&self) {
        self.stop.cancel();
    }

    /// Starts the drain and waits until the server has stopped and the shutdown hooks have
    /// run; returns how serving ended.
    pub async fn stopped(mut self) -> anyhow::Result<()> {
        self.drain();
        match self.done.take() {
            Some(done) => done
                .await
                .context("the server's thread ended without a result")?,
            None => Ok(()),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How long the end waits for tasks still running after the drain (as `invoker serve`).
const BLOCKED_CALL_WAIT: Duration = Duration::from_millis(300);
