#!/usr/bin/env bash
# Listener flood benchmark (issue 16): a registered ferry-agent and the ferry-mgmt server
# each take 1,000 idle TCP connections from one address (127.0.0.2), held open, while a
# legitimate mTLS client (curl with an admin certificate, from 127.0.0.1) asks for
# `GET /v1/status` (agent) and `GET /v1/agents` (management server). Prints the
# legitimate client's time with and without the flood, side by side. Target: < 2 s under flood.
# The agent runs with the appliance's open-file limit (1024), as under ferry-init.
#
#   tests/bench/flood.sh [CONNECTIONS] [WORKDIR]     (defaults: 1000, ./bench-out/flood)
#   FERRY_BIN_DIR=target/debug tests/bench/flood.sh  (binaries already built)
#
# Needs: curl, python3 (both in Debian 12's base set).
set -euo pipefail
N=${1:-1000}
W=${2:-bench-out/flood}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
for t in curl python3; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }; done
# FERRY_BIN_DIR: use the ferry and ferry-agent binaries there instead of a release build.
if [ -n "${FERRY_BIN_DIR:-}" ]; then
  BIN=$(cd "$FERRY_BIN_DIR" && pwd)
else
  cargo build --release -q -p ferry-cli -p ferry-agent
  BIN=$ROOT/target/release
fi
rm -rf "$W"; mkdir -p "$W"; W=$(cd "$W" && pwd)
. "$ROOT/tests/bench/lib.sh"

MPORT=$(free_port)
mkdir -p "$W/mgmt"
"$BIN/ferry" mgmt serve --listen "127.0.0.1:$MPORT" --state "$W/mgmt" --collect-every 3600 \
  >"$W/mgmt.out" 2>"$W/mgmt.log" &
PIDS+=($!)
wait_port "$MPORT"
export FERRY_MGMT="127.0.0.1:$MPORT" FERRY_ADMIN_CERT="$W/mgmt/admin.pem"
TOKEN=$("$BIN/ferry" mgmt token create --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

APORT=$(free_port)
mkdir -p "$W/agent/run"
(
  ulimit -n 1024
  exec env -i PATH="$PATH" FERRY_STATE_DIR="$W/agent" FERRY_RUN_DIR="$W/agent/run" \
    FERRY_LISTEN="127.0.0.1:$APORT" FERRY_MGMT="127.0.0.1:$MPORT" FERRY_TOKEN="$TOKEN" \
    FERRY_LOG=info "$BIN/ferry-agent" 2>"$W/agent.log"
) &
PIDS+=($!)
AGENT_ID=""
for _ in $(seq 100); do
  AGENT_ID=$("$BIN/ferry" mgmt agents list --json 2>/dev/null |
    python3 -c 'import json,sys; a=json.load(sys.stdin); print(a[0]["id"] if a else "")' 2>/dev/null || true)
  [ -n "$AGENT_ID" ] && break
  sleep 0.1
done
[ -n "$AGENT_ID" ] || { echo "the agent did not register; see $W/agent.log" >&2; exit 1; }
sleep 0.5 # the agent switches to mTLS right after it answers the enrollment

# curl reads the certificate and key from the admin bundle, and trusts its CA.
status() { # NAME PORT PATH: prints the seconds curl took, or "failed"
  curl -s -o /dev/null --max-time 30 -w '%{time_total}' --cert "$FERRY_ADMIN_CERT" \
    --cacert "$FERRY_ADMIN_CERT" --connect-to "$1:443:127.0.0.1:$2" "https://$1$3" || echo failed
}
best_worst() { # NAME PORT PATH: five requests, prints "worst" seconds
  local w=0 t
  for _ in 1 2 3 4 5; do
    t=$(status "$@")
    [ "$t" = failed ] && { echo failed; return; }
    w=$(python3 -c "print(max($w, $t))")
  done
  printf '%.3f' "$w"
}
AGENT_NAME="agent-$AGENT_ID.ferry.internal"
MGMT_NAME="mgmt.ferry.internal"
quiet_agent=$(best_worst "$AGENT_NAME" "$APORT" /v1/status)
quiet_mgmt=$(best_worst "$MGMT_NAME" "$MPORT" /v1/agents)

# The flood: N connections from 127.0.0.2 to each server, held open and silent.
python3 - "$N" "$APORT" "$MPORT" "$W/flood.ready" <<'PY' &
import resource, socket, sys, time
n, ports, ready = int(sys.argv[1]), [int(p) for p in sys.argv[2:4]], sys.argv[4]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held, refused = [], 0
for port in ports:
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
            held.append(s)
        except OSError:
            refused += 1
            s.close()
open(ready, "w").write(f"{len(held)} {refused}\n")
time.sleep(120)
PY
FLOOD=$!
PIDS+=($FLOOD)
for _ in $(seq 600); do [ -s "$W/flood.ready" ] && break; sleep 0.1; done
flood_agent=$(best_worst "$AGENT_NAME" "$APORT" /v1/status)
flood_mgmt=$(best_worst "$MGMT_NAME" "$MPORT" /v1/agents)
kill "$FLOOD" 2>/dev/null || true

echo
echo "legitimate mTLS client, worst of 5 requests (s); flood: $N idle connections per server from 127.0.0.2"
printf '%-34s %10s %14s\n' "server, request" "no flood" "under flood"
printf '%-34s %10s %14s\n' "ferry-agent GET /v1/status" "$quiet_agent" "$flood_agent"
printf '%-34s %10s %14s\n' "ferry mgmt serve GET /v1/agents" "$quiet_mgmt" "$flood_mgmt"
echo "target: under 2 s under flood"
