//! Appliance binaries: owns the static release build of ferry-init and
//! ferry-agent.
//!
//! `--target` is always passed so that `+crt-static` applies to the target
//! binaries only, never to build scripts.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

pub const TARGET: &str = "x86_64-unknown-linux-gnu";
pub const PACKAGES: &[&str] = &["ferry-init", "ferry-agent"];

/// Runs the static release build in the workspace.
pub fn build(workspace: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut rustflags = std::env::var("RUSTFLAGS").unwrap_or_default();
    if !rustflags.contains("crt-static") {
        rustflags = format!("{rustflags} -C target-feature=+crt-static")
            .trim()
            .to_string();
    }
    let mut cmd = Command::new(cargo);
    // The image ships stripped binaries: the workspace keeps line tables in
    // release builds for debugging, which would triple the initramfs and
    // slow its unpacking at every boot.
    cmd.current_dir(workspace)
        .env("RUSTFLAGS", rustflags)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .args(["build", "--release", "--target", TARGET]);
    for p in PACKAGES {
        cmd.args(["-p", p]);
    }
    eprintln!(
        "ferry-image: building {} (static, release)",
        PACKAGES.join(", ")
    );
    let st = cmd.status().context("run cargo build")?;
    if !st.success() {
        bail!("static build failed ({st})");
    }
    Ok(())
}

/// Where cargo puts the static binaries.
pub fn target_dir(workspace: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
}

/// Reads a built binary and checks that it is static.
pub fn read_static(workspace: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let path = target_dir(workspace)
        .join(TARGET)
        .join("release")
        .join(name);
    let bytes = std::fs::read(&path)
        .with_context(|| format!("read {} (build it first)", path.display()))?;
    if !crate::elf::is_static(&bytes)? {
        bail!(
            "{} is dynamically linked; it must be built with +crt-static",
            path.display()
        );
    }
    Ok(bytes)
}
