//! Compiles `cadre/v1/*.proto` with protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "cadre/v1/actors.proto",
        "cadre/v1/agent.proto",
        "cadre/v1/cluster.proto",
        "cadre/v1/conversations.proto",
        "cadre/v1/events.proto",
        "cadre/v1/log.proto",
        "cadre/v1/tools.proto",
        "cadre/v1/worker.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["."])?;
    // Served by gRPC reflection, so grpcurl works without the .proto files.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("cadre_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
