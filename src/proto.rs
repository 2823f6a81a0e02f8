//! Generated protobuf and gRPC code: the messages and clients of the protocols the invoker
//! speaks. The function servers, generated over the engine-shaped `server::wire::Message` and
//! the `server::codec` codec, are included by their handlers (`server::call`, `server::riff`).

/// `function.MessageFunction` (riff 0.0.x).
pub mod function {
    tonic::include_proto!("function");
}

/// `streaming.Riff` (riff 0.4+).
pub mod streaming {
    tonic::include_proto!("streaming");
}

/// The invoker's admin service (Unix socket only).
pub mod admin {
    tonic::include_proto!("invoker.admin.v1");
}

/// Flink StateFun's remote function protocol (`invoker statefun`; proto/statefun/).
pub mod statefun {
    /// `io.statefun.sdk.reqreply`: `ToFunction` and `FromFunction`.
    pub mod reqreply {
        tonic::include_proto!("io.statefun.sdk.reqreply");
    }
    /// `io.statefun.sdk.types`: the wrappers of the built-in types.
    pub mod types {
        tonic::include_proto!("io.statefun.sdk.types");
    }
    /// `io.statefun.sdk.egress`: the Kafka egress's record.
    pub mod egress {
        tonic::include_proto!("io.statefun.sdk.egress");
    }
}

/// The encoded descriptors of the protos served on the gRPC port (function.proto and
/// riff.proto; not admin.proto, whose service is on the Unix socket), for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
