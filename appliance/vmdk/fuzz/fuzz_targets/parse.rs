//! Fuzzes the descriptor parser and, through `Vmdk::open`, the sparse (`KDMV`),
//! streamOptimized, COWD and SESparse parsers: the first byte picks the parser, the rest
//! is the file. Opening, mapping and reading must never panic, hang or allocate wildly.
#![no_main]

use std::sync::{Arc, OnceLock};

use ferry_vmdk::{Descriptor, MemResolver, Vmdk};
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, file)) = data.split_first() else {
        return;
    };
    if sel % 2 == 0 {
        let _ = Descriptor::parse("fuzz", file);
        return;
    }
    let mut r = MemResolver::new();
    r.insert("d.vmdk", file.to_vec());
    // A second file for descriptors that name an extent or parent.
    r.insert("e.vmdk", file.to_vec());
    runtime().block_on(async {
        let Ok(v) = Vmdk::open(Arc::new(r), "d.vmdk").await else {
            return;
        };
        let size = v.size();
        let window = size.min(4 << 20);
        for off in [0, size - window] {
            let _ = v.map(off, window).await;
            let mut buf = vec![0u8; window as usize];
            let _ = v.read_at(off, &mut buf).await;
        }
    });
});
