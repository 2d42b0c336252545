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
. "$ROOT/tests/bench/lib.sh"

echo "generating the $SIZE mixed disk in $W ..."
"$GEN" --size "$SIZE" --out "$W/disk.raw" >/dev/null
LOGICAL=$(stat -c %s "$W/disk.raw")

# sshd: own config, host key and client key
start_sshd
FP=$(ssh-keygen -E sha256 -lf "$W/ssh/host_key.pub" | awk '{print $2}')

# s3s-fs
S3_PORT=$(free_port)
mkdir -p "$W/s3/bkt"
export AWS_ACCESS_KEY_ID=benchaccess AWS_SECRET_ACCESS_KEY=benchsecret0123456789 AWS_DEFAULT_REGION=us-east-1
"$S3S" --host 127.0.0.1 --port "$S3_PORT" --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$W/s3" 2>"$W/s3s.log" &
PIDS+=($!)
wait_port "$S3_PORT"

export RESTIC_PASSWORD=bench
export FERRY_STORE_KEY_FILE=$W/ssh/client_key FERRY_STORE_HOST_FINGERPRINT=$FP

ROWS=()
run() {
  timed "$@"
  ROWS+=("$1|$WALL|$CPU|$MBS|$RSS_MIB")
  eval "MBS_${1//-/_}=$MBS"
}

SFTP_REPO="sftp://$USER_NAME@127.0.0.1:$SSH_PORT$W/ferry-sftp"
S3_REPO="s3://bkt/ferry?endpoint=http://127.0.0.1:$S3_PORT&region=us-east-1&path_style=true&insecure=1"

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
echo "ferry/restic on SFTP: $(ratio "$MBS_ferry_sftp" "$MBS_restic_sftp")x   (target >= 2)"
echo "ferry/restic on S3:   $(ratio "$MBS_ferry_s3" "$MBS_restic_s3")x   (target >= 2)"
echo "ferry SFTP / local:   $(ratio "$MBS_ferry_sftp" "$MBS_ferry_local")   (target >= 0.75)"
echo "ferry S3 / local:     $(ratio "$MBS_ferry_s3" "$MBS_ferry_local")   (target >= 0.75)"
