//! Deterministic test disks for Ferry's tests and benchmarks, and the vSphere simulator peer.
//!
//! [`MixedDisk`] lays a disk out as runs of 1 to 64 MiB, each of one kind, chosen with these
//! weights by bytes: 40% never written (holes), 10% written zeros, 25% random, 12.5% text-like
//! log lines and 12.5% small binary records. The same size and seed always give the same bytes.
//!
//! [`vcsim`] runs the vSphere simulator peer of the tests that talk to a vCenter.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub mod vcsim;

const MIB: u64 = 1 << 20;

/// A small, fast, deterministic PRNG (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let v = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&v[..n]);
    }
}

/// Parses `4G`, `512M`, `100K`, `1T` or plain bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        (i, 'T' | 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// The kind of one run of a mixed disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Never written.
    Hole = 0,
    /// Written zeros.
    Zero = 1,
    /// Random bytes.
    Random = 2,
    /// Log-like text.
    Text = 3,
    /// Small binary records.
    Records = 4,
}

/// A deterministic mixed disk layout.
#[derive(Debug, Clone)]
pub struct MixedDisk {
    size: u64,
    seed: u64,
    runs: Vec<(u64, u64, Kind)>,
}

const HOSTS: [&str; 6] = ["esx01", "esx02", "vc01", "db-prod-3", "web-17", "backup-a"];
const PROCS: [&str; 6] = ["sshd", "kernel", "nginx", "postgres", "cron", "systemd"];
const MSGS: [&str; 8] = [
    "Accepted publickey for admin from 10.0.{} port {} ssh2",
    "connection reset by peer after {} bytes, retry {}",
    "GET /api/v1/items/{} HTTP/1.1 200 {}",
    "checkpoint complete: wrote {} buffers ({}%)",
    "session opened for user backup by uid={} pid={}",
    "eth0: link up, {} Mbps, full duplex, queue {}",
    "query took {} ms, rows={}",
    "Started Daily apt upgrade and clean activities ({}/{}).",
];

impl MixedDisk {
    /// The layout for `size` bytes and `seed`.
    pub fn new(size: u64, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut runs = Vec::new();
        let mut pos = 0;
        while pos < size {
            let len = ((1 + rng.below(64)) * MIB).min(size - pos);
            // Weights in eighths of 100%: hole 40, zero 10, random 25, text 12.5, records 12.5.
            let r = rng.below(1000);
            let kind = match r {
                0..400 => Kind::Hole,
                400..500 => Kind::Zero,
                500..750 => Kind::Random,
                750..875 => Kind::Text,
                _ => Kind::Records,
            };
            runs.push((pos, len, kind));
            pos += len;
        }
        MixedDisk { size, seed, runs }
    }

    /// Bytes per kind, indexed by `Kind as usize`.
    pub fn summary(&self) -> [u64; 5] {
        let mut s = [0u64; 5];
        for (_, len, k) in &self.runs {
            s[*k as usize] += len;
        }
        s
    }

    /// The runs: offset, length, kind.
    pub fn runs(&self) -> &[(u64, u64, Kind)] {
        &self.runs
    }

    /// Fills `buf` with the content of the block at `offset` (1 MiB aligned, at most 1 MiB).
    pub fn block(&self, kind: Kind, offset: u64, buf: &mut [u8]) {
        let mut rng = Rng::new(self.seed.wrapping_mul(31).wrapping_add(offset / MIB));
        match kind {
            Kind::Hole | Kind::Zero => buf.fill(0),
            Kind::Random => rng.fill(buf),
            Kind::Text => fill_text(&mut rng, offset, buf),
            Kind::Records => fill_records(&mut rng, offset, buf),
        }
    }

    /// Writes the disk as a sparse raw file (holes never written).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let f = File::create(path)?;
        f.set_len(self.size)?;
        let mut buf = vec![0u8; MIB as usize];
        for &(off, len, kind) in &self.runs {
            if kind == Kind::Hole {
                continue;
            }
            let mut pos = off;
            while pos < off + len {
                let n = MIB.min(off + len - pos) as usize;
                self.block(kind, pos, &mut buf[..n]);
                f.write_all_at(&buf[..n], pos)?;
                pos += n as u64;
            }
        }
        f.sync_all()
    }

    /// Writes a copy of the disk to `to` with `percent`% of its 1 MiB blocks rewritten with
    /// new random data (some in former holes). Returns the rewritten (offset, length) ranges.
    pub fn write_modified(
        &self,
        _base: &Path,
        to: &Path,
        percent: f64,
    ) -> std::io::Result<Vec<(u64, u64)>> {
        self.write(to)?;
        let f = OpenOptions::new().write(true).open(to)?;
        let blocks = self.size.div_ceil(MIB);
        let want = ((blocks as f64) * percent / 100.0).round() as u64;
        let mut rng = Rng::new(self.seed ^ 0xC0FF_EE00);
        let mut picked = std::collections::BTreeSet::new();
        while (picked.len() as u64) < want.min(blocks) {
            picked.insert(rng.below(blocks));
        }
        let mut buf = vec![0u8; MIB as usize];
        let mut out = Vec::new();
        for b in picked {
            let off = b * MIB;
            let n = MIB.min(self.size - off) as usize;
            rng.fill(&mut buf[..n]);
            f.write_all_at(&buf[..n], off)?;
            out.push((off, n as u64));
        }
        f.sync_all()?;
        Ok(out)
    }
}

fn fill_text(rng: &mut Rng, offset: u64, buf: &mut [u8]) {
    let mut t = 1_790_000_000 + offset / 4096;
    let mut pos = 0;
    let mut line = String::with_capacity(200);
    while pos < buf.len() {
        line.clear();
        t += rng.below(3);
        let msg = MSGS[rng.below(MSGS.len() as u64) as usize];
        let mut parts = msg.split("{}");
        let mut text = String::new();
        if let Some(first) = parts.next() {
            text.push_str(first);
        }
        for p in parts {
            text.push_str(&rng.below(65536).to_string());
            text.push_str(p);
        }
        line.push_str(&format!(
            "2026-11-{:02}T{:02}:{:02}:{:02}.{:03}Z {} {}[{}]: {}\n",
            1 + (t / 86400) % 28,
            (t / 3600) % 24,
            (t / 60) % 60,
            t % 60,
            rng.below(1000),
            HOSTS[rng.below(HOSTS.len() as u64) as usize],
            PROCS[rng.below(PROCS.len() as u64) as usize],
            100 + rng.below(30000),
            text
        ));
        let n = line.len().min(buf.len() - pos);
        buf[pos..pos + n].copy_from_slice(&line.as_bytes()[..n]);
        pos += n;
    }
}

fn fill_records(rng: &mut Rng, offset: u64, buf: &mut [u8]) {
    for (id, rec) in (offset / 64..).zip(buf.chunks_mut(64)) {
        let mut r = [0u8; 64];
        r[0..8].copy_from_slice(&id.to_le_bytes());
        r[8..16].copy_from_slice(&(1_790_000_000u64 + id * 7).to_le_bytes());
        r[16..20].copy_from_slice(&(rng.below(1000) as u32).to_le_bytes());
        r[20..24].copy_from_slice(&(rng.below(16) as u32).to_le_bytes());
        r[24..28].copy_from_slice(&(rng.next_u64() as u32).to_le_bytes());
        let name = HOSTS[rng.below(HOSTS.len() as u64) as usize].as_bytes();
        r[32..32 + name.len()].copy_from_slice(name);
        let n = rec.len();
        rec.copy_from_slice(&r[..n]);
    }
}

/// SHA-256-free content fingerprint helper: compares two files byte for byte.
pub fn files_equal(a: &Path, b: &Path) -> std::io::Result<bool> {
    let fa = File::open(a)?;
    let fb = File::open(b)?;
    let (la, lb) = (fa.metadata()?.len(), fb.metadata()?.len());
    if la != lb {
        return Ok(false);
    }
    let mut ba = vec![0u8; MIB as usize];
    let mut bb = vec![0u8; MIB as usize];
    let mut pos = 0;
    while pos < la {
        let n = MIB.min(la - pos) as usize;
        fa.read_exact_at(&mut ba[..n], pos)?;
        fb.read_exact_at(&mut bb[..n], pos)?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_deterministic_and_mixed() {
        let a = MixedDisk::new(4 << 30, 1);
        let b = MixedDisk::new(4 << 30, 1);
        assert_eq!(a.runs, b.runs);
        let s = a.summary();
        let total: u64 = s.iter().sum();
        assert_eq!(total, 4 << 30);
        let hole = s[0] as f64 / total as f64;
        assert!((0.3..0.5).contains(&hole), "hole share {hole}");
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("x"), None);
    }
}
