#!/usr/bin/env bash
# Writes a small seed corpus for the request target: one valid body of each kind.
set -euo pipefail
cd "$(dirname "$0")"
d=corpus/request
mkdir -p "$d"
printf '%s' '{"token":"a.b","csr_pem":"-----BEGIN CERTIFICATE REQUEST-----\nMA==\n-----END CERTIFICATE REQUEST-----\n","hello":{"hostname":"h","version":"0.1.0","addresses":["10.0.0.5"],"port":9876}}' >"$d/enroll.json"
printf '%s' '{"ttl_seconds":3600,"note":"x"}' >"$d/token.json"
printf '%s' '{"code":"ABCD-EFGH"}' >"$d/pair.json"
printf '%s' '{"plan":{"name":"n","schedule":"*/5 * * * * *","vcenter":{"url":"https://vc","credential":"vc","trust_on_first_use":true},"vms":{"names":["a"],"globs":["b*"]},"destination":{"url":"/srv"},"retention":{"keep_last":3},"options":{"bwlimit":"5M"}},"credentials":{"vc":{"user":"u","password":"p"}}}' >"$d/plan.json"
cat >"$d/plan.toml" <<'TOML'
name = "nightly"
schedule = "0 2 * * *"
[vcenter]
url = "https://vc.example"
credential = "vc"
thumbprint = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89"
[vms]
folders = ["/DC0/vm"]
[destination]
url = "sftp://u@nas:22/ferry"
credential = "nas"
TOML
# Storage node bodies: the JSON ones go to request, commit bodies to commit.
printf '%s' '{"digests":["0000000000000000000000000000000000000000000000000000000000000000"]}' >"$d/missing.json"
printf '%s' '{"group":"web01","keep_last":3,"keep_daily":7,"dry_run":true}' >"$d/prune.json"
c=corpus/commit
mkdir -p "$c"
commit() { # header JSON, then the objects' bytes
  local h=$1; shift
  { printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $((${#h} & 255)) $((${#h} >> 8 & 255)) $((${#h} >> 16 & 255)) $((${#h} >> 24)))"
    printf '%s' "$h"; printf '%s' "$@"; } >"$c/$(printf '%s' "$h" | cksum | cut -d' ' -f1)"
}
commit '{"objects":[{"key":"points/x/disk-0.index","size":3},{"key":"points/x/manifest","size":5}]}' abc defgh
commit '{"objects":[]}'
commit '{"objects":[{"key":"points/p/manifest","size":0}]}'
