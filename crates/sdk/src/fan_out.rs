//! Splitting one stream into several: the building block of functions with several outputs.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_util::Stream;

/// How many items may wait for one side: when the other side would queue more, it waits for
/// this side to catch up instead (so memory stays bounded whatever the input holds).
pub const QUEUE_LIMIT: usize = 64;

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
/// the second. Each side yields its items in order and ends when the input ends. Each side may
/// be consumed at its own pace, up to [`QUEUE_LIMIT`] items ahead of the other: items for the
/// other side wait in its queue, and when that queue is full this side waits for the other to
/// catch up. So consume both (the invoker does, as fast as the caller reads each output), or
/// drop the one you do not need: a dropped side's items are discarded.
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
        let other = 1 - side;
        loop {
            let was_full = shared.queues[side].len() >= QUEUE_LIMIT;
            if let Some(item) = shared.queues[side].pop_front() {
                if was_full && let Some(waker) = shared.wakers[other].take() {
                    // Room again: the other side may be waiting for it.
                    waker.wake();
                }
                return Poll::Ready(Some(item));
            }
            if shared.ended {
                return Poll::Ready(None);
            }
            if !shared.dropped[other] && shared.queues[other].len() >= QUEUE_LIMIT {
                // The other side is behind: wait for it rather than queue without bound.
                shared.wakers[side] = Some(cx.waker().clone());
                return Poll::Pending;
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

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll};

    use futures_util::task::noop_waker_ref;
    use futures_util::{StreamExt, stream};

    use super::*;

    #[test]
    fn a_side_waits_when_the_other_is_a_full_queue_behind() {
        let (mut evens, mut odds) = partition(stream::iter(1..=1000), |n: &i32| n % 2 == 0);
        let mut cx = Context::from_waker(noop_waker_ref());
        // The evens side, polled alone, queues each odd number it reads for the other side;
        // once that queue is full it waits instead of reading on.
        let mut evens_seen = Vec::new();
        loop {
            match evens.poll_next_unpin(&mut cx) {
                Poll::Ready(Some(n)) => evens_seen.push(n),
                Poll::Ready(None) => panic!("the input is not over"),
                Poll::Pending => break,
            }
        }
        let queued = odds.shared.lock().unwrap().queues[1].len();
        assert_eq!(queued, QUEUE_LIMIT);
        let evens_before_the_wait: Vec<i32> = (1..QUEUE_LIMIT as i32).map(|i| 2 * i).collect();
        assert_eq!(evens_seen, evens_before_the_wait);
        // The odds side gets them in order.
        let mut odds_seen = Vec::new();
        while let Poll::Ready(Some(n)) = odds.poll_next_unpin(&mut cx) {
            odds_seen.push(n);
            if odds_seen.len() == QUEUE_LIMIT {
                break;
            }
        }
        assert_eq!(
            odds_seen,
            (0..QUEUE_LIMIT as i32)
                .map(|i| 2 * i + 1)
                .collect::<Vec<_>>()
        );
    }
}
