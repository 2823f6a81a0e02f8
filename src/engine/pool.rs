//! The function threads: where request/reply calls run, never on the async workers.
//!
//! A request/reply function may block (sleep, wait for a socket, spin): on an async worker it
//! would stall every connection, health check and signal that worker serves (and the task in
//! tokio's LIFO slot, which no other worker can steal). So every call runs on a thread of this
//! pool, and the async side only awaits its result.
//!
//! The pool is bounded: at most `max_running` calls run at once (a thread each, made on demand
//! and kept while busy, ended after [`IDLE_KEEP`] without work), at most `max_queued` wait for
//! a thread, and a call past both is refused at once with RESOURCE_EXHAUSTED. A call whose
//! caller gave up (cancelled, or past its deadline) while it waited is not started.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tonic::Status;

use crate::function::CallMeta;
use crate::stats::Stats;

/// How long a thread without work waits for more before it ends.
pub const IDLE_KEEP: Duration = Duration::from_secs(30);

/// A call to run on a function thread.
#[allow(clippy::type_complexity)]
struct Job {
    /// Whether the caller is still waiting for it.
    meta: CallMeta,
    run: Box<dyn FnOnce() + Send>,
}

/// The bounds of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Calls running in the function at once (one thread each).
    pub max_running: usize,
    /// Calls waiting for a thread.
    pub max_queued: usize,
}

impl Limits {
    /// The defaults: 16 running calls per CPU (a request/reply function that waits on I/O
    /// needs threads, not cores) and 4 waiting per running one.
    pub fn default_for_this_machine() -> Limits {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Limits::with_max_running(16 * cpus)
    }

    /// The bounds `--max-concurrency` and `--max-queued` set (the defaults where unset).
    pub fn from_args(args: &crate::cli::LimitArgs) -> Limits {
        let mut limits = match args.max_concurrency {
            Some(n) => Limits::with_max_running(n as usize),
            None => Limits::default_for_this_machine(),
        };
        if let Some(queued) = args.max_queued {
            limits.max_queued = queued as usize;
        }
        limits
    }

    /// `max_running` running, and 4 waiting per running one.
    pub fn with_max_running(max_running: usize) -> Limits {
        let max_running = max_running.max(1);
        Limits {
            max_running,
            max_queued: 4 * max_running,
        }
    }
}

/// The function threads.
#[derive(Debug)]
pub struct Pool {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    work: Condvar,
    limits: Limits,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Threads alive, threads running a call, threads waiting for work.
    threads: usize,
    busy: usize,
    idle: usize,
    /// Calls running inline on an async worker (see `engine::Blocking`): they count against
    /// `max_running` like threads.
    inline: usize,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("queued", &self.queue.len())
            .field("threads", &self.threads)
            .field("busy", &self.busy)
            .field("idle", &self.idle)
            .finish()
    }
}

impl Pool {
    /// An empty pool (threads are made as calls come) reporting to `stats`.
    pub fn new(limits: Limits, stats: Arc<Stats>) -> Pool {
        stats.set_call_limits(limits.max_running, limits.max_queued);
        Pool {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                work: Condvar::new(),
                limits,
                stats,
            }),
        }
    }

    /// Runs `run` for the call `meta` on a function thread: an idle one, a new one, or the
    /// next one free. Refused with RESOURCE_EXHAUSTED when the pool is running and queueing
    /// all it may. A waiting call whose caller gave up (`meta` cancelled) is dropped from the
    /// queue at the next submit, so abandoned calls do not hold places in it.
    pub fn submit(&self, meta: CallMeta, run: Box<dyn FnOnce() + Send>) -> Result<(), Status> {
        let job = Job { meta, run };
        let shared = &self.shared;
        let mut state = shared.lock();
        if !state.queue.is_empty() {
            state.queue.retain(|job| !job.meta.is_cancelled());
        }
        // Each queued job is claimed by an idle thread, or waits for a place: the running calls
        // (threads busy, calls inline, jobs claimed) stay within `max_running`.
        let places = state.busy + state.inline + state.queue.len() < shared.limits.max_running;
        if places && state.idle > state.queue.len() {
            state.queue.push_back(job);
            shared.report(&state);
            drop(state);
            shared.work.notify_one();
            return Ok(());
        }
        if state.threads + state.inline < shared.limits.max_running {
            return shared.spawn(state, job).map_err(|e| {
                Status::resource_exhausted(format!(
                    "Invoker: cannot start a thread for the call: {e}"
                ))
            });
        }
        if state.queue.len() < shared.limits.max_queued {
            state.queue.push_back(job);
            shared.report(&state);
            return Ok(());
        }
        let (running, queued) = (state.busy + state.inline, state.queue.len());
        drop(state);
        shared.stats.call_rejected();
        Err(Status::resource_exhausted(format!(
            "Invoker: too many calls: {running} running and {queued} waiting (--max-concurrency {}); retry later",
            shared.limits.max_running
        )))
    }
}

/// A place under `max_running` held by a call running inline, until dropped.
#[derive(Debug)]
pub struct Inline<'a>(&'a Arc<Shared>);

impl Drop for Inline<'_> {
    /// Gives the place back: to the first waiting call, if any.
    fn drop(&mut self) {
        let shared = self.0;
        let mut state = shared.lock();
        state.inline -= 1;
        shared.report(&state);
        if state.queue.is_empty() {
            return;
        }
        if state.idle > 0 {
            drop(state);
            shared.work.notify_one();
        } else if state.threads + state.inline < shared.limits.max_running
            && let Some(job) = state.queue.pop_front()
            && let Err(e) = shared.spawn(state, job)
        {
            tracing::error!("cannot start a function thread: {e}");
        }
    }
}

impl Pool {
    /// A place for a call to run inline, if one is free and no call is waiting for a thread.
    pub fn try_inline(&self) -> Option<Inline<'_>> {
        let mut state = self.shared.lock();
        if !state.queue.is_empty() || state.busy + state.inline >= self.shared.limits.max_running {
            return None;
        }
        state.inline += 1;
        self.shared.report(&state);
        Some(Inline(&self.shared))
    }
}

impl Shared {
    /// Starts a thread for `job` (the caller checked there is a place for it).
    fn spawn(self: &Arc<Self>, mut state: MutexGuard<'_, State>, job: Job) -> std::io::Result<()> {
        state.threads += 1;
        state.busy += 1;
        self.report(&state);
        drop(state);
        let worker = self.clone();
        let spawned = std::thread::Builder::new()
            .name("invoker-function".into())
            .spawn(move || worker.run(job));
        if let Err(e) = spawned {
            let mut state = self.lock();
            state.threads -= 1;
            state.busy -= 1;
            self.report(&state);
            return Err(e);
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A job never runs under the lock, so no panic can poison it; recover all the same.
        crate::sync::lock(&self.state)
    }

    fn report(&self, state: &State) {
        self.stats.set_calls_running(state.busy + state.inline);
        self.stats.set_calls_queued(state.queue.len());
    }

    /// A function thread: runs `job`, then whatever is queued, until idle for [`IDLE_KEEP`].
    fn run(&self, mut job: Job) {
        loop {
            // The job catches the function's panics itself; a panic here would be the host's.
            (job.run)();
            let mut state = self.lock();
            state.busy -= 1;
            loop {
                // A woken thread takes a job only if there is a place for it.
                if state.busy + state.inline < self.limits.max_running
                    && let Some(next) = state.queue.pop_front()
                {
                    state.busy += 1;
                    self.report(&state);
                    job = next;
                    break;
                }
                self.report(&state);
                state.idle += 1;
                let (woken, waited) = self
                    .work
                    .wait_timeout(state, IDLE_KEEP)
                    .unwrap_or_else(|p| p.into_inner());
                state = woken;
                state.idle -= 1;
                if waited.timed_out() && state.queue.is_empty() {
                    state.threads -= 1;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn runs_queues_and_refuses_past_its_bounds() {
        let stats = Arc::new(Stats::new());
        let pool = Pool::new(
            Limits {
                max_running: 2,
                max_queued: 1,
            },
            stats.clone(),
        );
        let (release, blocked) = mpsc::channel::<()>();
        let blocked = Arc::new(Mutex::new(blocked));
        let (done, finished) = mpsc::channel::<usize>();
        for i in 0..3 {
            let (blocked, done) = (blocked.clone(), done.clone());
            pool.submit(
                CallMeta::default(),
                Box::new(move || {
                    let _ = blocked.lock().unwrap().recv();
                    done.send(i).unwrap();
                }),
            )
            .unwrap();
        }
        let refused = pool
            .submit(CallMeta::default(), Box::new(|| {}))
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("1 waiting"),
            "{}",
            refused.message()
        );
        for _ in 0..3 {
            release.send(()).unwrap();
        }
        let mut ran: Vec<usize> = (0..3).map(|_| finished.recv().unwrap()).collect();
        ran.sort();
        assert_eq!(ran, [0, 1, 2]);
        assert_eq!(stats.snapshot().rejected, 1);
    }

    #[test]
    fn a_waiting_call_whose_caller_gave_up_leaves_the_queue() {
        let pool = Pool::new(
            Limits {
                max_running: 1,
                max_queued: 1,
            },
            Arc::new(Stats::new()),
        );
        let (release, blocked) = mpsc::channel::<()>();
        pool.submit(
            CallMeta::default(),
            Box::new(move || {
                let _ = blocked.recv();
            }),
        )
        .unwrap();
        let abandoned = CallMeta::default();
        let (ran, _ran) = mpsc::channel::<()>();
        pool.submit(abandoned.clone(), Box::new(move || ran.send(()).unwrap()))
            .unwrap();
        assert!(pool.submit(CallMeta::default(), Box::new(|| {})).is_err());
        abandoned.cancel();
        let (ran, waited) = mpsc::channel::<()>();
        pool.submit(CallMeta::default(), Box::new(move || ran.send(()).unwrap()))
            .unwrap();
        release.send(()).unwrap();
        waited.recv().unwrap();
    }

    #[test]
    fn a_call_waiting_behind_an_inline_call_runs_when_it_ends() {
        let pool = Pool::new(
            Limits {
                max_running: 1,
                max_queued: 1,
            },
            Arc::new(Stats::new()),
        );
        let inline = pool.try_inline().expect("a free place");
        assert!(pool.try_inline().is_none(), "one place, taken");
        let (ran, waited) = mpsc::channel::<()>();
        pool.submit(CallMeta::default(), Box::new(move || ran.send(()).unwrap()))
            .unwrap();
        assert!(
            waited.recv_timeout(Duration::from_millis(50)).is_err(),
            "no place while the inline call runs"
        );
        drop(inline);
        waited
            .recv_timeout(Duration::from_secs(60))
            .expect("the waiting call never ran");
    }
}
