//! Compiles `proto/*.proto` into tonic client and server code without protoc (protox parses them).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/demo.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
