#!/usr/bin/env bash
# Slow suite: build the appliance image and boot it in QEMU (TCG). See tests/boot.sh.
set -euo pipefail
exec "$(dirname "$0")/../boot.sh"
