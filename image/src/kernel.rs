//! Kernel package: owns finding, downloading and unpacking Debian's kernel.
//!
//! The package name is resolved from `linux-image-amd64`'s dependency with
//! `apt-cache depends` and checked to be one exact name (never a pattern:
//! `apt-get download` with a glob can pull gigabytes). The .deb is cached in
//! the cache directory and unpacked there with `dpkg-deb -x` (no root).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The meta package whose dependency names the current kernel.
pub const META_PACKAGE: &str = "linux-image-amd64";

/// An unpacked kernel package.
#[derive(Debug)]
pub struct Kernel {
    pub package: String,
    pub deb: PathBuf,
    pub release: String,
    pub vmlinuz: PathBuf,
    pub moddir: PathBuf,
}

/// True for names like `linux-image-6.1.0-56-amd64`, and nothing with
/// wildcard or option characters.
pub fn is_exact_kernel_package(name: &str) -> bool {
    name.strip_prefix("linux-image-")
        .and_then(|r| r.strip_suffix("-amd64"))
        .is_some_and(|v| {
            v.starts_with(|c: char| c.is_ascii_digit())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))
        })
}

/// Finds the exact kernel package that `linux-image-amd64` depends on.
pub fn resolve_package() -> anyhow::Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", META_PACKAGE])
        .output()
        .context("run apt-cache (is this Debian?)")?;
    if !out.status.success() {
        bail!(
            "apt-cache depends {META_PACKAGE} failed (run apt-get update first): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_depends(&String::from_utf8_lossy(&out.stdout))
}

pub fn parse_depends(text: &str) -> anyhow::Result<String> {
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .filter(|n| is_exact_kernel_package(n))
        .collect();
    match names.as_slice() {
        [one] => Ok((*one).to_string()),
        [] => bail!("{META_PACKAGE} depends on no linux-image-<version>-amd64 package"),
        many => bail!("{META_PACKAGE} names several kernels: {many:?}"),
    }
}

/// Downloads (unless cached) and unpacks `package` under `cache`.
pub fn fetch(package: &str, cache: &Path) -> anyhow::Result<Kernel> {
    if !is_exact_kernel_package(package) {
        bail!("{package:?} is not an exact linux-image-<version>-amd64 package name");
    }
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).with_context(|| format!("mkdir {}", debs.display()))?;
    let deb = match find_deb(&debs, package)? {
        Some(d) => {
            eprintln!("ferry-image: using cached {}", d.display());
            d
        }
        None => {
            eprintln!("ferry-image: apt-get download {package}");
            let st = Command::new("apt-get")
                .arg("download")
                .arg(package)
                .current_dir(&debs)
                .status()
                .context("run apt-get download")?;
            if !st.success() {
                bail!("apt-get download {package} failed ({st})");
            }
            find_deb(&debs, package)?
                .with_context(|| format!("apt-get download left no {package}_*.deb"))?
        }
    };
    let extract = cache.join("extract").join(package);
    let marker = extract.join(".ferry-extracted");
    if !marker.exists() {
        if extract.exists() {
            std::fs::remove_dir_all(&extract)
                .with_context(|| format!("clean {}", extract.display()))?;
        }
        std::fs::create_dir_all(&extract)?;
        let st = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&extract)
            .status()
            .context("run dpkg-deb")?;
        if !st.success() {
            bail!("dpkg-deb -x {} failed ({st})", deb.display());
        }
        std::fs::write(&marker, b"")?;
    }
    let release = package
        .strip_prefix("linux-image-")
        .context("package prefix")?
        .to_string();
    let vmlinuz = extract.join("boot").join(format!("vmlinuz-{release}"));
    let moddir = ["lib", "usr/lib"]
        .iter()
        .map(|p| extract.join(p).join("modules").join(&release))
        .find(|p| p.exists())
        .with_context(|| format!("no modules directory for {release} in {}", deb.display()))?;
    if !vmlinuz.exists() {
        bail!("no {} in {}", vmlinuz.display(), deb.display());
    }
    Ok(Kernel {
        package: package.to_string(),
        deb,
        release,
        vmlinuz,
        moddir,
    })
}

fn find_deb(dir: &Path, package: &str) -> anyhow::Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(&prefix) && f.ends_with("_amd64.deb"))
        })
        .collect();
    found.sort();
    Ok(found.pop())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_only() {
        assert!(is_exact_kernel_package("linux-image-6.1.0-56-amd64"));
        assert!(!is_exact_kernel_package("linux-image-*-amd64"));
        assert!(!is_exact_kernel_package("linux-image-amd64"));
        assert!(!is_exact_kernel_package(
            "linux-image-6.1.0-56-amd64-unsigned"
        ));
        assert!(!is_exact_kernel_package(
            "linux-image-6.1.0-56-cloud-amd64 x"
        ));
    }

    #[test]
    fn depends_output() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(parse_depends(out).unwrap(), "linux-image-6.1.0-56-amd64");
        assert!(parse_depends("linux-image-amd64\n").is_err());
    }
}
