//! The gRPC server: the function's services, health, reflection, and shutdown with a drain.
//!
//! Shutdown (SPEC §3): on SIGTERM or SIGINT health turns NOT_SERVING and new calls are refused
//! with UNAVAILABLE while calls in flight run on; when they are done, or the grace period is
//! over (then the rest end with UNAVAILABLE), the server stops and `serve` returns.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::engine::{Engine, errors};
use crate::protocol::call::CallService;
use crate::protocol::proto::FILE_DESCRIPTOR_SET;
use crate::protocol::proto::function_server::message_function_server::MessageFunctionServer;
use crate::protocol::proto::streaming::riff_server::RiffServer;
use crate::protocol::riff::RiffService;

/// The calls in flight, and whether new ones are still welcome.
#[derive(Debug, Default)]
pub struct Calls {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
    cancel: CancellationToken,
    /// Set with `cancel`: read on every poll of a call, where locking the token would cost.
    cancelled: AtomicBool,
}

impl Calls {
    /// Admits a new call, unless the server is draining.
    pub fn enter(self: &Arc<Self>) -> Result<CallGuard, Status> {
        if self.draining.load(Ordering::Acquire) {
            return Err(errors::draining());
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(CallGuard {
            calls: self.clone(),
        })
    }

    /// The number of calls in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Refuses new calls from now on.
    fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Completes when no call is in flight.
    async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts a call as in flight until dropped.
#[derive(Debug)]
pub struct CallGuard {
    calls: Arc<Calls>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.calls.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.calls.idle.notify_waiters();
        }
    }
}

impl CallGuard {
    /// Wraps a call's response stream: counted in flight until it ends or is dropped, and
    /// ended with UNAVAILABLE if the drain's grace period runs out first.
    pub fn wrap<S, T>(self, inner: S) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>
    where
        S: Stream<Item = Result<T, Status>> + Send + 'static,
        T: Send + 'static,
    {
        Box::pin(Drainable {
            cancelled: Box::pin(self.calls.cancel.clone().cancelled_owned()),
            inner: Box::pin(inner),
            guard: Some(self),
        })
    }
}

struct Drainable<S> {
    inner: Pin<Box<S>>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    guard: Option<CallGuard>,
}

impl<S, T> Stream for Drainable<S>
where
    S: Stream<Item = Result<T, Status>>,
{
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(guard) = &self.guard else {
            return Poll::Ready(None);
        };
        if guard.calls.cancelled.load(Ordering::Acquire) {
            return self.cancel();
        }
        let polled = self.inner.as_mut().poll_next(cx);
        match polled {
            Poll::Ready(None) => self.guard = None,
            // Only a call that waits needs waking for cancellation: a busy one sees the flag.
            Poll::Pending if self.cancelled.as_mut().poll(cx).is_ready() => return self.cancel(),
            _ => {}
        }
        polled
    }
}

impl<S> Drainable<S> {
    fn cancel<T>(&mut self) -> Poll<Option<Result<T, Status>>> {
        self.guard = None;
        Poll::Ready(Some(Err(Status::unavailable(
            "Invoker: shutting down: the call did not finish within the drain grace period",
        ))))
    }
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Host to bind.
    pub host: String,
    /// Port to bind (0 for any).
    pub port: u16,
    /// How long calls in flight may run on after a shutdown signal.
    pub grace: Duration,
}

/// Binds the port and serves `engine` until SIGTERM/SIGINT and the drain are done.
pub async fn serve(options: ServeOptions, engine: Engine) -> anyhow::Result<()> {
    let listener = TcpListener::bind((options.host.as_str(), options.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", options.host, options.port))?;
    let addr = listener.local_addr()?;
    serve_on(listener, addr, options.grace, engine, shutdown_signal()).await
}

/// Serves on a bound listener until `signal` completes and the drain is done.
pub async fn serve_on(
    listener: TcpListener,
    addr: SocketAddr,
    grace: Duration,
    engine: Engine,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let calls = Arc::new(Calls::default());
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<MessageFunctionServer<CallService>>()
        .await;
    health.set_serving::<RiffServer<RiffService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let function = engine.function().info().name.clone();
    let call_service = MessageFunctionServer::new(CallService::new(engine.clone(), calls.clone()));
    let riff_service = RiffServer::new(RiffService::new(engine, calls.clone()));

    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let drain = {
        let calls = calls.clone();
        async move {
            signal.await;
            tracing::info!(
                in_flight = calls.in_flight(),
                "shutting down: draining calls in flight"
            );
            calls.start_draining();
            health
                .set_not_serving::<MessageFunctionServer<CallService>>()
                .await;
            health.set_not_serving::<RiffServer<RiffService>>().await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            if tokio::time::timeout(grace, calls.idle()).await.is_err() {
                tracing::warn!(
                    in_flight = calls.in_flight(),
                    grace_seconds = grace.as_secs_f64(),
                    "drain grace period over: cancelling the calls still in flight"
                );
                calls.cancelled.store(true, Ordering::Release);
                calls.cancel.cancel();
                calls.idle().await;
            }
            tracing::info!("drained");
            let _ = drained_tx.send(());
        }
    };

    tracing::info!(%addr, function, "serving");
    println!("listening on {addr}");
    let server = Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(call_service)
        .add_service(riff_service)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), drain);
    // After the drain, clients get a moment to close their connections; one that does not
    // answer cannot keep the process alive.
    let linger = async {
        if drained_rx.await.is_ok() {
            tokio::time::sleep(CONNECTION_LINGER).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = server => served?,
        () = linger => tracing::warn!("closing connections that did not close after the drain"),
    }
    Ok(())
}

/// How long connections may stay open after the drain.
const CONNECTION_LINGER: Duration = Duration::from_secs(2);

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
