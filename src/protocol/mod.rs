//! Wire adapters: protocol messages ⇄ the engine's [`Inbound`](crate::engine::Inbound) and
//! [`Outbound`](crate::engine::Outbound).

pub mod call;
pub mod codec;
pub mod riff;
pub mod wire;

/// Generated protobuf and gRPC code.
pub mod proto {
    /// `function.MessageFunction` (riff 0.0.x).
    pub mod function {
        tonic::include_proto!("function");
    }

    /// The `function.MessageFunction` server, over the engine-shaped [`wire::Message`]
    /// (`crate::protocol::wire::Message`) instead of the generated message type, with the codec
    /// that answers a malformed message `INVALID_ARGUMENT`.
    pub mod function_server {
        include!(concat!(env!("OUT_DIR"), "/server/function.rs"));
    }

    /// `streaming.Riff` (riff 0.4+).
    pub mod streaming {
        tonic::include_proto!("streaming");
    }

    /// The `streaming.Riff` server, with the codec that answers a malformed message
    /// `INVALID_ARGUMENT` ([`codec::ServerCodec`](crate::protocol::codec::ServerCodec)).
    pub mod streaming_server {
        include!(concat!(env!("OUT_DIR"), "/server/streaming.rs"));
    }

    /// The invoker's admin service (Unix socket only).
    pub mod admin {
        tonic::include_proto!("invoker.admin.v1");
    }

    /// The encoded descriptors of the protos served on the gRPC port (function.proto and
    /// riff.proto; not admin.proto, whose service is on the Unix socket), for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
}
