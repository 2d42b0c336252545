# Shell shared by the benchmarks that start loopback servers (storage.sh, node.sh).
# Source it after `set -euo pipefail`, once $W (the work directory) exists:
#   . "$ROOT/tests/bench/lib.sh"
#
# Provides:
#   PIDS, cleanup       background servers to kill on exit (the EXIT trap is set here)
#   free_port           prints a free loopback TCP port
#   wait_port PORT      waits until something listens on 127.0.0.1:PORT (about 10 s)
#   start_sshd          OpenSSH sshd on a free loopback port with its own config, host key
#                       and client key under $W/ssh; sets SSH_PORT, USER_NAME and SSH_CMD
#                       (the `ssh ... -s sftp` command for restic's sftp.command)
#   timed NAME CMD...   runs CMD under GNU time, output in $W/NAME.log (its tail and exit 1
#                       if it fails); sets WALL, CPU (user + sys seconds), MBS (MB/s of
#                       $LOGICAL bytes) and RSS_MIB
#   ratio A B           A / B with two decimals

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }

start_sshd() {
  # sshd wants /run/sshd; when it cannot be made (not root), sshd may still run.
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
MaxSessions 64
MaxStartups 64
EOF
  /usr/sbin/sshd -D -e -f "$W/ssh/sshd_config" 2>"$W/sshd.log" &
  PIDS+=($!)
  wait_port "$SSH_PORT"
  USER_NAME=$(id -un)
  SSH_CMD="ssh -p $SSH_PORT -i $W/ssh/client_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR $USER_NAME@127.0.0.1 -s sftp"
}

timed() {
  local name=$1; shift
  sync
  /usr/bin/time -f "%e %U %S %M" -o "$W/time.txt" "$@" >"$W/$name.log" 2>&1 || {
    echo "$name failed:"; tail -20 "$W/$name.log"; exit 1; }
  local user sys rss
  read -r WALL user sys rss <"$W/time.txt"
  CPU=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
  MBS=$(echo "scale=1; $LOGICAL / 1000000 / $WALL" | bc)
  RSS_MIB=$(( rss / 1024 ))
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
