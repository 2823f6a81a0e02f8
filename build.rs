//! Compiles `proto/*.proto` with protox (pure Rust), so a build needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/function.proto",
        "proto/riff.proto",
        "proto/admin.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // What reflection advertises on the gRPC port: only the services served there. The admin
    // service is served on the Unix socket alone, so admin.proto is left out.
    let mut served = fds.clone();
    served
        .file
        .retain(|file| file.name.as_deref() != Some("admin.proto"));
    std::fs::write(
        out_dir.join("descriptor.bin"),
        prost::Message::encode_to_vec(&served),
    )?;
    // Bytes payloads are shared, not copied; header maps are B-trees, since a message carries
    // a handful of headers and SipHash-ing each name costs more than comparing it.
    tonic_prost_build::configure()
        .bytes(".")
        .btree_map(".")
        .compile_fds(fds.clone())?;
    // The function servers again: MessageFunction over the hand-written
    // `server::wire::Message`, which decodes straight into the engine's header pairs (see
    // src/server/wire.rs), and Riff over the messages generated above; both with the codec
    // that answers a malformed message INVALID_ARGUMENT (src/server/codec.rs).
    let server_dir = out_dir.join("server");
    std::fs::create_dir_all(&server_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&server_dir)
        .codec_path("crate::server::codec::ServerCodec")
        .extern_path(".function.Message", "crate::server::wire::Message")
        .extern_path(".streaming", "crate::proto::streaming")
        .extern_path(".invoker.admin.v1", "crate::proto::admin")
        .compile_fds(fds)?;
    // Flink StateFun's remote function protocol (`invoker statefun`): messages only, not
    // served over gRPC, so kept out of the reflection descriptor set above.
    let statefun = [
        "proto/statefun/request-reply.proto",
        "proto/statefun/types.proto",
        "proto/statefun/kafka-egress.proto",
    ];
    for proto in statefun {
        println!("cargo:rerun-if-changed={proto}");
    }
    let statefun_fds = protox::compile(statefun, ["proto/statefun"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .bytes(".")
        .compile_fds(statefun_fds)?;
    Ok(())
}
