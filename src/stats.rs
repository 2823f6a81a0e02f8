//! What the invoker counts: messages in and out, the function's errors and panics, call
//! durations, the last errors, and the function's custom metrics. The admin service's status
//! reads them (like Pulsar's instance status), and `/metrics` renders them as Prometheus text.
//!
//! Per message this costs one relaxed atomic add; per call, one histogram observation. Errors
//! and custom metrics, which are rare, take a lock. At most [`MAX_CUSTOM_METRICS`] custom metric
//! names are kept.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::function::worker::WorkerStats;
use crate::function::{FunctionError, MetricSink};
use crate::sync::lock;

/// How many errors the status keeps.
pub const RECENT_ERRORS: usize = 10;

/// How many distinct custom metric names are kept. Each name is a time series in `/metrics`
/// and an entry in the status, for the life of the process: past this, a metric with a new
/// name is dropped (with one warning); the names already kept go on counting.
pub const MAX_CUSTOM_METRICS: usize = 1_000;

/// An error the function returned (or a panic), with when it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedError {
    /// When, in milliseconds since the Unix epoch.
    pub unix_millis: u64,
    /// The error's text.
    pub message: String,
}

/// Custom metrics are running sums of what the function added: counters, so a rate over
/// them is meaningful and a scraper does not mistake them for levels.
type CustomFamily = Family<Vec<(String, String)>, Counter<f64, AtomicU64>>;

/// The counters of one invoker process, across reloads of the function.
#[derive(Debug)]
pub struct Stats {
    registry: Registry,
    received: Counter,
    sent: Counter,
    user_errors: Counter,
    panics: Counter,
    crashes: Counter,
    calls: Counter,
    reloads: Counter,
    in_flight: Gauge,
    running: Gauge,
    queued: Gauge,
    rejected: Counter,
    /// The function threads' bounds (running, waiting), for the status.
    limits: Mutex<(usize, usize)>,
    generation: Gauge,
    durations: Histogram,
    /// For the average call duration: total nanoseconds, and calls finished.
    duration_nanos: AtomicU64,
    finished: AtomicU64,
    recent: Mutex<VecDeque<RecordedError>>,
    custom: CustomFamily,
    custom_values: Mutex<BTreeMap<String, f64>>,
    /// Whether a metric was dropped for [`MAX_CUSTOM_METRICS`] (and the warning logged).
    custom_capped: AtomicBool,
    /// With `--isolation process`: the worker processes' counters (see [`Stats::watch_workers`]).
    workers: WorkersCollector,
}

/// Renders the worker processes' counters at each scrape, from what their monitor published.
#[derive(Debug, Clone, Default)]
struct WorkersCollector(Arc<Mutex<Option<tokio::sync::watch::Receiver<WorkerStats>>>>);

impl WorkersCollector {
    fn get(&self) -> Option<WorkerStats> {
        lock(&self.0).as_ref().map(|rx| rx.borrow().clone())
    }
}

impl Collector for WorkersCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(workers) = self.get() else {
            return Ok(());
        };
        let gauge = |encoder: &mut DescriptorEncoder, name, help, value: usize| {
            let metric = ConstGauge::new(value as i64);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
        };
        gauge(
            &mut encoder,
            "workers",
            "Worker processes configured (--workers), with --isolation process",
            workers.workers,
        )?;
        gauge(
            &mut encoder,
            "workers_up",
            "Worker processes up and serving, with --isolation process",
            workers.up,
        )?;
        for (name, help, value) in [
            (
                "worker_restarts",
                "Worker processes restarted after one died",
                workers.restarts,
            ),
            (
                "worker_crashes",
                "Worker processes that died while serving (abort, signal, exit, memory limit)",
                workers.crashes,
            ),
        ] {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        Ok(())
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

/// One call's count of something counted per message. Adding to a shared counter per message
/// bounces its cache line between the cores serving busy streams; this adds to it every
/// [`CallCount::BATCH`] messages and when the call ends (when it is dropped), so status and
/// `/metrics` lag a busy stream by fewer than that many messages.
#[derive(Debug)]
pub struct CallCount {
    shared: Counter,
    pending: u64,
}

impl CallCount {
    /// Messages counted locally before they are added to the shared counter.
    pub const BATCH: u64 = 64;

    fn new(shared: Counter) -> CallCount {
        CallCount { shared, pending: 0 }
    }

    /// Counts one message.
    pub fn inc(&mut self) {
        self.pending += 1;
        if self.pending == Self::BATCH {
            self.shared.inc_by(Self::BATCH);
            self.pending = 0;
        }
    }
}

impl Drop for CallCount {
    fn drop(&mut self) {
        if self.pending > 0 {
            self.shared.inc_by(self.pending);
        }
    }
}

/// A snapshot of the counters, for the admin status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Messages received, over every call.
    pub received: u64,
    /// Messages sent.
    pub sent: u64,
    /// Errors the function returned (including inputs it could not decode).
    pub user_errors: u64,
    /// Panics in the function.
    pub panics: u64,
    /// Calls that failed because the worker process running them died (`--isolation
    /// process`): counted apart from the function's errors and panics.
    pub crashes: u64,
    /// With `--isolation process`: the worker processes.
    pub workers: Option<WorkerStats>,
    /// Calls started.
    pub calls: u64,
    /// Request/reply calls running in the function now.
    pub running: u64,
    /// Request/reply calls waiting for a function thread now.
    pub queued: u64,
    /// Calls refused because the function threads and their queue were full.
    pub rejected: u64,
    /// How many calls may run in the function at once, and wait for it.
    pub limits: (usize, usize),
    /// The average duration of a finished call.
    pub average_call: Duration,
    /// The last errors, oldest first.
    pub recent_errors: Vec<RecordedError>,
    /// The function's custom metrics.
    pub custom: BTreeMap<String, f64>,
}

impl Stats {
    /// Fresh counters, registered for `/metrics`.
    pub fn new() -> Stats {
        let mut registry = Registry::with_prefix("invoker");
        let received = Counter::default();
        let sent = Counter::default();
        let user_errors = Counter::default();
        let panics = Counter::default();
        let crashes = Counter::default();
        let calls = Counter::default();
        let reloads = Counter::default();
        let in_flight = Gauge::default();
        let running = Gauge::default();
        let queued = Gauge::default();
        let rejected = Counter::default();
        let generation = Gauge::default();
        // 50 µs to ~6.5 s.
        let durations = Histogram::new(exponential_buckets(0.00005, 4.0, 9));
        let custom = CustomFamily::default();
        registry.register(
            "messages_received",
            "Messages received by the function, over every call",
            received.clone(),
        );
        registry.register("messages_sent", "Messages the function sent", sent.clone());
        registry.register(
            "function_errors",
            "Errors the function returned, including inputs it could not decode",
            user_errors.clone(),
        );
        registry.register("function_panics", "Panics in the function", panics.clone());
        registry.register(
            "function_crashes",
            "Calls failed because the worker process running them died (--isolation process)",
            crashes.clone(),
        );
        let workers = WorkersCollector::default();
        registry.register_collector(Box::new(workers.clone()));
        registry.register("calls", "Calls started", calls.clone());
        registry.register(
            "reloads",
            "Times the function was replaced while running",
            reloads.clone(),
        );
        registry.register("calls_in_flight", "Calls in flight", in_flight.clone());
        registry.register(
            "calls_running",
            "Request/reply calls running in the function (on a function thread)",
            running.clone(),
        );
        registry.register(
            "calls_queued",
            "Request/reply calls waiting for a function thread",
            queued.clone(),
        );
        registry.register(
            "calls_rejected",
            "Calls refused with RESOURCE_EXHAUSTED: the function threads and their queue were full",
            rejected.clone(),
        );
        registry.register(
            "function_generation",
            "Which load of the function serves new calls (1 at start, +1 per reload)",
            generation.clone(),
        );
        registry.register(
            "call_duration_seconds",
            "Duration of finished calls",
            durations.clone(),
        );
        registry.register(
            "function_metric",
            "Custom metrics the function recorded (the sum of the values it added)",
            custom.clone(),
        );
        Stats {
            registry,
            received,
            sent,
            user_errors,
            panics,
            crashes,
            calls,
            reloads,
            in_flight,
            running,
            queued,
            rejected,
            limits: Mutex::new((0, 0)),
            generation,
            durations,
            duration_nanos: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_ERRORS)),
            custom,
            custom_values: Mutex::new(BTreeMap::new()),
            custom_capped: AtomicBool::new(false),
            workers,
        }
    }

    /// With `--isolation process`: the worker processes' counters, as their monitor publishes
    /// them, for the status and `/metrics`.
    pub fn watch_workers(&self, workers: tokio::sync::watch::Receiver<WorkerStats>) {
        *lock(&self.workers.0) = Some(workers);
    }

    /// A call's count of messages received, added to the shared counter in batches.
    pub fn received_by_call(&self) -> CallCount {
        CallCount::new(self.received.clone())
    }

    /// A call's count of messages sent, added to the shared counter in batches.
    pub fn sent_by_call(&self) -> CallCount {
        CallCount::new(self.sent.clone())
    }

    /// A call started.
    pub fn call_started(&self) {
        self.calls.inc();
        self.in_flight.inc();
    }

    /// A call ended after `took`.
    pub fn call_finished(&self, took: Duration) {
        self.in_flight.dec();
        self.durations.observe(took.as_secs_f64());
        self.duration_nanos.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// How many calls may run in the function at once, and wait for it.
    pub fn set_call_limits(&self, max_running: usize, max_queued: usize) {
        *lock(&self.limits) = (max_running, max_queued);
    }

    /// Request/reply calls running in the function now.
    pub fn set_calls_running(&self, n: usize) {
        self.running.set(n as i64);
    }

    /// Request/reply calls waiting for a function thread now.
    pub fn set_calls_queued(&self, n: usize) {
        self.queued.set(n as i64);
    }

    /// A call was refused: the function threads and their queue were full.
    pub fn call_rejected(&self) {
        self.rejected.inc();
    }

    /// The function failed: counts it and keeps its text among the recent errors.
    pub fn function_failed(&self, error: &FunctionError) {
        match error {
            FunctionError::Panicked(_) => self.panics.inc(),
            FunctionError::Crashed(_) => self.crashes.inc(),
            FunctionError::Failed(_) | FunctionError::BadInput(_) | FunctionError::Abi(_) => {
                self.user_errors.inc()
            }
        };
        let unix_millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut recent = lock(&self.recent);
        if recent.len() == RECENT_ERRORS {
            recent.pop_front();
        }
        recent.push_back(RecordedError {
            unix_millis,
            message: error.to_string(),
        });
    }

    /// The function was replaced; `generation` now serves new calls.
    pub fn reloaded(&self, generation: u64) {
        self.reloads.inc();
        self.set_generation(generation);
    }

    /// Which load of the function serves new calls.
    pub fn set_generation(&self, generation: u64) {
        self.generation.set(generation as i64);
    }

    /// The function added `value` to its custom metric `name`. A new name beyond
    /// [`MAX_CUSTOM_METRICS`] is dropped, and so is a negative or non-finite value: the metric
    /// is a counter, which only goes up.
    pub fn custom_metric(&self, name: &str, value: f64) {
        if !value.is_finite() || value < 0.0 {
            tracing::debug!(
                metric = name,
                value,
                "ignoring a negative or non-finite custom metric value"
            );
            return;
        }
        // The names kept are those in `custom_values`; the lock keeps `custom` to the same.
        let mut values = lock(&self.custom_values);
        if let Some(total) = values.get_mut(name) {
            *total += value;
        } else if values.len() < MAX_CUSTOM_METRICS {
            values.insert(name.to_owned(), value);
        } else {
            if !self.custom_capped.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    metric = name,
                    "the function recorded more than {MAX_CUSTOM_METRICS} custom metric names: metrics with new names are dropped"
                );
            }
            return;
        }
        self.custom
            .get_or_create(&vec![("name".to_owned(), name.to_owned())])
            .inc_by(value);
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let finished = self.finished.load(Ordering::Relaxed);
        let nanos = self.duration_nanos.load(Ordering::Relaxed);
        Snapshot {
            received: self.received.get(),
            sent: self.sent.get(),
            user_errors: self.user_errors.get(),
            panics: self.panics.get(),
            crashes: self.crashes.get(),
            workers: self.workers.get(),
            calls: self.calls.get(),
            running: self.running.get().max(0) as u64,
            queued: self.queued.get().max(0) as u64,
            rejected: self.rejected.get(),
            limits: *lock(&self.limits),
            average_call: Duration::from_nanos(nanos.checked_div(finished).unwrap_or(0)),
            recent_errors: lock(&self.recent).iter().cloned().collect(),
            custom: lock(&self.custom_values).clone(),
        }
    }

    /// Every metric as Prometheus text exposition.
    pub fn prometheus_text(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

impl MetricSink for Stats {
    fn custom_metric(&self, name: &str, value: f64) {
        Stats::custom_metric(self, name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let stats = Stats::new();
        stats.call_started();
        let (mut received, mut sent) = (stats.received_by_call(), stats.sent_by_call());
        received.inc();
        received.inc();
        sent.inc();
        // A call's counts reach the shared counters in batches, and when the call ends.
        assert_eq!(stats.snapshot().received, 0);
        drop((received, sent));
        stats.function_failed(&FunctionError::Failed("no".into()));
        stats.function_failed(&FunctionError::Panicked("boom".into()));
        stats.custom_metric("words", 2.0);
        stats.custom_metric("words", 3.0);
        stats.call_finished(Duration::from_millis(4));
        let snapshot = stats.snapshot();
        assert_eq!((snapshot.received, snapshot.sent), (2, 1));
        assert_eq!((snapshot.user_errors, snapshot.panics), (1, 1));
        assert_eq!(snapshot.average_call, Duration::from_millis(4));
        assert_eq!(snapshot.recent_errors.len(), 2);
        assert_eq!(snapshot.recent_errors[0].message, "no");
        assert_eq!(snapshot.custom.get("words"), Some(&5.0));
        let text = stats.prometheus_text();
        assert!(text.contains("invoker_messages_received_total 2"), "{text}");
        assert!(
            text.contains("invoker_function_metric_total{name=\"words\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE invoker_function_metric counter\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        let mut busy = stats.received_by_call();
        for _ in 0..CallCount::BATCH {
            busy.inc();
        }
        assert_eq!(
            stats.snapshot().received,
            2 + CallCount::BATCH,
            "a full batch is added"
        );
    }

    #[test]
    fn a_custom_metric_only_goes_up() {
        let stats = Stats::new();
        stats.custom_metric("stock", 4.0);
        stats.custom_metric("stock", -1.0);
        stats.custom_metric("stock", f64::NAN);
        stats.custom_metric("gone", -1.0);
        let custom = stats.snapshot().custom;
        assert_eq!(custom.get("stock"), Some(&4.0));
        assert_eq!(custom.get("gone"), None, "a negative value makes no name");
        let text = stats.prometheus_text();
        assert!(
            text.contains("invoker_function_metric_total{name=\"stock\"} 4"),
            "{text}"
        );
    }

    #[test]
    fn keeps_a_bounded_number_of_custom_metric_names() {
        let stats = Stats::new();
        for i in 0..MAX_CUSTOM_METRICS + 5 {
            stats.custom_metric(&format!("m{i}"), 1.0);
        }
        stats.custom_metric("m0", 1.0);
        stats.custom_metric(&format!("m{MAX_CUSTOM_METRICS}"), 1.0);
        let custom = stats.snapshot().custom;
        assert_eq!(custom.len(), MAX_CUSTOM_METRICS);
        assert_eq!(custom.get("m0"), Some(&2.0), "a kept name goes on counting");
        assert_eq!(custom.get(&format!("m{MAX_CUSTOM_METRICS}")), None);
        let text = stats.prometheus_text();
        assert_eq!(
            text.matches("invoker_function_metric_total{").count(),
            MAX_CUSTOM_METRICS
        );
    }

    #[test]
    fn keeps_only_the_last_errors() {
        let stats = Stats::new();
        for i in 0..RECENT_ERRORS + 3 {
            stats.function_failed(&FunctionError::Failed(format!("e{i}")));
        }
        let recent = stats.snapshot().recent_errors;
        assert_eq!(recent.len(), RECENT_ERRORS);
        assert_eq!(recent[0].message, "e3");
    }
}
