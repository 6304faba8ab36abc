#!/usr/bin/env bash
# consent-gateway bench harness: one command, loopback only, same upstream for every target.
#
#   bash bench/run.sh                    # installs what is missing (as root, Debian), builds the
#                                        # gateway in release, runs every target, then the memory step
#   bash bench/run.sh HOST:PORT          # bench a gateway already listening there instead (not built,
#                                        # not started; it must forward to http://127.0.0.1:$PORT_BASE)
#
# Targets (all in front of the same upstream portal emulator, nginx on 127.0.0.1:18080):
#   direct       127.0.0.1:18080  no proxy: the physical limit
#   nginx-njs    127.0.0.1:18081  nginx + njs js_header_filter doing the consent job (the peer)
#   haproxy      127.0.0.1:18082  HAProxy plain proxy (second reference; skipped if not installed)
#   nginx-plain  127.0.0.1:18083  same nginx, plain proxy_pass (proxy overhead without filtering)
#   haproxy-lua  127.0.0.1:18084  HAProxy + Lua action doing the consent job (second peer)
#   gateway      127.0.0.1:18090  our gateway (release build of this repository, bench/gateway/ config)
#   gateway-noinv 127.0.0.1:18092 the same gateway with the cookie inventory off ([inventory]
#                max_names_per_host = 0); not in the default TARGETS: TARGETS="gateway gateway-noinv"
#                measures the inventory's cost in one run (the ratio table compares the two)
#   gateway-audit 127.0.0.1:18093 the same gateway with the audit log on to a file in the scratch dir; not in
#                the default TARGETS: AUDIT=1 (or TARGETS="gateway gateway-audit") measures its cost in one run
# Each target runs in its own processes, so that its peak RSS (VmHWM, nginx: master + workers) is its own.
#
# Environment knobs (defaults in brackets):
#   THREADS [2]  CONNS [64]  DURATION [10s]  WARMUP [3s]
#   ROUNDS [1]   >1: target order rotates each round, table shows every round + the median
#   PATHS ["/ /big"]  any of / /big /plain
#   TARGETS ["direct nginx-njs nginx-plain haproxy haproxy-lua gateway"]
#   LOAD_CONSENT [necessary]  consent sent by the load: necessary|all|none (none = no preference cookie)
#   LOADGEN [wrk] wrk (Debian) or oha (cargo install oha); same table either way
#   PORT_BASE [18080]  upstream port; the others follow (+1 njs, +2 haproxy, +3 plain, +4 haproxy-lua,
#                +10 gateway, +1010 gateway admin). Use another base when 18080.. is taken.
#   GATEWAY_CMD  command that starts the gateway (VAR=value prefixes allowed), run from the repository
#                root after the upstream is up, stopped at the end
#                [RUST_LOG=warn <target dir>/release/consent-gateway run --config $RUN/gateway/gateway.toml]
#   GATEWAY_BIN  the binary the default GATEWAY_CMD runs [${CARGO_TARGET_DIR:-target}/release/consent-gateway]
#   BUILD [1]    0: do not run `cargo build --release --locked` (use GATEWAY_BIN as it is)
#   INSTALL [1]  0: never apt-get install (otherwise, as root, missing Debian packages are installed)
#   MEMORY [1]   memory step: nginx-plain and the gateway restarted fresh, then for each the RSS with
#                MEM_CONNS open keep-alive connections (bench/hold_conns.py), KiB per idle connection  MEM_CONNS [5000]
#                opened MEM_CONCURRENCY at a time (one row per value, fresh processes each)  MEM_CONCURRENCY ["64 500"]
#                MEM_TLS=1 adds the same over TLS (HTTP/1.1, then HTTP/2) against nginx-plain's settings with
#                TLS + HTTP/2 (peer-nginx-tls.conf, 127.0.0.1:PORT_BASE+5) and the gateway's https listener  [0],
#                opened MEM_TLS_CONCURRENCY at a time [64] (the Python client's handshakes are slow: with
#                hundreds at once, some outlast the gateway's handshake limit, header_read_timeout)
#   TLS [0]      1: TLS step (needs h2load from nghttp2-client, openssl): the gateway restarted with an https
#                listener (dev certificates made in the scratch dir by certs/make-dev-certs.sh); h2load on /
#                with CONNS connections: h1 plain vs h1 TLS vs h2 TLS (1 stream per connection), then the
#                new-connection rate: h2load -n NEWCONN -c NEWCONN (one request per connection)  NEWCONN [3000]
#   AUDIT [0]    1: add target gateway-audit, a second harness-started gateway (same binary, same config
#                plus [audit] path = <scratch>/audit/audit.jsonl) on PORT_BASE+13 (admin +1013), listed right
#                after gateway, so that the same run compares the gateway with the audit log off and on; at the
#                end, the log's size and `consent-gateway audit verify` of it
#   AUDIT_PAIRED [0]  N>0 (implies AUDIT=1): after the rounds, N paired rounds per path in which gateway and
#                gateway-audit are loaded at the same time, each by its own load generator with half the
#                threads and connections, so that both see the same machine at the same moment; per round
#                and as the median: CPU per request of each, their ratio, and the audit-writer thread's share.
#                The machine's noise moves both together, which sequential rounds cannot give
#   KEEP_RUN [0] keep the scratch dir (/tmp/consent-bench.*) with raw load-generator output and logs
#
# Exit status: 0 when every consent target filtered correctly and every run had zero errors;
#   1 when a consent-enforcing target (nginx-njs, haproxy-lua, gateway) returned the wrong Set-Cookie
#     names (the load still runs and the table is printed);
#   3 when a load run had errors (connect/read/write/timeout/non-2xx-3xx), a load run produced no
#     result, or the memory step did not hold every connection with a 200 (and no correctness failure);
#   2 on setup errors (missing tool, port in use, build failed, gateway not answering within 20 s).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
export BENCH_DIR   # haproxy.cfg reads it for lua-load-per-thread
cd "$REPO"         # GATEWAY_CMD and relative CARGO_TARGET_DIR are relative to the repository root

GATEWAY_EXTERNAL=${1:-}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
ROUNDS=${ROUNDS:-1}
PATHS=${PATHS:-"/ /big"}
TARGETS=${TARGETS:-"direct nginx-njs nginx-plain haproxy haproxy-lua gateway"}
LOAD_CONSENT=${LOAD_CONSENT:-necessary}
KEEP_RUN=${KEEP_RUN:-0}
LOADGEN=${LOADGEN:-wrk}
PORT_BASE=${PORT_BASE:-18080}
BUILD=${BUILD:-1}
INSTALL=${INSTALL:-1}
MEMORY=${MEMORY:-1}
MEM_CONNS=${MEM_CONNS:-5000}
MEM_CONCURRENCY=${MEM_CONCURRENCY:-"64 500"}
MEM_TLS=${MEM_TLS:-0}
MEM_TLS_CONCURRENCY=${MEM_TLS_CONCURRENCY:-64}
TLS=${TLS:-0}
AUDIT=${AUDIT:-0}
AUDIT_PAIRED=${AUDIT_PAIRED:-0}
[[ "$AUDIT_PAIRED" =~ ^[0-9]+$ ]] || { echo "run.sh: AUDIT_PAIRED must be a number" >&2; exit 2; }
[ "$AUDIT_PAIRED" -gt 0 ] && AUDIT=1
NEWCONN=${NEWCONN:-3000}

die() { echo "run.sh: $*" >&2; exit 2; }

[[ "$PORT_BASE" =~ ^[0-9]+$ ]] && [ "$PORT_BASE" -ge 1024 ] && [ "$PORT_BASE" -le 64000 ] \
  || die "PORT_BASE must be a number in 1024..64000"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$MEM_CONNS" =~ ^[0-9]+$ ]] || die "MEM_CONNS must be a number"
for c in $MEM_CONCURRENCY $MEM_TLS_CONCURRENCY; do [[ "$c" =~ ^[1-9][0-9]*$ ]] || die "MEM_CONCURRENCY: '$c' is not a positive number"; done
for p in $PATHS; do
  case "$p" in /|/big|/plain) ;; *) die "PATHS: '$p' is not one of / /big /plain" ;; esac
done
UPSTREAM_PORT=$PORT_BASE
PEER_NJS_PORT=$((PORT_BASE + 1))
HAPROXY_PORT=$((PORT_BASE + 2))
PEER_PLAIN_PORT=$((PORT_BASE + 3))
HAPROXY_LUA_PORT=$((PORT_BASE + 4))
GATEWAY_PORT=$((PORT_BASE + 10))
GATEWAY_ADMIN_PORT=$((PORT_BASE + 1010))
GATEWAY_TLS_PORT=$((PORT_BASE + 11))
PEER_TLS_PORT=$((PORT_BASE + 5))
GATEWAY_NOINV_PORT=$((PORT_BASE + 12))
GATEWAY_NOINV_ADMIN_PORT=$((PORT_BASE + 1012))
GATEWAY_AUDIT_PORT=$((PORT_BASE + 13))
GATEWAY_AUDIT_ADMIN_PORT=$((PORT_BASE + 1013))

# cookies_preferences values: encodeURIComponent(JSON.stringify(...))
CONSENT_ALL='%7B%22necessary%22%3Atrue%2C%22statistical%22%3Atrue%2C%22marketing%22%3Atrue%7D'
CONSENT_NEC='%7B%22necessary%22%3Atrue%2C%22statistical%22%3Afalse%2C%22marketing%22%3Afalse%7D'
ALL_NAMES='sessionid,csrftoken,django_language,_ga,_gid,_ga_ABC123,ads_id'
NEC_NAMES='sessionid,csrftoken,django_language'

case "$LOAD_CONSENT" in
  necessary) LOAD_COOKIE="cookies_preferences=$CONSENT_NEC; sessionid=abc" ;;
  all)       LOAD_COOKIE="cookies_preferences=$CONSENT_ALL; sessionid=abc" ;;
  none)      LOAD_COOKIE="sessionid=abc" ;;
  *) die "LOAD_CONSENT must be necessary|all|none" ;;
esac
[ "$LOADGEN" = wrk ] || [ "$LOADGEN" = oha ] || die "LOADGEN must be wrk or oha"
if [ -n "$GATEWAY_EXTERNAL" ] && ! [[ "$GATEWAY_EXTERNAL" =~ ^[^:]+:[0-9]+$ ]]; then
  die "gateway address must be HOST:PORT, got '$GATEWAY_EXTERNAL'"
fi
WANT_GATEWAY=0
WANT_NOINV=0
for t in $TARGETS; do
  [ "$t" = gateway ] && WANT_GATEWAY=1
  [ "$t" = gateway-noinv ] && WANT_GATEWAY=1 && WANT_NOINV=1
  [ "$t" = gateway-audit ] && AUDIT=1
done
if [ "$AUDIT" = 1 ]; then
  { [ -z "$GATEWAY_EXTERNAL" ] && [ -z "${GATEWAY_CMD:-}" ]; } || die "AUDIT=1 needs the harness-started gateway (no GATEWAY_CMD, no address)"
  [[ " $TARGETS " == *" gateway-audit "* ]] || TARGETS=$(sed 's/\(^\| \)gateway\( \|$\)/\1gateway gateway-audit\2/' <<<"$TARGETS")
  [[ " $TARGETS " == *" gateway-audit "* ]] || TARGETS="$TARGETS gateway-audit"
  WANT_GATEWAY=1
fi
# The harness starts the gateway itself unless an address of a running one is given without GATEWAY_CMD.
MANAGED_GATEWAY=0
if { [ "$WANT_GATEWAY" = 1 ] || [ "$MEMORY" = 1 ]; } && { [ -z "$GATEWAY_EXTERNAL" ] || [ -n "${GATEWAY_CMD:-}" ]; }; then
  MANAGED_GATEWAY=1
fi
GATEWAY=${GATEWAY_EXTERNAL:-127.0.0.1:$GATEWAY_PORT}

# ---------------------------------------------------------------- open files
# 64 load connections need little; the memory step holds MEM_CONNS client + MEM_CONNS gateway sockets.
NOFILE_BEFORE=$(ulimit -n)
NOFILE_HARD=$(ulimit -Hn)
if [ "$NOFILE_HARD" = unlimited ]; then
  ulimit -n "$(cat /proc/sys/fs/nr_open 2>/dev/null || echo 1048576)" 2>/dev/null || true
else
  ulimit -n "$NOFILE_HARD" 2>/dev/null || true
fi
NOFILE=$(ulimit -n)

# ---------------------------------------------------------------- prerequisites (Debian packages)
MISSING=()      # packages for the required tools
OPTIONAL=()     # packages whose absence only skips something
command -v nginx >/dev/null || MISSING+=(nginx-light)
[ -f /usr/lib/nginx/modules/ngx_http_js_module.so ] || MISSING+=(libnginx-mod-http-js)
command -v curl >/dev/null || MISSING+=(curl)
[ "$LOADGEN" = wrk ] && ! command -v wrk >/dev/null && MISSING+=(wrk)
command -v haproxy >/dev/null || OPTIONAL+=(haproxy)
command -v h2load >/dev/null || OPTIONAL+=(nghttp2-client)   # used by bench/tls.sh
[ "$MEMORY" = 1 ] && ! command -v python3 >/dev/null && OPTIONAL+=(python3)
if [ $(( ${#MISSING[@]} + ${#OPTIONAL[@]} )) -gt 0 ]; then
  if [ "$INSTALL" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing: ${MISSING[*]} ${OPTIONAL[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${MISSING[@]}" "${OPTIONAL[@]}" >/dev/null \
      || die "apt-get install ${MISSING[*]} ${OPTIONAL[*]} failed"
  elif [ ${#MISSING[@]} -gt 0 ]; then
    die "missing: ${MISSING[*]} (as root: apt-get install -y nginx-light libnginx-mod-http-js haproxy wrk nghttp2-client curl)"
  else
    echo "note: not installed (skipped parts): ${OPTIONAL[*]}" >&2
  fi
fi
for bin in nginx curl "$LOADGEN"; do command -v "$bin" >/dev/null || die "$bin not found"; done
[ -f /usr/lib/nginx/modules/ngx_http_js_module.so ] || die "njs module missing (apt-get install -y libnginx-mod-http-js)"
HAVE_HAPROXY=1
command -v haproxy >/dev/null || HAVE_HAPROXY=0
if [ "$MEMORY" = 1 ] && ! command -v python3 >/dev/null; then
  echo "note: python3 not found: memory step skipped" >&2; MEMORY=0
fi

# ---------------------------------------------------------------- build the gateway
if [ "$MANAGED_GATEWAY" = 1 ] && [ -z "${GATEWAY_CMD:-}" ]; then
  TARGET_DIR=${CARGO_TARGET_DIR:-target}
  case "$TARGET_DIR" in /*) ;; *) TARGET_DIR=$REPO/$TARGET_DIR ;; esac
  GATEWAY_BIN=${GATEWAY_BIN:-$TARGET_DIR/release/consent-gateway}
  if [ "$BUILD" = 1 ]; then
    command -v cargo >/dev/null \
      || die "cargo not found: the gateway needs Rust >= $(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml) (https://rustup.rs), or BUILD=0 GATEWAY_BIN=..."
    echo "building: cargo build --release --locked (CARGO_TARGET_DIR=$TARGET_DIR)"
    CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --locked || die "cargo build failed"
  fi
  [ -x "$GATEWAY_BIN" ] || die "gateway binary $GATEWAY_BIN not found (BUILD=1 builds it)"
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
BUSY_CHECK=($UPSTREAM_PORT $PEER_NJS_PORT $PEER_PLAIN_PORT)
[ "$HAVE_HAPROXY" = 1 ] && BUSY_CHECK+=($HAPROXY_PORT $HAPROXY_LUA_PORT)
[ "$MANAGED_GATEWAY" = 1 ] && [ -z "$GATEWAY_EXTERNAL" ] && BUSY_CHECK+=($GATEWAY_PORT $GATEWAY_ADMIN_PORT)
[ "$TLS" = 1 ] && BUSY_CHECK+=($GATEWAY_TLS_PORT)
[ "$AUDIT" = 1 ] && BUSY_CHECK+=($GATEWAY_AUDIT_PORT $GATEWAY_AUDIT_ADMIN_PORT)
for p in "${BUSY_CHECK[@]}"; do
  port_busy "$p" && die "port $p already in use (a previous run still alive? or set PORT_BASE, e.g. PORT_BASE=28080)"
done

# ---------------------------------------------------------------- scratch + cleanup
RUN=$(mktemp -d /tmp/consent-bench.XXXXXX)
chmod 755 "$RUN"   # nginx workers run as nobody when started by root
PIDS=()
stop_pids() { # PID... : TERM, wait up to 10 s, then KILL (bounded)
  local pid i alive
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for i in $(seq 1 100); do
    alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}
cleanup() {
  [ ${#PIDS[@]} -gt 0 ] && stop_pids "${PIDS[@]}"
  if [ "$KEEP_RUN" = 1 ]; then echo "(scratch kept in $RUN)"; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# A failing command the script did not expect (set -e) is a harness bug, not a benchmark result:
# say where, and exit 2 (not 1, which means a correctness failure).
trap 'echo "run.sh: unexpected failure (status $?) at line $LINENO: $BASH_COMMAND" >&2; exit 2' ERR

mkdir -p "$RUN/conf" "$RUN/upstream/tmp" "$RUN/upstream/www" "$RUN/peer-njs/tmp" "$RUN/peer-plain/tmp" "$RUN/peer-tls/tmp" "$RUN/wrk"

# Configuration copies with the ports of PORT_BASE (two passes through placeholders, so that a new
# port equal to an old one is not rewritten twice).
ports_sed() {
  sed -e 's/127\.0\.0\.1:18080\b/127.0.0.1:@P0@/g' -e 's/127\.0\.0\.1:18081\b/127.0.0.1:@P1@/g' \
      -e 's/127\.0\.0\.1:18082\b/127.0.0.1:@P2@/g' -e 's/127\.0\.0\.1:18083\b/127.0.0.1:@P3@/g' \
      -e 's/127\.0\.0\.1:18084\b/127.0.0.1:@P4@/g' -e 's/127\.0\.0\.1:18090\b/127.0.0.1:@PG@/g' \
      -e 's/127\.0\.0\.1:18085\b/127.0.0.1:@P5@/g' -e "s|@CERTS@|$RUN/certs|g" \
      -e 's/127\.0\.0\.1:19090\b/127.0.0.1:@PA@/g' \
      -e "s/@P0@/$UPSTREAM_PORT/g; s/@P1@/$PEER_NJS_PORT/g; s/@P2@/$HAPROXY_PORT/g; s/@P3@/$PEER_PLAIN_PORT/g" \
      -e "s/@P4@/$HAPROXY_LUA_PORT/g; s/@PG@/$GATEWAY_PORT/g; s/@PA@/$GATEWAY_ADMIN_PORT/g" \
      -e "s/@P5@/$PEER_TLS_PORT/g" "$1" > "$2"
}
for f in upstream.conf peer-nginx.conf peer-nginx-plain.conf peer-nginx-tls.conf haproxy.cfg; do ports_sed "$BENCH_DIR/$f" "$RUN/conf/$f"; done
cp "$BENCH_DIR/consent.js" "$RUN/conf/"
mkdir -p "$RUN/gateway/hosts"
ports_sed "$BENCH_DIR/gateway/gateway.toml" "$RUN/gateway/gateway.toml"
for f in "$BENCH_DIR"/gateway/hosts/*.toml; do ports_sed "$f" "$RUN/gateway/hosts/$(basename "$f")"; done
# The same gateway with the cookie inventory off, on its own ports (target gateway-noinv).
sed -e "s/127\.0\.0\.1:$GATEWAY_PORT\"/127.0.0.1:$GATEWAY_NOINV_PORT\"/; s/127\.0\.0\.1:$GATEWAY_ADMIN_PORT\"/127.0.0.1:$GATEWAY_NOINV_ADMIN_PORT\"/" \
  "$RUN/gateway/gateway.toml" > "$RUN/gateway/gateway-noinv.toml"
printf '\n[inventory]\nmax_names_per_host = 0\n' >> "$RUN/gateway/gateway-noinv.toml"
GATEWAY_TLS_CMD=
if [ "$MANAGED_GATEWAY" = 1 ] && [ -z "${GATEWAY_CMD:-}" ]; then
  GATEWAY_CMD="RUST_LOG=warn $(printf %q "$GATEWAY_BIN") run --config $(printf %q "$RUN/gateway/gateway.toml")"
  # TLS variant: the same config plus an https listener and the scratch dir's dev certificates.
  sed "/^http = /a https = \"127.0.0.1:$GATEWAY_TLS_PORT\"" "$RUN/gateway/gateway.toml" > "$RUN/gateway/gateway-tls.toml"
  printf '\n[tls]\ncerts_dir = "%s"\ndefault_cert = "default"\n' "$RUN/certs" >> "$RUN/gateway/gateway-tls.toml"
  GATEWAY_TLS_CMD="RUST_LOG=warn $(printf %q "$GATEWAY_BIN") run --config $(printf %q "$RUN/gateway/gateway-tls.toml")"
fi
GATEWAY_AUDIT_LOG=$RUN/audit/audit.jsonl
if [ "$AUDIT" = 1 ]; then
  # The same config on its own ports, with the audit log on to a file (defaults: 100MiB, keep 10).
  mkdir -p "$RUN/audit"
  sed -e "s/127.0.0.1:$GATEWAY_PORT/127.0.0.1:$GATEWAY_AUDIT_PORT/; s/127.0.0.1:$GATEWAY_ADMIN_PORT/127.0.0.1:$GATEWAY_AUDIT_ADMIN_PORT/" \
    "$RUN/gateway/gateway.toml" > "$RUN/gateway/gateway-audit.toml"
  printf '\n[audit]\npath = "%s"\n' "$GATEWAY_AUDIT_LOG" >> "$RUN/gateway/gateway-audit.toml"
fi

# Upstream content: deterministic ~2 KiB HTML page and a 1 MiB body.
{
  echo '<!DOCTYPE html>'
  echo '<html lang="en"><head><meta charset="utf-8"><title>Open data portal</title>'
  echo '<link rel="stylesheet" href="/static/portal.css"></head><body>'
  echo '<header><nav><a href="/">Home</a> <a href="/explore/">Datasets</a> <a href="/api/">API</a></nav></header>'
  echo '<main><h1>Welcome to the data portal</h1><ul>'
  for i in $(seq 1 18); do
    printf '<li><a href="/explore/dataset/ds-%02d/">Dataset %02d: population and mobility</a></li>\n' "$i" "$i"
  done
  echo '</ul></main><footer>Cookie settings are stored in cookies_preferences.</footer></body></html>'
} > "$RUN/upstream/www/index.html"
head -c 1048576 /dev/zero | tr '\0' 'a' > "$RUN/upstream/www/big.bin"

wait_http() { # URL TIMEOUT_S
  local i
  for i in $(seq 1 $(( $2 * 10 ))); do
    curl -s -o /dev/null --max-time 1 "$1" && return 0
    sleep 0.1
  done
  return 1
}

LAST_PID=
start_bg() { # NAME LOGFILE CMD...
  local name=$1 log=$2; shift 2
  "$@" >"$log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  echo "started $name (pid $LAST_PID)"
}

declare -A ROOT   # target -> pid of the process the harness started for it
start_bg upstream "$RUN/upstream/stdout.log" \
  nginx -p "$RUN/upstream/" -c "$RUN/conf/upstream.conf" -e "$RUN/upstream/error.log" -g 'daemon off;'
ROOT[direct]=$LAST_PID
start_bg peer-nginx-njs "$RUN/peer-njs/stdout.log" \
  nginx -p "$RUN/peer-njs/" -c "$RUN/conf/peer-nginx.conf" -e "$RUN/peer-njs/error.log" -g 'daemon off;'
ROOT[nginx-njs]=$LAST_PID
start_bg peer-nginx-plain "$RUN/peer-plain/stdout.log" \
  nginx -p "$RUN/peer-plain/" -c "$RUN/conf/peer-nginx-plain.conf" -e "$RUN/peer-plain/error.log" -g 'daemon off;'
ROOT[nginx-plain]=$LAST_PID
if [ "$HAVE_HAPROXY" = 1 ]; then
  start_bg haproxy "$RUN/haproxy.log" env BENCH_HAPROXY_ROLE=plain haproxy -db -f "$RUN/conf/haproxy.cfg"
  ROOT[haproxy]=$LAST_PID
  start_bg haproxy-lua "$RUN/haproxy-lua.log" env BENCH_HAPROXY_ROLE=lua haproxy -db -f "$RUN/conf/haproxy.cfg"
  ROOT[haproxy-lua]=$LAST_PID
fi

wait_http "http://127.0.0.1:$UPSTREAM_PORT/plain" 10 || { cat "$RUN"/upstream/*.log >&2; die "upstream did not start"; }
wait_http "http://127.0.0.1:$PEER_NJS_PORT/plain" 10 || { cat "$RUN"/peer-njs/*.log >&2; die "peer nginx-njs did not start"; }
wait_http "http://127.0.0.1:$PEER_PLAIN_PORT/plain" 10 || { cat "$RUN"/peer-plain/*.log >&2; die "peer nginx-plain did not start"; }
if [ "$HAVE_HAPROXY" = 1 ]; then
  if ! wait_http "http://127.0.0.1:$HAPROXY_PORT/plain" 10 || ! wait_http "http://127.0.0.1:$HAPROXY_LUA_PORT/plain" 10; then
    cat "$RUN"/haproxy*.log >&2; echo "haproxy did not start; skipping it" >&2; HAVE_HAPROXY=0
  fi
fi
GATEWAY_STARTS=0
start_gateway() { # [CMD]  (logs: gateway-1.log for the load runs, then one per restart)
  GATEWAY_STARTS=$((GATEWAY_STARTS + 1))
  start_bg gateway "$RUN/gateway-$GATEWAY_STARTS.log" bash -c "exec env ${1:-$GATEWAY_CMD}"   # env: allows VAR=value prefixes
  ROOT[gateway]=$LAST_PID
  wait_http "http://$GATEWAY/plain" 20 || { tail -20 "$RUN/gateway-$GATEWAY_STARTS.log" >&2; die "gateway at $GATEWAY does not answer"; }
}
restart_gateway() { # [CMD]: stop the harness's gateway (by pid), forget its pid, start a fresh one
  local old=${ROOT[gateway]} p keep=()
  stop_pids "$old"
  for p in "${PIDS[@]}"; do [ "$p" = "$old" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
  start_gateway "$@"
}
if [ "$WANT_NOINV" = 1 ]; then
  [ -n "${GATEWAY_BIN:-}" ] || die "target gateway-noinv needs the harness-built gateway (no GATEWAY_CMD)"
  port_busy "$GATEWAY_NOINV_PORT" && die "port $GATEWAY_NOINV_PORT (gateway-noinv) is taken"
  start_bg gateway-noinv "$RUN/gateway-noinv.log" \
    env RUST_LOG=warn "$GATEWAY_BIN" run --config "$RUN/gateway/gateway-noinv.toml"
  ROOT[gateway-noinv]=$LAST_PID
  wait_http "http://127.0.0.1:$GATEWAY_NOINV_PORT/plain" 20 \
    || { tail -20 "$RUN/gateway-noinv.log" >&2; die "gateway-noinv does not answer"; }
fi
if [ "$MANAGED_GATEWAY" = 1 ]; then
  start_gateway
  if [ "$AUDIT" = 1 ]; then
    start_bg gateway-audit "$RUN/gateway-audit.log" \
      env RUST_LOG=warn "$GATEWAY_BIN" run --config "$RUN/gateway/gateway-audit.toml"
    ROOT[gateway-audit]=$LAST_PID
    wait_http "http://127.0.0.1:$GATEWAY_AUDIT_PORT/plain" 20 \
      || { tail -20 "$RUN/gateway-audit.log" >&2; die "gateway-audit does not answer"; }
  fi
elif [ -n "$GATEWAY_EXTERNAL" ]; then
  wait_http "http://$GATEWAY/plain" 20 || die "gateway at $GATEWAY does not answer"
  # Not started here: find its pid by its listening socket (for RSS), if ss can see it.
  ROOT[gateway]=$(ss -Hltnp "sport = :${GATEWAY##*:}" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1 || true)
fi

# ---------------------------------------------------------------- process memory and CPU accounting
# tree_pids PID: the pid and all its descendants (nginx: master + workers).
tree_pids() {
  [ -n "${1:-}" ] && [ -d "/proc/$1" ] || return 0
  # (a process may exit between the glob and the read: cat then fails, which is fine)
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$1" '
    { pid = $1; r = $0; sub(/^.*\) /, "", r); split(r, a, " "); pp[pid] = a[2] }
    END { keep[root] = 1; ch = 1
          while (ch) { ch = 0; for (p in pp) if (!(p in keep) && (pp[p] in keep)) { keep[p] = 1; ch = 1 } }
          for (p in keep) if (p in pp) print p }'
}
target_pids() { tree_pids "${ROOT[$1]:-}"; }
status_kib() { # FIELD PID... -> sum of that /proc/PID/status field in KiB
  local f=$1 p s=0 v; shift
  for p in "$@"; do
    v=$(awk -v f="$f:" '$1==f {print $2}' "/proc/$p/status" 2>/dev/null || true)
    s=$(( s + ${v:-0} ))
  done
  echo "$s"
}
HWM_RESET=1
reset_hwm() { # PID... : VmHWM := current RSS (Linux clear_refs "5")
  local p
  for p in "$@"; do echo 5 2>/dev/null > "/proc/$p/clear_refs" || HWM_RESET=0; done
}
cpu_ticks() { awk '/^cpu /{ t=0; for (i=2;i<=9;i++) t+=$i; print t, t-$5-$6 }' /proc/stat; }  # total busy
procs_ticks() { # PID... -> utime+stime (all threads) + this shell's reaped children (the load generator)
  { for p in "$@"; do cat "/proc/$p/stat" 2>/dev/null || true; done; } \
    | awk -v self="$(cat /proc/$$/stat)" '
        { r = $0; sub(/^.*\) /, "", r); split(r, a, " "); s += a[12] + a[13] }
        END { sub(/^.*\) /, "", self); split(self, b, " "); print s + b[14] + b[15] }'
}
target_ticks() { # PID... -> utime+stime (all threads) of these processes only
  { for p in "$@"; do cat "/proc/$p/stat" 2>/dev/null || true; done; } \
    | awk '{ r = $0; sub(/^.*\) /, "", r); split(r, a, " "); s += a[12] + a[13] } END { print s + 0 }'
}
thread_ticks() { # NAME PID... -> utime+stime of the threads of these processes named NAME (comm)
  local name=$1; shift
  { for p in "$@"; do cat /proc/"$p"/task/[0-9]*/stat 2>/dev/null || true; done; } \
    | awk -v n="($name)" '{ c = $0; sub(/^[0-9]+ /, "", c); sub(/\) .*$/, ")", c)
        if (c != n) next; r = $0; sub(/^.*\) /, "", r); split(r, a, " "); s += a[12] + a[13] } END { print s + 0 }'
}
kthread_ticks() { # utime+stime of kernel threads (PF_KTHREAD): ksoftirqd, kworkers (loopback delivery, ...)
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{ r = $0; sub(/^.*\) /, "", r); split(r, a, " ")
    if (int(a[7] / 2097152) % 2 == 1) s += a[12] + a[13] } END { print s + 0 }'
}
all_server_pids() { local t; for t in "${!ROOT[@]}"; do target_pids "$t"; done; }

# ---------------------------------------------------------------- target list
declare -A ADDR KIND
ADDR[direct]=127.0.0.1:$UPSTREAM_PORT;           KIND[direct]=limit
ADDR[nginx-njs]=127.0.0.1:$PEER_NJS_PORT;        KIND[nginx-njs]=consent
ADDR[nginx-plain]=127.0.0.1:$PEER_PLAIN_PORT;    KIND[nginx-plain]=plain
ADDR[haproxy]=127.0.0.1:$HAPROXY_PORT;           KIND[haproxy]=plain
ADDR[haproxy-lua]=127.0.0.1:$HAPROXY_LUA_PORT;   KIND[haproxy-lua]=consent
ADDR[gateway]=$GATEWAY;                          KIND[gateway]=consent
ADDR[gateway-noinv]=127.0.0.1:$GATEWAY_NOINV_PORT; KIND[gateway-noinv]=consent
ADDR[gateway-audit]=127.0.0.1:$GATEWAY_AUDIT_PORT; KIND[gateway-audit]=consent
ACTIVE=()
for t in $TARGETS; do
  [ -n "${ADDR[$t]+x}" ] || die "unknown target '$t'"
  case "$t" in haproxy|haproxy-lua) [ "$HAVE_HAPROXY" = 0 ] && continue ;; esac
  ACTIVE+=("$t")
done

GW_START_RSS=
if [ -n "${ROOT[gateway]:-}" ]; then GW_START_RSS=$(status_kib VmRSS $(target_pids gateway)); fi

echo
echo "== consent-gateway bench  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "host: $(nproc) cores ($(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)), $(uname -r)," \
     "$(awk '/MemTotal/{printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo), loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
echo "tools: $(nginx -v 2>&1 | sed 's/.*: //'), njs $(dpkg-query -W -f='${Version}' libnginx-mod-http-js 2>/dev/null || echo '?')," \
     "$( if [ "$HAVE_HAPROXY" = 1 ]; then haproxy -v 2>/dev/null | awk 'NR==1{print "haproxy " $3}'; else echo 'no haproxy'; fi)," \
     "wrk $(dpkg-query -W -f='${Version}' wrk 2>/dev/null || echo '?'), h2load $(h2load --version 2>/dev/null | awk '{print $2; exit}')"
if [ "$MANAGED_GATEWAY" = 1 ]; then
  echo "gateway: $GATEWAY_CMD"
  echo "         commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$( [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null)" ] && echo ' + uncommitted changes in src/Cargo.*'), $(rustc -V 2>/dev/null || echo 'rustc ?')"
fi
if [ "$LOADGEN" = wrk ]; then
  echo "load: wrk -t$THREADS -c$CONNS -d$DURATION (warm-up $WARMUP), rounds=$ROUNDS, consent sent=$LOAD_CONSENT"
else
  echo "load: $(oha --version) -c$CONNS -z$DURATION (warm-up $WARMUP), rounds=$ROUNDS, consent sent=$LOAD_CONSENT"
fi
echo "open files: ulimit -n $NOFILE (was $NOFILE_BEFORE, hard $NOFILE_HARD)"
echo "targets: $(for t in "${ACTIVE[@]}"; do printf '%s=%s ' "$t" "${ADDR[$t]}"; done)"

# ---------------------------------------------------------------- correctness (curl)
names_for() { # ADDR PATH [COOKIE]
  local args=(-s -D - -o /dev/null --max-time 5)
  [ -n "${3:-}" ] && args+=(-H "Cookie: $3")
  curl "${args[@]}" "http://$1$2" | tr -d '\r' | awk -F'[:=]' 'tolower($1)=="set-cookie"{gsub(/^ +| +$/,"",$2); printf "%s%s", sep, $2; sep=","}'
}
short() { case "$1" in "$ALL_NAMES") echo ALL ;; "$NEC_NAMES") echo NEC ;; "") echo - ;; *) echo "$1" ;; esac; }
echo
echo "-- correctness: Set-Cookie names returned on / (expected all=$ALL_NAMES; necessary-only=$NEC_NAMES)"
echo "   (ALL = all 7 names; NEC = exactly the 3 necessary ones; otherwise the names returned, '-' = none)"
printf '%-12s %-9s %-12s %-15s %-15s %-10s %s\n' target verdict consent=all necessary-only no-pref-cookie '/big bytes' '/plain cookies'
BAD=0
for t in "${ACTIVE[@]}"; do
  a=${ADDR[$t]}
  all=$(names_for "$a" / "cookies_preferences=$CONSENT_ALL; sessionid=abc")
  nec=$(names_for "$a" / "cookies_preferences=$CONSENT_NEC; sessionid=abc")
  none=$(names_for "$a" / "sessionid=abc")
  big=$(curl -s -o /dev/null --max-time 10 -w '%{size_download}' -H "Cookie: cookies_preferences=$CONSENT_NEC" "http://$a/big" || echo ERR)
  plain=$(names_for "$a" /plain "cookies_preferences=$CONSENT_NEC")
  if [ "${KIND[$t]}" = consent ]; then
    if [ "$all" = "$ALL_NAMES" ] && [ "$nec" = "$NEC_NAMES" ] && [ "$none" = "$NEC_NAMES" ] && [ "$big" = 1048576 ] && [ -z "$plain" ]; then
      verdict=OK
    else
      verdict=FAIL; BAD=1
    fi
  else
    if [ "$all" = "$ALL_NAMES" ] && [ "$nec" = "$ALL_NAMES" ] && [ "$big" = 1048576 ]; then verdict=passthru; else verdict=ODD; fi
  fi
  printf '%-12s %-9s %-12s %-15s %-15s %-10s %s\n' "$t" "$verdict" "$(short "$all")" "$(short "$nec")" "$(short "$none")" "$big" "$(short "$plain")"
done

# ---------------------------------------------------------------- load
RESULTS=$RUN/results.tsv
: > "$RESULTS"
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }
load_errors() { # RESULT-LINE -> connect + read + write + non-2xx/3xx + timeout errors
  echo $(( $(field err_connect "$1") + $(field err_read "$1") + $(field err_write "$1") + $(field err_status "$1") + $(field err_timeout "$1") ))
}
# load URL DURATION OUTFILE: runs the load generator, leaves a wrk-style RESULT line in OUTFILE.
load() {
  if [ "$LOADGEN" = wrk ]; then
    BENCH_COOKIE="$LOAD_COOKIE" wrk -t"$THREADS" -c"$CONNS" -d"$2" -s "$BENCH_DIR/wrk-consent.lua" "$1" > "$3" 2>&1 || true
  else
    oha -c "$CONNS" -z "$2" --no-tui --output-format json -H "Cookie: $LOAD_COOKIE" "$1" > "$3.json" 2>"$3" || true
    # oha pretty-prints JSON; pull rps, p50/p99 (seconds) and non-200 / error counts with awk.
    awk '
      /"summary": \{/ {sec="summary"} /"latencyPercentiles": \{/ {sec="lat"}
      /"statusCodeDistribution": \{/ {sec="status"; next} /"errorDistribution": \{/ {sec="err"; next}
      /^  \}/ {sec=""}
      { line=$0; gsub(/[",]/, "", line); split(line, kv, ": *"); k=kv[1]; gsub(/ /, "", k); v=kv[2] }
      sec=="summary" && k=="requestsPerSec" {rps=v}
      sec=="lat" && k=="p50" {p50=v} sec=="lat" && k=="p99" {p99=v}
      sec=="status" && k!="" && k!="200" {bad+=v}
      sec=="err" && k!="" && k!="aborteddueto deadline" && k!="abortedduetodeadline" {bad+=v}
      END { if (rps!="") printf "RESULT requests=0 duration_s=0 rps=%.1f p50_us=%d p99_us=%d mean_us=0 bytes=0 err_connect=0 err_read=0 err_write=0 err_status=%d err_timeout=0\n", rps, p50*1e6, p99*1e6, bad }
    ' "$3.json" >> "$3"
  fi
}
# results.tsv: round target path rps p50_us p99_us errors peak_rss_kib other_cpu_pct loadavg1 cpu_us_per_request
#              writer_us_per_request (gateway-audit: its audit-writer thread's share of cpu_us_per_request, else -1)
for round in $(seq 1 "$ROUNDS"); do
  # Rotate the target order each round so that no target always runs first/last (position bias).
  n=${#ACTIVE[@]}; k=$(( (round - 1) % n ))
  ORDER=("${ACTIVE[@]:k}" "${ACTIVE[@]:0:k}")
  for path in $PATHS; do
    for t in "${ORDER[@]}"; do
      url="http://${ADDR[$t]}$path"
      tag="r${round}-${t}-$(tr -c 'a-z0-9' _ <<<"$path")"
      tp=($(target_pids "$t"))
      [ ${#tp[@]} -gt 0 ] && reset_hwm "${tp[@]}"
      load "$url" "$WARMUP" "$RUN/wrk/$tag-warmup.txt"
      sp=($(all_server_pids))
      read -r c0_total c0_busy < <(cpu_ticks); o0=$(( $(procs_ticks "${sp[@]}") + $(kthread_ticks) ))
      own0=$(target_ticks "${tp[@]}"); w0=$(thread_ticks audit-writer "${tp[@]}")
      load "$url" "$DURATION" "$RUN/wrk/$tag.txt"
      own1=$(target_ticks "${tp[@]}"); w1=$(thread_ticks audit-writer "${tp[@]}")
      read -r c1_total c1_busy < <(cpu_ticks); o1=$(( $(procs_ticks "${sp[@]}") + $(kthread_ticks) ))
      hwm=-1
      [ ${#tp[@]} -gt 0 ] && hwm=$(status_kib VmHWM "${tp[@]}")
      other=$(awk -v t=$((c1_total - c0_total)) -v b=$((c1_busy - c0_busy)) -v o=$((o1 - o0)) \
        'BEGIN{ x = (t > 0) ? (b - o) * 100 / t : 0; if (x < 0) x = 0; printf "%.0f", x }')
      load1=$(cut -d' ' -f1 /proc/loadavg)
      line=$(grep '^RESULT' "$RUN/wrk/$tag.txt" || true)
      if [ -z "$line" ]; then
        echo "$LOADGEN failed for $t $path:" >&2; cat "$RUN/wrk/$tag.txt" >&2
        printf '%s\t%s\t%s\t0\t0\t0\t-1\t%s\t%s\t%s\t-1\t-1\n' "$round" "$t" "$path" "$hwm" "$other" "$load1" >> "$RESULTS"
        continue
      fi
      errs=$(load_errors "$line")
      # CPU time of the target's own processes per request, in microseconds (clock ticks are 1/CLK_TCK s).
      cpu_us=$(awk -v d=$((own1 - own0)) -v hz="$(getconf CLK_TCK)" -v n="$(field requests "$line")" \
        'BEGIN{ if (n > 0 && d >= 0) printf "%.1f", d * 1e6 / hz / n; else print -1 }')
      [ ${#tp[@]} -gt 0 ] || cpu_us=-1
      writer_us=-1
      [ "$t" = gateway-audit ] && writer_us=$(awk -v d=$((w1 - w0)) -v hz="$(getconf CLK_TCK)" -v n="$(field requests "$line")" \
        'BEGIN{ if (n > 0 && d >= 0) printf "%.2f", d * 1e6 / hz / n; else print -1 }')
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$t" "$path" \
        "$(field rps "$line")" "$(field p50_us "$line")" "$(field p99_us "$line")" "$errs" "$hwm" "$other" "$load1" "$cpu_us" "$writer_us" >> "$RESULTS"
    done
  done
done

# ---------------------------------------------------------------- table
# Median over rounds per (target, path); ratios: median over rounds of the per-round ratio.
median() { sort -n | awk '{v[NR]=$1} END{ if (NR==0) print 0; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2 }'; }
col() { awk -F'\t' -v t="$1" -v p="$2" -v c="$3" '$2==t && $3==p {print $c}' "$RESULTS"; }
ratio() { # TARGET PATH COLUMN REFERENCE -> median over rounds of target/reference (same round), or -1
  local r
  r=$(awk -F'\t' -v t="$1" -v p="$2" -v c="$3" -v ref="$4" '
    FNR==NR { if ($2==ref && $3==p) d[$1]=$c; next }
    $2==t && $3==p && d[$1]>0 { print $c/d[$1] }' "$RESULTS" "$RESULTS" | median)
  if [ -z "$(awk -F'\t' -v ref="$4" -v p="$2" '$2==ref && $3==p && $4>0' "$RESULTS")" ]; then echo -1; else echo "$r"; fi
}
fmt_ratio() { awk -v r="$1" 'BEGIN{ if (r >= 0) printf "%.2f", r; else printf "-" }'; }
echo
echo "-- per-round results (peak RSS = VmHWM of the target's processes over warm-up + run, nginx: master+workers;"
echo "   other% = CPU used during the run by processes outside the bench (neither its servers, the load generator nor"
echo "   kernel threads), % of all cores: another job on the machine; load1 = 1-min loadavg after the run)"
printf '%-5s %-12s %-6s %12s %10s %10s %7s %9s %9s %6s %6s\n' round target path 'req/s' 'p50 ms' 'p99 ms' errors 'RSS MiB' 'CPU us/r' 'other%' load1
while IFS=$'\t' read -r r t p rps p50 p99 e hwm other l1 cpu _writer; do
  printf '%-5s %-12s %-6s %12.0f %10.2f %10.2f %7s %9s %9s %6s %6s\n' "$r" "$t" "$p" "$rps" \
    "$(awk "BEGIN{print $p50/1000}")" "$(awk "BEGIN{print $p99/1000}")" "$e" \
    "$(awk -v h="$hwm" 'BEGIN{ if (h >= 0) printf "%.1f", h/1024; else printf "-" }')" \
    "$(awk -v c="$cpu" 'BEGIN{ if (c >= 0) printf "%.1f", c; else printf "-" }')" "$other" "$l1"
done < "$RESULTS"
echo
[ "$ROUNDS" -gt 1 ] && echo "-- median of $ROUNDS rounds" || echo "-- results"
printf '%-12s %-6s %10s %8s %8s %8s %8s %8s %8s %6s %8s %9s\n' target path 'req/s' 'p50 ms' 'p99 ms' 'rps/dir' 'rps/njs' 'p99/dir' 'p99/njs' errors 'RSS MiB' 'CPU us/r'
for path in $PATHS; do
  for t in "${ACTIVE[@]}"; do
    rps=$(col "$t" "$path" 4 | median); p50=$(col "$t" "$path" 5 | median); p99=$(col "$t" "$path" 6 | median)
    errs=$(col "$t" "$path" 7 | awk '{ if ($1 < 0) f=1; else s+=$1 } END{ print f ? "FAILED" : s+0 }')
    peak=$(col "$t" "$path" 8 | awk 'BEGIN{m=-1} $1>m{m=$1} END{ if (m >= 0) printf "%.1f", m/1024; else printf "-" }')
    cpu=$(col "$t" "$path" 11 | awk '$1 >= 0' | median)
    printf '%-12s %-6s %10.0f %8.2f %8.2f %8s %8s %8s %8s %6s %8s %9s\n' "$t" "$path" "$rps" \
      "$(awk "BEGIN{print $p50/1000}")" "$(awk "BEGIN{print $p99/1000}")" \
      "$(fmt_ratio "$(ratio "$t" "$path" 4 direct)")" "$(fmt_ratio "$(ratio "$t" "$path" 4 nginx-njs)")" \
      "$(fmt_ratio "$(ratio "$t" "$path" 6 direct)")" "$(fmt_ratio "$(ratio "$t" "$path" 6 nginx-njs)")" \
      "$errs" "$peak" "$(awk -v c="$cpu" 'BEGIN{ if (c > 0) printf "%.1f", c; else printf "-" }')"
  done
done
echo "(req/s higher is better; latencies from $LOADGEN, microsecond resolution; errors = connect+read+write+timeout+non-2xx/3xx;"
echo " ratios = median over rounds of the same-round ratio; RSS MiB = highest peak RSS of the rounds;"
echo " CPU us/r = CPU time (user+system) of the target's own processes per request, median over rounds: what the"
echo " target itself costs, less noisy than req/s; for direct it is the upstream's cost, for a proxy its own only"
[ "$HWM_RESET" = 1 ] || echo " NOTE: resetting VmHWM (/proc/PID/clear_refs) was refused: RSS is the peak since the process started"
echo ")"
if [[ " ${ACTIVE[*]} " == *" gateway "* ]] && [ ${#ACTIVE[@]} -gt 1 ]; then
  echo
  echo "-- gateway relative to each target (median over rounds of the same-round ratio; req/s >1 and p99 <1 favour the gateway)"
  printf '%-6s %-12s %12s %12s\n' path vs 'req/s ratio' 'p99 ratio'
  for path in $PATHS; do
    for t in "${ACTIVE[@]}"; do
      [ "$t" = gateway ] && continue
      printf '%-6s %-12s %12s %12s\n' "$path" "$t" "$(fmt_ratio "$(ratio gateway "$path" 4 "$t")")" "$(fmt_ratio "$(ratio gateway "$path" 6 "$t")")"
    done
  done
fi
LOAD_ERRORS=$(awk -F'\t' '$7 != 0 {n++} END{print n+0}' "$RESULTS")

# ---------------------------------------------------------------- audit log's cost, paired rounds
if [ "$AUDIT_PAIRED" -gt 0 ] && [ -n "${ROOT[gateway]:-}" ] && [ -n "${ROOT[gateway-audit]:-}" ]; then
  PAIRED=$RUN/paired.tsv; : > "$PAIRED"
  half_threads=$(( THREADS > 1 ? THREADS / 2 : 1 )); half_conns=$(( CONNS > 1 ? CONNS / 2 : 1 ))
  echo
  echo "-- audit log's cost, paired: gateway and gateway-audit loaded at the same time ($LOADGEN -t$half_threads -c$half_conns each,"
  echo "   $DURATION after $WARMUP of warm-up), $AUDIT_PAIRED round(s) per path"
  printf '%-5s %-6s %10s %10s %10s %10s %9s %11s\n' round path 'off req/s' 'on req/s' 'off us/r' 'on us/r' 'on/off' 'writer us/r'
  hz=$(getconf CLK_TCK)
  for round in $(seq 1 "$AUDIT_PAIRED"); do
    for path in $PATHS; do
      off=($(target_pids gateway)); on=($(target_pids gateway-audit))
      tag="paired-r${round}-$(tr -c 'a-z0-9' _ <<<"$path")"
      ( THREADS=$half_threads CONNS=$half_conns
        load "http://${ADDR[gateway]}$path" "$WARMUP" "$RUN/wrk/$tag-off-warmup.txt" &
        load "http://${ADDR[gateway-audit]}$path" "$WARMUP" "$RUN/wrk/$tag-on-warmup.txt" &
        wait )
      a0=$(target_ticks "${off[@]}"); b0=$(target_ticks "${on[@]}"); w0=$(thread_ticks audit-writer "${on[@]}")
      ( THREADS=$half_threads CONNS=$half_conns
        load "http://${ADDR[gateway]}$path" "$DURATION" "$RUN/wrk/$tag-off.txt" &
        load "http://${ADDR[gateway-audit]}$path" "$DURATION" "$RUN/wrk/$tag-on.txt" &
        wait )
      a1=$(target_ticks "${off[@]}"); b1=$(target_ticks "${on[@]}"); w1=$(thread_ticks audit-writer "${on[@]}")
      loff=$(grep '^RESULT' "$RUN/wrk/$tag-off.txt" || true); lon=$(grep '^RESULT' "$RUN/wrk/$tag-on.txt" || true)
      if [ -z "$loff" ] || [ -z "$lon" ]; then
        echo "$LOADGEN failed in paired round $round $path" >&2; cat "$RUN/wrk/$tag-off.txt" "$RUN/wrk/$tag-on.txt" >&2
        LOAD_ERRORS=$((LOAD_ERRORS + 1)); continue
      fi
      for l in "$loff" "$lon"; do
        [ "$(load_errors "$l")" = 0 ] || LOAD_ERRORS=$((LOAD_ERRORS + 1))
      done
      awk -v r="$round" -v p="$path" -v hz="$hz" -v a=$((a1 - a0)) -v b=$((b1 - b0)) -v w=$((w1 - w0)) \
          -v na="$(field requests "$loff")" -v nb="$(field requests "$lon")" \
          -v ra="$(field rps "$loff")" -v rb="$(field rps "$lon")" '
        BEGIN { if (na <= 0 || nb <= 0) exit
                off = a * 1e6 / hz / na; on = b * 1e6 / hz / nb; wr = w * 1e6 / hz / nb
                printf "%s\t%s\t%.0f\t%.0f\t%.2f\t%.2f\t%.4f\t%.2f\n", r, p, ra, rb, off, on, (off > 0 ? on / off : 0), wr }' >> "$PAIRED"
      tail -1 "$PAIRED" | awk -F'\t' -v r="$round" -v p="$path" '$1 == r && $2 == p {
        printf "%-5s %-6s %10s %10s %10s %10s %9.3f %11s\n", $1, $2, $3, $4, $5, $6, $7, $8 }'
    done
  done
  for path in $PATHS; do
    pc() { awk -F'\t' -v p="$path" -v c="$1" '$2 == p {print $c}' "$PAIRED" | median; }
    printf '%-5s %-6s %10.0f %10.0f %10.2f %10.2f %9.3f %11.2f\n' median "$path" "$(pc 3)" "$(pc 4)" "$(pc 5)" "$(pc 6)" "$(pc 7)" "$(pc 8)"
  done
  echo "(us/r = CPU time (user+system) of the target's own processes per request over the same ${DURATION}; on/off = the"
  echo " round's ratio of the two, its median is the audit log's cost; writer = gateway-audit's audit-writer thread, part of"
  echo " its us/r: the rest of the difference is the request path's share and the effect of one more busy thread)"
fi

GW_AFTER_LOAD=
if [ -n "${ROOT[gateway]:-}" ] && [ -n "$(awk -F'\t' '$2=="gateway"' "$RESULTS")" ]; then
  sleep 2   # the load's connections are closed; read before any restart
  gp=($(target_pids gateway))
  [ ${#gp[@]} -gt 0 ] && GW_AFTER_LOAD=$(awk -v r="$(status_kib VmRSS "${gp[@]}")" -v h="$(status_kib VmHWM "${gp[@]}")" \
    'BEGIN{ printf "%.1f MiB (VmHWM since the last reset: %.1f MiB)", r/1024, h/1024 }')
fi

# ---------------------------------------------------------------- TLS step (gateway, h2load)
TLS_ERRORS=0
secs() { case "$1" in *[0-9]m) echo $(( ${1%m} * 60 )) ;; *[0-9]s) echo "${1%s}" ;; *) echo 600 ;; esac; }
H2LOAD_LIMIT=$(( $(secs "$DURATION") + $(secs "$WARMUP") + 120 ))
h2l() { # LABEL h2load-args... : one h2load run, prints a row, counts errors
  local label=$1 out rps done_ ok fail err tmo non2 mean conn connmax; shift
  # Bounded: h2load 1.52's duration mode (-D) can wait forever when the server closes HTTP/1.1
  # connections near the end of the run, as the gateway does after 1000 requests on one
  # (nghttp2 issue 2250, fixed in later releases); a run cut by the bound has no result and
  # counts as a failed run.
  out=$(timeout "$H2LOAD_LIMIT" h2load "$@" 2>&1 || true)
  echo "$out" > "$RUN/wrk/h2load-$(tr 'A-Z' 'a-z' <<<"$label" | tr -c 'a-z0-9' _).txt"
  to_ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) printf "%.2f", v/1000; else if (v ~ /ms$/) printf "%.2f", v+0; else if (v ~ /s$/) printf "%.2f", v*1000; else printf "-" }'; }
  rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
  read -r done_ ok fail err tmo < <(sed -n 's/^requests: .* \([0-9]*\) done, \([0-9]*\) succeeded, \([0-9]*\) failed, \([0-9]*\) errored, \([0-9]*\) timeout.*/\1 \2 \3 \4 \5/p' <<<"$out")
  non2=$(sed -n 's/^status codes: [0-9]* 2xx, \([0-9]*\) 3xx, \([0-9]*\) 4xx, \([0-9]*\) 5xx.*/\1 \2 \3/p' <<<"$out" | awk '{print $1+$2+$3}')
  # "time for request:  min max mean sd +/-sd": the mean is the 6th field, the max the 5th
  mean=$(to_ms "$(awk '/^time for request:/{print $6}' <<<"$out")")
  conn=$(to_ms "$(awk '/^time for connect:/{print $6}' <<<"$out")")
  connmax=$(to_ms "$(awk '/^time for connect:/{print $5}' <<<"$out")")
  if [ -z "$rps" ] || [ -z "$done_" ]; then
    echo "h2load failed ($label):"; tail -5 <<<"$out"; TLS_ERRORS=$((TLS_ERRORS + 1)); return 0
  fi
  local errs=$(( fail + err + tmo + ${non2:-0} ))
  [ "$errs" = 0 ] || TLS_ERRORS=$((TLS_ERRORS + 1))
  printf '%-40s %10.0f %12s %14s %13s %8s %8s\n' "$label" "$rps" "$mean" "$conn" "$connmax" "$done_" "$errs"
}
if [ "$TLS" = 1 ]; then
  echo
  if [ -z "$GATEWAY_TLS_CMD" ] || ! command -v h2load >/dev/null || ! command -v openssl >/dev/null; then
    echo "-- TLS step skipped (needs the harness-started gateway without GATEWAY_CMD, h2load and openssl)"
  else
    CERTS_DIR=$RUN/certs bash "$REPO/certs/make-dev-certs.sh" > "$RUN/certs.log" 2>&1 || die "certs/make-dev-certs.sh failed"
    restart_gateway "$GATEWAY_TLS_CMD"
    wait_http "http://$GATEWAY/plain" 20 || die "TLS gateway does not answer"
    curl -sk -o /dev/null --max-time 5 "https://127.0.0.1:$GATEWAY_TLS_PORT/plain" || die "TLS gateway does not answer on https"
    hdr=(-H "cookie: $LOAD_COOKIE")
    plain_url="http://$GATEWAY/"; tls_url="https://127.0.0.1:$GATEWAY_TLS_PORT/"
    echo "-- TLS: gateway, path /, h2load -t$THREADS -c$CONNS -D $DURATION (warm-up $WARMUP); h2 with 1 stream per connection"
    echo "   new connections: h2load -t$THREADS -n$NEWCONN -c$NEWCONN (each client opens 1 connection, sends 1 request)"
    echo "   ($(openssl version | cut -d' ' -f1-2); certificate: ECDSA P-256 from certs/make-dev-certs.sh; no SNI for 127.0.0.1: default cert)"
    printf '%-40s %10s %12s %14s %13s %8s %8s\n' run 'req/s' 'mean ms' 'mean conn ms' 'max conn ms' requests errors
    h2l "h1 plain (keep-alive)"   --h1 -t"$THREADS" -c"$CONNS" -D "$DURATION" --warm-up-time="$WARMUP" "${hdr[@]}" "$plain_url"
    h2l "h1 TLS (keep-alive)"     --h1 -t"$THREADS" -c"$CONNS" -D "$DURATION" --warm-up-time="$WARMUP" "${hdr[@]}" "$tls_url"
    h2l "h2 TLS (keep-alive)"          -t"$THREADS" -c"$CONNS" -m1 -D "$DURATION" --warm-up-time="$WARMUP" "${hdr[@]}" "$tls_url"
    h2l "new conns h1 plain"      --h1 -t"$THREADS" -c"$NEWCONN" -n"$NEWCONN" "${hdr[@]}" "$plain_url"
    h2l "new conns h1 TLS"        --h1 -t"$THREADS" -c"$NEWCONN" -n"$NEWCONN" "${hdr[@]}" "$tls_url"
    h2l "new conns h2 TLS"             -t"$THREADS" -c"$NEWCONN" -n"$NEWCONN" "${hdr[@]}" "$tls_url"
    h2l "new conns h1 plain, nginx-plain (ref)" --h1 -t"$THREADS" -c"$NEWCONN" -n"$NEWCONN" "${hdr[@]}" "http://127.0.0.1:$PEER_PLAIN_PORT/"
    echo "   listen backlog (ss Send-Q): gateway $(ss -Hltn "sport = :${GATEWAY##*:}" 2>/dev/null | awk '{print $3; exit}'), nginx-plain $(ss -Hltn "sport = :$PEER_PLAIN_PORT" 2>/dev/null | awk '{print $3; exit}') (a burst beyond it waits for SYN retransmits: 1 s, 3 s, ...)"
    echo "(req/s higher is better; h2load reports mean and max, no percentiles; new conns: req/s = connections/s)"
    # back to the plain config for the memory step
    restart_gateway
  fi
fi

# ---------------------------------------------------------------- memory step (nginx-plain, gateway)
MEM_FAIL=0
restart_nginx_plain() { # a fresh nginx-plain (master + workers), as the gateway gets for this step
  local old=${ROOT[nginx-plain]} p keep=()
  stop_pids "$old"
  for p in "${PIDS[@]}"; do [ "$p" = "$old" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
  start_bg peer-nginx-plain "$RUN/peer-plain/stdout-2.log" \
    nginx -p "$RUN/peer-plain/" -c "$RUN/conf/peer-nginx-plain.conf" -e "$RUN/peer-plain/error.log" -g 'daemon off;'
  ROOT[nginx-plain]=$LAST_PID
  wait_http "http://127.0.0.1:$PEER_PLAIN_PORT/plain" 10 || die "nginx-plain did not restart"
}
MEM_ROWS=()
hold_step() { # TARGET ADDR N CONCURRENCY [PROTOCOL]: holds N keep-alive connections (each served one GET /plain), one row
  local t=$1 addr=$2 n=$3 c=$4 proto=${5:-h1} pids=() args=() out held ok200 before with per
  pids=($(target_pids "$t"))
  for p in "${pids[@]}"; do args+=(--pid "$p"); done
  case "$proto" in tls) args+=(--tls) ;; h2) args+=(--h2) ;; esac
  out=$(python3 "$BENCH_DIR/hold_conns.py" "$addr" "$n" "${args[@]}" --concurrency "$c" 2>&1) || MEM_FAIL=1
  sed "s/^/   hold_conns $t $proto: /" <<<"$out"
  held=$(sed -n 's/^connections held: \([0-9]*\).*/\1/p' <<<"$out")
  ok200=$(sed -n "s/.*statuses: .*'200': \([0-9]*\).*/\1/p" <<<"$out")
  before=$(sed -n 's/^RSS before: \([0-9.]*\) MiB.*/\1/p' <<<"$out")
  with=$(sed -n 's/.*keep-alive connections: \([0-9.]*\) MiB.*/\1/p' <<<"$out")
  per=$(sed -n 's/.*per connection: \([0-9.]*\) KiB.*/\1/p' <<<"$out")
  [ "${held:-0}" = "$n" ] && [ "${ok200:-0}" = "$n" ] || { MEM_FAIL=1; echo "MEMORY STEP FAILED ($t): expected $n connections held, each answered 200"; }
  sleep 2
  MEM_ROWS+=("$(printf '%-12s %-8s %6s %6s %10s %10s %10s %10s %22s %12s' "$t" "$proto" "${#pids[@]}" "$c" "${before:-?}" "${with:-?}" \
    "$(awk -v a="${before:-0}" -v b="${with:-0}" 'BEGIN{printf "%.1f", b - a}')" \
    "$(awk -v p="${per:-0}" 'BEGIN{printf "%.2f", p}')" "${held:-?} (${ok200:-0} x 200)" \
    "$(awk "BEGIN{printf \"%.1f\", $(status_kib VmRSS $(target_pids "$t"))/1024}")")")
}
if [ "$MEMORY" = 1 ] && [ -n "${ROOT[gateway]:-}" ]; then
  echo
  echo "-- gateway memory (VmRSS of the gateway process)"
  [ -n "$GW_START_RSS" ] && printf '%-58s %8.1f MiB\n' "at start, idle (after the readiness requests)" "$(awk "BEGIN{print $GW_START_RSS/1024}")"
  [ -n "$GW_AFTER_LOAD" ] && printf '%-58s %s\n' "after the load runs, idle" "$GW_AFTER_LOAD"
  n=$MEM_CONNS
  if [ "$NOFILE" -lt $(( MEM_CONNS + 256 )) ]; then
    n=$(( NOFILE - 256 )); [ "$n" -lt 0 ] && n=0
    echo "NOTE: ulimit -n is limited to $NOFILE (hard $NOFILE_HARD): holding $n connections instead of $MEM_CONNS"
  fi
  if [ "$n" -gt 0 ]; then
    echo
    echo "-- idle keep-alive connections, side by side: $n connections, opened C at a time (C = $MEM_CONCURRENCY), each"
    echo "   sends one GET /plain, reads the response and stays open (bench/hold_conns.py); RSS = VmRSS summed over"
    echo "   the target's processes (nginx: master + workers), fresh processes for each C, read 1 s after the last"
    echo "   connection"
    for c in $MEM_CONCURRENCY; do
      if [ "$MANAGED_GATEWAY" = 1 ]; then
        # Fresh processes, so that the figures carry neither the load runs' allocator state nor
        # the previous burst's.
        restart_gateway
        [ -n "${ROOT[nginx-plain]:-}" ] && restart_nginx_plain
        sleep 2
      fi
      [ -n "${ROOT[nginx-plain]:-}" ] && hold_step nginx-plain "127.0.0.1:$PEER_PLAIN_PORT" "$n" "$c"
      hold_step gateway "$GATEWAY" "$n" "$c"
    done
    if [ "$MEM_TLS" = 1 ]; then
      if [ -z "$GATEWAY_TLS_CMD" ] || ! command -v openssl >/dev/null; then
        echo "   (MEM_TLS=1 skipped: needs the harness-started gateway without GATEWAY_CMD, and openssl)"
      else
        [ -f "$RUN/certs/default.crt" ] || CERTS_DIR=$RUN/certs bash "$REPO/certs/make-dev-certs.sh" > "$RUN/certs.log" 2>&1 \
          || die "certs/make-dev-certs.sh failed"
        port_busy "$PEER_TLS_PORT" && die "port $PEER_TLS_PORT (nginx TLS peer) is taken"
        for proto in tls h2; do
          for c in $MEM_TLS_CONCURRENCY; do
            restart_gateway "$GATEWAY_TLS_CMD"
            if [ -n "${ROOT[nginx-tls]:-}" ]; then
              stop_pids "${ROOT[nginx-tls]}"
              keep=(); for p in "${PIDS[@]}"; do [ "$p" = "${ROOT[nginx-tls]}" ] || keep+=("$p"); done; PIDS=("${keep[@]}")
            fi
            start_bg peer-nginx-tls "$RUN/peer-tls/stdout.log" \
              nginx -p "$RUN/peer-tls/" -c "$RUN/conf/peer-nginx-tls.conf" -e "$RUN/peer-tls/error.log" -g 'daemon off;'
            ROOT[nginx-tls]=$LAST_PID
            for i in $(seq 1 100); do curl -sk -o /dev/null --max-time 1 "https://127.0.0.1:$PEER_TLS_PORT/plain" && break; sleep 0.1; done
            curl -sk -o /dev/null --max-time 5 "https://127.0.0.1:$GATEWAY_TLS_PORT/plain" || die "TLS gateway does not answer on https"
            sleep 2
            hold_step nginx-tls "127.0.0.1:$PEER_TLS_PORT" "$n" "$c" "$proto"
            hold_step gateway "127.0.0.1:$GATEWAY_TLS_PORT" "$n" "$c" "$proto"
          done
        done
      fi
    fi
    printf '%-12s %-8s %6s %6s %10s %10s %10s %10s %22s %12s\n' target protocol procs C 'idle MiB' 'held MiB' 'growth MiB' \
      'KiB/conn' 'connections held' 'closed+2s MiB'
    printf '%s\n' "${MEM_ROWS[@]}"
    echo "(KiB/conn = (held - idle) / connections: what one idle keep-alive connection costs, with what the burst that"
    echo " opened them (C requests at once, each with its upstream request) left in the allocator; closed+2s = RSS 2 s"
    echo " after they closed)"
  fi
fi

if [ "$AUDIT" = 1 ] && [ -n "${ROOT[gateway-audit]:-}" ]; then
  echo
  echo "-- audit log of gateway-audit ($GATEWAY_AUDIT_LOG and rotated files)"
  files=(); for n in 10 9 8 7 6 5 4 3 2 1; do [ -f "$GATEWAY_AUDIT_LOG.$n" ] && files+=("$GATEWAY_AUDIT_LOG.$n"); done
  files+=("$GATEWAY_AUDIT_LOG")
  printf '   %s bytes in %s file(s)\n' "$(cat "${files[@]}" | wc -c)" "${#files[@]}"
  # The writer thread's part of gateway-audit's CPU per request (the rest is the request path's).
  for path in $PATHS; do
    w=$(col gateway-audit "$path" 12 | awk '$1 >= 0' | median)
    c=$(col gateway-audit "$path" 11 | awk '$1 >= 0' | median)
    printf '   %s: audit-writer thread %s us/req of gateway-audit'"'"'s %s us/req (median over rounds)\n' "$path" "$w" "$c"
  done
  "$GATEWAY_BIN" audit verify "${files[@]}" 2>&1 | sed 's/^/   /' || echo "   (audit verify failed: see above)"
  curl -s --max-time 5 "http://127.0.0.1:$GATEWAY_AUDIT_ADMIN_PORT/metrics" | grep '^consent_gateway_audit_' | sed 's/^/   /' || true
fi

echo
if [ "$BAD" = 1 ]; then echo "RESULT: FAIL (a consent target returned wrong Set-Cookie names, see correctness)"; fi
if [ "$LOAD_ERRORS" -gt 0 ]; then echo "RESULT: FAIL ($LOAD_ERRORS load run(s) with errors or without a result)"; fi
if [ "$MEM_FAIL" = 1 ]; then echo "RESULT: FAIL (memory step)"; fi
if [ "$TLS_ERRORS" -gt 0 ]; then echo "RESULT: FAIL ($TLS_ERRORS TLS-step run(s) with errors or without a result)"; fi
if [ "$BAD" = 1 ]; then exit 1; fi
if [ "$LOAD_ERRORS" -gt 0 ] || [ "$MEM_FAIL" = 1 ] || [ "$TLS_ERRORS" -gt 0 ]; then exit 3; fi
echo "RESULT: OK (correctness OK, zero errors in every run)"
exit 0
