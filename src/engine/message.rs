//! The messages of a call as the engine sees them, whatever the protocol: [`Inbound`] on the
//! way in, [`Outbound`] on the way out.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

use crate::function::{Headers, OutputMessage, Text};

/// A message on its way in, whatever the protocol.
#[derive(Debug, Clone, Default)]
pub struct Inbound {
    /// The payload.
    pub payload: Bytes,
    /// The message's headers, as (name, value) pairs.
    pub headers: Headers,
}

impl Inbound {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The Accept header: its values joined into one list, since a message may carry several.
    pub fn accept(&self) -> Option<Cow<'_, str>> {
        let mut values = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("Accept"))
            .map(|(_, v)| &**v);
        let first = values.next()?;
        match values.next() {
            None => Some(Cow::Borrowed(first)),
            Some(second) => {
                let mut joined = format!("{first}, {second}");
                for v in values {
                    joined.push_str(", ");
                    joined.push_str(v);
                }
                Some(Cow::Owned(joined))
            }
        }
    }
}

/// The first value of a header, by case-insensitive name.
#[inline]
pub fn header<'a>(headers: &'a [(Text, Text)], name: &str) -> Option<&'a str> {
    header_text(headers, name).map(|v| &**v)
}

/// The first value of a header, by case-insensitive name, as text to keep (a clone of it is
/// not a copy when it is short).
#[inline]
pub(crate) fn header_text<'a>(headers: &'a [(Text, Text)], name: &str) -> Option<&'a Text> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// A message on its way out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outbound {
    /// The payload.
    pub payload: Bytes,
    /// The concrete media type chosen for it.
    pub content_type: Arc<str>,
    /// Other headers: the echoed correlationId and those the function set.
    pub headers: Headers,
}

/// A function's output as an outbound message, with the call's correlationId echoed.
#[inline]
pub(crate) fn outbound(
    out: OutputMessage,
    content_type: Arc<str>,
    correlation: Option<Text>,
) -> Outbound {
    let mut headers = out.headers;
    if let Some(id) = correlation {
        headers.push((Text::const_new("correlationId"), id));
    }
    Outbound {
        payload: out.payload,
        content_type,
        headers,
    }
}
