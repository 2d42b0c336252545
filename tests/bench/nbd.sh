#!/usr/bin/env bash
# NBD read benchmark: Ferry's client against nbdcopy, in the same run, reading the same
# sparse export from qemu-nbd over loopback TCP. Both skip holes via base:allocation;
# ours reads data with `appliance/nbd/examples/nbd-read.rs`, nbdcopy writes to null:.
#
# Usage: tests/bench/nbd.sh [SIZE]      (default 4G; RUNS=3 runs each, alternating)
# The reader uses 512 KiB requests, 64 in flight over 4 connections: qemu-nbd serves 4 MiB
# requests about four times slower (nbdcopy --request-size=4M shows the same).
# Target: Ferry >= 90% of nbdcopy's throughput.
set -euo pipefail

SIZE=${1:-4G}
RUNS=${RUNS:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
for t in qemu-nbd nbdcopy python3; do
    command -v "$t" >/dev/null || { echo "missing $t: apt-get install -y qemu-utils libnbd-bin" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-nbd-bench.XXXXXX")
QPID=""
cleanup() {
    if [ -n "$QPID" ]; then kill "$QPID" 2>/dev/null || true; wait "$QPID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

cd "$ROOT"
cargo build --release -q -p ferry-testkit --bin ferry-gen-disk
cargo build --release -q -p ferry-nbd --example nbd-read
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
"$TARGET/release/ferry-gen-disk" --out "$WORK/disk.raw" --size "$SIZE" >/dev/null

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
qemu-nbd -r -t -e 16 -x disk -f raw -b 127.0.0.1 -p "$PORT" "$WORK/disk.raw" 2>"$WORK/qemu-nbd.log" &
QPID=$!
for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.05
done
URI="nbd://127.0.0.1:$PORT/disk"
BYTES=$(stat -c %s "$WORK/disk.raw")

# Warm the page cache once so that every run reads from memory, not from the disk.
nbdcopy "$URI" null:

now() { date +%s.%N; }
ours=() theirs=()
for _ in $(seq "$RUNS"); do
    t0=$(now); nbdcopy "$URI" null:; t1=$(now)
    theirs+=("$(echo "$t1 - $t0" | bc -l)")
    t0=$(now); line=$("$TARGET/release/examples/nbd-read" "$URI"); t1=$(now)
    ours+=("$(echo "$t1 - $t0" | bc -l)")
    data=$(sed -n 's/.*data=\([0-9]*\).*/\1/p' <<<"$line")
    conns=$(sed -n 's/.*connections=\([0-9]*\).*/\1/p' <<<"$line")
done

best() { printf '%s\n' "$@" | sort -g | head -1; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mbps() { echo "$BYTES / $1 / 1000000" | bc -l; }

ob=$(best "${ours[@]}"); om=$(median "${ours[@]}")
tb=$(best "${theirs[@]}"); tm=$(median "${theirs[@]}")
echo
echo "NBD read of a $SIZE sparse export ($BYTES bytes, $data bytes of data) from qemu-nbd over loopback, $RUNS runs each"
printf '%-28s %10s %10s %12s %12s\n' reader "best s" "median s" "MB/s best" "MB/s median"
printf '%-28s %10.3f %10.3f %12.1f %12.1f\n' "nbdcopy URI null:" "$tb" "$tm" "$(mbps "$tb")" "$(mbps "$tm")"
printf '%-28s %10.3f %10.3f %12.1f %12.1f\n' "ferry nbd-read ($conns conns)" "$ob" "$om" "$(mbps "$ob")" "$(mbps "$om")"
printf 'ferry / nbdcopy throughput: best %.1f%%, median %.1f%% (target >= 90%%)\n' \
    "$(echo "100 * $tb / $ob" | bc -l)" "$(echo "100 * $tm / $om" | bc -l)"
echo "load average during the run: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
