//! Fuzzes the `FERRY_STORE_SECRETS` file parser: any text gives secrets or an error, and
//! neither the error nor `Debug` quotes a value.
#![no_main]

use ferry_storage::Secrets;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Secrets::parse(&text, std::path::Path::new("/etc/ferry/secrets")) {
        Ok(s) => assert_eq!(format!("{s:?}"), "Secrets(<redacted>)"),
        Err(e) => {
            // The values, as the parser cuts them. Only distinctive ones are checked: a value
            // that also appears elsewhere in the input (in a name, say) or in the message's
            // own words may show up as that.
            let e = e.to_string();
            let words =
                "unsupported or malformed storage location secrets file /etc/ferry/secrets \
                         line unknown name expected name = value";
            for line in text.lines() {
                if let Some((_, v)) = line.split_once('=') {
                    let v = v.trim().trim_matches('"');
                    if v.len() >= 8
                        && v.bytes().all(|b| b.is_ascii_alphanumeric())
                        && text.matches(v).count() == 1
                        && !words.contains(v)
                    {
                        assert!(!e.contains(v), "{e}");
                    }
                }
            }
        }
    }
});
