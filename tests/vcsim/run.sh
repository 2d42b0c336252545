#!/bin/sh
# Builds (once, cached under target/vcsim) and runs ferry-vcsim: the govmomi simulator with
# QueryChangedDiskAreas and fault injection. Prints one JSON line (url, user, password,
# control, datastore, ds_dir, thumbprint) and exits when stdin closes.
# Arguments are passed to the simulator (-disks 64M,32M, -cbt-window BYTES).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="${CARGO_TARGET_DIR:-$root/target}/vcsim"
bin="$out/ferry-vcsim"

need_build=0
[ -x "$bin" ] || need_build=1
for f in "$here"/*.go; do
    [ "$f" -nt "$bin" ] && need_build=1
done

if [ "$need_build" = 1 ]; then
    if ! command -v go >/dev/null 2>&1 || [ ! -d /usr/share/gocode/src/github.com/vmware/govmomi/simulator ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "ferry-vcsim: installing golang-go golang-github-vmware-govmomi-dev" >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y golang-go golang-github-vmware-govmomi-dev >&2
        else
            echo "ferry-vcsim: needs Debian packages golang-go and golang-github-vmware-govmomi-dev (apt-get install as root)" >&2
            exit 2
        fi
    fi
    mkdir -p "$out"
    # Serialise concurrent builds from parallel tests.
    (
        flock 9
        if [ ! -x "$bin" ] || [ -n "$(find "$here" -name '*.go' -newer "$bin")" ]; then
            cd "$here"
            GOPATH=/usr/share/gocode GO111MODULE=off GOCACHE="$out/gocache" \
                go build -o "$bin.tmp" . >&2
            mv "$bin.tmp" "$bin"
        fi
    ) 9>"$out/.build.lock"
fi
# The simulator keeps datastores in $TMPDIR and removes them only on a clean exit, but tests
# kill it. Give each run a directory named by its PID (exec keeps it) and sweep those of dead runs.
mkdir -p "$out/tmp"
for d in "$out"/tmp/*; do
    [ -d "$d" ] || continue
    kill -0 "${d##*/}" 2>/dev/null || rm -rf "$d"
done
mkdir -p "$out/tmp/$$"
TMPDIR="$out/tmp/$$" exec "$bin" "$@"
