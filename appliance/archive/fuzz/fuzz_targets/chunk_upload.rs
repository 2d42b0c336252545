//! The chunk check the storage node runs on every uploaded body (`verify_chunk`), against the
//! decoder restores use (`decode_chunk`). Random bytes rarely pass the envelope's CRCs, so
//! this target seals the input into a valid envelope first and fuzzes what lies behind it:
//! the codec, the declared plain length, and the (zstd or raw) body. The two must agree on
//! every object, whatever the digest asked for, and neither may panic or over-allocate.
#![no_main]

use ferry_archive::format::{decode_chunk, digest_of, verify_chunk, MAX_CHUNK_SIZE};
use libfuzzer_sys::fuzz_target;

/// Builds a chunk envelope (see `ferry_archive::format`) with correct CRCs.
fn seal(codec: u8, version: u16, plain_len: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + body.len());
    out.extend_from_slice(b"FRYC");
    out.extend_from_slice(&version.to_le_bytes());
    out.push(codec);
    out.push(0);
    out.extend_from_slice(&plain_len.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    let hcrc = crc32fast::hash(&out[..28]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn check(obj: &[u8], expected: &[u8; 32]) {
    let v = verify_chunk(obj, expected);
    let d = decode_chunk(obj, expected);
    match (&v, &d) {
        (Ok(n), Ok(plain)) => {
            assert_eq!(*n, plain.len() as u64);
            assert_eq!(&digest_of(plain), expected);
        }
        (Err(_), Err(_)) => {}
        _ => panic!(
            "verify_chunk {v:?} and decode_chunk {:?} disagree",
            d.map(|p| p.len())
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    // The body exactly as uploaded.
    let _ = verify_chunk(data, &[0u8; 32]);
    // data[0]: codec and flags; data[1..5]: a declared length when bit 7 of data[0] is set.
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (declared, body) = match rest.split_first_chunk::<4>() {
        Some((l, b)) if mode & 0x80 != 0 => (Some(u64::from(u32::from_le_bytes(*l))), b),
        _ => (None, rest),
    };
    let codec = match mode & 3 {
        0 => 0,
        1 | 2 => 1,
        _ => mode >> 2 & 0x1f,
    };
    let version = if mode & 0x40 != 0 { 2 } else { 1 };
    // What the content really is, when it decodes: the digest that makes both checks pass.
    let plain = match codec {
        0 => Some(body.to_vec()),
        1 => zstd::bulk::decompress(body, MAX_CHUNK_SIZE).ok(),
        _ => None,
    };
    let plain_len = declared.unwrap_or_else(|| plain.as_ref().map_or(0, |p| p.len() as u64));
    let obj = seal(codec, version, plain_len, body);
    if let Some(p) = &plain {
        let d = digest_of(p);
        check(&obj, &d);
        let ok = codec <= 1
            && version == 1
            && plain_len == p.len() as u64
            && plain_len <= MAX_CHUNK_SIZE as u64;
        assert_eq!(verify_chunk(&obj, &d).is_ok(), ok, "{obj:?}");
    }
    check(&obj, &digest_of(b"another chunk"));
});
