//! StateFun values: the [`ValueType`] trait, the built-in types (`io.statefun.types/*`, encoded
//! as StateFun's wrapper messages of types.proto), JSON and raw bytes under a typename.
//!
//! The wrappers are one-field protobuf messages (`value = 1`), encoded here by hand: a string
//! is field 1 length-delimited, `int` is `sfixed32`, `long` `sfixed64`, `float` a 32-bit and
//! `double` a 64-bit fixed field, `bool` a varint. proto3 leaves a default value (0, `""`,
//! false) out, so an empty message decodes to it; unknown fields are skipped, and for a field
//! given twice the last wins, as protobuf decoders do.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Json;

/// A type a StateFun value can have: a message a function takes or sends, a persisted value,
/// an egress record. It names its typename (`namespace/name`, as the cluster sees it) and
/// encodes to and decodes from the value's bytes.
///
/// Implemented for the built-in types, which map to StateFun's:
///
/// | Rust | typename |
/// |---|---|
/// | `String` | `io.statefun.types/string` |
/// | `i32` | `io.statefun.types/int` |
/// | `i64` | `io.statefun.types/long` |
/// | `f32` | `io.statefun.types/float` |
/// | `f64` | `io.statefun.types/double` |
/// | `bool` | `io.statefun.types/bool` |
///
/// and for [`Json<T>`] of a type that names its typename ([`JsonType`]), and for the byte
/// types [`bytes_type!`](crate::bytes_type) declares. Any other type is a compile error:
///
/// ```compile_fail,E0277
/// use invoker_sdk::statefun::ValueSpec;
/// const NAMES: ValueSpec<Vec<String>> = ValueSpec::new("names");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a StateFun value type",
    label = "not a StateFun value type",
    note = "use String, i32, i64, f32, f64 or bool (io.statefun.types/*), `Json<T>` where T implements `invoker_sdk::statefun::JsonType` (which names its typename), or a bytes type declared with `invoker_sdk::bytes_type!`"
)]
pub trait ValueType: Sized {
    /// The typename, `namespace/name`.
    const TYPENAME: &'static str;
    /// Appends the value's bytes to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Decodes a value from its bytes.
    fn decode(bytes: &[u8]) -> Result<Self, String>;
}

/// A serde type carried as JSON under a typename of the author's (`namespace/name`): makes
/// [`Json<T>`] a [`ValueType`].
///
/// ```
/// use invoker_sdk::statefun::JsonType;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Person { name: String, age: i32 }
///
/// impl JsonType for Person {
///     const TYPENAME: &'static str = "example/Person";
/// }
/// ```
pub trait JsonType: Serialize + DeserializeOwned {
    /// The typename, `namespace/name`.
    const TYPENAME: &'static str;
}

impl<T: JsonType> ValueType for Json<T> {
    const TYPENAME: &'static str = T::TYPENAME;

    fn encode(&self, out: &mut Vec<u8>) {
        // Serializing a serde type into a Vec fails only when the type's own `Serialize` fails
        // (a map with non-string keys): write nothing rather than half a document.
        let start = out.len();
        if serde_json::to_writer(&mut *out, &self.0).is_err() {
            out.truncate(start);
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes)
            .map(Json)
            .map_err(|e| format!("invalid JSON for {}: {e}", T::TYPENAME))
    }
}

/// Declares a bytes type: a newtype over [`Bytes`](crate::Bytes) whose values are raw bytes
/// under the typename given, usable as a message, a persisted value or an egress value.
///
/// ```
/// invoker_sdk::bytes_type!(
///     /// A picture, as its file's bytes.
///     pub Picture = "example/Picture"
/// );
///
/// let picture = Picture(invoker_sdk::Bytes::from_static(b"\x89PNG"));
/// assert_eq!(picture.0.len(), 4);
/// ```
#[macro_export]
macro_rules! bytes_type {
    ($(#[$meta:meta])* $vis:vis $name:ident = $typename:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        $vis struct $name(pub $crate::Bytes);

        impl $crate::statefun::ValueType for $name {
            const TYPENAME: &'static str = $typename;

            fn encode(&self, out: &mut ::std::vec::Vec<u8>) {
                out.extend_from_slice(&self.0);
            }

            fn decode(bytes: &[u8]) -> ::core::result::Result<Self, ::std::string::String> {
                ::core::result::Result::Ok($name($crate::Bytes::copy_from_slice(bytes)))
            }
        }
    };
}

/// The typename of StateFun's string.
pub const STRING: &str = "io.statefun.types/string";
/// The typename of StateFun's 32-bit integer.
pub const INT: &str = "io.statefun.types/int";
/// The typename of StateFun's 64-bit integer.
pub const LONG: &str = "io.statefun.types/long";
/// The typename of StateFun's 32-bit float.
pub const FLOAT: &str = "io.statefun.types/float";
/// The typename of StateFun's 64-bit float.
pub const DOUBLE: &str = "io.statefun.types/double";
/// The typename of StateFun's boolean.
pub const BOOL: &str = "io.statefun.types/bool";

// Wire types of protobuf.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint(bytes: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes
            .split_first()
            .ok_or_else(|| "a truncated varint".to_owned())?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a varint longer than 10 bytes".to_owned())
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if bytes.len() < n {
        return Err("a truncated field".to_owned());
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(head)
}

/// The last field 1 of a wrapper message of wire type `wire`, if any; other fields are
/// skipped. `typename` names the type in errors.
fn field_one<'a>(
    mut bytes: &'a [u8],
    wire: u8,
    typename: &str,
) -> Result<Option<&'a [u8]>, String> {
    let bad = |e: String| format!("not a {typename} value: {e}");
    let mut found = None;
    while !bytes.is_empty() {
        let key = varint(&mut bytes).map_err(bad)?;
        let (number, kind) = (key >> 3, (key & 7) as u8);
        let start = bytes;
        match kind {
            VARINT => {
                varint(&mut bytes).map_err(bad)?;
            }
            FIXED64 => {
                take(&mut bytes, 8).map_err(bad)?;
            }
            FIXED32 => {
                take(&mut bytes, 4).map_err(bad)?;
            }
            LEN => {
                let len = varint(&mut bytes).map_err(bad)?;
                let len = usize::try_from(len).map_err(|_| bad("a field too long".to_owned()))?;
                let field = take(&mut bytes, len).map_err(bad)?;
                if number == 1 && kind == wire {
                    found = Some(field);
                    continue;
                }
            }
            other => return Err(bad(format!("wire type {other} is not supported"))),
        }
        if number == 1 {
            if kind != wire {
                return Err(bad(format!("field 1 has wire type {kind}, not {wire}")));
            }
            found = Some(&start[..start.len() - bytes.len()]);
        }
    }
    Ok(found)
}

fn fixed<const N: usize>(field: Option<&[u8]>) -> [u8; N] {
    let mut out = [0; N];
    if let Some(field) = field {
        out.copy_from_slice(field);
    }
    out
}

impl ValueType for String {
    const TYPENAME: &'static str = STRING;

    fn encode(&self, out: &mut Vec<u8>) {
        if !self.is_empty() {
            out.push(1 << 3 | LEN);
            put_varint(out, self.len() as u64);
            out.extend_from_slice(self.as_bytes());
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let field = field_one(bytes, LEN, STRING)?.unwrap_or_default();
        String::from_utf8(field.to_vec())
            .map_err(|_| format!("not a {STRING} value: invalid UTF-8"))
    }
}

impl ValueType for bool {
    const TYPENAME: &'static str = BOOL;

    fn encode(&self, out: &mut Vec<u8>) {
        if *self {
            out.extend_from_slice(&[1 << 3 | VARINT, 1]);
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        match field_one(bytes, VARINT, BOOL)? {
            Some(mut field) => Ok(varint(&mut field)? != 0),
            None => Ok(false),
        }
    }
}

macro_rules! fixed_type {
    ($ty:ty, $typename:expr, $wire:expr, $n:literal) => {
        impl ValueType for $ty {
            const TYPENAME: &'static str = $typename;

            fn encode(&self, out: &mut Vec<u8>) {
                // proto3 leaves the default out; -0.0 is not the default (its bits differ).
                if self.to_bits() != 0 {
                    out.push(1 << 3 | $wire);
                    out.extend_from_slice(&self.to_le_bytes());
                }
            }

            fn decode(bytes: &[u8]) -> Result<Self, String> {
                Ok(<$ty>::from_le_bytes(fixed::<$n>(field_one(
                    bytes, $wire, $typename,
                )?)))
            }
        }
    };
}

/// Integers have no `to_bits`; this gives them one, so the macro serves all four.
trait Bits {
    fn to_bits(&self) -> u64;
}

impl Bits for i32 {
    fn to_bits(&self) -> u64 {
        *self as u32 as u64
    }
}

impl Bits for i64 {
    fn to_bits(&self) -> u64 {
        *self as u64
    }
}

fixed_type!(i32, INT, FIXED32, 4);
fixed_type!(i64, LONG, FIXED64, 8);
fixed_type!(f32, FLOAT, FIXED32, 4);
fixed_type!(f64, DOUBLE, FIXED64, 8);

/// Encodes a Kafka producer record (`io.statefun.sdk.egress.KafkaProducerRecord`: `key = 1`,
/// `value_bytes = 2`, `topic = 3`).
pub(crate) fn kafka_record(topic: &str, key: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(topic.len() + key.len() + value.len() + 12);
    for (number, field) in [(1u8, key.as_bytes()), (2, value), (3, topic.as_bytes())] {
        if !field.is_empty() {
            out.push(number << 3 | LEN);
            put_varint(&mut out, field.len() as u64);
            out.extend_from_slice(field);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: ValueType + PartialEq + std::fmt::Debug>(value: T) -> Vec<u8> {
        let mut bytes = Vec::new();
        value.encode(&mut bytes);
        assert_eq!(T::decode(&bytes).unwrap(), value);
        bytes
    }

    #[test]
    fn built_in_types_are_the_wrapper_messages() {
        assert_eq!(round_trip("hi".to_owned()), b"\x0a\x02hi");
        assert_eq!(round_trip(String::new()), b"");
        assert_eq!(round_trip(-1i32), b"\x0d\xff\xff\xff\xff");
        assert_eq!(round_trip(7i64), b"\x09\x07\0\0\0\0\0\0\0");
        assert_eq!(round_trip(0i64), b"");
        assert_eq!(round_trip(1.5f32), b"\x0d\0\0\xc0\x3f");
        assert_eq!(round_trip(-2.0f64), b"\x09\0\0\0\0\0\0\0\xc0");
        assert_eq!(round_trip(true), b"\x08\x01");
        assert_eq!(round_trip(false), b"");
        assert_eq!(round_trip(-0.0f64), b"\x09\0\0\0\0\0\0\0\x80");
    }

    #[test]
    fn decoding_skips_unknown_fields_and_keeps_the_last() {
        // field 2 (varint 5), field 1 "a", field 1 "bc"
        let bytes = b"\x10\x05\x0a\x01a\x0a\x02bc";
        assert_eq!(String::decode(bytes).unwrap(), "bc");
        assert_eq!(i32::decode(b"\x10\x05").unwrap(), 0);
    }

    #[test]
    fn malformed_values_are_errors_not_panics() {
        for bytes in [&b"\x0a\x05hi"[..], b"\x0d\x01", b"\x08", b"\x0f", b"\x80"] {
            assert!(String::decode(bytes).is_err() || i32::decode(bytes).is_err());
        }
        assert!(i32::decode(b"\x0a\x01a").is_err());
        assert!(String::decode(b"\x0a\x01\xff").is_err());
    }

    #[test]
    fn kafka_records_have_statefun_field_numbers() {
        assert_eq!(kafka_record("t", "k", b"v"), b"\x0a\x01k\x12\x01v\x1a\x01t");
    }
}
