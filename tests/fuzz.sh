#!/usr/bin/env bash
# Smoke-runs every cargo-fuzz target of the parsers of untrusted bytes for a short time each.
#   tests/fuzz.sh [SECONDS]      (default 20 per target)
# Needs the nightly toolchain and cargo-fuzz (installed here when missing). Seed corpora are
# made by each fuzz directory's seed.sh where there is one. A crash fails the script and leaves
# the reproducer under <crate>/fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
if ! rustup toolchain list | grep -q nightly; then
  rustup toolchain install nightly --profile minimal
fi
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
# One target dir for every fuzz crate: their dependencies build once.
export CARGO_TARGET_DIR=$PWD/target/fuzz
for dir in appliance/*/fuzz; do
  [ -d "$dir/fuzz_targets" ] || continue
  crate=$(dirname "$dir")
  if [ -x "$dir/seed.sh" ]; then "$dir/seed.sh" >/dev/null 2>&1 || echo "warning: $dir/seed.sh failed" >&2; fi
  for t in "$dir"/fuzz_targets/*.rs; do
    name=$(basename "$t" .rs)
    echo "== fuzz $crate $name (${SECS}s)"
    mkdir -p "$dir/corpus/$name"
    (cd "$crate" && cargo +nightly fuzz run "$name" "fuzz/corpus/$name" -- \
        -max_total_time="$SECS" -rss_limit_mb=2048 -max_len=1048576 2>&1 | tail -3)
  done
done
