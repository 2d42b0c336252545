#!/usr/bin/env bash
# Installs what building and testing Ferry needs on Debian 12, only where it is missing.
#   scripts/ensure-tools.sh [DEBIAN_PACKAGE...]
# Rust comes from rustup (Debian 12's rustc is too old); everything else from Debian.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
want=(build-essential pkg-config curl ca-certificates "$@")
updated=0
# Two passes: installing one package can remove another (Debian's qemu-system-x86 replaces a
# newer qemu-utils from elsewhere), which the second pass puts back.
for pass in 1 2; do
  missing=()
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || break
  echo "installing: ${missing[*]}" >&2
  [ "$updated" = 1 ] || { $SUDO apt-get update -qq; updated=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
done
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "cargo is in ~/.cargo/bin: add it to PATH (source ~/.cargo/env)" >&2
  else
    echo "installing Rust with rustup" >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
  fi
fi
