//! The signing key (Ed25519, PKCS#8 PEM) and refresh key files sessiond reads.

use std::path::PathBuf;

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
        let signing = ed25519_dalek::SigningKey::from_bytes(&random_bytes());
        std::fs::write(
            dir.path().join("signing.pem"),
            signing.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
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

/// 32 random bytes.
pub fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).unwrap();
    bytes
}
