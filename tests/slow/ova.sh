#!/usr/bin/env bash
# Slow suite: build the appliance OVA and boot its disk through OVMF (UEFI) in QEMU (TCG) with
# an OVF environment CD-ROM; prints the OVA size and the boot-to-ready time.
# Needs (tests/peers.d/ova*.list, boot-slow.list): qemu-system-x86, ovmf, xorriso,
# systemd-boot-efi, qemu-utils, libxml2-utils, golang-go + golang-github-vmware-govmomi-dev.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo run -q -p ferry-image -- --enforce-size
exec cargo test -p ferry-boot-tests --test ova -- --ignored --test-threads=1 --nocapture "$@"
