//! Payload types: how a Rust type is decoded from, and encoded to, a message's bytes.

use std::fmt;

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use crate::Headers;

/// `text/plain` (UTF-8).
pub const TEXT_PLAIN: &str = "text/plain";
/// `application/json`.
pub const APPLICATION_JSON: &str = "application/json";
/// `application/octet-stream`.
pub const OCTET_STREAM: &str = "application/octet-stream";
/// `application/x-www-form-urlencoded`.
pub const FORM_URLENCODED: &str = "application/x-www-form-urlencoded";

/// Why a payload could not be decoded or encoded. Its text reaches the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadError(String);

impl PayloadError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        PayloadError(message.into())
    }
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PayloadError {}

/// An incoming message, as a [`FromPayload`] implementation sees it.
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) media_type: &'static str,
    pub(crate) headers: &'a [invoker_abi::Header],
}

impl<'a> Payload<'a> {
    /// The payload bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The payload's media type essence: one of the type's `MEDIA_TYPES`.
    pub fn media_type(&self) -> &'static str {
        self.media_type
    }

    /// The payload as UTF-8 text.
    pub fn text(&self) -> Result<&'a str, PayloadError> {
        std::str::from_utf8(self.bytes)
            .map_err(|e| PayloadError::new(format!("payload is not valid UTF-8: {e}")))
    }

    /// The message's headers.
    pub fn headers(&self) -> Headers {
        Headers::from_abi(self.headers)
    }
}

/// An outgoing message being built by an [`IntoPayload`] implementation.
#[derive(Debug, Default)]
pub struct Outgoing {
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: Vec<(String, String)>,
}

impl Outgoing {
    /// The payload written so far.
    pub fn payload_mut(&mut self) -> &mut Vec<u8> {
        &mut self.payload
    }

    /// Adds a header to the message.
    pub fn add_header(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.headers.push((name.into(), value.into()));
    }
}

/// A type a function can take as input: it names the media types it can be decoded from, in
/// preference order, and decodes a payload of one of them.
///
/// Implemented for `String`, the integer and float types, `bool`, `Vec<u8>`, [`Bytes`],
/// [`Json<T>`], [`Form<T>`] and [`Message<T>`](crate::Message). Implement it for your own
/// type to accept another media type.
///
/// Any other parameter type is a compile error that lists these. A borrowed `&str` cannot
/// be an input (the payload does not outlive the call); take a `String`:
///
/// ```compile_fail,E0277
/// #[invoker_sdk::function]
/// fn shout(text: &str) -> String {
///     text.to_uppercase()
/// }
/// ```
///
/// Nor can a type with no media type of its own, such as a map; wrap it in [`Json`] or
/// [`Form`]:
///
/// ```compile_fail,E0277
/// use std::collections::HashMap;
///
/// #[invoker_sdk::function]
/// fn count(fields: HashMap<String, String>) -> usize {
///     fields.len()
/// }
/// ```
///
/// ```
/// use std::collections::HashMap;
/// use invoker_sdk::Json;
///
/// #[invoker_sdk::function]
/// fn count(Json(fields): Json<HashMap<String, String>>) -> usize {
///     fields.len()
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a payload type a function can take as input",
    label = "unsupported input type",
    note = "an input is one of: String, an integer (i8..i128, u8..u128, isize, usize), a float (f32, f64), bool, Vec<u8>, Bytes, Json<T> or Form<T> (T: serde::Deserialize), Message<T> (T one of these); or leave the parameter out for no input",
    note = "take `String` rather than `&str`; wrap other serde types in `Json<T>` or `Form<T>`, or implement `invoker_sdk::FromPayload` for your own type",
    note = "see \"Media types\" in the invoker_sdk crate docs (`cargo doc -p invoker-sdk --open`)"
)]
pub trait FromPayload: Sized {
    /// Media type essences (`type/subtype`) this type decodes, preferred first.
    const MEDIA_TYPES: &'static [&'static str];

    /// Decodes a payload whose media type is one of [`Self::MEDIA_TYPES`].
    fn from_payload(payload: &Payload<'_>) -> Result<Self, PayloadError>;
}

/// A type a function can return as output: it names the media types it can be encoded as, in
/// preference order, and encodes itself as one of them.
///
/// Implemented for `String`, `&'static str`, the integer and float types, `bool`, `Vec<u8>`,
/// [`Bytes`], [`Json<T>`], [`Form<T>`] and [`Message<T>`](crate::Message); a function with no
/// output returns `()` (or nothing). Any other return type is a compile error that lists
/// these; an `Option`, for example, is not an output (return `Result<Y, E>` to fail instead):
///
/// ```compile_fail,E0277
/// #[invoker_sdk::function]
/// fn maybe(name: String) -> Option<String> {
///     (!name.is_empty()).then(|| format!("Hello {name}"))
/// }
/// ```
///
/// ```
/// #[invoker_sdk::function]
/// fn maybe(name: String) -> Result<String, String> {
///     if name.is_empty() {
///         return Err("no name".into());
///     }
///     Ok(format!("Hello {name}"))
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a payload type a function can return",
    label = "unsupported output type",
    note = "an output is one of: String, &'static str, an integer (i8..i128, u8..u128, isize, usize), a float (f32, f64), bool, Vec<u8>, Bytes, Json<T> or Form<T> (T: serde::Serialize), Message<T> (T one of these); or `()` for no output",
    note = "a function may return `Y`, `Result<Y, E>` (E: Display), `()` or `Result<(), E>`; a streaming function returns `impl Stream<Item = Y>` or `impl Stream<Item = Result<Y, E>>`",
    note = "wrap other serde types in `Json<T>` or `Form<T>`, or implement `invoker_sdk::IntoPayload` for your own type; see \"Media types\" in the invoker_sdk crate docs (`cargo doc -p invoker-sdk --open`)"
)]
pub trait IntoPayload {
    /// Media type essences (`type/subtype`) this type encodes to, preferred first.
    const MEDIA_TYPES: &'static [&'static str];

    /// Encodes the value as `media_type`, one of [`Self::MEDIA_TYPES`], into `out`.
    fn into_payload(self, media_type: &str, out: &mut Outgoing) -> Result<(), PayloadError>;
}

/// Text: `text/plain` first, then a JSON string (`"Hello Ada"`), as riff's Go and node
/// invokers speak it; as an input also `application/octet-stream` that is valid UTF-8 (riff's
/// HTTP adapter sends that for a body without a Content-Type).
impl FromPayload for String {
    const MEDIA_TYPES: &'static [&'static str] = &[TEXT_PLAIN, APPLICATION_JSON, OCTET_STREAM];

    fn from_payload(payload: &Payload<'_>) -> Result<Self, PayloadError> {
        if payload.media_type == APPLICATION_JSON {
            return serde_json::from_slice(payload.bytes)
                .map_err(|e| PayloadError::new(format!("expected a JSON string: {e}")));
        }
        payload.text().map(str::to_owned)
    }
}

/// Encodes text as `text/plain` (the bytes as they are) or as a JSON string.
fn text_payload(text: &str, media_type: &str, out: &mut Outgoing) -> Result<(), PayloadError> {
    if media_type == APPLICATION_JSON {
        return serde_json::to_writer(&mut out.payload, text)
            .map_err(|e| PayloadError::new(e.to_string()));
    }
    out.payload.extend_from_slice(text.as_bytes());
    Ok(())
}

impl IntoPayload for String {
    const MEDIA_TYPES: &'static [&'static str] = &[TEXT_PLAIN, APPLICATION_JSON];

    fn into_payload(self, media_type: &str, out: &mut Outgoing) -> Result<(), PayloadError> {
        if media_type == APPLICATION_JSON {
            return text_payload(&self, media_type, out);
        }
        out.payload = self.into_bytes();
        Ok(())
    }
}

impl IntoPayload for &'static str {
    const MEDIA_TYPES: &'static [&'static str] = &[TEXT_PLAIN, APPLICATION_JSON];

    fn into_payload(self, media_type: &str, out: &mut Outgoing) -> Result<(), PayloadError> {
        text_payload(self, media_type, out)
    }
}

/// Appends formatted text to a payload.
struct Text<'a>(&'a mut Vec<u8>);

impl fmt::Write for Text<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Numbers and booleans: `text/plain` (`3`, `2.5`, `true`) or `application/json`.
macro_rules! scalar {
    ($($ty:ty),*) => {$(
        impl FromPayload for $ty {
            const MEDIA_TYPES: &'static [&'static str] = &[TEXT_PLAIN, APPLICATION_JSON];

            fn from_payload(payload: &Payload<'_>) -> Result<Self, PayloadError> {
                if payload.media_type == APPLICATION_JSON {
                    return serde_json::from_slice(payload.bytes).map_err(|e| {
                        PayloadError::new(format!("expected a JSON {}: {e}", stringify!($ty)))
                    });
                }
                let text = payload.text()?.trim();
                text.parse().map_err(|_| {
                    PayloadError::new(format!("'{text}' is not a valid {}", stringify!($ty)))
                })
            }
        }

        impl IntoPayload for $ty {
            const MEDIA_TYPES: &'static [&'static str] = &[TEXT_PLAIN, APPLICATION_JSON];

            fn into_payload(self, media_type: &str, out: &mut Outgoing) -> Result<(), PayloadError> {
                if media_type == APPLICATION_JSON {
                    return serde_json::to_writer(&mut out.payload, &self)
                        .map_err(|e| PayloadError::new(e.to_string()));
                }
                // Formatted straight into the payload (whose buffer an output stream reuses).
                WriteText::write_text(self, &mut out.payload);
                Ok(())
            }
        }
    )*};
}

scalar!(
    i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize, f32, f64, bool
);

/// Writes a scalar as text, exactly as `Display` does.
trait WriteText {
    fn write_text(self, out: &mut Vec<u8>);
}

macro_rules! write_text_by_display {
    ($($ty:ty),*) => {$(
        impl WriteText for $ty {
            fn write_text(self, out: &mut Vec<u8>) {
                use std::fmt::Write as _;
                // Text never fails to write: its `write_str` cannot fail.
                let _ = write!(Text(out), "{}", self);
            }
        }
    )*};
}

write_text_by_display!(
    i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize, bool
);

macro_rules! write_text_float {
    ($($ty:ty),*) => {$(
        impl WriteText for $ty {
            /// The shortest text that reads back as the same number, in plain decimal notation
            /// as `Display` writes it (`2.5`, `3`, `0.0000001`, never an exponent). The digits
            /// are those of the formatter serde_json uses (several times faster than
            /// `Display`), so text and JSON outputs agree; where two shortest forms exist
            /// `Display` may pick the other one.
            fn write_text(self, out: &mut Vec<u8>) {
                if !self.is_finite() {
                    use std::fmt::Write as _;
                    let _ = write!(Text(out), "{}", self);
                    return;
                }
                let mut buffer = zmij::Buffer::new();
                write_plain(buffer.format_finite(self), out);
            }
        }
    )*};
}

/// Writes a number printed as `[-]digits[.digits][e[-]exp]` in plain decimal notation,
/// without a fractional part of zero.
fn write_plain(printed: &str, out: &mut Vec<u8>) {
    if !printed.contains('e') {
        // The common case: already plain, and shortest (so only an integer has `.0`).
        out.extend_from_slice(printed.strip_suffix(".0").unwrap_or(printed).as_bytes());
        return;
    }
    let (sign, unsigned) = match printed.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", printed),
    };
    let (mantissa, exponent) = match unsigned.split_once('e') {
        Some((mantissa, exponent)) => (mantissa, exponent.parse::<i32>().unwrap_or(0)),
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let fraction = fraction.trim_end_matches('0');
    out.extend_from_slice(sign.as_bytes());
    if exponent == 0 {
        out.extend_from_slice(whole.as_bytes());
        if !fraction.is_empty() {
            out.push(b'.');
            out.extend_from_slice(fraction.as_bytes());
        }
        return;
    }
    // Move the point: digits, and where the point falls among them.
    let digits = whole.bytes().chain(fraction.bytes());
    let count = whole.len() + fraction.len();
    let point = whole.len() as i64 + i64::from(exponent);
    if point <= 0 {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', point.unsigned_abs() as usize));
        out.extend(digits);
    } else if point as usize >= count {
        out.extend(digits);
        out.extend(std::iter::repeat_n(b'0', point as usize - count));
    } else {
        let point = point as usize;
        out.extend(digits.clone().take(point));
        out.push(b'.');
        out.extend(digits.skip(point));
    }
}

write_text_float!(f32, f64);

impl FromPayload for Vec<u8> {
    const MEDIA_TYPES: &'static [&'static str] = &[OCTET_STREAM, TEXT_PLAIN];

    fn from_payload(payload: &Payload<'_>) -> Result<Self, PayloadError> {
        Ok(payload.bytes.to_vec())
    }
}

impl IntoPayload for Vec<u8> {
    const MEDIA_TYPES: &'static [&'static str] = &[OCTET_STREAM];

    fn into_payload(self, _media_type: &str, out: &mut Outgoing) -> Result<(), PayloadError> {
        out.payload = self;
        Ok(())
    }
}

impl FromPayload for Bytes {
    const MEDIA_TYPES: &'static [&'static str] = &[OCTET_STREAM, TEXT_PLAIN];

    fn from_payload(payload: &Payload<'_>) -> Result<Self, PayloadError> {
        Ok(Bytes::copy_from_slice(payload.bytes))
    }
}

impl IntoPayload for Bytes {
    const MEDIA_TYPES: &'static [&'static str] = &[OCTET_STREAM];

    fn into_payload(self, _media_type: &str, out: &mut Outgoing) -> Result<(), PayloadError> {
        out.payload = Vec::from(self);
        Ok(())
    }
}

/// A JSON payload of any serde type: decoded from `application/json` (or from an
/// `application/x-www-form-urlencoded` form, whose fields become the object's fields), encoded
/// as compact `application/json`.
///
/// ```
/// use invoker_sdk::Json;
/// #[derive(serde::Deserialize)]
/// struct Person { name: String }
///
/// fn name_of(Json(person): Json<Person>) -> String { person.name }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromPayload for Json<T> {
    const MEDIA_TYPES: &'static [&'static str] = &[APPLICATION_JSON, FORM_URLENCODED];

    fn from_payload(payload: &Payload<'_>) -> Result<Self, PayloadError> {
        if payload.media_type == FORM_URLENCODED {
            return Form::<T>::from_payload(payload).map(|Form(value)| Json(value));
        }
        serde_json::from_slice(payload.bytes)
            .map(Json)
            .map_err(|e| PayloadError::new(format!("invalid JSON: {e}")))
    }
}

impl<T: Serialize> IntoPayload for Json<T> {
    const MEDIA_TYPES: &'static [&'static str] = &[APPLICATION_JSON];

    fn into_payload(self, _media_type: &str, out: &mut Outgoing) -> Result<(), PayloadError> {
        serde_json::to_writer(&mut out.payload, &self.0)
            .map_err(|e| PayloadError::new(format!("cannot encode as JSON: {e}")))
    }
}

/// An `application/x-www-form-urlencoded` payload of a serde type (a flat struct or map).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Form<T>(pub T);

impl<T: DeserializeOwned> FromPayload for Form<T> {
    const MEDIA_TYPES: &'static [&'static str] = &[FORM_URLENCODED];

    fn from_payload(payload: &Payload<'_>) -> Result<Self, PayloadError> {
        serde_urlencoded::from_bytes(payload.bytes)
            .map(Form)
            .map_err(|e| PayloadError::new(format!("invalid form: {e}")))
    }
}

impl<T: Serialize> IntoPayload for Form<T> {
    const MEDIA_TYPES: &'static [&'static str] = &[FORM_URLENCODED];

    fn into_payload(self, _media_type: &str, out: &mut Outgoing) -> Result<(), PayloadError> {
        let text = serde_urlencoded::to_string(&self.0)
            .map_err(|e| PayloadError::new(format!("cannot encode as a form: {e}")))?;
        out.payload = text.into_bytes();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text<T: WriteText>(value: T) -> String {
        let mut out = Vec::new();
        value.write_text(&mut out);
        String::from_utf8(out).unwrap()
    }

    /// What a float's text must be: no exponent, reads back as the same number, as short as
    /// `Display`'s, and (but for a zero fraction) the digits serde_json writes.
    macro_rules! check_float {
        ($name:ident, $ty:ty) => {
            fn $name(x: $ty) {
                let t = text(x);
                if !x.is_finite() {
                    assert_eq!(t, format!("{x}"));
                    return;
                }
                assert!(!t.contains(['e', 'E']), "{x:e}: {t}");
                assert_eq!(
                    t.parse::<$ty>().unwrap().to_bits(),
                    x.to_bits(),
                    "{x:e}: {t}"
                );
                assert_eq!(t.len(), format!("{x}").len(), "{x:e}: {t} vs {x}");
                // The same digits as the JSON output, so text and JSON agree.
                let mut from_json = Vec::new();
                write_plain(&serde_json::to_string(&x).unwrap(), &mut from_json);
                assert_eq!(t.as_bytes(), from_json, "{x:e}");
            }
        };
    }

    check_float!(check_f64, f64);
    check_float!(check_f32, f32);

    #[test]
    fn floats_are_shortest_round_trip_text_without_exponent() {
        assert_eq!(text(2.5_f64), "2.5");
        assert_eq!(text(3.0_f64), "3");
        assert_eq!(text(-0.0_f64), "-0");
        assert_eq!(text(1e21_f64), "1000000000000000000000");
        assert_eq!(text(1.5e-7_f64), "0.00000015");
        assert_eq!(text(123.456_f64), "123.456");
        assert_eq!(text(-1e-300_f64).len(), format!("{}", -1e-300_f64).len());
        for x in [
            0.0,
            -0.0,
            1.0,
            0.1,
            1e-5,
            1e-7,
            1e15,
            1e16,
            1e17,
            1e21,
            1e300,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            f64::EPSILON,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            5e-324,
        ] {
            check_f64(x);
        }
        // Many bit patterns: every kind of exponent and mantissa (xorshift, fixed seed).
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            check_f64(f64::from_bits(state));
            check_f32(f32::from_bits(state as u32));
            check_f64((state % 2_000_000_000) as f64 / 1024.0 - 1e6);
        }
    }

    #[test]
    fn integers_and_bools_are_display() {
        assert_eq!(text(-42_i64), "-42");
        assert_eq!(text(u128::MAX), u128::MAX.to_string());
        assert_eq!(text(true), "true");
    }

    fn string_from(bytes: &[u8], media_type: &'static str) -> Result<String, PayloadError> {
        String::from_payload(&Payload {
            bytes,
            media_type,
            headers: &[],
        })
    }

    fn encoded<T: IntoPayload>(value: T, media_type: &str) -> String {
        let mut out = Outgoing::default();
        value.into_payload(media_type, &mut out).unwrap();
        String::from_utf8(out.payload).unwrap()
    }

    #[test]
    fn strings_are_text_then_json_and_take_utf8_octet_streams() {
        assert_eq!(
            <String as FromPayload>::MEDIA_TYPES,
            [TEXT_PLAIN, APPLICATION_JSON, OCTET_STREAM]
        );
        assert_eq!(
            <String as IntoPayload>::MEDIA_TYPES,
            [TEXT_PLAIN, APPLICATION_JSON]
        );
        assert_eq!(
            <&'static str as IntoPayload>::MEDIA_TYPES,
            [TEXT_PLAIN, APPLICATION_JSON]
        );
        assert_eq!(string_from(b"\"Ada\"", APPLICATION_JSON).unwrap(), "Ada");
        assert_eq!(string_from(b"\"Ada\"", TEXT_PLAIN).unwrap(), "\"Ada\"");
        assert_eq!(string_from(b"Ada", OCTET_STREAM).unwrap(), "Ada");
        for bad in [&b"{}"[..], b"42", b"Ada", b"null"] {
            assert!(string_from(bad, APPLICATION_JSON).is_err(), "{bad:?}");
        }
        assert!(string_from(&[0xff], OCTET_STREAM).is_err());
        assert_eq!(
            encoded("Hello \"Ada\"".to_owned(), APPLICATION_JSON),
            r#""Hello \"Ada\"""#
        );
        assert_eq!(encoded("Hello Ada".to_owned(), TEXT_PLAIN), "Hello Ada");
        assert_eq!(encoded("yes", APPLICATION_JSON), "\"yes\"");
        assert_eq!(encoded("yes", TEXT_PLAIN), "yes");
    }
}
