//! Splitting one stream into several: the building block of functions with several outputs.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_util::Stream;

struct Shared<S: Stream, F> {
    input: Pin<Box<S>>,
    route: F,
    queues: [VecDeque<S::Item>; 2],
    wakers: [Option<Waker>; 2],
    dropped: [bool; 2],
    ended: bool,
}

/// One side of a [`partition`].
pub struct Side<S: Stream, F> {
    shared: Arc<Mutex<Shared<S, F>>>,
    side: usize,
}

/// Splits `input` in two: items for which `pred` holds go to the first stream, the others to
/// the second. Each side yields its items in order and ends when the input ends; each side may
/// be consumed at its own pace (items wait in the other side's queue, so consume both, or drop
/// the one you do not need: a dropped side's items are discarded).
///
/// ```
/// use invoker_sdk::{Input, fan_out::partition, stream::Stream};
///
/// #[invoker_sdk::function]
/// fn signs(numbers: Input<i64>) -> (impl Stream<Item = i64>, impl Stream<Item = i64>) {
///     partition(numbers, |n: &i64| *n >= 0)
/// }
/// ```
pub fn partition<S, F>(input: S, pred: F) -> (Side<S, F>, Side<S, F>)
where
    S: Stream,
    F: FnMut(&S::Item) -> bool,
{
    let shared = Arc::new(Mutex::new(Shared {
        input: Box::pin(input),
        route: pred,
        queues: [VecDeque::new(), VecDeque::new()],
        wakers: [None, None],
        dropped: [false, false],
        ended: false,
    }));
    (
        Side {
            shared: shared.clone(),
            side: 0,
        },
        Side { shared, side: 1 },
    )
}

impl<S, F> Stream for Side<S, F>
where
    S: Stream,
    F: FnMut(&S::Item) -> bool,
{
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let side = self.side;
        let Ok(mut shared) = self.shared.lock() else {
            // Poisoned: the other side panicked mid-poll, and that call is ending.
            return Poll::Ready(None);
        };
        let shared = &mut *shared;
        loop {
            if let Some(item) = shared.queues[side].pop_front() {
                return Poll::Ready(Some(item));
            }
            if shared.ended {
                return Poll::Ready(None);
            }
            match shared.input.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    let target = if (shared.route)(&item) { 0 } else { 1 };
                    if target == side {
                        return Poll::Ready(Some(item));
                    }
                    if !shared.dropped[target] {
                        shared.queues[target].push_back(item);
                        if let Some(waker) = shared.wakers[target].take() {
                            waker.wake();
                        }
                    }
                }
                Poll::Ready(None) => {
                    shared.ended = true;
                    if let Some(waker) = shared.wakers[1 - side].take() {
                        waker.wake();
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    shared.wakers[side] = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S: Stream, F> Drop for Side<S, F> {
    fn drop(&mut self) {
        if let Ok(mut shared) = self.shared.lock() {
            shared.dropped[self.side] = true;
            shared.queues[self.side].clear();
            // The other side may be waiting for input that this side would have pulled.
            if let Some(waker) = shared.wakers[1 - self.side].take() {
                waker.wake();
            }
        }
    }
}
