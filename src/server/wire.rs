//! The server's own encoding of `function.Message`, byte for byte the wire format of
//! `proto/function.proto`, shaped for the engine rather than for prost's generated code.
//!
//! The generated type keeps headers as a map of name to a list of values: decoding one
//! message allocates a map node and a list per header, and the engine then flattens them into
//! (name, value) pairs. This type decodes straight into those pairs, and encodes the reply's
//! Content-Type from a string shared by every message of a call instead of copying it into a
//! fresh map per message. Clients, and the reference server of `invoker bench`, use the
//! generated type; the two interoperate because the bytes are the same (tested below).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};

use crate::function::Text;
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
    /// Content-Type is in the headers like any other header.
    pub content_type: Option<Arc<str>>,
    /// Field 2, `headers`, flattened: one pair per value, in the order received. While
    /// decoding, pairs of a name that a later map entry repeats are still here (see
    /// [`Message::into_headers`]).
    headers: Vec<(Text, Text)>,
    /// What decoding saw of repeated names, once there is something to record (boxed: most
    /// messages never need it, and every message moves through several stream stages).
    repeats: Option<Box<Repeats>>,
}

/// Up to this many headers, names are found by scanning; beyond, by hashing or sorting, so
/// that no message costs more than about linear time in its headers (a client controls them).
const SCAN_LIMIT: usize = 32;

/// How many bytes of header names decoding may copy for the values after each entry's first,
/// when the name is too long to be stored inline. Each (name, value) pair holds its own name, so
/// a message with one long name and many empty values would otherwise ask for far more memory
/// than it has bytes (a 2 MiB name with a million values: 2 TiB).
const NAME_COPY_LIMIT: usize = 4 << 20;

/// Decoding's record of header names that came again in a later map entry, and of the long
/// names it copied.
#[derive(Debug, Clone, Default, PartialEq)]
struct Repeats {
    /// Bytes of long names copied so far for values after an entry's first.
    name_copies: usize,
    /// Every name decoded so far, once there are more than [`SCAN_LIMIT`] pairs.
    names: Option<HashSet<Text>>,
    /// For each repetition of a name: how many pairs were decoded before it. That name's
    /// pairs before that point are stale: a repeated map key keeps the last entry.
    stale: Vec<(Text, usize)>,
}

impl Message {
    /// A message to send.
    pub fn new(
        payload: Bytes,
        content_type: Option<Arc<str>>,
        headers: Vec<(Text, Text)>,
    ) -> Message {
        Message {
            payload,
            content_type,
            headers,
            repeats: None,
        }
    }

    /// The headers as (name, value) pairs in the order received. A name that occurs in
    /// several map entries keeps the last entry's values, as protobuf maps do.
    pub fn into_headers(self) -> Vec<(Text, Text)> {
        self.into_parts().1
    }

    /// The payload, and the headers as [`Message::into_headers`] gives them.
    pub fn into_parts(self) -> (Bytes, Vec<(Text, Text)>) {
        let Message {
            payload,
            headers,
            repeats,
            ..
        } = self;
        let Some(repeats) = repeats.filter(|r| !r.stale.is_empty()) else {
            return (payload, headers);
        };
        let mut cuts: HashMap<&str, usize> = HashMap::new();
        for (name, cut) in &repeats.stale {
            let at = cuts.entry(&**name).or_default();
            *at = (*at).max(*cut);
        }
        let headers = headers
            .into_iter()
            .enumerate()
            .filter(|(i, (name, _))| cuts.get(&**name).is_none_or(|cut| i >= cut))
            .map(|(_, pair)| pair)
            .collect();
        (payload, headers)
    }
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

/// One header map entry as it is encoded: a name and its values.
struct Entry<'a> {
    name: &'a str,
    values: EntryValues<'a>,
}

/// Where an entry's values are.
enum EntryValues<'a> {
    /// One value.
    One(&'a str),
    /// The values of the pairs in this slice that have the entry's name.
    Scan(&'a [(Text, Text)]),
    /// The values of these pairs.
    Picked(&'a [(Text, Text)], &'a [usize]),
}

impl Entry<'_> {
    fn for_each_value(&self, mut f: impl FnMut(&str)) {
        match self.values {
            EntryValues::One(value) => f(value),
            EntryValues::Scan(rest) => rest
                .iter()
                .filter(|(n, _)| n == self.name)
                .for_each(|(_, v)| f(v)),
            EntryValues::Picked(headers, picks) => picks.iter().for_each(|&i| f(&headers[i].1)),
        }
    }

    /// The length of the `HeaderValue` message.
    fn values_len(&self) -> usize {
        let mut len = 0;
        self.for_each_value(|v| len += str_len(VALUES, v));
        len
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
        self.for_each_value(|value| encode_str(VALUES, value, buf));
    }
}

impl Message {
    /// Every header map entry: Content-Type first, then each other name once, with all of its
    /// values in order. A handful of headers are grouped by a scan, many by a sort.
    fn for_each_entry(&self, mut f: impl FnMut(&Entry<'_>)) {
        if let Some(content_type) = self.content_type.as_deref() {
            f(&Entry {
                name: "Content-Type",
                values: EntryValues::One(content_type),
            });
        }
        // The negotiated Content-Type is the only one sent.
        let owns_content_type = self.content_type.is_some();
        let skip = |name: &str| owns_content_type && name.eq_ignore_ascii_case("Content-Type");
        let headers = &self.headers;
        if headers.len() <= SCAN_LIMIT {
            for (i, (name, _)) in headers.iter().enumerate() {
                if skip(name) || headers[..i].iter().any(|(n, _)| n == name) {
                    continue;
                }
                f(&Entry {
                    name,
                    values: EntryValues::Scan(&headers[i..]),
                });
            }
            return;
        }
        let mut order: Vec<usize> = (0..headers.len())
            .filter(|&i| !skip(&headers[i].0))
            .collect();
        // Stable: each name's values stay in order.
        order.sort_by(|&a, &b| headers[a].0.cmp(&headers[b].0));
        for group in order.chunk_by(|&a, &b| headers[a].0 == headers[b].0) {
            f(&Entry {
                name: &headers[group[0]].0,
                values: EntryValues::Picked(headers, group),
            });
        }
    }
}

impl prost::Message for Message {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.payload.is_empty() {
            encoding::bytes::encode(PAYLOAD, &self.payload, buf);
        }
        self.for_each_entry(|entry| entry.encode(buf));
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
                encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                let len = field_len(buf)?;
                let start = self.headers.len();
                let name = if buf.chunk().len() >= len {
                    // Received messages are contiguous: decoded in place.
                    let name = decode_entry(&buf.chunk()[..len], &mut self.headers, ctx)?;
                    buf.advance(len);
                    name
                } else {
                    decode_entry(&buf.copy_to_bytes(len), &mut self.headers, ctx)?
                };
                let names = self.repeats.as_mut().and_then(|r| r.names.as_mut());
                let repeated = match names {
                    Some(names) => !names.insert(name.clone()),
                    None => self.headers[..start].iter().any(|(n, _)| *n == name),
                };
                if repeated {
                    let repeats = self.repeats.get_or_insert_default();
                    repeats.stale.push((name.clone(), start));
                }
                let values = self.headers.len() - start;
                if values > 1 && name.is_heap_allocated() {
                    let repeats = self.repeats.get_or_insert_default();
                    let copies = (values - 1).saturating_mul(name.len());
                    repeats.name_copies = repeats.name_copies.saturating_add(copies);
                    if repeats.name_copies > NAME_COPY_LIMIT {
                        return Err(decode_error(
                            "a long header name is given to too many values (over 4 MiB of copies): shorten the name or send fewer values",
                        ));
                    }
                }
                if let Some(((last, _), rest)) = self.headers[start..].split_last_mut() {
                    for (n, _) in rest {
                        *n = name.clone();
                    }
                    // The common case, one value: the name moves instead of being cloned.
                    *last = name;
                }
                if self.headers.len() > SCAN_LIMIT {
                    let repeats = self.repeats.get_or_insert_default();
                    if repeats.names.is_none() {
                        let names = self.headers.iter().map(|(n, _)| n.clone()).collect();
                        repeats.names = Some(names);
                    }
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
        let mut headers = 0;
        self.for_each_entry(|entry| headers += entry.encoded_len());
        payload + headers
    }

    fn clear(&mut self) {
        self.payload.clear();
        self.content_type = None;
        self.headers.clear();
        self.repeats = None;
    }
}

/// A decoding error with prost's wording. prost has no other constructor for a type that
/// decodes itself (`DecodeError::new` is public but deprecated as internal).
#[allow(deprecated)]
fn decode_error(description: &'static str) -> DecodeError {
    DecodeError::new(description)
}

/// Header names and values that most messages carry: recognised by comparing bytes, which is
/// cheaper than checking short text for UTF-8.
const COMMON_TEXT: &[&str] = &[
    "Content-Type",
    "Accept",
    "correlationId",
    "text/plain",
    "application/json",
    "application/octet-stream",
    "application/x-www-form-urlencoded",
];

/// Header text, checked to be UTF-8 as prost checks a `string` field. Short text (as most
/// header names and values are) is stored inline: no allocation, no reference count.
fn text(bytes: &[u8]) -> Result<Text, DecodeError> {
    if let Some(common) = COMMON_TEXT.iter().find(|t| t.as_bytes() == bytes) {
        return Ok(Text::const_new(common));
    }
    Text::from_utf8(bytes)
        .map_err(|_| decode_error("invalid string value: data is not UTF-8 encoded"))
}

/// Decodes one header map entry (a `string` key and a `HeaderValue`), as prost decodes a map
/// entry: the last key wins, `HeaderValue`s merge, unknown fields are skipped. Each value is
/// pushed as a pair with an empty name, which the caller fills in; returns the name.
///
/// One difference: prost counts the entry and the `HeaderValue` as two levels of its nesting
/// limit (100) when it skips unknown groups inside them, and its way to count them is private;
/// here groups nested 99 or 100 deep inside an entry are skipped rather than refused. Skipping
/// stays bounded by the limit either way.
fn decode_entry(
    mut entry: &[u8],
    headers: &mut Vec<(Text, Text)>,
    ctx: DecodeContext,
) -> Result<Text, DecodeError> {
    let mut name = Text::default();
    while !entry.is_empty() {
        let (tag, wire_type) = encoding::decode_key(&mut entry)?;
        match tag {
            ENTRY_KEY => name = text(field(&mut entry, wire_type)?)?,
            ENTRY_VALUE => decode_values(field(&mut entry, wire_type)?, headers, ctx.clone())?,
            _ => encoding::skip_field(wire_type, tag, &mut entry, ctx.clone())?,
        }
    }
    Ok(name)
}

/// Decodes a `HeaderValue`, pushing a pair with an empty name per value.
fn decode_values(
    mut values: &[u8],
    headers: &mut Vec<(Text, Text)>,
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    while !values.is_empty() {
        let (tag, wire_type) = encoding::decode_key(&mut values)?;
        if tag == VALUES {
            let value = text(field(&mut values, wire_type)?)?;
            headers.push((Text::default(), value));
        } else {
            encoding::skip_field(wire_type, tag, &mut values, ctx.clone())?;
        }
    }
    Ok(())
}

/// A length prefix, checked against what is left.
fn field_len(buf: &mut impl Buf) -> Result<usize, DecodeError> {
    let len = encoding::decode_varint(buf)?;
    match usize::try_from(len) {
        Ok(len) if len <= buf.remaining() => Ok(len),
        _ => Err(decode_error("buffer underflow")),
    }
}

/// The next length-delimited field of `rest` (whose key gave `wire_type`), taken off it.
fn field<'a>(rest: &mut &'a [u8], wire_type: WireType) -> Result<&'a [u8], DecodeError> {
    encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
    let len = field_len(rest)?;
    let (field, after) = rest.split_at(len);
    *rest = after;
    Ok(field)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use prost::Message as _;

    use super::*;
    use crate::proto::function::Message as Generated;
    use crate::proto::function::message::HeaderValue;

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
        let pair = |n: &str, v: &str| (Text::from(n), Text::from(v));
        assert_eq!(
            got.into_headers(),
            [pair("Accept", "a/b"), pair("Accept", "c/d"), pair("x", "1")]
        );
    }

    #[test]
    fn the_generated_type_decodes_what_this_encodes() {
        let sent = Message::new(
            Bytes::from_static(b"out"),
            Some(Arc::from("text/plain")),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "2".into()),
                ("a".into(), "3".into()),
            ],
        );
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
        assert_eq!(got.into_headers(), [("k".into(), "new".into())]);
    }

    /// Encodes map entries one by one, in this order (repeats included), as a peer may.
    fn entries(entries: &[(&str, &[&str])]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|entry| generated(b"", &[*entry]).encode_to_vec())
            .collect()
    }

    #[test]
    fn many_headers_with_repeats_keep_each_names_last_entry() {
        // Past the scan limit, names are hashed: the result is the same as for a few.
        let names: Vec<String> = (0..200).map(|i| format!("h{i}")).collect();
        let mut sent: Vec<(&str, &[&str])> =
            names.iter().map(|n| (n.as_str(), &["1"][..])).collect();
        sent.push(("h7", &["2", "3"]));
        sent.push(("h150", &["2"]));
        sent.push(("h7", &["4"]));
        let got = Message::decode(entries(&sent).as_slice())
            .unwrap()
            .into_headers();
        assert_eq!(got.len(), 200);
        let values = |name: &str| -> Vec<&str> {
            got.iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| &**v)
                .collect()
        };
        assert_eq!(values("h7"), ["4"]);
        assert_eq!(values("h150"), ["2"]);
        assert_eq!(values("h0"), ["1"]);
        assert_eq!(values("h199"), ["1"]);
    }

    #[test]
    fn many_headers_encode_each_name_once_with_its_values_in_order() {
        let mut headers: Vec<(Text, Text)> = (0..100)
            .map(|i| (format!("h{}", i % 40).into(), i.to_string().into()))
            .collect();
        headers.push(("content-type".into(), "dropped".into()));
        let sent = Message::new(Bytes::new(), Some(Arc::from("text/plain")), headers);
        let bytes = sent.encode_to_vec();
        assert_eq!(bytes.len(), sent.encoded_len());
        let got = Generated::decode(bytes.as_slice()).unwrap();
        assert_eq!(got.headers.len(), 41);
        assert_eq!(got.headers["Content-Type"].values, ["text/plain"]);
        assert_eq!(got.headers["h3"].values, ["3", "43", "83"]);
        assert_eq!(got.headers["h39"].values, ["39", "79"]);
    }

    #[test]
    fn an_entry_decodes_as_prost_decodes_it_whatever_its_field_order() {
        // The value before the key, two values messages (merged), an unknown field, and a key
        // given twice (the last wins).
        let mut entry = Vec::new();
        encode_str(ENTRY_VALUE, "\n\x01a", &mut entry);
        encode_str(ENTRY_KEY, "old", &mut entry);
        encode_key(7, WireType::Varint, &mut entry);
        encode_varint(300, &mut entry);
        encode_str(ENTRY_VALUE, "\n\x01b", &mut entry);
        encode_str(ENTRY_KEY, "name", &mut entry);
        let mut message = Vec::new();
        encode_key(HEADERS, WireType::LengthDelimited, &mut message);
        encode_varint(entry.len() as u64, &mut message);
        message.extend(entry);
        let theirs = Generated::decode(message.as_slice()).unwrap();
        assert_eq!(theirs.headers["name"].values, ["a", "b"]);
        let ours = Message::decode(message.as_slice()).unwrap().into_headers();
        assert_eq!(
            ours,
            [("name".into(), "a".into()), ("name".into(), "b".into())]
        );
    }

    #[test]
    fn header_text_that_is_not_utf8_is_a_decode_error() {
        let mut bytes = generated(b"", &[("name", &["value"])]).encode_to_vec();
        let at = bytes.iter().position(|&b| b == b'v').unwrap();
        bytes[at] = 0xff;
        assert!(Generated::decode(bytes.as_slice()).is_err());
        assert!(Message::decode(bytes.as_slice()).is_err());
    }

    #[test]
    fn a_long_name_given_to_very_many_values_is_a_decode_error_not_a_memory_blow_up() {
        // Each pair holds its own copy of the name: 64 KiB × 100 values would be 6.4 MiB.
        let name = "n".repeat(64 * 1024);
        let values = vec![""; 100];
        let bytes = generated(b"", &[(&name, &values)]).encode_to_vec();
        assert!(bytes.len() < 100 * 1024);
        assert!(Message::decode(bytes.as_slice()).is_err());
        // A long name with a few values, and a short name with very many, are decoded.
        let bytes = generated(b"", &[(&name, &values[..3])]).encode_to_vec();
        let got = Message::decode(bytes.as_slice()).unwrap().into_headers();
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|(n, v)| *n == name && v.is_empty()));
        let many = vec!["v"; 100_000];
        let bytes = generated(b"", &[("short-name", &many)]).encode_to_vec();
        assert_eq!(
            Message::decode(bytes.as_slice())
                .unwrap()
                .into_headers()
                .len(),
            100_000
        );
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
            // Names and values both shorter and longer than what is stored inline.
            headers in proptest::collection::btree_map(
                "[a-zA-Z-]{0,8}|[a-z]{20,40}",
                proptest::collection::vec(".{0,8}|.{20,40}", 1..3),
                0..48,
            ),
            split in any::<prop::sample::Index>(),
        ) {
            let sent = Generated {
                payload: Bytes::from(payload),
                headers: headers
                    .into_iter()
                    .map(|(n, values)| (n, HeaderValue { values }))
                    .collect(),
            };
            let encoded = sent.encode_to_vec();
            let ours = Message::decode(encoded.as_slice()).unwrap();
            let bytes = ours.encode_to_vec();
            prop_assert_eq!(bytes.len(), ours.encoded_len());
            prop_assert_eq!(Generated::decode(bytes.as_slice()).unwrap(), sent);
            // A message split across two chunks (a header entry not contiguous) decodes the
            // same.
            let (front, back) = encoded.split_at(split.index(encoded.len() + 1));
            let chained = Message::decode(front.chain(back)).unwrap();
            prop_assert_eq!(chained, ours);
        }

        #[test]
        fn repeated_entries_decode_as_the_generated_map_does(
            sent in proptest::collection::vec(
                ("[a-c]|h[0-9]{1,2}", proptest::collection::vec("[a-z]{0,3}", 0..3)),
                0..90,
            ),
        ) {
            let borrowed: Vec<(&str, Vec<&str>)> = sent
                .iter()
                .map(|(n, vs)| (n.as_str(), vs.iter().map(String::as_str).collect()))
                .collect();
            let listed: Vec<(&str, &[&str])> =
                borrowed.iter().map(|(n, vs)| (*n, vs.as_slice())).collect();
            let bytes = entries(&listed);
            let ours = Message::decode(bytes.as_slice()).unwrap().into_headers();
            let theirs = Generated::decode(bytes.as_slice()).unwrap();
            let mut grouped: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (n, v) in ours {
                grouped.entry(n.into()).or_default().push(v.into());
            }
            let expected: BTreeMap<String, Vec<String>> = theirs
                .headers
                .into_iter()
                .filter(|(_, v)| !v.values.is_empty())
                .map(|(n, v)| (n, v.values))
                .collect();
            prop_assert_eq!(grouped, expected);
        }

        #[test]
        fn no_input_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Message::decode(bytes.as_slice());
        }
    }
}
