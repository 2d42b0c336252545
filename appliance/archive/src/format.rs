//! Object encodings: the common envelope, chunks and disk indexes.
//!
//! Every object starts with a 32-byte envelope header, little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic: `FRYC` chunk, `FRYI` index, `FRYM` manifest, `FRYR` repository config, `FRYL` lock |
//! | 4 | 2 | format version of this object kind (currently 1) |
//! | 6 | 1 | codec of the body: 0 raw, 1 zstd |
//! | 7 | 1 | reserved, 0 |
//! | 8 | 8 | plain (decoded) body length |
//! | 16 | 8 | stored body length (the bytes after the header) |
//! | 24 | 4 | CRC-32 of the stored body |
//! | 28 | 4 | CRC-32 of header bytes 0..28 |
//!
//! A truncated object fails the stored-length check, a damaged one the CRC, a foreign file the
//! magic, and an object of a newer format the version check, each with its own error.
//!
//! A chunk body is the plain chunk content, zstd-compressed, or raw when compression does not
//! shrink it (checked first on eight 8 KiB samples, so random data costs no full zstd pass). Its
//! object key is the SHA-256 of the plain content, which decoding re-checks.
//!
//! An index body (zstd) is: disk size u64, chunk size u32, entry count u64, then one 32-byte
//! SHA-256 per chunk in disk order. The all-zero digest marks a chunk that reads as zeros
//! (a hole or written zeros): it is never stored.

use sha2::{Digest as _, Sha256};

use crate::ArchiveError;

/// SHA-256 of a chunk's plain content.
pub type Digest = [u8; 32];

/// The index entry of a chunk that reads as zeros.
pub const ZERO_DIGEST: Digest = [0u8; 32];

/// Largest chunk size a repository accepts.
pub const MAX_CHUNK_SIZE: usize = 16 << 20;
/// Smallest chunk size a repository accepts.
pub const MIN_CHUNK_SIZE: usize = 1 << 20;

const HEADER_LEN: usize = 32;
/// Largest decoded index (32 M entries, 128 TiB at 4 MiB chunks).
const MAX_INDEX_PLAIN: u64 = 1 << 30;
/// Largest decoded JSON object (manifest, config, lock).
const MAX_JSON_PLAIN: u64 = 64 << 20;

/// Object kinds and their magics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A data chunk.
    Chunk,
    /// A disk index.
    Index,
    /// A restore point manifest.
    Manifest,
    /// The repository config.
    Config,
    /// A lock record.
    Lock,
}

impl Kind {
    fn magic(self) -> &'static [u8; 4] {
        match self {
            Kind::Chunk => b"FRYC",
            Kind::Index => b"FRYI",
            Kind::Manifest => b"FRYM",
            Kind::Config => b"FRYR",
            Kind::Lock => b"FRYL",
        }
    }

    /// The newest version of this kind that this build reads and writes.
    pub fn version(self) -> u16 {
        1
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Chunk => "chunk",
            Kind::Index => "index",
            Kind::Manifest => "manifest",
            Kind::Config => "repository config",
            Kind::Lock => "lock",
        }
    }
}

const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;

/// Wraps a body in an envelope.
fn seal(kind: Kind, codec: u8, plain_len: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(kind.magic());
    out.extend_from_slice(&kind.version().to_le_bytes());
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

/// A checked envelope.
struct Opened<'a> {
    codec: u8,
    plain_len: u64,
    body: &'a [u8],
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn open<'a>(kind: Kind, what: &str, data: &'a [u8]) -> Result<Opened<'a>, ArchiveError> {
    let corrupt = |why: String| ArchiveError::Corrupt {
        object: what.to_string(),
        why,
    };
    if data.len() < HEADER_LEN {
        return Err(corrupt(format!(
            "truncated: {} bytes, shorter than the header",
            data.len()
        )));
    }
    if &data[0..4] != kind.magic() {
        return Err(corrupt(format!("not a Ferry {} (bad magic)", kind.name())));
    }
    if crc32fast::hash(&data[..28]) != le_u32(&data[28..32]) {
        return Err(corrupt("header checksum mismatch".into()));
    }
    let version = u16::from_le_bytes([data[4], data[5]]);
    if version > kind.version() {
        return Err(ArchiveError::NewerFormat {
            object: what.to_string(),
            found: version,
            supported: kind.version(),
        });
    }
    let codec = data[6];
    let plain_len = le_u64(&data[8..16]);
    let stored_len = le_u64(&data[16..24]);
    let body = &data[HEADER_LEN..];
    if body.len() as u64 != stored_len {
        return Err(corrupt(format!(
            "truncated or padded: body is {} bytes, header says {stored_len}",
            body.len()
        )));
    }
    if crc32fast::hash(body) != le_u32(&data[24..28]) {
        return Err(corrupt("body checksum mismatch".into()));
    }
    if codec != CODEC_RAW && codec != CODEC_ZSTD {
        return Err(corrupt(format!("unknown codec {codec}")));
    }
    if codec == CODEC_RAW && plain_len != stored_len {
        return Err(corrupt("raw body length mismatch".into()));
    }
    Ok(Opened {
        codec,
        plain_len,
        body,
    })
}

fn decode_body(o: &Opened<'_>, what: &str, limit: u64) -> Result<Vec<u8>, ArchiveError> {
    let corrupt = |why: String| ArchiveError::Corrupt {
        object: what.to_string(),
        why,
    };
    if o.plain_len > limit {
        return Err(corrupt(format!(
            "declared size {} exceeds the limit {limit}",
            o.plain_len
        )));
    }
    match o.codec {
        CODEC_RAW => Ok(o.body.to_vec()),
        _ => {
            // plain_len <= limit, which fits in usize on every supported target.
            let cap = usize::try_from(o.plain_len).map_err(|_| corrupt("size overflow".into()))?;
            let out = decompress_reusing_context(o.body, cap)
                .map_err(|e| corrupt(format!("zstd: {e}")))?;
            if out.len() as u64 != o.plain_len {
                return Err(corrupt(format!(
                    "decoded {} bytes, header says {}",
                    out.len(),
                    o.plain_len
                )));
            }
            Ok(out)
        }
    }
}

/// SHA-256 of `data`.
pub fn digest_of(data: &[u8]) -> Digest {
    Sha256::digest(data).into()
}

/// True when every byte is zero.
pub fn is_zero(data: &[u8]) -> bool {
    // Compare word-wise: this runs on every chunk read.
    let (prefix, words, suffix) = {
        // SAFETY: every bit pattern is a valid u64, and align_to only yields aligned words.
        unsafe { data.align_to::<u64>() }
    };
    prefix.iter().all(|&b| b == 0)
        && suffix.iter().all(|&b| b == 0)
        && words.iter().all(|&w| w == 0)
}

/// Hex form of a digest.
pub fn digest_hex(d: &Digest) -> String {
    hex::encode(d)
}

/// Parses a hex digest.
pub fn parse_digest(s: &str) -> Option<Digest> {
    let mut d = [0u8; 32];
    hex::decode_to_slice(s, &mut d).ok()?;
    Some(d)
}

/// True when evenly spaced samples of `plain` all fail to compress: random or already
/// compressed data, where running zstd over the whole chunk would only burn CPU.
fn looks_incompressible(plain: &[u8]) -> bool {
    const SAMPLES: usize = 8;
    const SAMPLE: usize = 8 << 10;
    if plain.len() < SAMPLES * SAMPLE * 4 {
        return false;
    }
    let step = plain.len() / SAMPLES;
    (0..SAMPLES).all(|i| {
        let s = &plain[i * step..i * step + SAMPLE];
        // Level 1 on 8 KiB costs microseconds; anything under 97% means zstd finds structure.
        zstd::bulk::compress(s, 1).is_ok_and(|c| c.len() * 100 >= s.len() * 97)
    })
}

thread_local! {
    // One zstd context per worker thread: building a context per chunk costs allocations and
    // table resets that show up in profiles.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn compress_reusing_context(plain: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let (l, c) = match slot.take() {
            Some((l, c)) if l == level => (l, c),
            _ => (level, zstd::bulk::Compressor::new(level)?),
        };
        let mut c = c;
        let out = c.compress(plain);
        *slot = Some((l, c));
        out
    })
}

fn decompress_reusing_context(body: &[u8], cap: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let mut d = match slot.take() {
            Some(d) => d,
            None => zstd::bulk::Decompressor::new()?,
        };
        let out = d.decompress(body, cap);
        *slot = Some(d);
        out
    })
}

/// Encodes a chunk: zstd at `level`, or raw when compression would not shrink it.
pub fn encode_chunk(plain: &[u8], level: i32) -> Result<Vec<u8>, ArchiveError> {
    if looks_incompressible(plain) {
        return Ok(seal(Kind::Chunk, CODEC_RAW, plain.len() as u64, plain));
    }
    let compressed = compress_reusing_context(plain, level).map_err(|e| ArchiveError::Corrupt {
        object: "chunk".into(),
        why: format!("zstd compression failed: {e}"),
    })?;
    if compressed.len() < plain.len() {
        Ok(seal(
            Kind::Chunk,
            CODEC_ZSTD,
            plain.len() as u64,
            &compressed,
        ))
    } else {
        Ok(seal(Kind::Chunk, CODEC_RAW, plain.len() as u64, plain))
    }
}

/// Decodes a chunk and checks that its content hashes to `expected`.
pub fn decode_chunk(data: &[u8], expected: &Digest) -> Result<Vec<u8>, ArchiveError> {
    let what = format!("chunk {}", digest_hex(expected));
    let o = open(Kind::Chunk, &what, data)?;
    let plain = decode_body(&o, &what, MAX_CHUNK_SIZE as u64)?;
    if &digest_of(&plain) != expected {
        return Err(ArchiveError::Corrupt {
            object: what,
            why: "content does not match its SHA-256".into(),
        });
    }
    Ok(plain)
}

/// Checks a chunk object without keeping its content: envelope, size limit, and that the
/// decoded content hashes to `expected`. Returns the plain length. For servers that accept
/// chunks (the storage node): a raw body is hashed in place and a zstd body is decompressed
/// into a per-thread buffer, so no chunk-sized allocation happens per call.
pub fn verify_chunk(data: &[u8], expected: &Digest) -> Result<u64, ArchiveError> {
    thread_local! {
        static PLAIN: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let what = format!("chunk {}", digest_hex(expected));
    let corrupt = |why: String| ArchiveError::Corrupt {
        object: what.clone(),
        why,
    };
    let o = open(Kind::Chunk, &what, data)?;
    if o.plain_len > MAX_CHUNK_SIZE as u64 {
        return Err(corrupt(format!(
            "declared size {} exceeds the limit {MAX_CHUNK_SIZE}",
            o.plain_len
        )));
    }
    let digest = if o.codec == CODEC_RAW {
        digest_of(o.body)
    } else {
        // plain_len <= MAX_CHUNK_SIZE: fits in usize.
        let cap = o.plain_len as usize;
        PLAIN.with(|cell| {
            let mut buf = cell.borrow_mut();
            buf.clear();
            buf.reserve(cap);
            DECOMPRESSOR.with(|dc| {
                let mut slot = dc.borrow_mut();
                let mut d = match slot.take() {
                    Some(d) => d,
                    None => zstd::bulk::Decompressor::new()
                        .map_err(|e| corrupt(format!("zstd: {e}")))?,
                };
                let r = d.decompress_to_buffer(o.body, &mut *buf);
                *slot = Some(d);
                r.map_err(|e| corrupt(format!("zstd: {e}")))
            })?;
            if buf.len() as u64 != o.plain_len {
                return Err(corrupt(format!(
                    "decoded {} bytes, header says {}",
                    buf.len(),
                    o.plain_len
                )));
            }
            Ok(digest_of(&buf))
        })?
    };
    if &digest != expected {
        return Err(corrupt("content does not match its SHA-256".into()));
    }
    Ok(o.plain_len)
}

/// A disk index: one digest per chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// Disk size in bytes.
    pub disk_size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// One entry per chunk, [`ZERO_DIGEST`] for chunks that read as zeros.
    pub entries: Vec<Digest>,
}

impl Index {
    /// Number of chunks a disk of `disk_size` has.
    pub fn chunk_count(disk_size: u64, chunk_size: u32) -> u64 {
        disk_size.div_ceil(u64::from(chunk_size))
    }

    /// Offset and length of chunk `i`.
    pub fn chunk_range(&self, i: usize) -> (u64, usize) {
        let cs = u64::from(self.chunk_size);
        let off = i as u64 * cs;
        let len = (self.disk_size - off).min(cs);
        // len <= chunk_size <= 16 MiB.
        (off, len as usize)
    }

    /// Encodes the index object.
    pub fn encode(&self) -> Result<Vec<u8>, ArchiveError> {
        let mut plain = Vec::with_capacity(20 + self.entries.len() * 32);
        plain.extend_from_slice(&self.disk_size.to_le_bytes());
        plain.extend_from_slice(&self.chunk_size.to_le_bytes());
        plain.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            plain.extend_from_slice(e);
        }
        let body = zstd::bulk::compress(&plain, 3).map_err(|e| ArchiveError::Corrupt {
            object: "index".into(),
            why: format!("zstd compression failed: {e}"),
        })?;
        Ok(seal(Kind::Index, CODEC_ZSTD, plain.len() as u64, &body))
    }

    /// Decodes and checks an index object.
    pub fn decode(data: &[u8], what: &str) -> Result<Index, ArchiveError> {
        let o = open(Kind::Index, what, data)?;
        let plain = decode_body(&o, what, MAX_INDEX_PLAIN)?;
        let corrupt = |why: &str| ArchiveError::Corrupt {
            object: what.to_string(),
            why: why.to_string(),
        };
        if plain.len() < 20 {
            return Err(corrupt("index header truncated"));
        }
        let disk_size = le_u64(&plain[0..8]);
        let chunk_size = le_u32(&plain[8..12]);
        let count = le_u64(&plain[12..20]);
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&(chunk_size as usize)) {
            return Err(corrupt("chunk size out of range"));
        }
        if count != Index::chunk_count(disk_size, chunk_size) {
            return Err(corrupt("entry count does not match disk and chunk size"));
        }
        if (plain.len() as u64 - 20) != count.saturating_mul(32) {
            return Err(corrupt("entry table length mismatch"));
        }
        let entries = plain[20..]
            .chunks_exact(32)
            .map(|c| {
                let mut d = [0u8; 32];
                d.copy_from_slice(c);
                d
            })
            .collect();
        Ok(Index {
            disk_size,
            chunk_size,
            entries,
        })
    }
}

/// Encodes a JSON object (manifest, config or lock).
pub fn encode_json<T: serde::Serialize>(kind: Kind, value: &T) -> Result<Vec<u8>, ArchiveError> {
    let body = serde_json::to_vec_pretty(value).map_err(|e| ArchiveError::Corrupt {
        object: kind.name().into(),
        why: format!("serialize: {e}"),
    })?;
    Ok(seal(kind, CODEC_RAW, body.len() as u64, &body))
}

/// Decodes a JSON object of `kind`.
pub fn decode_json<T: serde::de::DeserializeOwned>(
    kind: Kind,
    data: &[u8],
    what: &str,
) -> Result<T, ArchiveError> {
    let o = open(kind, what, data)?;
    let body = decode_body(&o, what, MAX_JSON_PLAIN)?;
    serde_json::from_slice(&body).map_err(|e| ArchiveError::Corrupt {
        object: what.to_string(),
        why: format!("invalid JSON: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chunk_round_trip_and_damage() {
        let plain: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let d = digest_of(&plain);
        let enc = encode_chunk(&plain, 3).unwrap();
        assert!(enc.len() < plain.len());
        assert_eq!(decode_chunk(&enc, &d).unwrap(), plain);
        for pos in [0, 5, 20, 31, 40, enc.len() - 1] {
            let mut bad = enc.clone();
            bad[pos] ^= 0x40;
            assert!(decode_chunk(&bad, &d).is_err(), "flip at {pos} undetected");
        }
        assert!(decode_chunk(&enc[..enc.len() - 1], &d).is_err());
        assert!(decode_chunk(&enc, &[1u8; 32]).is_err());
    }

    #[test]
    fn verify_chunk_agrees_with_decode_chunk() {
        let text: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut random = vec![0u8; 70_000];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in &mut random {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        // Twice each, so the per-thread buffer is reused with a smaller and a larger chunk.
        for plain in [&text, &random, &text, &random] {
            let d = digest_of(plain);
            let enc = encode_chunk(plain, 3).unwrap();
            assert_eq!(verify_chunk(&enc, &d).unwrap(), plain.len() as u64);
            assert!(verify_chunk(&enc, &digest_of(b"other")).is_err());
            for pos in [0, 7, 20, 40, enc.len() - 1] {
                let mut bad = enc.clone();
                bad[pos] ^= 0x40;
                assert!(verify_chunk(&bad, &d).is_err(), "flip at {pos} undetected");
            }
            assert!(verify_chunk(&enc[..enc.len() - 1], &d).is_err());
        }
        // Another chunk's content under this digest: refused.
        let enc = encode_chunk(&random, 3).unwrap();
        assert!(verify_chunk(&enc, &digest_of(&text)).is_err());
        assert!(verify_chunk(b"garbage", &digest_of(&text)).is_err());
    }

    #[test]
    fn incompressible_chunk_is_stored_raw() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let plain: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let enc = encode_chunk(&plain, 3).unwrap();
        assert_eq!(enc[6], CODEC_RAW);
        assert_eq!(enc.len(), plain.len() + HEADER_LEN);
        assert_eq!(decode_chunk(&enc, &digest_of(&plain)).unwrap(), plain);
    }

    #[test]
    fn newer_version_is_reported() {
        let mut enc = encode_chunk(b"abc", 3).unwrap();
        enc[4] = 9;
        let h = crc32fast::hash(&enc[..28]).to_le_bytes();
        enc[28..32].copy_from_slice(&h);
        assert!(matches!(
            decode_chunk(&enc, &digest_of(b"abc")),
            Err(ArchiveError::NewerFormat { found: 9, .. })
        ));
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0u8; 4099]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[1] = 1;
        assert!(!is_zero(&v[1..]));
    }

    proptest! {
        #[test]
        fn index_round_trip(size in 0u64..(1u64 << 40), zeros in proptest::collection::vec(any::<bool>(), 0..64)) {
            let cs = 4u32 << 20;
            let n = Index::chunk_count(size, cs).min(64) as usize;
            let size = (n as u64) * u64::from(cs);
            let entries = (0..n).map(|i| if zeros.get(i).copied().unwrap_or(false) { ZERO_DIGEST } else { [i as u8; 32] }).collect();
            let idx = Index { disk_size: size, chunk_size: cs, entries };
            let enc = idx.encode().unwrap();
            prop_assert_eq!(Index::decode(&enc, "t").unwrap(), idx);
        }

        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Index::decode(&data, "t");
            let _ = decode_chunk(&data, &ZERO_DIGEST);
            let _ = decode_json::<serde_json::Value>(Kind::Manifest, &data, "t");
        }
    }
}
