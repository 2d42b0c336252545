#!/usr/bin/env bash
# VMDK benchmark: ferry-vmdk against qemu-img, in the same run on the same files.
#   read:  a streamOptimized VMDK made by qemu-img, to a sparse raw file
#   write: a raw mixed disk to a streamOptimized VMDK
# Usage: tests/bench/vmdk.sh [SIZE]   (default 2G; BENCH_DIR picks the scratch directory)
# Each measurement runs REPEAT times (default 3), alternating the tools; the best time
# counts, so that load from other work on the machine skews neither side.
set -euo pipefail

SIZE=${1:-2G}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
for t in qemu-img cmp; do
  command -v "$t" >/dev/null || { echo "vmdk.sh: $t is required (qemu-utils)" >&2; exit 1; }
done

cd "$ROOT"
cargo build --release -q -p ferry-vmdk --bin ferry-vmdk-tool
cargo build --release -q -p ferry-testkit --bin ferry-gen-disk
TOOL="$ROOT/target/release/ferry-vmdk-tool"
GEN="$ROOT/target/release/ferry-gen-disk"

WORK=${BENCH_DIR:-$(mktemp -d)}
mkdir -p "$WORK"
[ -n "${BENCH_DIR:-}" ] || trap 'rm -rf "$WORK"' EXIT

REPEAT=${REPEAT:-3}
now() { date +%s.%N; }
declare -A T
timed() { # name cmd...  (keeps the best time of all calls for name)
  local name=$1; shift
  rm -f "$WORK/qemu.raw" "$WORK/ferry.raw"
  sync
  local s; s=$(now)
  "$@" >/dev/null 2>&1
  local t; t=$(echo "$(now) - $s" | bc -l)
  if [ -z "${T[$name]:-}" ] || [ "$(echo "$t < ${T[$name]}" | bc -l)" = 1 ]; then T[$name]=$t; fi
}

echo "disk: $SIZE mixed (ferry-gen-disk seed 1), scratch $WORK, $(nproc) cores, best of $REPEAT, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$GEN" --out "$WORK/src.raw" --size "$SIZE" --seed 1 >/dev/null
BYTES=$(stat -c %s "$WORK/src.raw")

# Write: raw -> streamOptimized.
for _ in $(seq "$REPEAT"); do
  timed write_qemu qemu-img convert -O vmdk -o subformat=streamOptimized "$WORK/src.raw" "$WORK/qemu.vmdk"
  timed write_ferry "$TOOL" write "$WORK/src.raw" "$WORK/ferry.vmdk"
done
qemu-img compare -q -f raw -F vmdk "$WORK/src.raw" "$WORK/ferry.vmdk" || { echo "ferry output differs from the source" >&2; exit 1; }
qemu-img check -q "$WORK/ferry.vmdk" || { echo "qemu-img check failed on ferry output" >&2; exit 1; }

# Read: qemu-made streamOptimized -> raw.
for _ in $(seq "$REPEAT"); do
  timed read_ferry "$TOOL" read "$WORK/qemu.vmdk" "$WORK/ferry.raw"
  cp --sparse=always "$WORK/ferry.raw" "$WORK/ferry.keep"
  timed read_qemu qemu-img convert -O raw "$WORK/qemu.vmdk" "$WORK/qemu.raw"
done
mv "$WORK/ferry.keep" "$WORK/ferry.raw"
cmp -s "$WORK/qemu.raw" "$WORK/ferry.raw" || { echo "ferry read differs from qemu-img" >&2; exit 1; }

mbs() { echo "scale=1; $BYTES / 1048576 / $1" | bc -l; }
row() { # op tool key
  printf "%-28s %-10s %8.2f s %9s MB/s %8s\n" "$1" "$2" "${T[$3]}" "$(mbs "${T[$3]}")" "$4"
}
echo
printf "%-28s %-10s %10s %14s %8s\n" "operation" "tool" "time" "throughput" "speedup"
row "read streamOptimized" "qemu-img" read_qemu ""
row "read streamOptimized" "ferry" read_ferry "$(echo "scale=2; ${T[read_qemu]} / ${T[read_ferry]}" | bc -l)x"
row "write streamOptimized" "qemu-img" write_qemu ""
row "write streamOptimized" "ferry" write_ferry "$(echo "scale=2; ${T[write_qemu]} / ${T[write_ferry]}" | bc -l)x"
echo
echo "sizes: qemu.vmdk $(stat -c %s "$WORK/qemu.vmdk") bytes, ferry.vmdk $(stat -c %s "$WORK/ferry.vmdk") bytes (throughput is of the $BYTES-byte disk)"
