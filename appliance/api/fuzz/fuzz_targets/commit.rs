//! The storage node's commit body (`POST /v1/vaults/{v}/points/{id}/commit`): a `u32` header
//! length, a JSON header, then the objects. `split_commit` must refuse any malformed body
//! without panicking, account for every byte of an accepted one, and agree with
//! `join_commit` both ways.
#![no_main]

use ferry_api::node::{join_commit, split_commit};
use ferry_api::MAX_BODY;
use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Untrusted bytes as the node receives them.
    if let Ok(objs) = split_commit(data) {
        let objects: usize = objs.iter().map(|(_, b)| b.len()).sum();
        assert!(4 + objects <= data.len(), "objects longer than the body");
        for (_, b) in &objs {
            // Every object is a slice of the body, in order, never a copy.
            let start = b.as_ptr() as usize;
            assert!(start >= data.as_ptr() as usize + 4);
            assert!(start + b.len() <= data.as_ptr() as usize + data.len());
        }
        match join_commit(&objs) {
            Ok(again) => assert_eq!(split_commit(&again).as_ref(), Ok(&objs)),
            Err(e) => panic!("a split body does not join again: {e}"),
        }
    }
    // The same bytes as a set of objects: join then split gives them back.
    let mut u = Unstructured::new(data);
    let Ok(set) = Vec::<(String, Vec<u8>)>::arbitrary(&mut u) else {
        return;
    };
    let pairs: Vec<(String, &[u8])> = set.iter().map(|(k, b)| (k.clone(), &b[..])).collect();
    let body = match join_commit(&pairs) {
        Ok(b) => b,
        Err(e) => panic!("join_commit failed on {} objects: {e}", pairs.len()),
    };
    let hlen = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
    if hlen <= MAX_BODY {
        assert_eq!(split_commit(&body), Ok(pairs));
    } else {
        assert!(split_commit(&body).is_err());
    }
});
