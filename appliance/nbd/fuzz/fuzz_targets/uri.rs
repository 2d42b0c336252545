//! Fuzzes the NBD URI parser (`--source nbd://…`, `nbds+unix://…?socket=…`).
#![no_main]

use ferry_nbd::{Endpoint, NbdUri};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(u) = NbdUri::parse(s) {
        if let Endpoint::Tcp { host, .. } = &u.endpoint {
            assert!(!host.is_empty());
        }
        let _ = u.to_string();
        let _ = u.server_name();
    }
});
