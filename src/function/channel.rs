//! The channel between the serving process and a worker process (`--isolation process`): the
//! boundary's own messages, framed compactly, over a Unix socket pair.
//!
//! A frame is `length: u32 LE` (of what follows, at most [`MAX_FRAME`]), `kind: u8`, `call:
//! u64 LE` (0 for frames about no call), then the kind's fields: integers little-endian, text
//! and bytes as `len: u32 LE` and the bytes, headers as a count and pairs. Both sides decode
//! with [`Reader`], which never panics on bad input: a short or malformed frame is an error,
//! and the side that reads it drops the channel (the host then treats the worker as crashed).
//! Pure: no I/O here.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{
    Address, Batch, Cell, Expiration, FunctionError, FunctionInfo, Headers, PortInfo, Sent, Shape,
    StatefulInfo, Text, TypedValue, ValueSpecInfo,
};

/// The largest frame either side sends or accepts: an OpenWhisk `/init` carries a library of up
/// to 64 MiB in the worker's start frame; call payloads are bounded far below this by the
/// fronts (gRPC's message limit, `/run`'s 16 MiB).
pub const MAX_FRAME: usize = 80 << 20;

/// A request/reply call that has run this long in a worker counts as blocking (as in process,
/// `engine::Blocking::THRESHOLD`): the host queues no more calls behind it, and asks the worker
/// (`RECLAIM`) to give back those queued behind it (`RETURNED`), for another worker to run.
pub const STALLED: std::time::Duration = std::time::Duration::from_millis(1);

/// How many inputs of a stream's port the host forwards ahead of the worker's function
/// taking them: the worker's queue for a port holds at most this many (a host that sends more
/// is a malformed channel). As `worker::WINDOW`, it bounds how much a stream moves per round
/// trip over the channel.
pub const INPUT_WINDOW: u32 = 1024;

/// The host forwards a port's next input only while those forwarded and not yet taken add up
/// to less than this many payload bytes (one at least, whatever its size): with
/// [`INPUT_WINDOW`], what a stream's inputs can hold in a worker is about this plus one
/// message.
pub const INPUT_WINDOW_BYTES: usize = 1 << 20;

/// At most this many bytes of a stream's outputs are sent and not yet taken by the host's
/// caller, per output port (at least one output whatever its size): the host buffers no more
/// for a caller that does not read.
pub const OUTPUT_WINDOW_BYTES: usize = 1 << 20;

/// Frame kinds, host to worker.
pub mod to_worker {
    /// Load a library, pick a function, run the init hook; the worker answers `HELLO` or
    /// `INIT_FAILED`.
    pub const START: u8 = 1;
    /// Invoke the request/reply function once. On the request/reply socket (the second socket
    /// pair, whose worker end the host passes first thing on the channel), which the worker's
    /// call thread reads itself; every other frame is on the channel.
    pub const INVOKE: u8 = 2;
    /// The call was cancelled (the caller went away, its deadline passed).
    pub const CANCEL: u8 = 3;
    /// Open the streaming function.
    pub const OPEN: u8 = 4;
    /// A message for a stream's input port.
    pub const INPUT: u8 = 5;
    /// A stream's input port has ended.
    pub const INPUT_END: u8 = 6;
    /// The host may take `n` more outputs of a stream's output port, encoded as a media type.
    pub const CREDIT: u8 = 7;
    /// The host dropped the stream: release it.
    pub const CLOSE: u8 = 8;
    /// Run the shutdown hook and exit.
    pub const SHUTDOWN: u8 = 9;
    /// Calls wait behind one that has run past [`STALLED`](super::STALLED): the worker gives
    /// back (`RETURNED`) every call it has not started, if its call is still running.
    pub const RECLAIM: u8 = 10;
}

/// Frame kinds, worker to host.
pub mod to_host {
    /// The worker loaded the library and ran its init hook: here is the function.
    pub const HELLO: u8 = 64;
    /// The worker could not load the library or its init hook failed.
    pub const INIT_FAILED: u8 = 65;
    /// A request/reply call's result.
    pub const REPLY: u8 = 66;
    /// A custom metric of a call.
    pub const METRIC: u8 = 67;
    /// A streaming call opened (or failed to: then it carries the error).
    pub const OPENED: u8 = 68;
    /// An output of a stream's port.
    pub const OUTPUT: u8 = 69;
    /// A stream's output port ended (or failed: then it carries the error).
    pub const OUTPUT_END: u8 = 70;
    /// The function took `n` more inputs of a port: the host may forward `n` more (its
    /// credits for the port's [`INPUT_WINDOW`](super::INPUT_WINDOW)).
    pub const TAKEN: u8 = 71;
    /// The function released an input port, having taken `n: u64` inputs of it in all: the
    /// host releases the call's input, and any it forwarded past `n` were never read.
    pub const RELEASED: u8 = 72;
    /// A request/reply call the worker gives back without having started it, because the
    /// call it runs has run past [`STALLED`](super::STALLED): the host sends it to another
    /// worker. Never the call the worker runs, and always before that call's `REPLY`, on the
    /// request/reply socket as `REPLY` and the calls' `METRIC`s.
    pub const RETURNED: u8 = 73;
}

/// Result codes of `REPLY`, `OPENED` and `OUTPUT_END`.
pub mod code {
    /// Success (with an output for `REPLY`).
    pub const OK: u8 = 0;
    /// Success without an output.
    pub const EMPTY: u8 = 1;
    /// `FunctionError::Failed`.
    pub const FAILED: u8 = 2;
    /// `FunctionError::Panicked`.
    pub const PANICKED: u8 = 3;
    /// `FunctionError::BadInput`.
    pub const BAD_INPUT: u8 = 4;
    /// `FunctionError::Abi`.
    pub const ABI: u8 = 5;
}

/// A frame being written: [`Frame::new`], fields, then [`Frame::finish`] into the output buffer.
pub struct Frame {
    buf: BytesMut,
}

impl Frame {
    /// A frame of `kind` about `call`.
    pub fn new(kind: u8, call: u64) -> Frame {
        let mut buf = BytesMut::with_capacity(64);
        buf.put_u32_le(0);
        buf.put_u8(kind);
        buf.put_u64_le(call);
        Frame { buf }
    }

    /// Appends a byte.
    pub fn u8(mut self, v: u8) -> Frame {
        self.buf.put_u8(v);
        self
    }

    /// Appends a u32.
    pub fn u32(mut self, v: u32) -> Frame {
        self.buf.put_u32_le(v);
        self
    }

    /// Appends a u64.
    pub fn u64(mut self, v: u64) -> Frame {
        self.buf.put_u64_le(v);
        self
    }

    /// Appends an i64.
    pub fn i64(mut self, v: i64) -> Frame {
        self.buf.put_i64_le(v);
        self
    }

    /// Appends an f64.
    pub fn f64(mut self, v: f64) -> Frame {
        self.buf.put_f64_le(v);
        self
    }

    /// Appends bytes (length-prefixed).
    pub fn bytes(mut self, v: &[u8]) -> Frame {
        self.buf
            .put_u32_le(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.buf.put_slice(&v[..v.len().min(u32::MAX as usize)]);
        self
    }

    /// Appends text.
    pub fn str(self, v: &str) -> Frame {
        self.bytes(v.as_bytes())
    }

    /// Appends header pairs.
    pub fn headers(mut self, headers: &[(Text, Text)]) -> Frame {
        self.buf.put_u32_le(headers.len() as u32);
        for (name, value) in headers {
            self = self.str(name).str(value);
        }
        self
    }

    /// Appends string pairs.
    pub fn pairs(mut self, pairs: &[(String, String)]) -> Frame {
        self.buf.put_u32_le(pairs.len() as u32);
        for (name, value) in pairs {
            self = self.str(name).str(value);
        }
        self
    }

    /// Appends a function error as its code and text.
    pub fn error(self, e: &FunctionError) -> Frame {
        let (code, text) = match e {
            FunctionError::Failed(t) => (code::FAILED, t),
            FunctionError::Panicked(t) => (code::PANICKED, t),
            FunctionError::BadInput(t) => (code::BAD_INPUT, t),
            FunctionError::Abi(t) | FunctionError::Crashed(t) => (code::ABI, t),
        };
        self.u8(code).str(text)
    }

    /// Appends a function's description.
    pub fn info(mut self, info: &FunctionInfo) -> Frame {
        self = self
            .str(&info.name)
            .u8(match info.shape {
                Shape::RequestReply => 0,
                Shape::Streaming => 1,
            })
            .u8(u8::from(info.uses_context));
        for ports in [&info.inputs, &info.outputs] {
            self = self.u32(ports.len() as u32);
            for port in ports {
                self = self.str(&port.name).u32(port.media_types.len() as u32);
                for t in &port.media_types {
                    self = self.str(t);
                }
            }
        }
        match &info.stateful {
            None => self.u8(0),
            Some(stateful) => {
                self = self
                    .u8(1)
                    .str(&stateful.function_type)
                    .u32(stateful.message_types.len() as u32);
                for t in &stateful.message_types {
                    self = self.str(t);
                }
                self = self.u32(stateful.values.len() as u32);
                for value in &stateful.values {
                    let (mode, millis) = match value.expiration {
                        Expiration::Never => (0, 0),
                        Expiration::AfterWrite(ms) => (1, ms),
                        Expiration::AfterInvoke(ms) => (2, ms),
                    };
                    self = self
                        .str(&value.name)
                        .str(&value.typename)
                        .u8(mode)
                        .u64(millis);
                }
                self
            }
        }
    }

    /// Appends an address.
    pub fn address(self, address: &Address) -> Frame {
        self.str(&address.function_type).str(&address.id)
    }

    fn value(self, value: &Option<Bytes>) -> Frame {
        match value {
            None => self.u8(0),
            Some(bytes) => self.u8(1).bytes(bytes),
        }
    }

    fn typed(self, value: &TypedValue) -> Frame {
        self.str(&value.typename).bytes(&value.value)
    }

    /// Appends a StateFun invocation's batch as it stands before the invocation: its addresses,
    /// the values of its cells (by position), and its byte count and limit.
    pub fn batch_in(
        mut self,
        self_address: &Address,
        caller: Option<&Address>,
        batch: &Batch,
    ) -> Frame {
        self = self.address(self_address);
        self = match caller {
            None => self.u8(0),
            Some(caller) => self.u8(1).address(caller),
        };
        self = self
            .u64(batch.bytes as u64)
            .u64(batch.limit as u64)
            .u32(batch.cells.len() as u32);
        for cell in &batch.cells {
            self = self.str(&cell.name).value(&cell.value);
        }
        self
    }

    /// Appends what one invocation did to its batch: the cells it changed (by position), what
    /// it sent, and the batch's byte count after it. `batch` began as [`Frame::batch_in`]'s
    /// with every cell unchanged.
    pub fn batch_out(mut self, batch: &Batch) -> Frame {
        self = self.u64(batch.bytes as u64);
        let changed = batch.cells.iter().filter(|c| c.changed).count();
        self = self.u32(changed as u32);
        for (index, cell) in batch.cells.iter().enumerate() {
            if cell.changed {
                self = self.u32(index as u32).value(&cell.value);
            }
        }
        self = self.u32(batch.sent.len() as u32);
        for sent in &batch.sent {
            self = match sent {
                Sent::Message { target, value } => self.u8(0).address(target).typed(value),
                Sent::Delayed {
                    target,
                    value,
                    delay_millis,
                    cancellation_token,
                } => self
                    .u8(1)
                    .address(target)
                    .typed(value)
                    .u64(*delay_millis)
                    .str(cancellation_token),
                Sent::Cancel { cancellation_token } => self.u8(2).str(cancellation_token),
                Sent::Egress { egress, value } => self.u8(3).str(egress).typed(value),
            };
        }
        self
    }

    /// The encoded frame, its length filled in.
    pub fn finish(mut self) -> Bytes {
        let len = (self.buf.len() - 4) as u32;
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        self.buf.freeze()
    }
}

/// A malformed frame.
#[derive(Debug, thiserror::Error)]
#[error("malformed frame from the other side of the worker channel: {0}")]
pub struct Malformed(pub &'static str);

/// Splits the next whole frame off the front of `buf`: `Ok(None)` until one is complete.
pub fn next_frame(buf: &mut BytesMut) -> Result<Option<(u8, u64, Reader)>, Malformed> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(Malformed("frame too long"));
    }
    if len < 9 {
        return Err(Malformed("frame too short"));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let mut frame = buf.split_to(len).freeze();
    let kind = frame.get_u8();
    let call = frame.get_u64_le();
    Ok(Some((kind, call, Reader(frame))))
}

/// Reads a frame's fields in order.
pub struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), Malformed> {
        match self.0.remaining() >= n {
            true => Ok(()),
            false => Err(Malformed("truncated field")),
        }
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, Malformed> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }

    /// A u32.
    pub fn u32(&mut self) -> Result<u32, Malformed> {
        self.need(4)?;
        Ok(self.0.get_u32_le())
    }

    /// A u64.
    pub fn u64(&mut self) -> Result<u64, Malformed> {
        self.need(8)?;
        Ok(self.0.get_u64_le())
    }

    /// An i64.
    pub fn i64(&mut self) -> Result<i64, Malformed> {
        self.need(8)?;
        Ok(self.0.get_i64_le())
    }

    /// An f64.
    pub fn f64(&mut self) -> Result<f64, Malformed> {
        self.need(8)?;
        Ok(self.0.get_f64_le())
    }

    /// Bytes, sharing the frame's buffer.
    pub fn bytes(&mut self) -> Result<Bytes, Malformed> {
        let len = self.u32()? as usize;
        self.need(len)?;
        Ok(self.0.split_to(len))
    }

    /// Text.
    pub fn str(&mut self) -> Result<String, Malformed> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| Malformed("text is not UTF-8"))
    }

    fn text(&mut self) -> Result<Text, Malformed> {
        let bytes = self.bytes()?;
        Text::from_utf8(&bytes[..]).map_err(|_| Malformed("text is not UTF-8"))
    }

    /// Header pairs.
    pub fn headers(&mut self) -> Result<Headers, Malformed> {
        let n = self.u32()? as usize;
        // Each pair takes at least 8 bytes: a count past that is a lie, not an allocation.
        self.need(n.saturating_mul(8))?;
        let mut headers = Vec::with_capacity(n);
        for _ in 0..n {
            headers.push((self.text()?, self.text()?));
        }
        Ok(headers)
    }

    /// String pairs.
    pub fn pairs(&mut self) -> Result<Vec<(String, String)>, Malformed> {
        let n = self.u32()? as usize;
        self.need(n.saturating_mul(8))?;
        let mut pairs = Vec::with_capacity(n);
        for _ in 0..n {
            pairs.push((self.str()?, self.str()?));
        }
        Ok(pairs)
    }

    /// A function error written by [`Frame::error`], its code already read.
    pub fn error(&mut self, code: u8) -> Result<FunctionError, Malformed> {
        let text = self.str()?;
        Ok(match code {
            code::FAILED => FunctionError::Failed(text),
            code::PANICKED => FunctionError::Panicked(text),
            code::BAD_INPUT => FunctionError::BadInput(text),
            _ => FunctionError::Abi(text),
        })
    }

    /// A function's description.
    pub fn info(&mut self) -> Result<FunctionInfo, Malformed> {
        let name = self.str()?;
        let shape = match self.u8()? {
            0 => Shape::RequestReply,
            1 => Shape::Streaming,
            _ => return Err(Malformed("unknown shape")),
        };
        let uses_context = self.u8()? != 0;
        let mut ports = [Vec::new(), Vec::new()];
        for list in &mut ports {
            let n = self.u32()? as usize;
            self.need(n.saturating_mul(8))?;
            for _ in 0..n {
                let name = self.str()?;
                let m = self.u32()? as usize;
                self.need(m.saturating_mul(4))?;
                let media_types = (0..m).map(|_| self.str()).collect::<Result<_, _>>()?;
                list.push(PortInfo { name, media_types });
            }
        }
        let [inputs, outputs] = ports;
        let stateful = match self.u8()? {
            0 => None,
            _ => {
                let function_type = self.str()?;
                let n = self.u32()? as usize;
                self.need(n.saturating_mul(4))?;
                let message_types = (0..n).map(|_| self.str()).collect::<Result<_, _>>()?;
                let n = self.u32()? as usize;
                self.need(n.saturating_mul(17))?;
                let mut values = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = self.str()?;
                    let typename = self.str()?;
                    let mode = self.u8()?;
                    let millis = self.u64()?;
                    let expiration = match mode {
                        0 => Expiration::Never,
                        1 => Expiration::AfterWrite(millis),
                        2 => Expiration::AfterInvoke(millis),
                        _ => return Err(Malformed("unknown expiration")),
                    };
                    values.push(ValueSpecInfo {
                        name,
                        typename,
                        expiration,
                    });
                }
                Some(StatefulInfo {
                    function_type,
                    message_types,
                    values,
                })
            }
        };
        Ok(FunctionInfo {
            name,
            shape,
            inputs,
            outputs,
            uses_context,
            stateful,
        })
    }

    /// An address.
    pub fn address(&mut self) -> Result<Address, Malformed> {
        Ok(Address {
            function_type: self.str()?,
            id: self.str()?,
        })
    }

    fn value(&mut self) -> Result<Option<Bytes>, Malformed> {
        match self.u8()? {
            0 => Ok(None),
            _ => Ok(Some(self.bytes()?)),
        }
    }

    fn typed(&mut self) -> Result<TypedValue, Malformed> {
        Ok(TypedValue {
            typename: self.str()?,
            value: self.bytes()?,
        })
    }

    /// A batch written by [`Frame::batch_in`]: the addresses, and the batch with every cell
    /// unchanged and nothing sent.
    pub fn batch_in(&mut self) -> Result<(Address, Option<Address>, Batch), Malformed> {
        let self_address = self.address()?;
        let caller = match self.u8()? {
            0 => None,
            _ => Some(self.address()?),
        };
        let bytes = self.u64()? as usize;
        let limit = self.u64()? as usize;
        let n = self.u32()? as usize;
        self.need(n.saturating_mul(5))?;
        let mut cells = Vec::with_capacity(n);
        for _ in 0..n {
            cells.push(Cell {
                name: self.str()?,
                value: self.value()?,
                changed: false,
            });
        }
        let batch = Batch {
            cells,
            sent: Vec::new(),
            bytes,
            limit,
        };
        Ok((self_address, caller, batch))
    }

    /// Applies what [`Frame::batch_out`] wrote to the batch the invocation ran in.
    pub fn batch_out(&mut self, batch: &mut Batch) -> Result<(), Malformed> {
        let bytes = self.u64()? as usize;
        let n = self.u32()? as usize;
        self.need(n.saturating_mul(5))?;
        let mut changed = Vec::with_capacity(n);
        for _ in 0..n {
            let index = self.u32()? as usize;
            if index >= batch.cells.len() {
                return Err(Malformed("no such state cell"));
            }
            changed.push((index, self.value()?));
        }
        let n = self.u32()? as usize;
        self.need(n)?;
        let mut sent = Vec::with_capacity(n);
        for _ in 0..n {
            sent.push(match self.u8()? {
                0 => Sent::Message {
                    target: self.address()?,
                    value: self.typed()?,
                },
                1 => Sent::Delayed {
                    target: self.address()?,
                    value: self.typed()?,
                    delay_millis: self.u64()?,
                    cancellation_token: self.str()?,
                },
                2 => Sent::Cancel {
                    cancellation_token: self.str()?,
                },
                3 => Sent::Egress {
                    egress: self.str()?,
                    value: self.typed()?,
                },
                _ => return Err(Malformed("unknown message sent")),
            });
        }
        // Read whole before anything applies.
        for (index, value) in changed {
            let cell = &mut batch.cells[index];
            cell.value = value;
            cell.changed = true;
        }
        batch.sent.extend(sent);
        batch.bytes = bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back_field_by_field() {
        let info = FunctionInfo {
            name: "f".into(),
            shape: Shape::Streaming,
            inputs: vec![PortInfo {
                name: "in".into(),
                media_types: vec!["text/plain".into()],
            }],
            outputs: vec![],
            uses_context: true,
            stateful: None,
        };
        let frame = Frame::new(to_host::HELLO, 7)
            .info(&info)
            .headers(&[("a".into(), "b".into())])
            .bytes(b"xyz")
            .i64(-1)
            .error(&FunctionError::Panicked("boom".into()))
            .finish();
        let mut buf = BytesMut::from(&frame[..5]);
        assert!(next_frame(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&frame[5..]);
        let (kind, call, mut r) = next_frame(&mut buf).unwrap().unwrap();
        assert_eq!((kind, call), (to_host::HELLO, 7));
        assert_eq!(r.info().unwrap(), info);
        assert_eq!(r.headers().unwrap(), vec![("a".into(), "b".into())]);
        assert_eq!(&r.bytes().unwrap()[..], b"xyz");
        assert_eq!(r.i64().unwrap(), -1);
        let code = r.u8().unwrap();
        assert_eq!(
            r.error(code).unwrap(),
            FunctionError::Panicked("boom".into())
        );
        assert!(r.u8().is_err());
        assert!(buf.is_empty());
    }

    #[test]
    fn a_stateful_description_and_a_batch_cross_both_ways() {
        let info = FunctionInfo {
            name: "greeter".into(),
            shape: Shape::RequestReply,
            inputs: vec![],
            outputs: vec![],
            uses_context: true,
            stateful: Some(StatefulInfo {
                function_type: "example/greeter".into(),
                message_types: vec!["io.statefun.types/string".into()],
                values: vec![
                    ValueSpecInfo {
                        name: "seen".into(),
                        typename: "io.statefun.types/int".into(),
                        expiration: Expiration::AfterInvoke(5),
                    },
                    ValueSpecInfo {
                        name: "gone".into(),
                        typename: "example/Blob".into(),
                        expiration: Expiration::Never,
                    },
                ],
            }),
        };
        let me = Address {
            function_type: "example/greeter".into(),
            id: "ann".into(),
        };
        let host = Batch {
            cells: vec![
                Cell {
                    name: "seen".into(),
                    value: None,
                    changed: false,
                },
                Cell {
                    name: "gone".into(),
                    value: Some(Bytes::from_static(b"x")),
                    changed: true,
                },
            ],
            sent: vec![],
            bytes: 1,
            limit: 100,
        };
        let frame = Frame::new(to_worker::INVOKE, 1)
            .info(&info)
            .batch_in(&me, None, &host)
            .finish();
        let mut buf = BytesMut::from(&frame[..]);
        let (_, _, mut r) = next_frame(&mut buf).unwrap().unwrap();
        assert_eq!(r.info().unwrap(), info);
        let (address, caller, mut worker) = r.batch_in().unwrap();
        assert_eq!((address, caller), (me.clone(), None));
        assert_eq!((worker.bytes, worker.limit), (1, 100));
        assert!(worker.cells.iter().all(|c| !c.changed));
        // The invocation writes one cell and sends two messages.
        worker.cells[0].value = Some(Bytes::from_static(b"1"));
        worker.cells[0].changed = true;
        let value = TypedValue {
            typename: "io.statefun.types/string".into(),
            value: Bytes::from_static(b"hi"),
        };
        worker.sent = vec![
            Sent::Delayed {
                target: me.clone(),
                value: value.clone(),
                delay_millis: 60_000,
                cancellation_token: "t".into(),
            },
            Sent::Egress {
                egress: "example/out".into(),
                value,
            },
        ];
        worker.bytes = 9;
        let frame = Frame::new(to_host::REPLY, 1).batch_out(&worker).finish();
        let mut buf = BytesMut::from(&frame[..]);
        let (_, _, mut r) = next_frame(&mut buf).unwrap().unwrap();
        let mut host = host;
        r.batch_out(&mut host).unwrap();
        assert_eq!(host.cells[0].value.as_deref(), Some(&b"1"[..]));
        assert!(host.cells[0].changed && host.cells[1].changed);
        assert_eq!(host.sent, worker.sent);
        assert_eq!(host.bytes, 9);
        // A cell the host does not have is malformed, and nothing applies.
        let mut bad = Frame::new(to_host::REPLY, 1).u64(0).u32(1).u32(7).u8(0);
        bad = bad.u32(0);
        let frame = bad.finish();
        let mut buf = BytesMut::from(&frame[..]);
        let (_, _, mut r) = next_frame(&mut buf).unwrap().unwrap();
        assert!(r.batch_out(&mut host).is_err());
        assert_eq!(host.bytes, 9);
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        for bad in [
            &[0u8, 0, 0, 0][..],
            &[255, 255, 255, 255],
            &[9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            let mut buf = BytesMut::from(bad);
            match next_frame(&mut buf) {
                Err(_) => {}
                Ok(Some((_, _, mut r))) => {
                    assert!(r.headers().is_err());
                }
                Ok(None) => panic!("{bad:?} waits for more"),
            }
        }
        // A count that promises more pairs than the frame holds.
        let frame = Frame::new(to_worker::INVOKE, 1).u32(1_000_000).finish();
        let mut buf = BytesMut::from(&frame[..]);
        let (_, _, mut r) = next_frame(&mut buf).unwrap().unwrap();
        assert!(r.headers().is_err());
    }
}
