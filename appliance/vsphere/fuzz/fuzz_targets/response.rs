//! Fuzzes the vim25 response parser: any bytes give a tree or a typed error, never a
//! panic, a hang or unbounded memory. Walks the tree the way the typed extractors do.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/xml.rs"]
mod xml;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = xml::parse(data) {
        let mut found = Vec::new();
        doc.descendants_of_type("VirtualDisk", &mut found);
        for d in found {
            let _ = d.parse_at::<u64>(&["capacityInBytes"]);
            let _ = d.text_at(&["backing", "fileName"]);
            let _ = d.attr("type");
        }
        let _ = doc.path(&["Body", "Fault", "detail"]);
    }
});
