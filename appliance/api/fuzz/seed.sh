#!/usr/bin/env bash
# Writes a small seed corpus for the request target: one valid body of each kind.
set -euo pipefail
cd "$(dirname "$0")"
d=corpus/request
mkdir -p "$d"
printf '%s' '{"token":"a.b","csr_pem":"-----BEGIN CERTIFICATE REQUEST-----\nMA==\n-----END CERTIFICATE REQUEST-----\n","hello":{"hostname":"h","version":"0.1.0","addresses":["10.0.0.5"],"port":9876}}' >"$d/enroll.json"
printf '%s' '{"ttl_seconds":3600,"note":"x"}' >"$d/token.json"
printf '%s' '{"code":"ABCD-EFGH"}' >"$d/pair.json"
printf '%s' '{"plan":{"name":"n","schedule":"*/5 * * * * *","vcenter":{"url":"https://vc","credential":"vc"},"vms":{"names":["a"],"globs":["b*"]},"destination":{"url":"/srv"},"retention":{"keep_last":3},"options":{"bwlimit":"5M"}},"credentials":{"vc":{"user":"u","password":"p"}}}' >"$d/plan.json"
cat >"$d/plan.toml" <<'TOML'
name = "nightly"
schedule = "0 2 * * *"
[vcenter]
url = "https://vc.example"
credential = "vc"
[vms]
folders = ["/DC0/vm"]
[destination]
url = "sftp://u@nas:22/ferry"
credential = "nas"
TOML
