//! Generates the client and server of `proto/greeter.proto` with tonic-prost-build, running the
//! `protoc` that the `protoc-bin-vendored` crate ships (no system protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &["proto/greeter.proto"], &["proto"])?;
    Ok(())
}
