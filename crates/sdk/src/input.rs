//! `Input<X>`: a streaming function's input stream.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_ffi::ContextExt;
use futures_util::Stream;
use invoker_abi::{InMessage, InputStream, Slice, status};

use crate::lent::Failure;
use crate::payload::FromPayload;

/// The stream of inputs of a streaming function, each decoded into `X`.
///
/// A parameter of this type makes a function streaming:
///
/// ```
/// use invoker_sdk::{Input, stream::{Stream, StreamExt}};
///
/// #[invoker_sdk::function]
/// fn lengths(words: Input<String>) -> impl Stream<Item = usize> {
///     words.map(|w| w.len())
/// }
/// ```
///
/// When an input cannot be decoded into `X`, the call ends with `INVALID_ARGUMENT` and the
/// stream yields nothing more.
pub struct Input<X> {
    raw: InputStream,
    failure: Arc<Failure>,
    _item: PhantomData<fn() -> X>,
}

// SAFETY: the ABI requires the host's input stream state to be usable from any thread (one at
// a time); `Input` only touches it through `&mut self`.
unsafe impl<X> Send for Input<X> {}

impl<X> Unpin for Input<X> {}

impl<X> Input<X> {
    pub(crate) fn new(raw: InputStream, failure: Arc<Failure>) -> Self {
        Input {
            raw,
            failure,
            _item: PhantomData,
        }
    }
}

impl<X> fmt::Debug for Input<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Input").finish_non_exhaustive()
    }
}

impl<X: FromPayload> Stream for Input<X> {
    type Item = X;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<X>> {
        let this = self.get_mut();
        if this.failure.is_set() {
            return Poll::Pending;
        }
        let mut msg = InMessage {
            payload: Slice::EMPTY,
            headers: std::ptr::null(),
            headers_len: 0,
            media_type: 0,
        };
        // SAFETY: `raw` is the host's live input stream (not yet dropped); `msg` is a valid
        // place for it to write to.
        let code = cx
            .with_ffi_context(|fcx| unsafe { (this.raw.poll_next)(this.raw.state, fcx, &mut msg) });
        match code {
            status::READY => {
                // SAFETY: the host lends the message until the next poll or drop of this stream.
                let decoded = unsafe { crate::lent::decode_in_message::<X>(&msg) };
                match decoded {
                    Ok(x) => Poll::Ready(Some(x)),
                    Err(message) => {
                        // The call fails with Bad Input; the output streams report it.
                        this.failure.set(message);
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                }
            }
            status::END => Poll::Ready(None),
            status::PENDING => Poll::Pending,
            status::PANIC => {
                this.failure
                    .set("Invoker: the invoker's input stream failed".to_owned());
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => {
                this.failure.set(format!(
                    "Invoker: input stream returned unknown status {other}"
                ));
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}

impl<X> Drop for Input<X> {
    fn drop(&mut self) {
        // SAFETY: each input stream is dropped exactly once, here; `state` is not used after.
        unsafe { (self.raw.drop)(self.raw.state) }
    }
}
