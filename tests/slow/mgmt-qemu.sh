#!/usr/bin/env bash
# Slow suite: the agent as the booted appliance in QEMU (TCG) enrolls with a ferry-mgmt on the
# host through slirp, serves mTLS, and reports its idle RSS. See appliance/agent/tests/qemu.rs.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo run -q -p ferry-image
exec cargo test -p ferry-agent --test qemu -- --ignored --nocapture "$@"
