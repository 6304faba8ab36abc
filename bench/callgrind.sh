#!/usr/bin/env bash
# Instructions per request in the gateway's own user-space code (valgrind --tool=callgrind), for
# comparing builds without the noise of a shared 2-core machine: instruction counts repeat.
#
#   bash bench/callgrind.sh BINARY [N]
#
# Starts its own bench upstream (nginx with bench/upstream.conf) on 127.0.0.1:PORT_BASE and runs
# the gateway (bench/gateway/ config, its ports moved with PORT_BASE like run.sh does) twice under
# callgrind, once serving N requests and once 2N (h2load --h1, 16 connections, the harness's
# consent cookie, path PATH_ [/]), and prints (Ir(2N) - Ir(N)) / N: start-up and shutdown cancel
# out. Kernel time is not counted: this measures what the code does, not what the syscalls cost.
# Needs valgrind, h2load and nginx. Knobs: PORT_BASE [18080] (upstream; the gateway listens on
# +10, its admin on +1010), KEEP=1 keeps the callgrind files for callgrind_annotate, AUDIT=1 turns
# the audit log on (to a file in the scratch dir, as run.sh's gateway-audit does), so that the
# writer thread's work is counted too: the audit log's cost per request, free of the noise.
# TLS=1 sends the requests over TLS (HTTP/1.1) to an https listener on +11 with development
# certificates (certs/make-dev-certs.sh into the scratch dir; needs openssl): TLS keep-alive
# requests, the handshakes of the 16 connections cancelling out as start-up does.
set -euo pipefail
BIN=${1:?binary}; N=${2:-4000}
PORT_BASE=${PORT_BASE:-18080}
PATH_=${PATH_:-/}
HERE=$(cd "$(dirname "$0")" && pwd)
UP=$PORT_BASE; GW=$((PORT_BASE + 10)); GW_TLS=$((PORT_BASE + 11)); ADMIN=$((PORT_BASE + 1010))
COOKIE='cookies_preferences=%7B%22necessary%22%3Atrue%2C%22statistical%22%3Afalse%2C%22marketing%22%3Afalse%7D; sessionid=abc'
OUT=$(mktemp -d)
chmod 755 "$OUT"   # nginx workers run as nobody when started by root
UPSTREAM_PID=
cleanup() {
  [ -n "$UPSTREAM_PID" ] && kill "$UPSTREAM_PID" 2>/dev/null && wait "$UPSTREAM_PID" 2>/dev/null
  if [ -n "${KEEP:-}" ]; then echo "callgrind files kept in $OUT" >&2; else rm -rf "$OUT"; fi
}
trap cleanup EXIT
ports() { sed -e "s/127\.0\.0\.1:18080\b/127.0.0.1:$UP/g" -e "s/127\.0\.0\.1:18090\b/127.0.0.1:$GW/g" \
              -e "s/127\.0\.0\.1:19090\b/127.0.0.1:$ADMIN/g" "$1" > "$2"; }
mkdir -p "$OUT/up/tmp" "$OUT/up/www" "$OUT/gw/hosts"
ports "$HERE/upstream.conf" "$OUT/up.conf"
ports "$HERE/gateway/gateway.toml" "$OUT/gw/gateway.toml"
for f in "$HERE"/gateway/hosts/*.toml; do ports "$f" "$OUT/gw/hosts/$(basename "$f")"; done
URL="http://127.0.0.1:$GW$PATH_"
if [ "${TLS:-0}" = 1 ]; then
  CERTS_DIR="$OUT/certs" bash "$HERE/../certs/make-dev-certs.sh" > "$OUT/certs.log" 2>&1 \
    || { cat "$OUT/certs.log" >&2; exit 1; }
  sed -i "/^http = /a https = \"127.0.0.1:$GW_TLS\"" "$OUT/gw/gateway.toml"
  printf '\n[tls]\ncerts_dir = "%s"\ndefault_cert = "default"\n' "$OUT/certs" >> "$OUT/gw/gateway.toml"
  URL="https://127.0.0.1:$GW_TLS$PATH_"
fi
if [ "${AUDIT:-0}" = 1 ]; then
  mkdir -p "$OUT/audit"
  printf '\n[audit]\npath = "%s"\n' "$OUT/audit/audit.jsonl" >> "$OUT/gw/gateway.toml"
fi
# The same ~2 KiB page as run.sh generates (the body's bytes do not matter here, its size does).
{ echo '<!DOCTYPE html><html lang="en"><head><title>Open data portal</title></head><body><ul>'
  for i in $(seq 1 18); do printf '<li><a href="/explore/dataset/ds-%02d/">Dataset %02d: population and mobility</a></li>\n' "$i" "$i"; done
  echo '</ul></body></html>'; } > "$OUT/up/www/index.html"
head -c 1048576 /dev/zero | tr '\0' 'a' > "$OUT/up/www/big.bin"
nginx -p "$OUT/up/" -c "$OUT/up.conf" -e "$OUT/up/error.log" -g 'daemon off;' &
UPSTREAM_PID=$!
run() { # requests -> total Ir
  local n=$1
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$n" \
    "$BIN" run --config "$OUT/gw/gateway.toml" > "$OUT/log.$n" 2>&1 &
  local pid=$!
  for _ in $(seq 1 200); do
    curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$GW/plain" && break
    sleep 0.2
  done
  h2load --h1 -n "$n" -c 16 -H "Cookie: $COOKIE" "$URL" > "$OUT/h2load.$n" 2>&1
  kill -TERM "$pid"; wait "$pid" || true
  if [ "${AUDIT:-0}" = 1 ]; then
    # Every request must have left its record; the next run starts a chain of its own.
    local records; records=$(cat "$OUT"/audit/audit.jsonl* | grep -c '"kind":"response"' || true)
    [ "$records" -ge "$n" ] || { echo "audit log holds $records response records for $n requests" >&2; exit 1; }
    rm -f "$OUT"/audit/audit.jsonl*
  fi
  grep -q " $n succeeded, 0 failed, 0 errored" "$OUT/h2load.$n" || { cat "$OUT/h2load.$n" >&2; exit 1; }
  grep -q '^status codes: '"$n"' 2xx' "$OUT/h2load.$n" || { cat "$OUT/h2load.$n" >&2; exit 1; }
  awk '/^summary:/ {print $2}' "$OUT/cg.$n"
}
a=$(run "$N"); b=$(run $((2 * N)))
awk -v a="$a" -v b="$b" -v n="$N" 'BEGIN { printf "instructions per request: %.0f  (Ir %d for %d requests, %d for %d)\n", (b - a) / n, a, n, b, 2 * n }'
