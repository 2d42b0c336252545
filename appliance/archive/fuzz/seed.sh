#!/usr/bin/env bash
# Fills corpus/objects with real repository objects (chunks, indexes, manifest, config) from a
# small generated repository, so fuzzing starts from valid envelopes.
set -euo pipefail
cd "$(dirname "$0")/../../.."
cargo build -q -p ferry-cli -p ferry-testkit
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
target/debug/ferry-gen-disk --size 24M --out "$T/d.raw" >/dev/null
target/debug/ferry --repo "$T/r" repo init --chunk-size 1M >/dev/null
target/debug/ferry --repo "$T/r" backup --source "$T/d.raw" >/dev/null
C=appliance/archive/fuzz/corpus/objects; mkdir -p "$C"
n=0; find "$T/r" -type f -size -200k | while read -r f; do cp "$f" "$C/seed-$((n++))"; done
echo "seeded $(ls "$C" | wc -l) objects into $C"
