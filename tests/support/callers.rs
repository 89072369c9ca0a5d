//! Callers files and API-key clients, for the tests of who may call what.

use std::path::PathBuf;

use sessiond::api::pb::session_service_client::SessionServiceClient;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// A SessionService client that sends `authorization: Bearer <key>` on every call.
pub type KeyedClient = SessionServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <key>` to each request.
#[derive(Clone)]
pub struct Bearer(pub MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A client of `channel` that presents `key`.
pub fn keyed_client(channel: Channel, key: &str) -> KeyedClient {
    let value = format!("Bearer {key}").parse().unwrap();
    SessionServiceClient::with_interceptor(channel, Bearer(value))
}

/// The `api_key_sha256` of `key`, as `printf %s "$KEY" | sha256sum` prints it.
pub fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A callers file in its own folder, replaced whole (written aside, then renamed) as a
/// ConfigMap update does.
pub struct CallersFile {
    dir: TempDir,
}

impl CallersFile {
    pub fn new(text: &str) -> Self {
        let file = Self {
            dir: TempDir::new().unwrap(),
        };
        file.replace(text);
        file
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("callers.toml")
    }

    pub fn replace(&self, text: &str) {
        let aside = self.dir.path().join("callers.toml.new");
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(aside, self.path()).unwrap();
    }
}

/// One `[[caller]]` recognised by `key`, allowed `allow` (TOML array items, e.g. `"Validate"`).
pub fn key_caller(name: &str, key: &str, allow: &str) -> String {
    format!(
        "[[caller]]\nname = \"{name}\"\napi_key_sha256 = \"{}\"\nallow = [{allow}]\n\n",
        key_hash(key)
    )
}
