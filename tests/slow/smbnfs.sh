#!/usr/bin/env bash
# Slow suite: SMB and NFS kernel mounts inside the appliance (QEMU, TCG, direct kernel boot).
# smbd (samba, port 1445) and ganesha.nfsd (nfs-ganesha + VFS FSAL, NFSv4) run on the host's
# loopback; the guest reaches them as 10.0.2.2 through slirp. The agent's debug hook backs
# up, verifies and restores inside the guest; the host runs `ferry verify` on the share.
# Peers: tests/peers.d/smbnfs-slow.list (installed by tests/run.sh --slow).
set -euo pipefail
cd "$(dirname "$0")/../.."
read -r -a pkgs <<<"$(sed 's/#.*//' tests/peers.d/smbnfs-slow.list tests/peers.d/boot-slow.list | tr '\n' ' ')"
scripts/ensure-tools.sh "${pkgs[@]}"
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
target="${CARGO_TARGET_DIR:-$PWD/target}"
# Our own image directory: the boot suites may rebuild target/appliance at the same time.
export FERRY_APPLIANCE_DIR="${FERRY_APPLIANCE_DIR:-$target/smbnfs-appliance}"
no_ova=""
cargo run -q -p ferry-image -- --help | grep -q -- --no-ova && no_ova="--no-ova"
cargo run -q -p ferry-image -- $no_ova --out "$FERRY_APPLIANCE_DIR"
cargo build -q -p ferry-cli
export FERRY_BIN="$target/debug/ferry"
exec cargo test -p ferry-smbnfs-tests -- --ignored --test-threads=1 --nocapture "$@"
