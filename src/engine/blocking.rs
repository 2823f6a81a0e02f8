//! Where request/reply calls run: inline on an async worker, or on a function thread.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// Whether the runtime runs without tokio's LIFO slot (built with `--cfg tokio_unstable`, as
/// `.cargo/config.toml` sets): a task in a worker's LIFO slot cannot be stolen by another
/// worker, so a call blocking inline would stall it. Built without it, no call runs inline.
pub const INLINE_IS_SAFE: bool = cfg!(tokio_unstable);

/// The async runtime of the server: one worker more than the machine has CPUs (a call blocked
/// inline holds one), without tokio's LIFO slot where the build allows (see
/// [`INLINE_IS_SAFE`]).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(cpus + 1).enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

/// Whether a request/reply function's calls may run inline on an async worker thread.
///
/// Calling a function inline costs nothing, while handing the call to a function thread costs
/// two thread wake-ups (a third of the server's CPU per call for a fast function, see
/// BENCHMARKS.md); but only a function thread keeps a blocking function from holding a worker.
/// So calls go to the function threads until [`Blocking::FAST_CALLS`] calls in a row each
/// took less than [`Blocking::THRESHOLD`]; then they run inline, until
/// [`Blocking::SLOW_CALLS`] calls within [`Blocking::FAST_CALLS`] take longer, which sends the
/// function back to the threads for the next streak. One slow call alone does not: on a busy
/// machine a thread preempted by the OS mid-call looks slow too. A function that blocks often
/// never earns a streak; one that is fast for a long time and then blocks holds one worker for
/// two of its calls.
///
/// Inline calls are safe for the rest of the server only because the runtime runs without
/// tokio's LIFO slot ([`INLINE_IS_SAFE`]): every task queued on a worker held by a blocked call
/// can be stolen by the others, and the runtime has a worker more than the machine has CPUs.
/// At most one call runs inline at a time (others meanwhile go to the threads), none does when
/// the runtime has a single worker, and an inline call holds a place under
/// `--max-concurrency` like any other.
#[derive(Debug, Default)]
pub struct Blocking {
    fast_calls: AtomicU32,
    /// Slow calls since the window began, and calls in the window, while inline.
    slow_in_window: AtomicU32,
    window: AtomicU32,
    /// Set while a call runs inline.
    inline_busy: AtomicBool,
    /// Set once the function has been seen to block, for a single info log.
    seen_blocking: AtomicBool,
}

/// Clears [`Blocking::inline_busy`] when the inline call is over.
pub(crate) struct InlineCall<'a>(&'a Blocking);

impl Drop for InlineCall<'_> {
    fn drop(&mut self) {
        self.0.inline_busy.store(false, Ordering::Release);
    }
}

impl Blocking {
    /// A call at least this long counts as blocking.
    pub const THRESHOLD: Duration = Duration::from_millis(1);
    /// How many fast calls in a row let a function run inline (and the window, in calls, in
    /// which slow calls are counted).
    pub const FAST_CALLS: u32 = 64;
    /// How many slow calls within the window send an inline function back to the pool.
    pub const SLOW_CALLS: u32 = 2;

    /// Whether the next call may run inline; if so, the returned guard marks it running.
    pub(crate) fn try_inline(&self) -> Option<InlineCall<'_>> {
        if !INLINE_IS_SAFE
            || self.fast_calls.load(Ordering::Relaxed) < Self::FAST_CALLS
            || self.inline_busy.swap(true, Ordering::Acquire)
        {
            return None;
        }
        let call = InlineCall(self);
        let workers = tokio::runtime::Handle::try_current()
            .map_or(1, |handle| handle.metrics().num_workers());
        (workers > 1).then_some(call)
    }

    /// Records a call's duration; true when this is the first call seen to block.
    pub(crate) fn record(&self, took: Duration, inline: bool) -> bool {
        if inline && self.window.fetch_add(1, Ordering::Relaxed) + 1 >= Self::FAST_CALLS {
            self.window.store(0, Ordering::Relaxed);
            self.slow_in_window.store(0, Ordering::Relaxed);
        }
        if took >= Self::THRESHOLD {
            let back_to_pool = !inline
                || self.slow_in_window.fetch_add(1, Ordering::Relaxed) + 1 >= Self::SLOW_CALLS;
            if back_to_pool {
                self.fast_calls.store(0, Ordering::Relaxed);
                self.slow_in_window.store(0, Ordering::Relaxed);
                return !self.seen_blocking.swap(true, Ordering::Relaxed);
            }
            return false;
        }
        if self.fast_calls.load(Ordering::Relaxed) < Self::FAST_CALLS {
            self.fast_calls.fetch_add(1, Ordering::Relaxed);
        }
        false
    }
}
