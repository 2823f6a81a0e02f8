//! The server's own encoding of `function.Message`, byte for byte the wire format of
//! `proto/function.proto`, shaped for the engine rather than for prost's generated code.
//!
//! The generated type keeps headers as a map of name to a list of values: decoding one
//! message allocates a map node and a list per header, and the engine then flattens them into
//! (name, value) pairs. This type decodes straight into those pairs, and encodes the reply's
//! Content-Type from a string shared by every message of a call instead of copying it into a
//! fresh map per message. Clients, and the reference server of `invoker bench`, use the
//! generated type; the two interoperate because the bytes are the same (tested below).

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use prost::DecodeError;
use prost::encoding::{
    self, DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len,
};

/// A `function.Message`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    /// Field 1, `payload`.
    pub payload: Bytes,
    /// Sent as the first header, `Content-Type`, when set. Decoding never sets it: a received
    /// Content-Type is in `headers` like any other header.
    pub content_type: Option<Arc<str>>,
    /// Field 2, `headers`, flattened: one pair per value, in the order received. A name that
    /// occurs in several map entries keeps the last entry's values, as protobuf maps do.
    pub headers: Vec<(String, String)>,
}

const PAYLOAD: u32 = 1;
const HEADERS: u32 = 2;
const ENTRY_KEY: u32 = 1;
const ENTRY_VALUE: u32 = 2;
const VALUES: u32 = 1;

fn str_len(tag: u32, s: &str) -> usize {
    key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
}

fn encode_str(tag: u32, s: &str, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(s.len() as u64, buf);
    buf.put_slice(s.as_bytes());
}

/// One header map entry as it is encoded: a name and its values, which are `single` and then
/// the values of the pairs in `rest` that have this name.
struct Entry<'a> {
    name: &'a str,
    single: Option<&'a str>,
    rest: &'a [(String, String)],
}

impl<'a> Entry<'a> {
    fn values(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        let name = self.name;
        self.single.into_iter().chain(
            self.rest
                .iter()
                .filter(move |(n, _)| n == name)
                .map(|(_, v)| v.as_str()),
        )
    }

    /// The length of the `HeaderValue` message.
    fn values_len(&self) -> usize {
        self.values().map(|v| str_len(VALUES, v)).sum()
    }

    /// The length of the map entry message.
    fn len(&self) -> usize {
        let values = self.values_len();
        str_len(ENTRY_KEY, self.name)
            + key_len(ENTRY_VALUE)
            + encoded_len_varint(values as u64)
            + values
    }

    fn encoded_len(&self) -> usize {
        let len = self.len();
        key_len(HEADERS) + encoded_len_varint(len as u64) + len
    }

    fn encode(&self, buf: &mut impl BufMut) {
        encode_key(HEADERS, WireType::LengthDelimited, buf);
        encode_varint(self.len() as u64, buf);
        encode_str(ENTRY_KEY, self.name, buf);
        encode_key(ENTRY_VALUE, WireType::LengthDelimited, buf);
        encode_varint(self.values_len() as u64, buf);
        for value in self.values() {
            encode_str(VALUES, value, buf);
        }
    }
}

impl Message {
    /// Every header map entry: Content-Type first, then each other name once, with all of its
    /// values in order. Messages carry a handful of headers, so grouping by a scan is cheapest.
    fn entries(&self) -> impl Iterator<Item = Entry<'_>> {
        let content_type = self.content_type.as_deref().map(|ct| Entry {
            name: "Content-Type",
            single: Some(ct),
            rest: &[],
        });
        let headers = &self.headers;
        let owns_content_type = self.content_type.is_some();
        let others = headers
            .iter()
            .enumerate()
            .filter_map(move |(i, (name, _))| {
                // The negotiated Content-Type is the only one sent; each name is sent once.
                if (owns_content_type && name.eq_ignore_ascii_case("Content-Type"))
                    || headers[..i].iter().any(|(n, _)| n == name)
                {
                    return None;
                }
                Some(Entry {
                    name,
                    single: None,
                    rest: &headers[i..],
                })
            });
        content_type.into_iter().chain(others)
    }
}

/// A decoded header map entry.
#[derive(Debug, Default)]
struct DecodedEntry {
    name: String,
    values: Values,
}

/// A decoded `HeaderValue`.
#[derive(Debug, Default)]
struct Values(Vec<String>);

impl prost::Message for Values {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encoding::string::encode_repeated(VALUES, &self.0, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            VALUES => encoding::string::merge_repeated(wire_type, &mut self.0, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        encoding::string::encoded_len_repeated(VALUES, &self.0)
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

impl prost::Message for DecodedEntry {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encoding::string::encode(ENTRY_KEY, &self.name, buf);
        encoding::message::encode(ENTRY_VALUE, &self.values, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            ENTRY_KEY => encoding::string::merge(wire_type, &mut self.name, buf, ctx),
            ENTRY_VALUE => encoding::message::merge(wire_type, &mut self.values, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        encoding::string::encoded_len(ENTRY_KEY, &self.name)
            + encoding::message::encoded_len(ENTRY_VALUE, &self.values)
    }

    fn clear(&mut self) {
        self.name.clear();
        self.values.clear();
    }
}

impl prost::Message for Message {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.payload.is_empty() {
            encoding::bytes::encode(PAYLOAD, &self.payload, buf);
        }
        for entry in self.entries() {
            entry.encode(buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            PAYLOAD => encoding::bytes::merge(wire_type, &mut self.payload, buf, ctx),
            HEADERS => {
                let mut entry = DecodedEntry::default();
                encoding::message::merge(wire_type, &mut entry, buf, ctx)?;
                if self.headers.iter().any(|(n, _)| *n == entry.name) {
                    self.headers.retain(|(n, _)| *n != entry.name);
                }
                let mut values = entry.values.0;
                if let Some(last) = values.pop() {
                    self.headers
                        .extend(values.into_iter().map(|v| (entry.name.clone(), v)));
                    // The common case, one value: the name moves instead of being copied.
                    self.headers.push((entry.name, last));
                }
                Ok(())
            }
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let payload = if self.payload.is_empty() {
            0
        } else {
            encoding::bytes::encoded_len(PAYLOAD, &self.payload)
        };
        payload + self.entries().map(|e| e.encoded_len()).sum::<usize>()
    }

    fn clear(&mut self) {
        self.payload.clear();
        self.content_type = None;
        self.headers.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use prost::Message as _;

    use super::*;
    use crate::protocol::proto::function::Message as Generated;
    use crate::protocol::proto::function::message::HeaderValue;

    fn generated(payload: &[u8], headers: &[(&str, &[&str])]) -> Generated {
        Generated {
            payload: Bytes::copy_from_slice(payload),
            headers: headers
                .iter()
                .map(|(n, vs)| {
                    let values = vs.iter().map(|v| v.to_string()).collect();
                    (n.to_string(), HeaderValue { values })
                })
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn decodes_what_the_generated_type_encodes() {
        let sent = generated(b"hi", &[("Accept", &["a/b", "c/d"]), ("x", &["1"])]);
        let got = Message::decode(sent.encode_to_vec().as_slice()).unwrap();
        assert_eq!(got.payload, Bytes::from_static(b"hi"));
        assert_eq!(got.content_type, None);
        let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        assert_eq!(
            got.headers,
            [pair("Accept", "a/b"), pair("Accept", "c/d"), pair("x", "1")]
        );
    }

    #[test]
    fn the_generated_type_decodes_what_this_encodes() {
        let sent = Message {
            payload: Bytes::from_static(b"out"),
            content_type: Some(Arc::from("text/plain")),
            headers: vec![
                ("a".into(), "1".into()),
                ("b".into(), "2".into()),
                ("a".into(), "3".into()),
            ],
        };
        let bytes = sent.encode_to_vec();
        assert_eq!(bytes.len(), sent.encoded_len());
        let got = Generated::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            got,
            generated(
                b"out",
                &[
                    ("Content-Type", &["text/plain"]),
                    ("a", &["1", "3"]),
                    ("b", &["2"])
                ]
            )
        );
    }

    #[test]
    fn a_repeated_map_key_keeps_the_last_entry() {
        let mut bytes = generated(b"", &[("k", &["old"])]).encode_to_vec();
        bytes.extend(generated(b"", &[("k", &["new"])]).encode_to_vec());
        let got = Message::decode(bytes.as_slice()).unwrap();
        assert_eq!(got.headers, [("k".to_owned(), "new".to_owned())]);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(Message::decode(&[0x12, 0x05, 0x0a][..]).is_err());
        assert!(Message::decode(&[0x12, 0x03, 0x0a, 0x02, 0xff][..]).is_err());
    }

    proptest! {
        #[test]
        fn round_trips_through_the_generated_type(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            headers in proptest::collection::btree_map(
                "[a-zA-Z-]{0,8}",
                proptest::collection::vec(".{0,8}", 1..3),
                0..4,
            ),
        ) {
            let sent = Generated {
                payload: Bytes::from(payload),
                headers: headers
                    .into_iter()
                    .map(|(n, values)| (n, HeaderValue { values }))
                    .collect(),
            };
            let ours = Message::decode(sent.encode_to_vec().as_slice()).unwrap();
            let bytes = ours.encode_to_vec();
            prop_assert_eq!(bytes.len(), ours.encoded_len());
            prop_assert_eq!(Generated::decode(bytes.as_slice()).unwrap(), sent);
        }

        #[test]
        fn no_input_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Message::decode(bytes.as_slice());
        }
    }
}
