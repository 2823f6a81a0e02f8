//! Wire adapters: protocol messages ⇄ the engine's [`Inbound`](crate::engine::Inbound) and
//! [`Outbound`](crate::engine::Outbound).

pub mod call;

/// Generated protobuf and gRPC code.
pub mod proto {
    /// `function.MessageFunction` (riff 0.0.x).
    pub mod function {
        tonic::include_proto!("function");
    }

    /// The encoded descriptors of every proto, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
}
