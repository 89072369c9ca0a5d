//! Page-token decoding: any text, as the `page_token` of a ListUserSessions.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiond::api::fuzzing;

fuzz_target!(|token: &str| {
    let _ = fuzzing::decode_page_token(token);
});
