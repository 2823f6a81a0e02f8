//! What every call passes through, below the protocol handlers: admission (the drain, the
//! bound on calls in flight, `grpc-timeout`), and the wrapper that ends a call at its deadline
//! or when the drain's grace period runs out (SPEC §3).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;

use super::listener::{ActiveCall, ConnInfo};
use crate::engine::{CallMeta, status};
use crate::stats::Stats;

/// The calls in flight, and whether new ones are still welcome.
#[derive(Debug)]
pub struct Calls {
    /// How many may be in flight at once.
    max: usize,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
    cancel: CancellationToken,
    /// Set with `cancel`: read on every poll of a call, where locking the token would cost.
    cancelled: AtomicBool,
}

impl Default for Calls {
    fn default() -> Self {
        Calls::with_max(usize::MAX)
    }
}

impl Calls {
    /// At most `max` calls in flight at once.
    pub fn with_max(max: usize) -> Calls {
        Calls {
            max,
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            cancel: CancellationToken::new(),
            cancelled: AtomicBool::new(false),
        }
    }

    /// Admits a new call, unless the server is draining or has `max` calls in flight.
    pub fn enter(self: &Arc<Self>) -> Result<CallGuard, Status> {
        if self.draining.load(Ordering::Acquire) {
            return Err(status::draining());
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.release();
            return Err(Status::resource_exhausted(format!(
                "Invoker: too many calls in flight ({}, --max-calls); retry later",
                self.max
            )));
        }
        Ok(CallGuard {
            calls: self.clone(),
            connection: None,
        })
    }

    /// Admits a new call from its request: refused while draining, with a malformed
    /// `grpc-timeout` (INVALID_ARGUMENT) or one already past (DEADLINE_EXCEEDED), so nothing
    /// of the function runs for it. Returns its guard and its meta; the call keeps its
    /// connection from counting as idle.
    pub fn admit<T>(
        self: &Arc<Self>,
        request: &tonic::Request<T>,
    ) -> Result<(CallGuard, CallMeta), Status> {
        let mut guard = self.enter()?;
        let meta = call_meta(request)?;
        guard.connection = request
            .extensions()
            .get::<ConnInfo>()
            .map(ConnInfo::call_started);
        Ok((guard, meta))
    }

    /// The number of calls in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Whether the server is draining (after SIGTERM).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// One call fewer in flight.
    fn release(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Refuses new calls from now on.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Cancels every call still in flight: each ends with UNAVAILABLE (the grace is over).
    fn cancel_all(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.cancel.cancel();
    }

    /// The drain's wait, once new calls are refused: the calls in flight run on for at most
    /// `grace`; those still running then are cancelled (each ends with UNAVAILABLE), and this
    /// returns when they have ended.
    pub(crate) async fn run_out(&self, grace: Duration) {
        if tokio::time::timeout(grace, self.idle()).await.is_err() {
            tracing::warn!(
                in_flight = self.in_flight(),
                grace_seconds = grace.as_secs_f64(),
                "drain grace period over: cancelling the calls still in flight"
            );
            self.cancel_all();
            self.idle().await;
        }
    }

    /// Completes when no call is in flight.
    pub(crate) async fn idle(&self) {
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
    /// Keeps the call's connection from counting as idle.
    connection: Option<ActiveCall>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.calls.release();
    }
}

impl CallGuard {
    /// Wraps a call's response stream: counted in flight until it ends or is dropped; ended
    /// with DEADLINE_EXCEEDED when the call's deadline passes, and with UNAVAILABLE if the
    /// drain's grace period runs out first. Either way the function's stream is dropped then.
    pub fn wrap<S, T>(
        self,
        inner: S,
        meta: &CallMeta,
        stats: Arc<Stats>,
    ) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>
    where
        S: Stream<Item = Result<T, Status>> + Send + 'static,
        T: Send + 'static,
    {
        stats.call_started();
        Box::pin(Drainable {
            cancelled: Box::pin(self.calls.cancel.clone().cancelled_owned()),
            deadline: meta
                .deadline()
                .map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
            meta: meta.clone(),
            inner: Some(Box::pin(inner)),
            guard: Some(self),
            started: Instant::now(),
            stats,
        })
    }
}

/// The `CallMeta` of a request: a fresh id, and the deadline its `grpc-timeout` sets. A
/// malformed `grpc-timeout` is INVALID_ARGUMENT; a zero one has passed already:
/// DEADLINE_EXCEEDED.
pub fn call_meta<T>(request: &tonic::Request<T>) -> Result<CallMeta, Status> {
    let Some(value) = request.metadata().get("grpc-timeout") else {
        return Ok(CallMeta::new(None));
    };
    let timeout = value
        .to_str()
        .ok()
        .and_then(parse_grpc_timeout)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "Invoker: malformed grpc-timeout {:?}: at most 8 digits and a unit (H, M, S, m, u, n)",
                String::from_utf8_lossy(value.as_bytes())
            ))
        })?;
    if timeout.is_zero() {
        return Err(status::deadline_exceeded_before_start());
    }
    Ok(CallMeta::new(Some(timeout)))
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

struct Drainable<S> {
    inner: Option<Pin<Box<S>>>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The call: cancelling it is what the function's `Context` sees.
    meta: CallMeta,
    guard: Option<CallGuard>,
    started: Instant,
    stats: Arc<Stats>,
}

impl<S, T> Stream for Drainable<S>
where
    S: Stream<Item = Result<T, Status>>,
{
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(guard) = &this.guard else {
            return Poll::Ready(None);
        };
        if guard.calls.cancelled.load(Ordering::Acquire) {
            return this.end(Some(status::grace_over()));
        }
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return this.end(Some(status::deadline_exceeded()));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = inner.as_mut().poll_next(cx);
        match polled {
            Poll::Ready(None) => return this.end(None),
            // Only a call that waits needs waking for cancellation: a busy one sees the flag.
            Poll::Pending if this.cancelled.as_mut().poll(cx).is_ready() => {
                return this.end(Some(status::grace_over()));
            }
            _ => {}
        }
        polled
    }
}

impl<S> Drainable<S> {
    /// Ends the call: drops the function's stream (releasing it now), counts the call done.
    fn end<T>(&mut self, status: Option<Status>) -> Poll<Option<Result<T, Status>>> {
        if status.is_some() {
            self.meta.cancel();
        }
        self.inner = None;
        if self.guard.take().is_some() {
            self.stats.call_finished(self.started.elapsed());
        }
        if let Some(status) = &status
            && tracing::enabled!(tracing::Level::DEBUG)
        {
            let _in_call = self.meta.span().enter();
            tracing::debug!(code = ?status.code(), "call ended: {}", status.message());
        }
        Poll::Ready(status.map(Err))
    }
}

impl<S> Drop for Drainable<S> {
    fn drop(&mut self) {
        if self.guard.take().is_some() {
            // The caller went away (cancelled) before the call ended.
            self.meta.cancel();
            self.inner = None;
            self.stats.call_finished(self.started.elapsed());
        }
    }
}
