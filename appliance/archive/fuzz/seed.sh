#!/usr/bin/env bash
# Fills corpus/objects with real repository objects (chunks, indexes, manifest, config) from a
# small generated repository, so fuzzing starts from valid envelopes; and corpus/chunk_upload
# with chunk bodies (a mode byte, then what follows the envelope header).
set -euo pipefail
cd "$(dirname "$0")/../../.."
U=appliance/archive/fuzz/corpus/chunk_upload; mkdir -p "$U"
{ printf '\000'; seq 1 100; } >"$U/raw-text"
if command -v zstd >/dev/null; then
  { printf '\001'; seq 1 3000 | zstd -q -c; } >"$U/zstd-text"
  { printf '\201\020\000\000\000'; seq 1 3000 | zstd -q -c; } >"$U/zstd-declared"
fi
cargo build -q -p ferry-cli -p ferry-testkit
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
target/debug/ferry-gen-disk --size 24M --out "$T/d.raw" >/dev/null
target/debug/ferry --repo "$T/r" repo init --chunk-size 1M >/dev/null
target/debug/ferry --repo "$T/r" backup --source "$T/d.raw" >/dev/null
C=appliance/archive/fuzz/corpus/objects; mkdir -p "$C"
n=0; find "$T/r" -type f -size -200k | while read -r f; do cp "$f" "$C/seed-$((n++))"; done
# Real chunks: the mode byte is their codec.
for f in "$C"/seed-*; do
  [ "$(head -c 4 "$f")" = FRYC ] || continue
  codec=$(od -An -tu1 -j6 -N1 "$f" | tr -d ' ')
  { printf "\\$(printf '%03o' "$codec")"; tail -c +33 "$f"; } >"$U/$(basename "$f")"
done
echo "seeded $(ls "$C" | wc -l) objects into $C"
