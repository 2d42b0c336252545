#!/usr/bin/env bash
# vSphere transport benchmark: a full VM backup (datastore HTTPS range reads through the
# VMDK reader, sha256, zstd, dedup into a local repository) against `curl` downloading the
# same flat file from the same simulator, in one run, over loopback HTTPS.
#
#   tests/bench/vsphere.sh [SIZE] [WORKDIR]       (defaults: 4G, ./bench-out/vsphere)
#
# Needs golang-go + golang-github-vmware-govmomi-dev (tests/vcsim/run.sh builds the
# simulator), curl and python3.
set -euo pipefail
SIZE=${1:-4G}
W=${2:-bench-out/vsphere}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
command -v curl >/dev/null || { echo "missing curl" >&2; exit 1; }
cargo build --release -q -p ferry-testkit -p ferry-vsphere --example vsphere-bench
GEN=$ROOT/target/release/ferry-gen-disk
BENCH=$ROOT/target/release/examples/vsphere-bench
rm -rf "$W"; mkdir -p "$W"; W=$(cd "$W" && pwd)
echo "generating a $SIZE mixed disk ..."
"$GEN" --size "$SIZE" --out "$W/disk.raw"
BYTES=$(stat -c %s "$W/disk.raw")

# The simulator lives as long as this script holds its stdin.
mkfifo "$W/sim.in"
tests/vcsim/run.sh -disks "$SIZE" -cbt-window 1073741824 <"$W/sim.in" >"$W/sim.out" &
SIM=$!
exec 3>"$W/sim.in"
trap 'exec 3>&-; wait $SIM 2>/dev/null || true' EXIT
for _ in $(seq 600); do [ -s "$W/sim.out" ] && break; sleep 0.5; done
j() { python3 -c "import json,sys; print(json.load(open('$W/sim.out'))['$1'])"; }
URL=$(j url); DS_DIR=$(j ds_dir); THUMB=$(j thumbprint)
export FERRY_VSPHERE_USER=$(j user) FERRY_VSPHERE_PASSWORD=$(j password)

# Seed the VM's disk straight into the datastore directory: a monolithicFlat pair.
VMDIR="$DS_DIR/DC0_H0_VM0"
cp --sparse=always "$W/disk.raw" "$VMDIR/disk1-flat.vmdk"
cat >"$VMDIR/disk1.vmdk" <<DESC
# Disk DescriptorFile
version=1
CID=12345678
parentCID=ffffffff
createType="monolithicFlat"
RW $((BYTES / 512)) FLAT "disk1-flat.vmdk" 0
DESC
sync

# curl: log in for a session cookie, then download the flat file once.
BASE=${URL%/sdk}
LOGIN="<?xml version=\"1.0\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"><soapenv:Body><Login xmlns=\"urn:vim25\"><_this type=\"SessionManager\">SessionManager</_this><userName>$FERRY_VSPHERE_USER</userName><password>$FERRY_VSPHERE_PASSWORD</password></Login></soapenv:Body></soapenv:Envelope>"
curl -sk -c "$W/cookies" -H 'Content-Type: text/xml' -H 'SOAPAction: urn:vim25/6.5' -d "$LOGIN" "$URL" >/dev/null
T0=$(date +%s.%N)
curl -sk -b "$W/cookies" -o /dev/null "$BASE/folder/DC0_H0_VM0/disk1-flat.vmdk?dcPath=DC0&dsName=LocalDS_0"
T1=$(date +%s.%N)
CURL_S=$(echo "$T1 - $T0" | bc)

read -r FERRY_S FETCHED LOGICAL STORED < <("$BENCH" "$URL" "$THUMB" DC0_H0_VM0 "$W/repo-plain" plain)
read -r CBT_S CBT_FETCHED _ CBT_STORED < <("$BENCH" "$URL" "$THUMB" DC0_H0_VM0 "$W/repo-cbt" cbt)

mbs() { echo "scale=1; $BYTES / 1048576 / $1" | bc; }
printf '\n%-34s %10s %10s\n' "run ($SIZE disk, loopback HTTPS)" "seconds" "MiB/s"
printf '%-34s %10.2f %10s\n' "curl GET of the flat file" "$CURL_S" "$(mbs "$CURL_S")"
printf '%-34s %10.2f %10s\n' "ferry backup_vm, every byte" "$FERRY_S" "$(mbs "$FERRY_S")"
printf '%-34s %10.2f %10s\n' "ferry backup_vm, CBT alloc map" "$CBT_S" "$(mbs "$CBT_S")"
printf '\nferry/curl (every byte):   %s%%   fetched %s of %s bytes, stored %s\n' \
  "$(echo "scale=1; 100 * $CURL_S / $FERRY_S" | bc)" "$FETCHED" "$LOGICAL" "$STORED"
printf 'ferry/curl (CBT alloc map): %s%%   fetched %s bytes, stored %s\n' \
  "$(echo "scale=1; 100 * $CURL_S / $CBT_S" | bc)" "$CBT_FETCHED" "$CBT_STORED"
