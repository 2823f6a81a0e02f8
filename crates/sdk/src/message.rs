//! Messages with headers.

use crate::payload::{FromPayload, IntoPayload, Outgoing, Payload, PayloadError};

/// A message's headers: names compare case-insensitively; a name may have several values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn from_abi(headers: &[invoker_abi::Header]) -> Self {
        let entries = headers
            .iter()
            .map(|h| {
                // SAFETY: the host lends header names and values as valid UTF-8 for the
                // duration of the call (ABI rule for `InMessage` and `HostContext::header`).
                let (name, value) = unsafe { (crate::abi_str(h.name), crate::abi_str(h.value)) };
                (name.to_owned(), value.to_owned())
            })
            .collect();
        Headers { entries }
    }

    /// The first value of a header, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Adds a value to a header (keeping any it has).
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.entries.push((name.into(), value.into()));
    }

    /// Sets a header to one value, replacing any it had.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        self.entries.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
        self.entries.push((name, value.into()));
    }

    /// All headers as (name, value) pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A payload together with its headers: take it to read the incoming message's headers,
/// return it to set headers on the reply.
///
/// ```
/// use invoker_sdk::Message;
///
/// fn tag(input: Message<String>) -> Message<String> {
///     let from = input.headers.get("user").unwrap_or("nobody").to_owned();
///     Message::new(input.payload.to_uppercase()).with_header("x-from", from)
/// }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message<T> {
    /// The payload.
    pub payload: T,
    /// The headers.
    pub headers: Headers,
}

impl<T> Message<T> {
    /// A message with no headers.
    pub fn new(payload: T) -> Self {
        Message {
            payload,
            headers: Headers::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.append(name, value);
        self
    }
}

impl<T: FromPayload> FromPayload for Message<T> {
    const MEDIA_TYPES: &'static [&'static str] = T::MEDIA_TYPES;

    fn from_payload(payload: &Payload<'_>) -> Result<Self, PayloadError> {
        Ok(Message {
            payload: T::from_payload(payload)?,
            headers: payload.headers(),
        })
    }
}

impl<T: IntoPayload> IntoPayload for Message<T> {
    const MEDIA_TYPES: &'static [&'static str] = T::MEDIA_TYPES;

    fn into_payload(self, media_type: &str, out: &mut Outgoing) -> Result<(), PayloadError> {
        self.payload.into_payload(media_type, out)?;
        out.headers.extend(self.headers.entries);
        Ok(())
    }
}
