#!/usr/bin/env bash
# Storage node benchmark: a full backup of the mixed test disk to a ferry-node vault on
# loopback (mTLS), to a local repository, and restic to SFTP on a loopback sshd, in one run;
# prints one table. Ferry's two rows use the same engine (server/node/examples/backup.rs);
# server/node/examples/certs.rs makes a throwaway CA and the node's and agent's certificates.
#
#   tests/bench/node.sh [SIZE] [WORKDIR]       (defaults: 4G, ./bench-out/node; RUNS=2: best of)
#
# Needs: restic, openssh-server (sshd, ssh-keygen), GNU time, bc
#   apt-get install -y restic openssh-server time bc
# Targets (issue 10): node within 25% of local, and >= 2x restic over SFTP.
set -euo pipefail
SIZE=${1:-4G}
W=${2:-bench-out/node}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
for t in restic /usr/sbin/sshd ssh-keygen /usr/bin/time bc python3; do
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
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }

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
PIDS+=($!)
wait_port "$NODE_PORT"

# sshd for restic: own config, host key and client key
mkdir -p "$W/ssh" /run/sshd 2>/dev/null || mkdir -p "$W/ssh"
ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/client_key"
cp "$W/ssh/client_key.pub" "$W/ssh/authorized_keys"
SSH_PORT=$(free_port)
cat >"$W/ssh/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $W/ssh/host_key
PidFile none
AuthorizedKeysFile $W/ssh/authorized_keys
StrictModes no
PermitRootLogin yes
UsePAM no
Subsystem sftp internal-sftp
EOF
/usr/sbin/sshd -D -e -f "$W/ssh/sshd_config" 2>"$W/sshd.log" &
PIDS+=($!)
wait_port "$SSH_PORT"
USER_NAME=$(id -un)
export RESTIC_PASSWORD=bench
SSH_CMD="ssh -p $SSH_PORT -i $W/ssh/client_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR $USER_NAME@127.0.0.1 -s sftp"

declare -A BEST ROW
run() {
  local name=$1; shift
  sync
  /usr/bin/time -f "%e %U %S %M" -o "$W/time.txt" "$@" >"$W/$name.log" 2>&1 || {
    echo "$name failed:"; tail -20 "$W/$name.log"; exit 1; }
  read -r wall user sys rss <"$W/time.txt"
  if [ -z "${BEST[$name]:-}" ] || [ "$(echo "$wall < ${BEST[$name]}" | bc)" = 1 ]; then
    local cpu; cpu=$(echo "$user + $sys" | bc)
    local mbs; mbs=$(echo "scale=1; $LOGICAL / 1000000 / $wall" | bc)
    BEST[$name]=$wall
    ROW[$name]="$name|$wall|$cpu|$mbs|$(( rss / 1024 ))"
    eval "MBS_${name//-/_}=$mbs"
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
NODE_BYTES=$(du -sb "$W/node/vaults/bench1" | cut -f1)
LOCAL_BYTES=$(du -sb "$W/ferry-local" | cut -f1)

echo
echo "Full backup of the $SIZE mixed disk ($LOGICAL bytes), loopback, $(nproc) CPUs, best of $RUNS"
echo "(the node's own CPU is not in the ferry-node row: it runs in another process)"
printf "%-12s %9s %9s %10s %9s\n" run "wall s" "CPU s" "MB/s" "RSS MiB"
for n in ferry-local ferry-node restic-sftp; do IFS='|' read -r a b c d e <<<"${ROW[$n]}"; printf "%-12s %9s %9s %10s %9s\n" "$a" "$b" "$c" "$d" "$e"; done
echo
ratio() { echo "scale=2; $1 / $2" | bc; }
echo "vault size on the node: $NODE_BYTES bytes; local repository: $LOCAL_BYTES bytes"
echo "ferry node / local:        $(ratio "$MBS_ferry_node" "$MBS_ferry_local")   (target >= 0.75)"
echo "ferry node / restic SFTP:  $(ratio "$MBS_ferry_node" "$MBS_restic_sftp")x  (target >= 2)"
