//! Access-token parsing and verification: any bytes, as the `access_token` of a Validate.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sessiond::token::{AccessTokenSigner, SigningKey};

static SIGNER: LazyLock<AccessTokenSigner> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    let key = SigningKey::generate().expect("a key");
    AccessTokenSigner::new(key, "sessiond".into(), "sessiond".into())
});

fuzz_target!(|token: &str| {
    let _ = SIGNER.verify(token, chrono::Utc::now());
});
