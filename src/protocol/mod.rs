//! Wire adapters: protocol messages ⇄ the engine's [`Inbound`](crate::engine::Inbound) and
//! [`Outbound`](crate::engine::Outbound).

pub mod call;
pub mod riff;

/// Generated protobuf and gRPC code.
pub mod proto {
    /// `function.MessageFunction` (riff 0.0.x).
    pub mod function {
        tonic::include_proto!("function");
    }

    /// `streaming.Riff` (riff 0.4+).
    pub mod streaming {
        tonic::include_proto!("streaming");
    }

    /// The encoded descriptors of every proto, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
}
