#!/usr/bin/env bash
# Builds the appliance image and boots it in QEMU (TCG) for the boot tests.
# Needs: qemu-system-x86 (apt), apt lists for `apt-get download` of the
# kernel package, dpkg-deb. Installs QEMU when missing and running as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-system-x86_64 >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq qemu-system-x86 ovmf >/dev/null
    else
        echo "qemu-system-x86_64 missing: apt-get install qemu-system-x86 ovmf" >&2
        exit 1
    fi
fi
if ! apt-cache depends linux-image-amd64 2>/dev/null | grep -q 'Depends: linux-image-'; then
    [ "$(id -u)" = 0 ] && apt-get update -qq
fi

cargo run -q -p ferry-image -- --enforce-size
# The OVMF/OVA boot tests (tests/boot/tests/ova.rs) run from tests/slow/ova.sh.
exec cargo test -p ferry-boot-tests --test boot -- --ignored --test-threads=1 --nocapture "$@"
