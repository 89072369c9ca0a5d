//! The signing key (Ed25519, PKCS#8 PEM) and refresh key files sessiond reads.

use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{EncodePrivateKey, spki::der::pem::LineEnding};
use tempfile::TempDir;

/// Fresh keys in a temp folder; several sessionds of one test may share them.
pub struct Keys {
    dir: TempDir,
    /// The key whose PEM is `signing_file()`.
    pub signing: ed25519_dalek::SigningKey,
}

impl Keys {
    pub fn generate() -> Self {
        let dir = TempDir::new().unwrap();
        let signing = write_new_signing_key(&dir.path().join("signing.pem"));
        std::fs::write(dir.path().join("refresh.key"), random_bytes()).unwrap();
        Self { dir, signing }
    }

    pub fn signing_file(&self) -> PathBuf {
        self.dir.path().join("signing.pem")
    }

    pub fn refresh_file(&self) -> PathBuf {
        self.dir.path().join("refresh.key")
    }

    /// `SESSIOND_SIGNING_KEY_FILE` and `SESSIOND_REFRESH_KEY_FILE`, for `SessiondProcess::start`.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            (
                "SESSIOND_SIGNING_KEY_FILE",
                self.signing_file().display().to_string(),
            ),
            (
                "SESSIOND_REFRESH_KEY_FILE",
                self.refresh_file().display().to_string(),
            ),
        ]
    }
}

/// Writes `key` as a PKCS#8 PEM file, as `openssl genpkey -algorithm ed25519` would.
pub fn write_signing_key(path: &Path, key: &ed25519_dalek::SigningKey) {
    std::fs::write(path, key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
}

/// Writes a new random signing key to `path` (see [`write_signing_key`]); the key.
pub fn write_new_signing_key(path: &Path) -> ed25519_dalek::SigningKey {
    let key = ed25519_dalek::SigningKey::from_bytes(&random_bytes());
    write_signing_key(path, &key);
    key
}

/// 32 random bytes: a key seed, a refresh key, a token hash.
pub fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).unwrap();
    bytes
}
