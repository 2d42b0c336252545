#!/usr/bin/env bash
# Slow suite: a short run of every cargo-fuzz target. See tests/fuzz.sh.
set -euo pipefail
exec "$(dirname "$0")/../fuzz.sh" 15
