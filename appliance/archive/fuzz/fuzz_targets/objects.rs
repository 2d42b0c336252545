//! Feeds arbitrary bytes to every decoder of repository objects: chunks, indexes, manifests,
//! repository configs and locks. None may panic, hang, or allocate beyond the declared limits.
#![no_main]

use ferry_archive::format::{decode_chunk, decode_json, Index, Kind, ZERO_DIGEST};
use ferry_archive::lock::LockInfo;
use ferry_archive::{Manifest, RepoConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Index::decode(data, "fuzz");
    let _ = decode_chunk(data, &ZERO_DIGEST);
    let _ = decode_json::<Manifest>(Kind::Manifest, data, "fuzz");
    let _ = decode_json::<RepoConfig>(Kind::Config, data, "fuzz");
    let _ = decode_json::<LockInfo>(Kind::Lock, data, "fuzz");
});
