//! Fuzzes the `ovf-env.xml` parser (untrusted: it comes from the CD-ROM or a
//! guestinfo variable). Parsing must never panic, hang or allocate wildly, and
//! whatever it accepts respects the documented limits.
#![no_main]

use ferry_init::ovfenv::{parse, MAX_KEY, MAX_PROPERTIES, MAX_VALUE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = parse(data) {
        assert!(env.properties.len() <= MAX_PROPERTIES);
        for (k, v) in &env.properties {
            assert!(!k.is_empty() && k.len() <= MAX_KEY);
            assert!(v.len() <= MAX_VALUE);
        }
    }
});
