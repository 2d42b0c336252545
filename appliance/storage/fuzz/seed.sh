#!/usr/bin/env bash
# Seeds the location, secrets and ftp_list corpora.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/location corpus/secrets corpus/ftp_list
printf 'sftp://backup@10.0.2.2:2222/srv/ferry?parallel=8&bwlimit=20M/s&known_hosts=/etc/ssh/kh' > corpus/location/sftp
printf 's3://bucket/prefix?region=eu-west-1&endpoint=http://127.0.0.1:9000&timeout=30&insecure=1' > corpus/location/s3
printf 'file:///var/lib/ferry/repo' > corpus/location/file
printf 'ftps://u:hunter2secret@ftp.example:990/r?implicit=1&retries=3' > corpus/location/ftp_pw
printf '# secrets\npassword = "hunter2"\naccess_key_id=AK\naccept_new_host_key = yes\nkey_file=/etc/ferry/id\n' > corpus/secrets/ok
printf 'pasword = x\n' > corpus/secrets/typo
printf 'type=file;size=1234;modify=20260101120000;perm=r; chunks/ab/abcdef' > corpus/ftp_list/mlsd
printf -- '-rw-r--r--    1 ftp      ftp          1234 Jan 01 12:00 config' > corpus/ftp_list/posix
printf '01-01-26  12:00PM       <DIR>          points' > corpus/ftp_list/dos
