//! Compiles `proto/*.proto` with protox (pure Rust), so a build needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/function.proto", "proto/riff.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Bytes payloads are shared, not copied; header maps are B-trees, since a message carries
    // a handful of headers and SipHash-ing each name costs more than comparing it.
    tonic_prost_build::configure()
        .bytes(".")
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
