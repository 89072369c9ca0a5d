//! Compiles `proto/` with protox (pure Rust, so no system `protoc` is needed) and writes the file
//! descriptor set that server reflection serves. Also rebuilds the crate when a migration changes.

use std::{env, fs, path::PathBuf};

use prost::Message;

const TOKEN_BEARING_MESSAGES: [&str; 3] = [
    "sessiond.v1.TokenPair",
    "sessiond.v1.ValidateRequest",
    "sessiond.v1.RefreshRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["sessiond/v1/session.proto"];
    println!("cargo:rerun-if-changed=proto");
    // `sqlx::migrate!` embeds migrations/ at compile time, but cannot ask to be rebuilt when a
    // file is added there; a build script can (sqlx's documented workaround).
    println!("cargo:rerun-if-changed=migrations");

    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("sessiond_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The messages that carry a token get a `Debug` of their own (`src/api/pb.rs`) that
        // redacts it.
        .skip_debug(TOKEN_BEARING_MESSAGES)
        .compile_fds(descriptors)?;
    Ok(())
}
