//! Fuzzes the server side: the bytes any NBD client sends (client flags, option haggling,
//! then transmission requests) driven through the real session code over an in-memory
//! stream, on an export with holes and a data chunk whose fetch fails.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ferry_nbd::server::fuzzing::session(data);
});
