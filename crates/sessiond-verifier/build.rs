//! Compiles sessiond's API (`proto/` at the workspace root) with protox, pure Rust, so no system
//! `protoc` is needed. Only the client is the library's; the server is generated for the crate's
//! own unit tests (`#[cfg(test)]`), which serve revocation streams to the client.

use std::path::Path;

/// The messages that carry a token get a `Debug` of their own (`src/pb.rs`) that redacts it.
const TOKEN_BEARING_MESSAGES: [&str; 3] = [
    "sessiond.v1.TokenPair",
    "sessiond.v1.ValidateRequest",
    "sessiond.v1.RefreshRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let descriptors = protox::compile(["sessiond/v1/session.proto"], [root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .server_mod_attribute("sessiond.v1", "#[cfg(test)]")
        // The tests' server implements only the calls the verifier makes.
        .generate_default_stubs(true)
        .skip_debug(TOKEN_BEARING_MESSAGES)
        .compile_fds(descriptors)?;
    Ok(())
}
