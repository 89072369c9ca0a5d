//! Key material: the Ed25519 key that signs access tokens and the HMAC key that derives refresh
//! tokens. Neither ever reaches a log: their `Debug` shows only the public part.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use arc_swap::ArcSwap;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{DecodingKey, EncodingKey};
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// An Ed25519 key pair and its key id, the RFC 7638 JWK thumbprint of the public key.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    public_key: [u8; 32],
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl SigningKey {
    /// Reads a PKCS#8 PEM private key (as written by `openssl genpkey -algorithm ed25519`).
    pub fn from_pem_file(path: &Path) -> anyhow::Result<Self> {
        let content = read_secret_file(path)?;
        let not_a_key = || {
            anyhow::anyhow!(
                "{} is not an Ed25519 private key in PKCS#8 PEM",
                path.display()
            )
        };
        let pem = std::str::from_utf8(&content).map_err(|_| not_a_key())?;
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|_| not_a_key())?;
        Self::from_dalek(&key)
    }

    /// A random key that lives as long as the process.
    pub fn generate() -> anyhow::Result<Self> {
        let seed = super::random_bytes::<32>()?;
        Self::from_dalek(&ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// A new random key, as [`SigningKey::from_pem_file`] reads it.
    pub fn generate_pem() -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let seed = Zeroizing::new(super::random_bytes::<32>()?);
        let pem = ed25519_dalek::SigningKey::from_bytes(&seed)
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .context("cannot encode a signing key")?;
        Ok(Zeroizing::new(pem.as_bytes().to_vec()))
    }

    fn from_dalek(key: &ed25519_dalek::SigningKey) -> anyhow::Result<Self> {
        let der = key
            .to_pkcs8_der()
            .context("cannot encode the signing key")?;
        let public_key = key.verifying_key().to_bytes();
        Ok(Self {
            kid: jwk_thumbprint(&public_key),
            public_key,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding: DecodingKey::from_ed_der(&public_key),
        })
    }

    /// The key id, carried in every token's header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    pub(super) fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }

    pub(super) fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// RFC 7638: SHA-256 over the JWK's required members in lexicographic order, base64url.
fn jwk_thumbprint(public_key: &[u8; 32]) -> String {
    let jwk = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public_key)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()))
}

/// The HMAC-SHA256 key that derives each refresh token from the one before it, so a retried
/// refresh can recompute its answer while only hashes are stored.
pub struct RefreshKey(SecretBox<[u8; 32]>);

impl RefreshKey {
    /// Reads a key file: its content, 32 bytes or more of random data in any format, is hashed
    /// into the key. Content with plainly too little entropy (repeated or low-variety bytes, such
    /// as 32 zeros) is refused.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let content = read_secret_file(path)?;
        anyhow::ensure!(
            content.len() >= 32,
            "{} must hold at least 32 bytes of random data",
            path.display()
        );
        let bits = estimated_entropy_bits(&content);
        anyhow::ensure!(
            bits >= MIN_REFRESH_KEY_BITS,
            "{} holds about {bits:.0} bits of entropy, fewer than {MIN_REFRESH_KEY_BITS}: fill it \
             with random data, e.g. `head -c 32 /dev/urandom > {}`",
            path.display(),
            path.display()
        );
        // Hashing lets any format (raw bytes, hex, base64) serve, and fixes the key's length.
        Ok(Self(SecretBox::new(Box::new(
            Sha256::digest(&content).into(),
        ))))
    }

    /// A random key that lives as long as the process.
    pub fn generate() -> anyhow::Result<Self> {
        Ok(Self(SecretBox::new(Box::new(super::random_bytes::<32>()?))))
    }

    /// The content of a new random key file, as [`RefreshKey::from_file`] reads it.
    pub fn generate_file_content() -> anyhow::Result<Zeroizing<Vec<u8>>> {
        Ok(Zeroizing::new(super::random_bytes::<32>()?.to_vec()))
    }

    pub(super) fn bytes(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for RefreshKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshKey([redacted])")
    }
}

/// The least entropy a refresh key file may hold, as [`estimated_entropy_bits`] sees it.
const MIN_REFRESH_KEY_BITS: f64 = 128.0;

/// A rough estimate of the entropy of `content`, in bits: its length times the Shannon entropy of
/// its bytes' frequencies. It cannot prove a key good (a predictable text can score well); it
/// catches content that is plainly not random: 32 random bytes score about 150, their hex about
/// 240, 32 zeros 0.
fn estimated_entropy_bits(content: &[u8]) -> f64 {
    let mut counts = [0_u32; 256];
    for &byte in content {
        counts[usize::from(byte)] += 1;
    }
    let total = content.len() as f64;
    let per_byte: f64 = counts
        .iter()
        .filter(|&&count| count > 0)
        .map(|&count| {
            let p = f64::from(count) / total;
            -p * p.log2()
        })
        .sum();
    per_byte * total
}

/// Reads a file that holds a secret; the bytes are wiped from memory when dropped. Warns when the
/// file's mode lets its group or others read it.
pub fn read_secret_file(path: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let content = Zeroizing::new(
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    #[cfg(unix)]
    if let Ok(metadata) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if open_to_others(metadata.permissions().mode()) {
            tracing::warn!(
                path = %path.display(),
                "a key file is readable by its group or others: chmod 600 it"
            );
        }
    }
    Ok(content)
}

/// Makes the key file `path` with `content` if there is none yet, and never replaces one: the
/// content goes to a temporary file of mode 0600 beside it, flushed to disk, and is then linked
/// into place, which fails if a file is already there (a concurrent start made it first: that
/// one is kept). Returns whether this call made it.
pub fn create_key_file_if_missing(
    path: &Path,
    content: impl FnOnce() -> anyhow::Result<Zeroizing<Vec<u8>>>,
) -> anyhow::Result<bool> {
    use std::io::Write;
    if path.exists() {
        return Ok(false);
    }
    let dir = path
        .parent()
        .with_context(|| format!("{} has no folder", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("key"),
        uuid::Uuid::now_v7()
    ));
    let write = || -> anyhow::Result<bool> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary)?;
        file.write_all(&content()?)?;
        file.sync_all()?;
        match std::fs::hard_link(&temporary, path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(error) => return Err(error.into()),
        }
        // The new name must survive a crash too.
        std::fs::File::open(dir)?.sync_all()?;
        Ok(true)
    };
    let made = write().with_context(|| format!("cannot create {}", path.display()));
    let _ = std::fs::remove_file(&temporary);
    made
}

/// Whether a file `mode` lets anyone but its owner read or write it.
fn open_to_others(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// The refresh keys in use, oldest first: the newest derives successors, and a retried refresh
/// is recognised under any of them. Replaceable while requests run.
pub struct RefreshKeys(ArcSwap<Vec<RefreshKey>>);

impl RefreshKeys {
    /// A ring of `keys`, oldest first; `None` when there is none.
    pub fn new(keys: Vec<RefreshKey>) -> Option<Self> {
        (!keys.is_empty()).then(|| Self(ArcSwap::from_pointee(keys)))
    }

    /// Replaces the ring. Refuses an empty list.
    pub fn replace(&self, keys: Vec<RefreshKey>) -> Result<(), &'static str> {
        if keys.is_empty() {
            return Err("no refresh key");
        }
        self.0.store(Arc::new(keys));
        Ok(())
    }

    /// Runs `f` over the keys, newest first.
    pub fn map_newest_first<T>(&self, f: impl Fn(&RefreshKey) -> T) -> Vec<T> {
        self.0.load().iter().rev().map(f).collect()
    }
}

/// Where one kind of key is read from: a single file, a folder of key files, or both.
#[derive(Debug, Clone, Default)]
pub struct KeySource {
    /// A single key file; the oldest key when a folder is also given.
    pub file: Option<PathBuf>,
    /// A folder of key files, in name order, oldest first: the last is the current key. Names
    /// starting with `.` are skipped (Kubernetes keeps its bookkeeping there).
    pub dir: Option<PathBuf>,
}

impl KeySource {
    /// Whether any file or folder is set.
    pub fn is_configured(&self) -> bool {
        self.file.is_some() || self.dir.is_some()
    }

    /// Reads every key with `read`, oldest first. Fails on a key that does not read, so a typo
    /// never silently drops a key.
    pub fn load<K>(&self, read: impl Fn(&Path) -> anyhow::Result<K>) -> anyhow::Result<Vec<K>> {
        let mut paths: Vec<PathBuf> = self.file.iter().cloned().collect();
        if let Some(dir) = &self.dir {
            let mut in_dir = Vec::new();
            for entry in
                std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?
            {
                let path = entry?.path();
                let hidden = path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .is_none_or(|name| name.starts_with('.'));
                if !hidden && path.is_file() {
                    in_dir.push(path);
                }
            }
            in_dir.sort();
            anyhow::ensure!(!in_dir.is_empty(), "{} holds no key file", dir.display());
            paths.extend(in_dir);
        }
        paths.iter().map(|path| read(path)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kid_is_the_rfc_7638_thumbprint() {
        // RFC 8037, appendix A.3: the thumbprint of the example Ed25519 public key.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .expect("valid base64");
        let public_key: [u8; 32] = x.try_into().expect("32 bytes");
        assert_eq!(
            jwk_thumbprint(&public_key),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn a_key_folder_is_read_in_name_order_skipping_hidden_entries() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, content) in [("0002.key", "b"), ("0001.key", "a"), (".hidden", "x")] {
            std::fs::write(dir.path().join(name), content).expect("writes");
        }
        std::fs::create_dir(dir.path().join("..data")).expect("mkdir");
        let source = KeySource {
            file: None,
            dir: Some(dir.path().to_owned()),
        };
        let read = source
            .load(|path| Ok(std::fs::read_to_string(path)?))
            .expect("loads");
        assert_eq!(read, ["a", "b"]);
    }

    #[test]
    fn an_empty_key_folder_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = KeySource {
            file: None,
            dir: Some(dir.path().to_owned()),
        };
        assert!(source.load(|_| Ok(())).is_err());
    }

    #[test]
    fn a_refresh_key_with_too_little_entropy_is_refused_naming_its_file() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("refresh.key");
        for weak in [vec![b'0'; 32], b"abababababababababababababababab".to_vec()] {
            std::fs::write(&file, weak).expect("written");
            let error = RefreshKey::from_file(&file).expect_err("weak").to_string();
            assert!(error.contains("entropy"), "{error}");
            assert!(error.contains(&file.display().to_string()), "{error}");
        }
        let random = super::super::random_bytes::<32>().expect("random");
        let hex: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
        for good in [random.to_vec(), hex.into_bytes()] {
            std::fs::write(&file, good).expect("written");
            RefreshKey::from_file(&file).expect("a random key is accepted");
        }
    }

    #[test]
    fn a_key_file_is_made_once_private_and_never_replaced() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("data").join("signing.pem");
        assert!(create_key_file_if_missing(&path, SigningKey::generate_pem).expect("made"));
        let first = SigningKey::from_pem_file(&path)
            .expect("reads")
            .kid()
            .to_owned();
        assert!(!create_key_file_if_missing(&path, SigningKey::generate_pem).expect("kept"));
        assert_eq!(
            SigningKey::from_pem_file(&path).expect("reads").kid(),
            first
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("exists")
                .permissions()
                .mode();
            assert!(!open_to_others(mode), "{mode:o}");
        }
        let leftovers = std::fs::read_dir(path.parent().expect("folder"))
            .expect("lists")
            .count();
        assert_eq!(leftovers, 1, "no temporary file is left");
    }

    #[test]
    fn a_key_file_open_to_group_or_others_is_told_apart() {
        assert!(!open_to_others(0o100600));
        assert!(!open_to_others(0o100400));
        assert!(open_to_others(0o100640));
        assert!(open_to_others(0o100604));
    }

    #[test]
    fn debug_output_shows_no_key_material() {
        let key = SigningKey::generate().expect("key");
        let shown = format!("{key:?} {:?}", RefreshKey::generate().expect("key"));
        assert!(shown.contains(key.kid()));
        assert!(shown.contains("RefreshKey([redacted])"));
    }
}
