#!/usr/bin/env bash
# Storage-backend benchmark: a full backup of the mixed test disk with the `ferry` CLI to a
# local repository, to SFTP (OpenSSH sshd) and to S3 (s3s-fs), against restic to the same
# SFTP and S3 servers, all on loopback, in one run; prints one table.
#
#   tests/bench/storage.sh [SIZE] [WORKDIR]       (defaults: 4G, ./bench-out/storage)
#
# Needs: restic, openssh-server (sshd, ssh-keygen), GNU time, bc, and s3s-fs
#   apt-get install -y restic openssh-server time bc
#   cargo install s3s-fs@0.14.1 --features binary --locked
# Targets (issue 8): ferry >= 2x restic on each backend, and within 25% of ferry local.
set -euo pipefail
SIZE=${1:-4G}
W=${2:-bench-out/storage}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
S3S=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
for t in restic /usr/sbin/sshd ssh-keygen /usr/bin/time bc "$S3S"; do
  command -v "$t" >/dev/null || [ -x "$t" ] || {
    echo "missing $t: apt-get install -y restic openssh-server time bc; cargo install s3s-fs@0.14.1 --features binary --locked" >&2
    exit 1
  }
done
if [ -z "${FERRY:-}" ]; then
  cargo build --release -q -p ferry-cli -p ferry-testkit
  FERRY=$ROOT/target/release/ferry
fi
GEN=${GEN:-$ROOT/target/release/ferry-gen-disk}
rm -rf "$W"; mkdir -p "$W"; W=$(cd "$W" && pwd)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }

echo "generating the $SIZE mixed disk in $W ..."
"$GEN" --size "$SIZE" --out "$W/disk.raw" >/dev/null
LOGICAL=$(stat -c %s "$W/disk.raw")

# sshd: own config, host key and client key
mkdir -p "$W/ssh" /run/sshd
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
MaxSessions 64
MaxStartups 64
EOF
/usr/sbin/sshd -D -e -f "$W/ssh/sshd_config" 2>"$W/sshd.log" &
PIDS+=($!)
wait_port "$SSH_PORT"
FP=$(ssh-keygen -E sha256 -lf "$W/ssh/host_key.pub" | awk '{print $2}')
USER_NAME=$(id -un)

# s3s-fs
S3_PORT=$(free_port)
mkdir -p "$W/s3/bkt"
export AWS_ACCESS_KEY_ID=benchaccess AWS_SECRET_ACCESS_KEY=benchsecret0123456789 AWS_DEFAULT_REGION=us-east-1
"$S3S" --host 127.0.0.1 --port "$S3_PORT" --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$W/s3" 2>"$W/s3s.log" &
PIDS+=($!)
wait_port "$S3_PORT"

export RESTIC_PASSWORD=bench
export FERRY_STORE_KEY_FILE=$W/ssh/client_key FERRY_STORE_HOST_FINGERPRINT=$FP
SSH_CMD="ssh -p $SSH_PORT -i $W/ssh/client_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR $USER_NAME@127.0.0.1 -s sftp"

ROWS=()
run() {
  local name=$1; shift
  sync
  /usr/bin/time -f "%e %U %S %M" -o "$W/time.txt" "$@" >"$W/$name.log" 2>&1 || {
    echo "$name failed:"; tail -20 "$W/$name.log"; exit 1; }
  read -r wall user sys rss <"$W/time.txt"
  local cpu; cpu=$(echo "$user + $sys" | bc)
  local mbs; mbs=$(echo "scale=1; $LOGICAL / 1000000 / $wall" | bc)
  ROWS+=("$name|$wall|$cpu|$mbs|$(( rss / 1024 ))")
  eval "MBS_${name//-/_}=$mbs"
}

SFTP_REPO="sftp://$USER_NAME@127.0.0.1:$SSH_PORT$W/ferry-sftp"
S3_REPO="s3://bkt/ferry?endpoint=http://127.0.0.1:$S3_PORT&region=us-east-1&path_style=true"

"$FERRY" --repo "$W/ferry-local" repo init >/dev/null
run ferry-local "$FERRY" --repo "$W/ferry-local" backup --source "$W/disk.raw" --name disk
"$FERRY" --repo "$SFTP_REPO" repo init >/dev/null
run ferry-sftp "$FERRY" --repo "$SFTP_REPO" backup --source "$W/disk.raw" --name disk
"$FERRY" --repo "$S3_REPO" repo init >/dev/null
run ferry-s3 "$FERRY" --repo "$S3_REPO" backup --source "$W/disk.raw" --name disk
"$FERRY" --repo "$S3_REPO" verify >"$W/ferry-s3-verify.log"
"$FERRY" --repo "$SFTP_REPO" verify >"$W/ferry-sftp-verify.log"

restic -r "sftp:$USER_NAME@127.0.0.1:$W/restic-sftp" -o sftp.command="$SSH_CMD" init -q
run restic-sftp restic -r "sftp:$USER_NAME@127.0.0.1:$W/restic-sftp" -o sftp.command="$SSH_CMD" backup -q "$W/disk.raw"
restic -r "s3:http://127.0.0.1:$S3_PORT/bkt/restic" init -q
run restic-s3 restic -r "s3:http://127.0.0.1:$S3_PORT/bkt/restic" backup -q "$W/disk.raw"

echo
echo "Full backup of the $SIZE mixed disk ($LOGICAL bytes), loopback servers, $(nproc) CPUs"
printf "%-12s %9s %9s %10s %9s\n" run "wall s" "CPU s" "MB/s" "RSS MiB"
for r in "${ROWS[@]}"; do IFS='|' read -r a b c d e <<<"$r"; printf "%-12s %9s %9s %10s %9s\n" "$a" "$b" "$c" "$d" "$e"; done
echo
ratio() { echo "scale=2; $1 / $2" | bc; }
echo "ferry/restic on SFTP: $(ratio "$MBS_ferry_sftp" "$MBS_restic_sftp")x   (target >= 2)"
echo "ferry/restic on S3:   $(ratio "$MBS_ferry_s3" "$MBS_restic_s3")x   (target >= 2)"
echo "ferry SFTP / local:   $(ratio "$MBS_ferry_sftp" "$MBS_ferry_local")   (target >= 0.75)"
echo "ferry S3 / local:     $(ratio "$MBS_ferry_s3" "$MBS_ferry_local")   (target >= 0.75)"
