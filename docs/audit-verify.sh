#!/usr/bin/env bash
# Checks the hash chain of consent-gateway audit log files by hand, with bash and coreutils only
# (no gateway binary): what `consent-gateway audit verify` does, minus the torn-line, seq-gap and
# loss reports. The format is documented in docs/audit.md ("Verifying by hand").
#
# Usage: bash docs/audit-verify.sh FILE...      (in rotation order, oldest first)
# Exit 0 and "intact: N records" when every record's hash holds and each chains to the one before;
# exit 1 naming the first FILE:LINE that does not.
set -euo pipefail
export LC_ALL=C # byte offsets, not characters

[[ $# -gt 0 ]] || { echo "usage: $0 FILE... (oldest first)" >&2; exit 2; }
last=""
records=0
for file in "$@"; do
    n=0
    while IFS= read -r line || [[ -n $line ]]; do
        n=$((n + 1))
        len=${#line}
        # The last 149 bytes are the seal: ,"prev":"<64 hex>","hash":"<64 hex>"}
        if ((len < 151)); then
            echo "$file:$n: not a whole record" >&2
            exit 1
        fi
        seal=${line:len-149}
        prev=${seal:9:64}
        hash=${seal:83:64}
        if [[ $seal != ",\"prev\":\"$prev\",\"hash\":\"$hash\"}" ]]; then
            echo "$file:$n: not a whole record (no seal at the end)" >&2
            exit 1
        fi
        # The canonical record: the line before its seal, closed with "}".
        canonical="${line:0:len-149}}"
        computed=$(printf '%s%s' "$prev" "$canonical" | sha256sum | cut -c1-64)
        if [[ $computed != "$hash" ]]; then
            echo "$file:$n: record altered: sha256(prev || record) is $computed, the line says $hash" >&2
            exit 1
        fi
        if [[ -n $last && $prev != "$last" ]]; then
            echo "$file:$n: chain broken: prev is not the hash of the record before it" >&2
            exit 1
        fi
        last=$hash
        records=$((records + 1))
    done <"$file"
done
echo "intact: $records records; last hash $last"
