//! What the host lends the library for the length of a call, read and decoded: strings,
//! bytes, input messages, and the decode failure a call's inputs and outputs share. Both
//! sides of the SDK's boundary use it: the shims (`private`) and the input streams (`input`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use invoker_abi::{InMessage, Slice};

use crate::payload::{FromPayload, Payload};

/// A decode failure shared by a call's inputs and outputs: an input that cannot be decoded
/// ends the call through whichever output notices first.
#[derive(Debug, Default)]
pub struct Failure {
    set: AtomicBool,
    message: Mutex<Option<String>>,
}

impl Failure {
    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    pub(crate) fn set(&self, message: String) {
        if let Ok(mut slot) = self.message.lock() {
            slot.get_or_insert(message);
        }
        self.set.store(true, Ordering::Release);
    }

    pub(crate) fn message(&self) -> String {
        self.message
            .lock()
            .ok()
            .and_then(|slot| slot.clone())
            .unwrap_or_else(|| "Invoker: Bad Input Signal".to_owned())
    }
}

/// Reads a UTF-8 string lent by the host.
///
/// # Safety
/// `s` must point to `s.len` bytes of valid UTF-8 that outlive `'a`.
pub(crate) unsafe fn abi_str<'a>(s: Slice) -> &'a str {
    // SAFETY: forwarded from the caller; the host hands out only UTF-8 here.
    unsafe { std::str::from_utf8_unchecked(abi_bytes(s)) }
}

/// Reads bytes lent by the host.
///
/// # Safety
/// `s` must point to `s.len` readable bytes that outlive `'a`.
pub(crate) unsafe fn abi_bytes<'a>(s: Slice) -> &'a [u8] {
    if s.len == 0 {
        return &[];
    }
    // SAFETY: forwarded from the caller.
    unsafe { std::slice::from_raw_parts(s.ptr, s.len) }
}

/// Decodes a message lent by the host as `X`.
///
/// # Safety
/// `msg` must be a message the host lent (valid pointers, valid for the duration of the call).
pub(crate) unsafe fn decode_in_message<X: FromPayload>(msg: &InMessage) -> Result<X, String> {
    // SAFETY: forwarded from the caller.
    let payload = unsafe { payload_of(msg, X::MEDIA_TYPES) }?;
    decode(&payload)
}

/// # Safety
/// As [`decode_in_message`].
pub(crate) unsafe fn payload_of<'a>(
    msg: &'a InMessage,
    media_types: &'static [&'static str],
) -> Result<Payload<'a>, String> {
    let media_type = media_types
        .get(msg.media_type as usize)
        .ok_or_else(|| format!("Invoker: media type #{} out of range", msg.media_type))?;
    let headers = if msg.headers_len == 0 {
        &[][..]
    } else {
        // SAFETY: the host lends `headers_len` headers at `headers`.
        unsafe { std::slice::from_raw_parts(msg.headers, msg.headers_len) }
    };
    Ok(Payload {
        // SAFETY: the host lends the payload for the call.
        bytes: unsafe { abi_bytes(msg.payload) },
        media_type,
        headers,
    })
}

/// Decodes a payload lent by the host: used by `Input` and request/reply shims.
pub(crate) fn decode<X: FromPayload>(payload: &Payload<'_>) -> Result<X, String> {
    X::from_payload(payload).map_err(|e| {
        format!(
            "Invoker: Bad Input Signal: cannot decode {} as {}: {e}",
            payload.media_type(),
            std::any::type_name::<X>()
        )
    })
}
