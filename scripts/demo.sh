#!/usr/bin/env bash
# Builds ferry and runs its main job on the embedded default: generate a sample disk, back it
# up to a local repository, take an incremental, restore it, compare, and verify.
#   scripts/demo.sh [DIR]      (default: ./ferry-demo)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-tools.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --locked -p ferry-cli
exec target/release/ferry demo --dir "${1:-ferry-demo}"
