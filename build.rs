//! Compiles `proto/` with protox (pure Rust, so no system `protoc` is needed) and writes the file
//! descriptor sets that server reflection serves. Also rebuilds the crate when a migration changes.
//!
//! Two sets: sessiond's own API, and Envoy's external authorization API (`proto/vendor/`, see its
//! README), which sessiond serves so that Envoy and Istio can ask it about a request.

use std::{env, fs, path::PathBuf};

use prost::Message;

const TOKEN_BEARING_MESSAGES: [&str; 3] = [
    "sessiond.v1.TokenPair",
    "sessiond.v1.ValidateRequest",
    "sessiond.v1.RefreshRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // `sqlx::migrate!` embeds migrations/ at compile time, but cannot ask to be rebuilt when a
    // file is added there; a build script can (sqlx's documented workaround).
    println!("cargo:rerun-if-changed=migrations");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let sessiond = protox::compile(["sessiond/v1/session.proto"], ["proto"])?;
    fs::write(
        out_dir.join("sessiond_descriptor.bin"),
        sessiond.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The messages that carry a token get a `Debug` of their own (`src/api/pb.rs`) that
        // redacts it.
        .skip_debug(TOKEN_BEARING_MESSAGES)
        .compile_fds(sessiond)?;

    // Envoy's packages nest (`envoy.service.auth.v3` names `envoy.config.core.v3`), so they are
    // included as one module tree (`envoy_includes.rs`). The checked request carries the
    // client's headers, credentials included: its `Debug` is `src/gateway/envoy.rs`'s.
    let envoy = protox::compile(
        ["envoy/service/auth/v3/external_auth.proto"],
        ["proto/vendor"],
    )?;
    fs::write(out_dir.join("envoy_descriptor.bin"), envoy.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .skip_debug([".envoy.service.auth.v3.AttributeContext.HttpRequest"])
        .include_file("envoy_includes.rs")
        .compile_fds(envoy)?;
    Ok(())
}
