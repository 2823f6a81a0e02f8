//! Timers that work without an async runtime in the library.
//!
//! A function library has no tokio of its own; these timers run on a helper thread and wake
//! the invoker's tasks through the waker that crosses the library boundary. A stream is polled
//! on the invoker's async workers and must not block: wait with these, never with
//! `std::thread::sleep`.

use std::time::Duration;

use futures_util::{Stream, stream};

/// Completes after `duration`.
pub async fn sleep(duration: Duration) {
    futures_timer::Delay::new(duration).await
}

/// Yields `()` immediately, then once every `period`, forever.
pub fn interval(period: Duration) -> impl Stream<Item = ()> + Send + 'static {
    stream::unfold(true, move |first| async move {
        if !first {
            futures_timer::Delay::new(period).await;
        }
        Some(((), false))
    })
}
