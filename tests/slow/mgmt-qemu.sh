#!/usr/bin/env bash
# Slow suite: the agent as the booted appliance in QEMU (TCG) enrolls with a ferry-mgmt on the
# host through a slirp guestfwd rule (10.0.2.100:9876, socat per connection), serves mTLS,
# refuses a revoked admin, and reports its idle RSS. See appliance/agent/tests/qemu.rs.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v socat >/dev/null || { echo "socat is missing: apt-get install -y socat (tests/peers.d/boot-slow.list)" >&2; exit 1; }
cargo run -q -p ferry-image
exec cargo test -p ferry-agent --test qemu -- --ignored --nocapture "$@"
