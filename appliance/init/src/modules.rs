//! Kernel modules: owns finding and loading the drivers for the hardware.
//!
//! The image writes `modules.dep`, `modules.alias` and `modules.softdep`
//! (the formats depmod uses) for the modules it ships under
//! `/lib/modules/<release>`. Init walks `/sys/devices` for `modalias` files,
//! matches them against the alias globs, and loads each match with its
//! dependencies and soft dependencies through `finit_module(2)`. There is no
//! modprobe and no shell: init also serves as the kernel's module helper
//! (`/proc/sys/kernel/modprobe`) for on-demand loads such as `fs-cifs` or
//! `crypto-gcm(aes)`, see [`modprobe_main`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Loaded-module index for one kernel release.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    root: PathBuf,
    /// name -> (path relative to root, dependency names)
    deps: HashMap<String, (String, Vec<String>)>,
    /// (glob, module name), in file order
    aliases: Vec<(String, String)>,
    /// name -> (pre, post)
    softdeps: HashMap<String, (Vec<String>, Vec<String>)>,
}

/// Module names use `_` and `-` interchangeably; compare normalised.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

impl ModuleIndex {
    /// Reads the index of the running kernel.
    pub fn for_running_kernel() -> anyhow::Result<Self> {
        let uts = nix::sys::utsname::uname().context("uname")?;
        let release = uts.release().to_string_lossy().into_owned();
        Self::load(&Path::new("/lib/modules").join(release))
    }

    pub fn load(root: &Path) -> anyhow::Result<Self> {
        let mut idx = ModuleIndex {
            root: root.to_path_buf(),
            ..Default::default()
        };
        let dep = std::fs::read_to_string(root.join("modules.dep"))
            .with_context(|| format!("read {}/modules.dep", root.display()))?;
        idx.parse_dep(&dep);
        if let Ok(alias) = std::fs::read_to_string(root.join("modules.alias")) {
            idx.parse_alias(&alias);
        }
        if let Ok(soft) = std::fs::read_to_string(root.join("modules.softdep")) {
            idx.parse_softdep(&soft);
        }
        Ok(idx)
    }

    fn parse_dep(&mut self, text: &str) {
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(module_name_of).collect();
            self.deps
                .insert(module_name_of(path), (path.trim().to_string(), deps));
        }
    }

    fn parse_alias(&mut self, text: &str) {
        for line in text.lines() {
            let mut w = line.split_whitespace();
            if let (Some("alias"), Some(pat), Some(name)) = (w.next(), w.next(), w.next()) {
                self.aliases.push((pat.to_string(), normalize(name)));
            }
        }
    }

    fn parse_softdep(&mut self, text: &str) {
        for line in text.lines() {
            let mut w = line.split_whitespace();
            if w.next() != Some("softdep") {
                continue;
            }
            let Some(name) = w.next() else { continue };
            let (mut pre, mut post) = (Vec::new(), Vec::new());
            let mut into_post = false;
            for t in w {
                match t {
                    "pre:" => into_post = false,
                    "post:" => into_post = true,
                    m if into_post => post.push(normalize(m)),
                    m => pre.push(normalize(m)),
                }
            }
            self.softdeps.insert(normalize(name), (pre, post));
        }
    }

    /// Module names for a modalias string or a module name or alias.
    pub fn resolve(&self, what: &str) -> Vec<String> {
        let n = normalize(what);
        if self.deps.contains_key(&n) {
            return vec![n];
        }
        let mut out = Vec::new();
        for (pat, name) in &self.aliases {
            if glob_match(pat.as_bytes(), what.as_bytes()) && !out.contains(name) {
                out.push(name.clone());
            }
        }
        out
    }
}

/// Loads modules, remembering what is loaded.
#[derive(Debug)]
pub struct Loader {
    index: ModuleIndex,
    loaded: HashSet<String>,
    /// Modules this loader inserted, in load order (for status).
    pub inserted: Vec<String>,
}

impl Loader {
    pub fn new(index: ModuleIndex) -> Self {
        let loaded = std::fs::read_to_string("/proc/modules")
            .map(|s| {
                s.lines()
                    .filter_map(|l| l.split_whitespace().next())
                    .map(normalize)
                    .collect()
            })
            .unwrap_or_default();
        Self {
            index,
            loaded,
            inserted: Vec::new(),
        }
    }

    /// Loads `name` with its soft and hard dependencies. Depth-limited to
    /// survive cycles in softdeps.
    pub fn load(&mut self, name: &str) -> anyhow::Result<()> {
        self.load_depth(&normalize(name), 0)
    }

    fn load_depth(&mut self, name: &str, depth: u32) -> anyhow::Result<()> {
        if self.loaded.contains(name) || depth > 32 {
            return Ok(());
        }
        let Some((path, deps)) = self.index.deps.get(name).cloned() else {
            // Not shipped: either built in or not needed in the appliance.
            return Ok(());
        };
        // Mark first so that softdep cycles terminate.
        self.loaded.insert(name.to_string());
        let (pre, post) = self.index.softdeps.get(name).cloned().unwrap_or_default();
        for m in pre {
            if let Err(e) = self.load_depth(&m, depth + 1) {
                tracing::warn!("softdep {m} of {name}: {e:#}");
            }
        }
        for d in deps {
            self.load_depth(&d, depth + 1)?;
        }
        insert_module(&self.index.root.join(&path))
            .with_context(|| format!("load module {name}"))?;
        self.inserted.push(name.to_string());
        tracing::debug!("loaded module {name}");
        for m in post {
            if let Err(e) = self.load_depth(&m, depth + 1) {
                tracing::warn!("softdep {m} of {name}: {e:#}");
            }
        }
        Ok(())
    }

    /// Loads drivers for every device in `/sys/devices`, repeating while new
    /// modules appear (a bus driver creates devices that need more drivers,
    /// e.g. virtio_pci then virtio_net, or the ACPI button then evdev).
    pub fn load_for_hardware(&mut self) {
        for _pass in 0..6 {
            let mut aliases = BTreeSet::new();
            collect_modaliases(Path::new("/sys/devices"), &mut aliases, 0);
            let before = self.inserted.len();
            for alias in &aliases {
                for name in self.index.resolve(alias) {
                    if let Err(e) = self.load(&name) {
                        tracing::warn!("{e:#}");
                    }
                }
            }
            if self.inserted.len() == before {
                break;
            }
            // Give asynchronous probes a moment to register child devices.
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Inserts one module file. Already loaded counts as success.
fn insert_module(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let params = CString::default();
    match nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("finit_module {}", path.display())),
    }
}

/// Collects `modalias` contents below `dir`, not following symlinks (sysfs
/// links form cycles).
fn collect_modaliases(dir: &Path, out: &mut BTreeSet<String>, depth: u32) {
    if depth > 24 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            collect_modaliases(&entry.path(), out, depth + 1);
        } else if ft.is_file() && entry.file_name() == "modalias" {
            if let Ok(s) = std::fs::read_to_string(entry.path()) {
                let s = s.trim();
                if !s.is_empty() {
                    out.insert(s.to_string());
                }
            }
        }
    }
}

/// fnmatch(3)-style glob: `*`, `?`, and `[...]` classes with ranges and `!`/`^`.
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(&pat[p..], s[i]) {
                        if matched {
                            p += next;
                            i += 1;
                            continue;
                        }
                    } else if s[i] == b'[' {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
                c if c == s[i] => {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, si)) => {
                p = sp + 1;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

/// Matches one byte against a class at the start of `pat`; returns whether
/// it matched and the class length, or None if the class is unterminated.
fn class_match(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut j = 1;
    let negate = matches!(pat.get(j), Some(b'!') | Some(b'^'));
    if negate {
        j += 1;
    }
    let mut matched = false;
    let mut first = true;
    while j < pat.len() {
        let a = pat[j];
        if a == b']' && !first {
            return Some((matched != negate, j + 1));
        }
        first = false;
        if pat.get(j + 1) == Some(&b'-') && pat.get(j + 2).is_some_and(|&b| b != b']') {
            let b = pat[j + 2];
            if a <= c && c <= b {
                matched = true;
            }
            j += 3;
        } else {
            if a == c {
                matched = true;
            }
            j += 1;
        }
    }
    None
}

/// Entry point when the kernel runs init as its module helper:
/// `ferry-init -q -- <module-or-alias>`. Returns the process exit code.
pub fn modprobe_main(args: &[String]) -> i32 {
    let Some(what) = args.iter().skip(1).rfind(|a| !a.starts_with('-')) else {
        return 1;
    };
    let index = match ModuleIndex::for_running_kernel() {
        Ok(i) => i,
        Err(_) => return 1,
    };
    let names = index.resolve(what);
    if names.is_empty() {
        return 1;
    }
    let mut loader = Loader::new(index);
    let mut rc = 0;
    for n in names {
        if loader.load(&n).is_err() {
            rc = 1;
        }
    }
    rc
}

/// Whether this process was started as the kernel's module helper rather
/// than as PID 1.
pub fn invoked_as_modprobe(args: &[String]) -> bool {
    std::process::id() != 1 && args.iter().any(|a| a == "--") && args.iter().any(|a| a == "-q")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(
            b"pci:v00008086d0000100Esv*sd*bc*sc*i*",
            b"pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00"
        ));
        assert!(glob_match(
            b"virtio:d00000001v*",
            b"virtio:d00000001v00001AF4"
        ));
        assert!(!glob_match(
            b"virtio:d00000002v*",
            b"virtio:d00000001v00001AF4"
        ));
        assert!(glob_match(b"acpi*:LNXPWRBN:*", b"acpi:LNXPWRBN:"));
        assert!(glob_match(b"a[0-9]c", b"a5c"));
        assert!(!glob_match(b"a[!0-9]c", b"a5c"));
        assert!(glob_match(
            b"input:b*v*p*e*-e*1,*k*74,*",
            b"input:b0019v0000p0001e0000-e0,1,k74,ramlsfw"
        ));
        assert!(glob_match(b"fs-cifs", b"fs-cifs"));
        assert!(glob_match(b"*", b""));
    }

    #[test]
    fn index_parsing_and_resolution() {
        let mut idx = ModuleIndex::default();
        idx.parse_dep("kernel/fs/smb/client/cifs.ko: kernel/lib/libarc4.ko kernel/fs/netfs/netfs.ko\nkernel/lib/libarc4.ko:\nkernel/fs/netfs/netfs.ko:\n");
        idx.parse_alias("alias fs-cifs cifs\nalias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\n");
        idx.parse_softdep("softdep cifs pre: ccm gcm post: nls-utf8\n");
        assert_eq!(idx.resolve("fs-cifs"), vec!["cifs"]);
        assert_eq!(idx.resolve("cifs"), vec!["cifs"]);
        assert_eq!(idx.resolve("libarc4"), vec!["libarc4"]);
        assert!(idx
            .resolve("pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00")
            .contains(&"e1000".to_string()));
        assert_eq!(idx.deps["cifs"].1, vec!["libarc4", "netfs"]);
        assert_eq!(
            idx.softdeps["cifs"],
            (vec!["ccm".into(), "gcm".into()], vec!["nls_utf8".into()])
        );
    }

    #[test]
    fn modprobe_arguments() {
        let args: Vec<String> = ["/init", "-q", "--", "fs-cifs"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            args.iter()
                .skip(1)
                .rfind(|a| !a.starts_with('-'))
                .map(String::as_str),
            Some("fs-cifs")
        );
    }
}
