#!/usr/bin/env bash
# Makes a small seed corpus in corpus/parse from qemu-img images (needs qemu-utils).
set -euo pipefail
cd "$(dirname "$0")"
out=corpus/parse
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
seed() { { printf "$1"; cat "$2"; } > "$out/$3"; }
qemu-img create -q -f raw "$tmp/r.raw" 1M
qemu-io -f raw -c 'write -P 0x41 0 64k' -c 'write -P 0x42 512k 128k' "$tmp/r.raw" >/dev/null
for sub in monolithicSparse streamOptimized monolithicFlat; do
  qemu-img convert -O vmdk -o "subformat=$sub" "$tmp/r.raw" "$tmp/$sub.vmdk"
done
seed '\x01' "$tmp/monolithicSparse.vmdk" sparse
seed '\x01' "$tmp/streamOptimized.vmdk" stream
seed '\x00' "$tmp/monolithicFlat.vmdk" descriptor
seed '\x01' "$tmp/monolithicFlat.vmdk" flat
ls -la "$out"
