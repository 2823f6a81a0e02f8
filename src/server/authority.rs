//! The Unix socket's answer to clients that send an `:authority` h2 refuses.
//!
//! A gRPC client on a Unix socket has no host to name, and says so in its own way: Python's
//! grpc (1.57 and later) sends the socket's path percent-encoded (`%2Ftmp%2Fx.sock`),
//! grpc-java the raw path. h2's server parses `:authority` with `http::uri::Authority`, which
//! takes neither, and resets the stream with PROTOCOL_ERROR ("malformed headers"), so the
//! user's default client could not call the function at all. On the Unix socket the authority
//! means nothing, so [`Rewriter`] sits on the connection's read side, between the socket and
//! h2, and hands h2 every header block with an `:authority` it would refuse replaced by
//! `localhost`. TCP connections never pass through it.
//!
//! - **Frames.** After the 24-byte client preface the bytes are read as HTTP/2 frames. Every
//!   frame but HEADERS and CONTINUATION passes through as it came, streamed (a DATA frame is
//!   never held whole). A HEADERS frame and its CONTINUATIONs are collected into one header
//!   block, decoded, and written again as one HEADERS frame (and CONTINUATIONs when the block
//!   is over 16 384 bytes, the frame size h2 allows by default): the same stream, the same
//!   END_STREAM, without padding or priority (h2 ignores priority).
//! - **HPACK.** A header block can only be read with the dynamic table the client's encoder
//!   built over the connection's earlier blocks, so the decoder is a full HPACK decoder that
//!   keeps that table (`loona-hpack`), bounded at 4 096 bytes, the table size h2 lets clients
//!   use (it announces no other). The block is written again with every field a literal
//!   without indexing, so h2's own table stays empty and the client's table updates, which h2
//!   no longer sees, cannot matter.
//! - **Bounds.** An encoded header block is collected up to [`MAX_BLOCK`] bytes and decoded
//!   up to [`MAX_LIST`] (names and values, plus 32 per field as HTTP/2 counts them); h2
//!   itself refuses lists over 16 KiB, as on TCP. Anything larger, a block HPACK cannot
//!   decode, a frame out of place in a header block, or a PUSH_PROMISE (which clients must
//!   not send) is malformed: the connection is closed, as h2 would close it.
//!
//! The cost is per call (one header block each way in), not per message: DATA frames are only
//! copied through.

use bytes::{BufMut as _, BytesMut};
use loona_hpack::Decoder;

/// The client's connection preface, which comes before its first frame.
const PREFACE_LEN: usize = 24;
/// A frame header: length (24 bits), type, flags, stream id (31 bits).
const FRAME_HEADER_LEN: usize = 9;

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// The largest encoded header block collected (HEADERS and CONTINUATION fragments together).
pub const MAX_BLOCK: usize = 64 * 1024;
/// The largest decoded header list (HTTP/2's measure: name, value and 32 bytes per field).
pub const MAX_LIST: usize = 64 * 1024;
/// The largest frame written to h2: its default SETTINGS_MAX_FRAME_SIZE.
const MAX_FRAME: usize = 16_384;
/// The dynamic table size the client's encoder may use: HTTP/2's default, which h2 does not
/// change.
const TABLE_SIZE: usize = 4096;

/// What the rewrite refuses: the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed HTTP/2 from the client: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

fn malformed(why: impl Into<String>) -> Malformed {
    Malformed(why.into())
}

/// Where the reader is in the client's bytes.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading a frame header (`header_len` bytes of it so far).
    Header,
    /// Passing a frame's payload through: this many bytes are left.
    Pass(usize),
    /// Collecting the payload of a HEADERS or CONTINUATION frame: this many bytes are left.
    Collect { left: usize, kind: u8, flags: u8 },
}

/// A header block begun by a HEADERS frame and not yet ended.
#[derive(Debug, Clone, Copy)]
struct Open {
    stream: u32,
    end_stream: bool,
}

/// The read side's rewrite of one connection: feed it what the client sent, in order, and
/// hand h2 what it writes.
pub struct Rewriter {
    preface_left: usize,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    state: State,
    /// The payload of the HEADERS or CONTINUATION frame being collected.
    payload: Vec<u8>,
    /// The header block being collected.
    block: Vec<u8>,
    open: Option<Open>,
    decoder: Decoder<'static>,
    /// The block written again (kept for its allocation).
    encoded: Vec<u8>,
    /// The first header block's frames as the client sent them, until it is decoded.
    raw: Vec<u8>,
    /// Whether the first header block has been decoded.
    first_done: bool,
    /// Whether the connection passes through untouched: its first header block had an
    /// authority h2 takes, so h2's dynamic table was fed the client's own block and follows
    /// the client's from then on.
    passthrough: bool,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("state", &self.state)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        Rewriter::new()
    }
}

impl Rewriter {
    /// A rewrite for a new connection, before its preface.
    pub fn new() -> Rewriter {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Rewriter {
            preface_left: PREFACE_LEN,
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            state: State::Header,
            payload: Vec::new(),
            block: Vec::new(),
            open: None,
            decoder,
            encoded: Vec::new(),
            raw: Vec::new(),
            first_done: false,
            passthrough: false,
        }
    }

    /// Whether everything from here on passes through untouched (see `passthrough`): the
    /// caller may then hand h2 the client's bytes without feeding them here.
    pub fn passes_through(&self) -> bool {
        self.passthrough
    }

    /// Takes the next bytes the client sent; appends to `out` what h2 is to read. What `out`
    /// gains is bounded: `input` itself, or one header block written again.
    pub fn feed(&mut self, mut input: &[u8], out: &mut BytesMut) -> Result<(), Malformed> {
        while !input.is_empty() {
            if self.passthrough {
                out.put_slice(input);
                return Ok(());
            }
            if self.preface_left > 0 {
                let n = self.preface_left.min(input.len());
                out.put_slice(&input[..n]);
                self.preface_left -= n;
                input = &input[n..];
                continue;
            }
            match self.state {
                State::Header => {
                    let n = (FRAME_HEADER_LEN - self.header_len).min(input.len());
                    self.header[self.header_len..self.header_len + n].copy_from_slice(&input[..n]);
                    self.header_len += n;
                    input = &input[n..];
                    if self.header_len == FRAME_HEADER_LEN {
                        self.header_len = 0;
                        self.start_frame(out)?;
                    }
                }
                State::Pass(left) => {
                    let n = left.min(input.len());
                    out.put_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if left == n {
                        State::Header
                    } else {
                        State::Pass(left - n)
                    };
                }
                State::Collect { left, kind, flags } => {
                    let n = left.min(input.len());
                    self.payload.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if left == n {
                        self.end_frame(kind, flags, out)?;
                    } else {
                        self.state = State::Collect {
                            left: left - n,
                            kind,
                            flags,
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// A whole frame header has been read.
    fn start_frame(&mut self, out: &mut BytesMut) -> Result<(), Malformed> {
        let h = self.header;
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        if let Some(open) = self.open
            && (kind != CONTINUATION || stream != open.stream)
        {
            return Err(malformed(
                "a frame other than CONTINUATION inside a header block",
            ));
        }
        match kind {
            HEADERS | CONTINUATION => {
                if kind == CONTINUATION && self.open.is_none() {
                    return Err(malformed("CONTINUATION without a header block"));
                }
                if len > MAX_BLOCK - self.block.len() {
                    return Err(malformed(format!("a header block over {MAX_BLOCK} bytes")));
                }
                if kind == HEADERS {
                    self.open = Some(Open {
                        stream,
                        end_stream: flags & END_STREAM != 0,
                    });
                }
                if !self.first_done {
                    self.raw.extend_from_slice(&h);
                }
                self.payload.clear();
                if len == 0 {
                    self.end_frame(kind, flags, out)
                } else {
                    self.state = State::Collect {
                        left: len,
                        kind,
                        flags,
                    };
                    Ok(())
                }
            }
            PUSH_PROMISE => Err(malformed("PUSH_PROMISE from a client")),
            _ => {
                out.put_slice(&h);
                self.state = if len == 0 {
                    State::Header
                } else {
                    State::Pass(len)
                };
                Ok(())
            }
        }
    }

    /// A HEADERS or CONTINUATION frame's payload is complete.
    fn end_frame(&mut self, kind: u8, flags: u8, out: &mut BytesMut) -> Result<(), Malformed> {
        self.state = State::Header;
        if !self.first_done {
            self.raw.extend_from_slice(&self.payload);
        }
        let mut fragment = &self.payload[..];
        if kind == HEADERS {
            let mut pad = 0;
            if flags & PADDED != 0 {
                let (&length, rest) = fragment
                    .split_first()
                    .ok_or_else(|| malformed("a PADDED HEADERS frame without its pad length"))?;
                pad = usize::from(length);
                fragment = rest;
            }
            if flags & PRIORITY != 0 {
                fragment = fragment
                    .get(5..)
                    .ok_or_else(|| malformed("a HEADERS frame too short for its priority"))?;
            }
            if pad > fragment.len() {
                return Err(malformed("a HEADERS frame's padding is longer than it"));
            }
            fragment = &fragment[..fragment.len() - pad];
        }
        self.block.extend_from_slice(fragment);
        if flags & END_HEADERS != 0 {
            let open = self
                .open
                .take()
                .ok_or_else(|| malformed("a header block that was never begun"))?;
            self.write_block(open, out)?;
            self.block.clear();
        }
        Ok(())
    }

    /// Decodes the collected block and writes it to `out` as literals, the authority mended.
    fn write_block(&mut self, open: Open, out: &mut BytesMut) -> Result<(), Malformed> {
        let encoded = &mut self.encoded;
        encoded.clear();
        let mut list_size = 0usize;
        let mut too_large = false;
        let mut mended = false;
        self.decoder
            .decode_with_cb(&self.block, |name, value| {
                list_size = list_size.saturating_add(name.len() + value.len() + 32);
                if list_size > MAX_LIST {
                    too_large = true;
                    return;
                }
                let value: &[u8] = if &*name == b":authority" && !valid_authority(&value) {
                    mended = true;
                    b"localhost"
                } else {
                    &value
                };
                literal(encoded, &name, value);
            })
            .map_err(|e| malformed(format!("a header block HPACK cannot decode: {e}")))?;
        if too_large {
            return Err(malformed(format!("a header list over {MAX_LIST} bytes")));
        }
        if !self.first_done {
            self.first_done = true;
            let raw = std::mem::take(&mut self.raw);
            if !mended {
                // A client that sends an authority h2 takes (tonic, grpc-go, grpcurl,
                // Kubernetes all send `localhost`): h2 gets its own bytes, and the rest of the
                // connection passes through without being parsed.
                out.put_slice(&raw);
                self.passthrough = true;
                return Ok(());
            }
        }
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut first = true;
        loop {
            let chunk = chunks.next().unwrap_or(&[]);
            let last = chunks.peek().is_none();
            let (kind, mut flags) = if first {
                (HEADERS, if open.end_stream { END_STREAM } else { 0 })
            } else {
                (CONTINUATION, 0)
            };
            if last {
                flags |= END_HEADERS;
            }
            let len = chunk.len() as u32;
            out.reserve(FRAME_HEADER_LEN + chunk.len());
            out.put_slice(&len.to_be_bytes()[1..]);
            out.put_u8(kind);
            out.put_u8(flags);
            out.put_u32(open.stream);
            out.put_slice(chunk);
            first = false;
            if last {
                return Ok(());
            }
        }
    }
}

/// Whether h2 takes `value` as an `:authority` (it parses it as `http::uri::Authority`).
fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// A literal header field without indexing, with a literal name, neither Huffman-coded
/// (RFC 7541 §6.2.2).
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    string(out, name);
    string(out, value);
}

/// A string literal: its length as a 7-bit-prefix integer (H bit clear), then its bytes.
fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut n = bytes.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    /// Parses what the rewrite wrote after the preface: (kind, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&bytes[..24], PREFACE);
        bytes = &bytes[24..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap());
            out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    fn decode(block: &[u8]) -> Vec<(String, String)> {
        Decoder::new()
            .decode(block)
            .unwrap()
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    fn run(input: &[u8], step: usize) -> Result<Vec<u8>, Malformed> {
        let mut rewriter = Rewriter::new();
        let mut out = BytesMut::new();
        for chunk in input.chunks(step.max(1)) {
            rewriter.feed(chunk, &mut out)?;
        }
        Ok(out.to_vec())
    }

    fn request_headers(authority: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/function.MessageFunction/Call"),
            (":authority", authority),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    #[test]
    fn an_encoded_path_authority_becomes_localhost_and_other_frames_pass() {
        let mut encoder = loona_hpack::Encoder::new();
        let headers = request_headers("%2Ftmp%2Fx.sock");
        let block = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let data = frame(0x0, END_STREAM, 1, b"\0\0\0\0\x03abc");
        let mut input = PREFACE.to_vec();
        input.extend(&settings);
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        input.extend(&data);
        for step in [1, 7, 1000] {
            let got = frames(&run(&input, step).unwrap());
            assert_eq!(got.len(), 3);
            assert_eq!(got[0], (0x4, 0, 0, settings[9..].to_vec()));
            let (kind, flags, stream, payload) = &got[1];
            assert_eq!((*kind, *flags, *stream), (HEADERS, END_HEADERS, 1));
            let decoded = decode(payload);
            assert_eq!(decoded[3], (":authority".into(), "localhost".into()));
            assert_eq!(decoded[2].1, "/function.MessageFunction/Call");
            assert_eq!(got[2], (0x0, END_STREAM, 1, data[9..].to_vec()));
        }
    }

    #[test]
    fn a_valid_first_authority_passes_the_connection_through() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        // The second block refers to the first's entries in the client's dynamic table: h2
        // gets the client's own bytes, so its table follows the client's.
        for stream in [1, 3] {
            let headers = request_headers("localhost:10382");
            let block = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
            input.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
        }
        input.extend(frame(0x0, END_STREAM, 3, b"\0\0\0\0\x01z"));
        for step in [1, 3, 1000] {
            assert_eq!(run(&input, step).unwrap(), input);
        }
    }

    #[test]
    fn an_invalid_first_authority_is_mended_in_every_block() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        // Later blocks refer to the first's entries in the client's dynamic table.
        for stream in [1, 3, 5] {
            let headers = request_headers("/raw/path.sock");
            let block = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
            input.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
        }
        let got = frames(&run(&input, 3).unwrap());
        let authorities: Vec<String> = got
            .iter()
            .map(|(_, flags, _, payload)| {
                assert_eq!(*flags, END_HEADERS | END_STREAM);
                decode(payload)[3].1.clone()
            })
            .collect();
        assert_eq!(authorities, ["localhost", "localhost", "localhost"]);
    }

    #[test]
    fn padding_priority_and_continuations_are_undone_and_big_blocks_split() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut headers = request_headers("%2Fx");
        headers.push((b"big".to_vec(), vec![b'v'; 20_000]));
        let block = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        let (a, b) = block.split_at(100);
        let mut payload = vec![3]; // pad length
        payload.extend([0, 0, 0, 0, 16]); // priority
        payload.extend(a);
        payload.extend([0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 7, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 7, b));
        let got = frames(&run(&input, 4096).unwrap());
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0, got[0].1, got[0].2), (HEADERS, END_STREAM, 7));
        assert_eq!(got[0].3.len(), MAX_FRAME);
        assert_eq!(
            (got[1].0, got[1].1, got[1].2),
            (CONTINUATION, END_HEADERS, 7)
        );
        let joined = [got[0].3.clone(), got[1].3.clone()].concat();
        let decoded = decode(&joined);
        assert_eq!(decoded[3].1, "localhost");
        assert_eq!(decoded[6].1.len(), 20_000);
    }

    #[test]
    fn malformed_input_is_refused() {
        let with = |frames: &[Vec<u8>]| {
            let mut input = PREFACE.to_vec();
            for f in frames {
                input.extend(f);
            }
            run(&input, 5)
        };
        // A frame between HEADERS and its CONTINUATION.
        assert!(with(&[frame(HEADERS, 0, 1, &[0x82]), frame(0x0, 0, 1, b"x")]).is_err());
        // CONTINUATION with nothing open.
        assert!(with(&[frame(CONTINUATION, END_HEADERS, 1, &[0x82])]).is_err());
        // Padding longer than the frame.
        assert!(with(&[frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x82])]).is_err());
        // An index past the tables.
        assert!(with(&[frame(HEADERS, END_HEADERS, 1, &[0xff, 0x7f])]).is_err());
        // A table size over 4 096.
        assert!(with(&[frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe2, 0x1f, 0x82])]).is_err());
        // PUSH_PROMISE.
        assert!(with(&[frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2, 0x82])]).is_err());
        // A block over the bound, in CONTINUATIONs.
        let mut frames = vec![frame(HEADERS, 0, 1, &[0; 16_000])];
        for _ in 0..4 {
            frames.push(frame(CONTINUATION, 0, 1, &[0; 16_000]));
        }
        assert!(with(&frames).is_err());
        // A list that decodes past the bound: one indexed entry of the dynamic table, many times.
        let mut block = vec![0x40, 1, b'a', 126];
        block.extend([b'v'; 126]);
        block.extend(std::iter::repeat_n(0xbe, 1000)); // index 62: the entry just added
        assert!(with(&[frame(HEADERS, END_HEADERS, 1, &block)]).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_are_rewritten_or_refused_without_panicking(
            body in proptest::collection::vec(any::<u8>(), 0..2000),
            step in 1usize..64,
        ) {
            let mut input = PREFACE.to_vec();
            input.extend(body);
            let _ = run(&input, step);
        }

        #[test]
        fn any_header_block_is_decoded_or_refused_without_panicking(
            block in proptest::collection::vec(any::<u8>(), 0..300),
            flags in any::<u8>(),
        ) {
            let mut input = PREFACE.to_vec();
            input.extend(frame(HEADERS, flags, 1, &block));
            input.extend(frame(CONTINUATION, END_HEADERS, 1, &block));
            let _ = run(&input, 13);
        }
    }
}
