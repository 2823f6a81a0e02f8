//! The servers' gRPC codec: tonic-prost's, except that a message that does not decode is the
//! client's fault, `INVALID_ARGUMENT: Invoker: malformed message: ...`, where tonic-prost
//! answers `INTERNAL`. `build.rs` generates both function servers with it (`codec_path`);
//! clients, the admin service and the benchmark's reference server keep `tonic_prost`'s.
//!
//! It decodes exactly as tonic-prost does (`Message::decode` on tonic's buffer), so a message
//! costs nothing more; only the error path differs.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// What a malformed message's status starts with.
pub const MALFORMED: &str = "Invoker: malformed message";

/// A [`Codec`] encoding `T` and decoding `U` with prost; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct ServerCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ServerCodec<T, U> {
    fn default() -> Self {
        ServerCodec(PhantomData)
    }
}

impl<T, U> Codec for ServerCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ServerDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ServerDecoder(PhantomData)
    }
}

/// Decodes `U`; a decode error is `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Copy)]
pub struct ServerDecoder<U>(PhantomData<U>);

impl<U: prost::Message + Default> Decoder for ServerDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        match U::decode(buf) {
            Ok(message) => Ok(Some(message)),
            Err(error) => Err(malformed(&error)),
        }
    }
}

/// The status of a message that does not decode.
#[cold]
fn malformed(error: &prost::DecodeError) -> Status {
    Status::invalid_argument(format!("{MALFORMED}: {error}"))
}
