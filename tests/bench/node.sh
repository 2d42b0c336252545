#!/usr/bin/env bash
# Storage node benchmark: a full backup of the mixed test disk to a ferry-node vault on
# loopback (mTLS), to a local repository, and restic to SFTP on a loopback sshd, in one run;
# prints one table. Ferry's two rows use the same engine (server/node/examples/backup.rs);
# server/node/examples/certs.rs makes a throwaway CA and the node's and agent's certificates.
#
#   tests/bench/node.sh [SIZE] [WORKDIR]       (defaults: 4G, ./bench-out/node; RUNS=2: best of)
#
# Needs: restic, openssh-server (sshd, ssh-keygen), GNU time, bc, taskset (util-linux)
#   apt-get install -y restic openssh-server time bc
# Targets (issue 10): node within 25% of local, and >= 2x restic over SFTP. A second table
# holds the client to one CPU and gives the node the other, as when the node is its own
# machine: on one 2-CPU box the node's decode-and-hash check of every new chunk otherwise
# takes CPU from the client.
set -euo pipefail
SIZE=${1:-4G}
W=${2:-bench-out/node}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
for t in restic /usr/sbin/sshd ssh-keygen /usr/bin/time bc python3 taskset; do
  command -v "$t" >/dev/null || [ -x "$t" ] || {
    echo "missing $t: apt-get install -y restic openssh-server time bc" >&2
    exit 1
  }
done
cargo build --release -q -p ferry-node -p ferry-testkit --bins --examples --features ferry-storage/node
BIN=$ROOT/target/release
GEN=$BIN/ferry-gen-disk
CLIENT=$BIN/examples/backup
rm -rf "$W"; mkdir -p "$W"; W=$(cd "$W" && pwd)
. "$ROOT/tests/bench/lib.sh"

echo "generating the $SIZE mixed disk in $W ..."
"$GEN" --size "$SIZE" --out "$W/disk.raw" >/dev/null
LOGICAL=$(stat -c %s "$W/disk.raw")

# The node: a throwaway CA, the node's certificate and an agent's, one vault.
NODE_PORT=$(free_port)
mkdir -p "$W/node"
"$BIN/examples/certs" "$W/node" "$W/agent.pem"
RUNS=${RUNS:-2}
: >"$W/node/node.toml"
for i in $(seq "$RUNS"); do printf '[[vault]]\nname = "bench%s"\n' "$i" >>"$W/node/node.toml"; done
printf '[[grant]]\nidentity = "agent-bench"\nvaults = ["*"]\n' >>"$W/node/node.toml"
"$BIN/ferry-node" --state "$W/node" serve --listen "127.0.0.1:$NODE_PORT" >"$W/node.out" 2>"$W/node.log" &
NODE_PID=$!
PIDS+=($NODE_PID)
wait_port "$NODE_PORT"

# sshd for restic: own config, host key and client key
start_sshd
export RESTIC_PASSWORD=bench

declare -A BEST ROW
# CPU seconds (user + system) the node process has used so far.
node_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
run() {
  local name=$1 before=0 server=- pid=
  case $name in ferry-node) pid=$NODE_PID ;; node-1cpu) pid=$NODE1_PID ;; esac
  [ -n "$pid" ] && before=$(node_cpu "$pid")
  timed "$@"
  [ -n "$pid" ] && server=$(awk -v a="$(node_cpu "$pid")" -v b="$before" 'BEGIN { printf "%.2f", a - b }')
  if [ -z "${BEST[$name]:-}" ] || [ "$(echo "$WALL < ${BEST[$name]}" | bc)" = 1 ]; then
    BEST[$name]=$WALL
    ROW[$name]="$name|$WALL|$CPU|$server|$MBS|$RSS_MIB"
    eval "MBS_${name//-/_}=$MBS"
  fi
}

# Best of $RUNS runs each, every run into a fresh repository (the machines are noisy).
for i in $(seq "$RUNS"); do
  rm -rf "$W/ferry-local" "$W/restic-sftp"
  run ferry-local "$CLIENT" "$W/ferry-local" "$W/disk.raw" --init
  run ferry-node "$CLIENT" "node://127.0.0.1:$NODE_PORT/bench$i?node=bench-node&identity=$W/agent.pem" "$W/disk.raw"
  restic -r "sftp:$USER_NAME@127.0.0.1:$W/restic-sftp" -o sftp.command="$SSH_CMD" init -q
  run restic-sftp restic -r "sftp:$USER_NAME@127.0.0.1:$W/restic-sftp" -o sftp.command="$SSH_CMD" backup -q "$W/disk.raw"
done
# As deployed the node is another machine: the same pair again with the client held to CPU 0
# in both rows and a second node on CPU 1, so the node's own work does not take the
# client's CPU.
if [ "$(nproc)" -ge 2 ]; then
  mkdir -p "$W/node1"
  "$BIN/examples/certs" "$W/node1" "$W/agent1.pem"
  : >"$W/node1/node.toml"
  for i in $(seq "$RUNS"); do printf '[[vault]]\nname = "pinned%s"\n' "$i" >>"$W/node1/node.toml"; done
  printf '[[grant]]\nidentity = "agent-bench"\nvaults = ["*"]\n' >>"$W/node1/node.toml"
  NODE1_PORT=$(free_port)
  taskset -c 1 "$BIN/ferry-node" --state "$W/node1" serve --listen "127.0.0.1:$NODE1_PORT" >"$W/node1.out" 2>"$W/node1.log" &
  NODE1_PID=$!
  PIDS+=($NODE1_PID)
  wait_port "$NODE1_PORT"
  for i in $(seq "$RUNS"); do
    rm -rf "$W/ferry-local"
    run local-1cpu taskset -c 0 "$CLIENT" "$W/ferry-local" "$W/disk.raw" --init
    run node-1cpu taskset -c 0 "$CLIENT" "node://127.0.0.1:$NODE1_PORT/pinned$i?node=bench-node&identity=$W/agent1.pem" "$W/disk.raw"
  done
fi
NODE_BYTES=$(du -sb "$W/node/vaults/bench1" | cut -f1)
LOCAL_BYTES=$(du -sb "$W/ferry-local" | cut -f1)

echo
echo "Full backup of the $SIZE mixed disk ($LOGICAL bytes), loopback, $(nproc) CPUs, best of $RUNS"
echo "(CPU s is the client's; node CPU s is the ferry-node process's during the same run)"
printf "%-12s %9s %9s %11s %10s %9s\n" run "wall s" "CPU s" "node CPU s" "MB/s" "RSS MiB"
for n in ferry-local ferry-node restic-sftp; do
  IFS='|' read -r a b c d e f <<<"${ROW[$n]}"
  printf "%-12s %9s %9s %11s %10s %9s\n" "$a" "$b" "$c" "$d" "$e" "$f"
done
if [ -n "${ROW[node-1cpu]:-}" ]; then
  echo
  echo "The same, client on CPU 0 in both rows, the node on CPU 1 (as deployed, the node's own machine):"
  for n in local-1cpu node-1cpu; do
    IFS='|' read -r a b c d e f <<<"${ROW[$n]}"
    printf "%-12s %9s %9s %11s %10s %9s\n" "$a" "$b" "$c" "$d" "$e" "$f"
  done
fi
echo
echo "vault size on the node: $NODE_BYTES bytes; local repository: $LOCAL_BYTES bytes"
echo "ferry node / local:        $(ratio "$MBS_ferry_node" "$MBS_ferry_local")   (target >= 0.75)"
echo "ferry node / restic SFTP:  $(ratio "$MBS_ferry_node" "$MBS_restic_sftp")x  (target >= 2)"
[ -n "${ROW[node-1cpu]:-}" ] && echo "node / local, node on its own CPU: $(ratio "$MBS_node_1cpu" "$MBS_local_1cpu")"
