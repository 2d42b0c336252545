//! The chunk check the storage node runs on uploads (`verify_chunk`) against the decoder
//! restores use (`decode_chunk`): they agree on every object. The fuzz target
//! `chunk_upload` (appliance/archive/fuzz) runs the same checks for longer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use ferry_archive::format::{decode_chunk, digest_of, encode_chunk, verify_chunk};
use proptest::collection::vec;
use proptest::prelude::*;

/// A chunk envelope with correct CRCs around any body (see `ferry_archive::format`).
fn seal(codec: u8, plain_len: u64, body: &[u8]) -> Vec<u8> {
    let mut out = b"FRYC".to_vec();
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&[codec, 0]);
    out.extend_from_slice(&plain_len.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    let hcrc = crc32fast::hash(&out);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn agree(obj: &[u8], d: &[u8; 32]) -> Result<(), TestCaseError> {
    match (verify_chunk(obj, d), decode_chunk(obj, d)) {
        (Ok(n), Ok(p)) => prop_assert_eq!(n, p.len() as u64),
        (Err(_), Err(_)) => {}
        (v, p) => prop_assert!(false, "verify {:?}, decode {:?}", v, p.map(|p| p.len())),
    }
    Ok(())
}

/// Compressible or not, small or a few blocks.
fn contents() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..4096),
        (vec(any::<u8>(), 1..16), 1usize..20_000).prop_map(|(p, n)| p.repeat(n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn encoded_chunks_verify_and_decode_alike(plain in contents(), level in 1i32..6) {
        let d = digest_of(&plain);
        let enc = encode_chunk(&plain, level).unwrap();
        prop_assert_eq!(verify_chunk(&enc, &d).unwrap(), plain.len() as u64);
        prop_assert_eq!(decode_chunk(&enc, &d).unwrap(), plain);
        agree(&enc, &digest_of(b"another"))?;
    }

    #[test]
    fn a_changed_byte_is_refused_by_both(plain in contents(), at in any::<prop::sample::Index>(), x in 1u8..=255) {
        let d = digest_of(&plain);
        let mut enc = encode_chunk(&plain, 3).unwrap();
        let i = at.index(enc.len());
        enc[i] ^= x;
        prop_assert!(verify_chunk(&enc, &d).is_err());
        agree(&enc, &d)?;
    }

    #[test]
    fn sealed_arbitrary_bodies_get_the_same_answer(
        codec in 0u8..3,
        plain_len in prop_oneof![0u64..5000, any::<u64>()],
        body in vec(any::<u8>(), 0..2048),
    ) {
        let obj = seal(codec, plain_len, &body);
        agree(&obj, &digest_of(&body))?;
        agree(&obj, &[0u8; 32])?;
        if let Ok(p) = zstd::bulk::decompress(&body, 1 << 20) {
            agree(&obj, &digest_of(&p))?;
        }
    }

    #[test]
    fn a_lying_plain_length_is_refused(plain in contents(), delta in 1u64..1000, up in any::<bool>()) {
        let d = digest_of(&plain);
        let enc = encode_chunk(&plain, 3).unwrap();
        let body = &enc[32..];
        let codec = enc[6];
        let n = plain.len() as u64;
        let lie = if up { n + delta } else { n.saturating_sub(delta) };
        prop_assume!(lie != n);
        let obj = seal(codec, lie, body);
        prop_assert!(verify_chunk(&obj, &d).is_err());
        agree(&obj, &d)?;
    }
}
