//! Fuzzes the vAPI answers of a tag lookup (session login, tag list, tag, category,
//! attached objects): any bytes give a value or nothing, never a panic or a stack overflow.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/tags/json.rs"]
mod json;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if let Ok(v) = json::body(rest) {
        let v = json::unwrap_value(mode & 1 == 1, v);
        let _ = (json::name(&v), json::category_id(&v));
        for id in json::attached_vm_ids(&v) {
            assert!(!id.is_empty() || v.is_array());
        }
        let _ = json::session_id(v.clone());
        let _ = json::strings(v);
    }
});
