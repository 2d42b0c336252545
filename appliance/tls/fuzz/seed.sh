#!/usr/bin/env bash
# Seeds: an admin-creation body with a real P-256 CSR (openssl), the CSR's DER alone, and
# revocation-list bodies (the signature cannot be right: the target's CA is made per run;
# the target tampers with a list it signed itself for the rest).
set -euo pipefail
cd "$(dirname "$0")"
a=corpus/admin_create r=corpus/revocations
mkdir -p "$a" "$r"
if command -v openssl >/dev/null; then
  T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/k" \
    -subj /CN=ignored -out "$T/csr.pem" 2>/dev/null
  openssl req -in "$T/csr.pem" -outform DER -out "$a/csr.der"
  cp "$T/csr.pem" "$a/csr.pem"
  pem=$(awk '{printf "%s\\n", $0}' "$T/csr.pem")
  printf '{"name":"alice","csr_pem":"%s"}' "$pem" >"$a/admin.json"
fi
printf '%s' '{"name":"bob-2","csr_pem":"-----BEGIN CERTIFICATE REQUEST-----\nMA==\n-----END CERTIFICATE REQUEST-----\n"}' >"$a/bad-csr.json"
list='{\"version\":3,\"issued_unix\":1700000000,\"entries\":[{\"sha256\":\"abababababababababababababababababababababababababababababababab\",\"role\":\"admin\",\"name\":\"bob\",\"revoked_unix\":1699999999}]}'
printf '{"list":"%s","signature":"3045022100aa022000"}' "$list" >"$r/signed.json"
printf '%s' "$list" | sed 's/\\"/"/g' >"$r/list.json"
printf '\000\000\000\001' >"$r/tamper-list"
printf '\001\004\000\001' >"$r/tamper-signature"
