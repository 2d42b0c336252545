#!/usr/bin/env bash
# Runs Ferry's whole test suite on Debian 12, installing the tools and test peers it needs.
#
#   tests/run.sh            unit, integration and peer tests (qemu-img, qemu-nbd, nbdkit, nbdinfo)
#   tests/run.sh --slow     also the slower suites in tests/slow/: appliance boot in QEMU
#                           (TCG, tests/boot.sh) and a short run of every fuzz target (tests/fuzz.sh)
#
# Every peer is a real third-party program started by the tests on loopback or unix sockets.
set -euo pipefail
cd "$(dirname "$0")/.."
SLOW=0
for a in "$@"; do
  case "$a" in
    --slow) SLOW=1 ;;
    *) echo "usage: tests/run.sh [--slow]" >&2; exit 2 ;;
  esac
done
# Test peers: one Debian package list per area in tests/peers.d/*.list ('#' starts a comment);
# *-slow.list files are installed only with --slow.
PEERS=()
for f in tests/peers.d/*.list; do
  case "$f" in *-slow.list) [ "$SLOW" = 1 ] || continue ;; esac
  read -r -a pkgs <<<"$(sed 's/#.*//' "$f" | tr '\n' ' ')"
  PEERS+=("${pkgs[@]}")
done
scripts/ensure-tools.sh "${PEERS[@]}"
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
# S3 peer: s3s-fs checks SigV4 signatures. A cargo build of about 7 minutes, once.
if ! command -v s3s-fs >/dev/null 2>&1; then
  cargo install --locked s3s-fs@0.14.1 --features binary
fi

t=$SECONDS
cargo test --workspace --locked
echo "== cargo test --workspace: $((SECONDS - t)) s"

if [ "$SLOW" = 1 ]; then
  for s in tests/slow/*.sh; do
    echo "== $s"
    t=$SECONDS
    bash "$s"
    echo "== $s: $((SECONDS - t)) s"
  done
fi
