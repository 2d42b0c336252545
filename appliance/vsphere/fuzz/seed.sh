#!/usr/bin/env bash
# Seeds the tags corpus with vAPI answers (first byte: 1 for the /rest spelling's wrapper).
set -euo pipefail
cd "$(dirname "$0")"
d=corpus/tags
mkdir -p "$d"
printf '\x00[{"type":"VirtualMachine","id":"vm-1"},{"type":"Datastore","id":"ds-1"}]' > "$d/attached"
printf '\x01{"value":{"name":"gold","category_id":"urn:vmomi:InventoryServiceCategory:1:GLOBAL"}}' > "$d/tag_rest"
printf '\x01{"value":["urn:vmomi:InventoryServiceTag:1:GLOBAL","urn:vmomi:InventoryServiceTag:2:GLOBAL"]}' > "$d/list_rest"
printf '\x00"b1f8e3a9c2"' > "$d/session"
