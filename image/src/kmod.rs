//! Module selection: owns which kernel modules go into the initramfs and the
//! index files (`modules.dep`, `modules.alias`, `modules.softdep`) that
//! ferry-init reads.
//!
//! Debian's package ships the modules without depmod's output, so the index
//! is built here from each module's `.modinfo` (`depends=`, `softdep=`,
//! `alias=`). Starting from [`ROOT_MODULES`], hard and soft dependencies are
//! followed transitively; names built into the kernel (`modules.builtin`)
//! need nothing. `modules.dep` lists direct dependencies only; ferry-init
//! resolves them recursively.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// What the appliance needs: NICs (VMware vmxnet3/e1000/e1000e, virtio for
/// QEMU), disk controllers and disks (pvscsi, LSI, AHCI, IDE for QEMU's
/// CD-ROM, virtio), filesystems for storage targets, the state partition, the
/// ESP and the OVF ISO, and the ACPI power button with evdev to read it.
pub const ROOT_MODULES: &[&str] = &[
    "vmxnet3",
    "e1000",
    "e1000e",
    "virtio_net",
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_rng",
    "vmw_pvscsi",
    "mptspi",
    "ahci",
    "ata_piix",
    "sd_mod",
    "sr_mod",
    "cifs",
    // SMB3 encryption (cifs `seal`): gcm(aes) and ccm(aes) need ctr and ghash at run time,
    // which the kernel asks for through the module helper, not through softdeps.
    "ctr",
    "ghash_generic",
    "nfs",
    "nfsv3",
    "nfsv4",
    "isofs",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_utf8",
    "button",
    "evdev",
];

/// One selected module.
#[derive(Debug, Clone)]
pub struct Module {
    pub name: String,
    /// Path relative to `/lib/modules/<release>`.
    pub rel: String,
    pub size: u64,
    pub depends: Vec<String>,
    pub pre: Vec<String>,
    pub post: Vec<String>,
    pub aliases: Vec<String>,
}

/// The closure of modules to ship.
#[derive(Debug)]
pub struct Selection {
    pub modules: BTreeMap<String, Module>,
    /// Soft dependencies that are neither shipped nor built in.
    pub missing_soft: BTreeSet<String>,
}

pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Resolves [`ROOT_MODULES`] against an extracted `/lib/modules/<release>`.
pub fn select(moddir: &Path, roots: &[&str]) -> anyhow::Result<Selection> {
    let mut by_name: HashMap<String, PathBuf> = HashMap::new();
    index_ko(&moddir.join("kernel"), &mut by_name)?;
    let builtin: BTreeSet<String> = std::fs::read_to_string(moddir.join("modules.builtin"))
        .context("read modules.builtin")?
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(|f| normalize(f.trim_end_matches(".ko")))
        .collect();

    // Soft dependencies often name an algorithm ("aes", "sha512"): built-in
    // modules provide some through aliases, generic modules the rest.
    let builtin_aliases: BTreeSet<String> = std::fs::read(moddir.join("modules.builtin.modinfo"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter_map(|e| {
            let e = String::from_utf8_lossy(e);
            e.split_once(".alias=")
                .map(|(_, a)| normalize(a.trim_start_matches("crypto-")))
        })
        .collect();

    let mut modules = BTreeMap::new();
    let mut missing_soft = BTreeSet::new();
    let mut queue: VecDeque<(String, bool)> = roots.iter().map(|r| (normalize(r), true)).collect();
    while let Some((name, hard)) = queue.pop_front() {
        if modules.contains_key(&name) || builtin.contains(&name) {
            continue;
        }
        if !hard && builtin_aliases.contains(&name) {
            continue;
        }
        let generic = format!("{name}_generic");
        let path = match by_name.get(&name) {
            Some(p) => Some(p),
            None if !hard => by_name.get(&generic),
            None => None,
        };
        let orig = name.clone();
        let name = if by_name.contains_key(&name) || hard {
            name
        } else {
            generic
        };
        if modules.contains_key(&name) {
            continue;
        }
        let Some(path) = path else {
            if hard {
                bail!("module {name} is neither in the kernel package nor built in");
            }
            missing_soft.insert(orig);
            continue;
        };
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let info = crate::elf::modinfo(&bytes)
            .with_context(|| format!("modinfo of {}", path.display()))?;
        let mut m = Module {
            name: name.clone(),
            rel: path
                .strip_prefix(moddir)
                .context("module outside its tree")?
                .to_string_lossy()
                .into_owned(),
            size: bytes.len() as u64,
            depends: Vec::new(),
            pre: Vec::new(),
            post: Vec::new(),
            aliases: Vec::new(),
        };
        for (k, v) in info {
            match k.as_str() {
                "depends" => m
                    .depends
                    .extend(v.split(',').filter(|s| !s.is_empty()).map(normalize)),
                "alias" => m.aliases.push(v),
                "softdep" => {
                    let (pre, post) = parse_softdep(&v);
                    m.pre.extend(pre);
                    m.post.extend(post);
                }
                _ => {}
            }
        }
        for d in &m.depends {
            queue.push_back((d.clone(), true));
        }
        for d in m.pre.iter().chain(&m.post) {
            queue.push_back((d.clone(), false));
        }
        modules.insert(name, m);
    }
    Ok(Selection {
        modules,
        missing_soft,
    })
}

/// Parses `pre: a b post: c` into (pre, post).
pub fn parse_softdep(v: &str) -> (Vec<String>, Vec<String>) {
    let (mut pre, mut post) = (Vec::new(), Vec::new());
    let mut into_post = false;
    for t in v.split_whitespace() {
        match t {
            "pre:" => into_post = false,
            "post:" => into_post = true,
            m if into_post => post.push(normalize(m)),
            m => pre.push(normalize(m)),
        }
    }
    (pre, post)
}

fn index_ko(dir: &Path, out: &mut HashMap<String, PathBuf>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            index_ko(&p, out)?;
        } else if let Some(stem) = p
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.strip_suffix(".ko"))
        {
            out.insert(normalize(stem), p);
        }
    }
    Ok(())
}

impl Selection {
    pub fn dep_file(&self) -> String {
        let mut s = String::new();
        for m in self.modules.values() {
            let deps: Vec<&str> = m
                .depends
                .iter()
                .filter_map(|d| self.modules.get(d).map(|x| x.rel.as_str()))
                .collect();
            s.push_str(&format!("{}: {}\n", m.rel, deps.join(" ")).replace(": \n", ":\n"));
        }
        s
    }

    pub fn alias_file(&self) -> String {
        let mut s = String::new();
        for m in self.modules.values() {
            for a in &m.aliases {
                s.push_str(&format!("alias {a} {}\n", m.name));
            }
        }
        s
    }

    pub fn softdep_file(&self) -> String {
        let mut s = String::new();
        for m in self.modules.values() {
            if m.pre.is_empty() && m.post.is_empty() {
                continue;
            }
            s.push_str(&format!("softdep {}", m.name));
            if !m.pre.is_empty() {
                s.push_str(&format!(" pre: {}", m.pre.join(" ")));
            }
            if !m.post.is_empty() {
                s.push_str(&format!(" post: {}", m.post.join(" ")));
            }
            s.push('\n');
        }
        s
    }

    pub fn total_bytes(&self) -> u64 {
        self.modules.values().map(|m| m.size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softdep_parsing() {
        assert_eq!(parse_softdep("pre: ecb"), (vec!["ecb".to_string()], vec![]));
        assert_eq!(
            parse_softdep("pre: crc32c-generic post: nls-utf8"),
            (
                vec!["crc32c_generic".to_string()],
                vec!["nls_utf8".to_string()]
            )
        );
    }
}
