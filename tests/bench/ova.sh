#!/usr/bin/env bash
# Appliance figures: OVA size (target < 40 MiB) and boot-to-ready time of the OVA's disk through
# OVMF under TCG (target < 30 s), from a fresh `cargo run -p ferry-image`.
#   tests/bench/ova.sh [FERRY-IMAGE ARGS]     (e.g. --no-build to reuse the static binaries)
# Needs what tests/slow/ova.sh needs. Prints the image builder's size report, then the figures.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo run -q -p ferry-image -- "$@"
cargo test -q -p ferry-boot-tests --test ova -- --ignored --test-threads=1 --nocapture \
    ova_package_checks ovmf_boot_with_ovf_env_then_reboot_keeps_identity 2>&1 |
    grep -oE '(OVA size|boot to "agent ready" through OVMF|reboot:).*'
