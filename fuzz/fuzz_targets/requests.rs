//! Every RPC's request: any bytes, decoded as each request message and, where it decodes,
//! converted to domain values as its handler does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiond::api::fuzzing;

fuzz_target!(|bytes: &[u8]| {
    fuzzing::parse_every_request(bytes);
});
