#!/usr/bin/env bash
# Instructions per request in the gateway's own user-space code (valgrind --tool=callgrind), for
# comparing builds without the noise of a shared 2-core machine: instruction counts repeat.
#
#   bash bench/callgrind.sh BINARY [N]
#
# Needs the bench upstream listening on 127.0.0.1:18080 (e.g. a scratch dir kept by
# `KEEP_RUN=1 bash bench/run.sh`, its nginx restarted by hand), valgrind and h2load. Runs the
# gateway twice under callgrind, once serving N requests and once 2N (h2load --h1, 16 connections,
# the harness's consent cookie), and prints (Ir(2N) - Ir(N)) / N: start-up and shutdown cancel out.
# Kernel time is not counted: this measures what the code does, not what the syscalls cost.
set -euo pipefail
BIN=${1:?binary}; N=${2:-4000}
HERE=$(cd "$(dirname "$0")" && pwd)
COOKIE='cookies_preferences=%7B%22necessary%22%3Atrue%2C%22statistical%22%3Afalse%2C%22marketing%22%3Afalse%7D; sessionid=abc'
OUT=$(mktemp -d)
if [ -n "${KEEP:-}" ]; then echo "callgrind files kept in $OUT" >&2; else trap 'rm -rf "$OUT"' EXIT; fi
run() { # requests -> total Ir
  local n=$1
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$n" \
    "$BIN" run --config "$HERE/gateway/gateway.toml" > "$OUT/log.$n" 2>&1 &
  local pid=$!
  for _ in $(seq 1 200); do
    curl -s -o /dev/null --max-time 2 http://127.0.0.1:18090/plain && break
    sleep 0.2
  done
  h2load --h1 -n "$n" -c 16 -H "Cookie: $COOKIE" http://127.0.0.1:18090/ > "$OUT/h2load.$n" 2>&1
  kill -TERM "$pid"; wait "$pid" || true
  grep -q " $n succeeded, 0 failed, 0 errored" "$OUT/h2load.$n" || { cat "$OUT/h2load.$n" >&2; exit 1; }
  grep -q '^status codes: '"$n"' 2xx' "$OUT/h2load.$n" || { cat "$OUT/h2load.$n" >&2; exit 1; }
  awk '/^summary:/ {print $2}' "$OUT/cg.$n"
}
a=$(run "$N"); b=$(run $((2 * N)))
awk -v a="$a" -v b="$b" -v n="$N" 'BEGIN { printf "instructions per request: %.0f  (Ir %d for %d requests, %d for %d)\n", (b - a) / n, a, n, b, 2 * n }'
