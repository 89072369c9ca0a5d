//! Refresh-token parsing: any text, as the `refresh_token` of a Refresh.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiond::token::RefreshToken;

fuzz_target!(|token: &str| {
    let _ = RefreshToken::try_from(token.to_owned());
});
