//! Fuzzes how a store location is parsed: `file://` URLs and paths, and a remote URL's
//! query parameters (`?parallel=8&bwlimit=20M`). Opening makes no connection; an error
//! about a remote URL never echoes its password.
#![no_main]

use ferry_storage::{open_store_with, StoreOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match open_store_with(s, StoreOptions::default()) {
        Ok(store) => {
            let _ = store.location();
        }
        Err(e) => {
            // The promise is for remote URLs; a malformed file:// location is quoted back.
            if let Ok(u) = url::Url::parse(s) {
                if let Some(pw) = u.password().filter(|_| u.scheme() != "file") {
                    if pw.len() >= 8 && s.matches(pw).count() == 1 {
                        assert!(!e.to_string().contains(pw), "{e}");
                    }
                }
            }
        }
    }
    let _ = ferry_storage::options::parse_rate(s);
});
