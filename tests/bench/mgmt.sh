#!/usr/bin/env bash
# Management-plane benchmark: agents registered per minute (200 simulated agents as tasks
# against one `ferry mgmt serve`), plans deployed per second (to a real ferry-agent), the
# management server's peak RSS, and the agent's idle RSS on the host.
#
#   tests/bench/mgmt.sh [AGENTS] [PLANS]      (defaults: 200 200)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
cargo build --release -q -p ferry-cli -p ferry-agent
cargo build --release -q -p ferry-mgmt --example mgmt-bench
exec "$ROOT/target/release/examples/mgmt-bench" "$ROOT/target/release/ferry" \
  "$ROOT/target/release/ferry-agent" "${1:-200}" "${2:-200}"
