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
PEERS=(qemu-utils nbdkit libnbd-bin time)
if [ "$SLOW" = 1 ]; then
  PEERS+=(qemu-system-x86 ovmf)
fi
scripts/ensure-tools.sh "${PEERS[@]}"
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

cargo test --workspace --locked

if [ "$SLOW" = 1 ]; then
  for s in tests/slow/*.sh; do
    echo "== $s"
    bash "$s"
  done
fi
