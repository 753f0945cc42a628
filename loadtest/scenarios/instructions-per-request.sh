#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: a measure of the
# request path's user-space work that does not move with the machine's noise,
# for A/B comparisons of changes too small for throughput rounds to show (a
# 2% change hides in rounds that range ±10% on a shared VM). Kernel time is
# not counted; throughput and CPU per request stay bench-vs-nginx.sh's job.
#
#   A=/tmp/old/tollgate B=target/release/tollgate ROUTE=key N=20000 \
#     loadtest/scenarios/instructions-per-request.sh
#
# Each binary runs under valgrind with instrumentation off while it starts
# and is configured, and on for exactly N requests after a warm-up, so the
# total divided by N is the cost of one request (its share of timers and the
# background threads included). BARE=1 adds the bare hyper proxy
# (examples/bare_proxy) as the floor. TOP=n lists each run's n costliest
# functions (self cost). LIMIT=1 puts a per-key request limit (10^9 a
# second, never refusing) on the `key` route of both gateways, so that the
# count includes admission from a lease; the lease waits are raised for a
# node slowed by valgrind, whose grants would otherwise come too late. Under valgrind the CPU reports no SHA extensions, so
# the API-key route's count includes ~7,100 instructions of software SHA-256
# that a native run does with SHA-NI in a few hundred; the same in A and B.
# Needs valgrind (apt-get install -y valgrind) and release builds
# (cargo build --release -p tollgate-node -p tollgate-loadtest --bin tollgate
# --bin tollgate-load --example bare_proxy). Everything on 127.0.0.1, on ports
# the system chooses.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in valgrind callgrind_control callgrind_annotate taskset curl python3; do
  command -v "$tool" > /dev/null || { echo "needs $tool (valgrind: apt-get install -y valgrind)" >&2; exit 2; }
done
[ "$(nproc)" -ge 2 ] || { echo "needs two CPUs: the gateway runs on CPU 1" >&2; exit 2; }
LOAD=${LOAD:-target/release/tollgate-load}
BARE_BIN=${BARE_BIN:-target/release/examples/bare_proxy}
ROUTE=${ROUTE:-key}
N=${N:-20000}
TOP=${TOP:-0}
WORK=$(mktemp -d /tmp/tollgate-instr.XXXXXX)
TOKEN=bench-admin-token-0123456789
PIDS=()
cleanup() {
  kill "${PIDS[@]}" 2> /dev/null || true
  wait 2> /dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "callgrind dumps and logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
. loadtest/scenarios/lib/ports.sh
# The gateways run one after another on the same ports.
free_ports MOCK_PORT PROXY_PORT ADMIN_PORT OPS_PORT CONSOLE_PORT CLUSTER_PORT BARE_PORT

"$LOAD" --threads 1 mock http --listen "127.0.0.1:$MOCK_PORT" > "$WORK/mock.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do grep -q "127.0.0.1:$MOCK_PORT" "$WORK/mock.out" 2> /dev/null && break; sleep 0.1; done
grep -q "127.0.0.1:$MOCK_PORT" "$WORK/mock.out" || { echo "the mock upstream did not start:" >&2; cat "$WORK/mock.out" >&2; exit 1; }

# ready PID URL [-f]: waits for URL to answer (with -f: with a success status) while PID runs.
ready() {
  for _ in $(seq 1 600); do
    kill -0 "$1" 2> /dev/null || { echo "process $1 exited before it was ready" >&2; exit 1; }
    curl -s -o /dev/null ${3:-} "$2" 2> /dev/null && return 0
    sleep 0.2
  done
  echo "$2 did not answer in two minutes" >&2
  exit 1
}

# count LABEL PID URL HEADER...: N requests with instrumentation on; prints instructions per request.
count() {
  local label=$1 pid=$2 url=$3
  shift 3
  "$LOAD" --threads 1 run "$url" -q -c 10 -n 2000 "$@" > /dev/null
  callgrind_control -i on "$pid" > /dev/null
  "$LOAD" --threads 1 run "$url" -q -c 10 -n "$N" "$@" > "$WORK/$label.load"
  callgrind_control -i off "$pid" > /dev/null
  callgrind_control -d "$pid" > /dev/null
  grep -q "status codes   200: $N" "$WORK/$label.load" || { echo "$label: not every request got a 200" >&2; cat "$WORK/$label.load" >&2; exit 1; }
  local dump total
  dump=$(ls -t "$WORK/$label".cg* | head -n 1)
  total=$(callgrind_annotate "$dump" | awk '/PROGRAM TOTALS/ && !t {gsub(",", "", $1); t = $1} END {print t}')
  [ -n "$total" ] || { echo "$label: no total in $dump" >&2; exit 1; }
  echo "$label $((total / N))" >> "$WORK/results"
  printf '%-8s %8d instructions per request\n' "$label" "$((total / N))"
  if [ "$TOP" -gt 0 ]; then
    callgrind_annotate "$dump" 2>/dev/null | awk -v n="$N" 'f && NF && $1 ~ /^[0-9,]+$/ {v=$1; gsub(",", "", v); i = index($0, "???:"); if (!i) i = index($0, " ./") + 1; if (k++ < '"$TOP"') printf "    %7d %s\n", v / n, substr($0, i, 110)} /file:function/ {f=1}'
  fi
  kill "$pid" 2> /dev/null || true
  wait "$pid" 2> /dev/null || true
  # Waited for: not signalled again at exit, whoever has the number by then.
  local kept=()
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
  PIDS=("${kept[@]}")
}

# gateway LABEL BINARY: a single node under callgrind, with an open and an API-key route to the mock.
gateway() {
  local label=$1 bin=$2 config=()
  if [ "${LIMIT:-0}" = 1 ]; then
    printf '[limits]\nlease_wait_ms = 5000\nfirst_lease_wait_ms = 10000\n' > "$WORK/limits.toml"
    config=(--config "$WORK/limits.toml")
  fi
  # One core, as in bench-vs-nginx.sh: the node then runs tokio's single-threaded scheduler.
  taskset -c 1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/$label.cg" \
    "$bin" serve "${config[@]}" --data-dir "$WORK/$label" --proxy-listen "127.0.0.1:$PROXY_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --ops-listen "127.0.0.1:$OPS_PORT" --console-listen "127.0.0.1:$CONSOLE_PORT" --cluster-listen "127.0.0.1:$CLUSTER_PORT" --admin-token "$TOKEN" \
    --access-log off --log-format json > /dev/null 2> "$WORK/$label.log" &
  local pid=$!
  PIDS+=($pid)
  ready "$pid" "http://127.0.0.1:$OPS_PORT/readyz" -f
  local ctl=("$bin" ctl --admin "127.0.0.1:$ADMIN_PORT" --token "$TOKEN" --timeout 60s)
  "${ctl[@]}" service create mock --target "127.0.0.1:$MOCK_PORT" > /dev/null
  "${ctl[@]}" route create open --service mock --path /open --auth none > /dev/null
  "${ctl[@]}" route create key --service mock --path /key > /dev/null
  if [ "${LIMIT:-0}" = 1 ]; then
    "${ctl[@]}" limit create bench-per-key --requests 1000000000 --per second --scope key --route key > /dev/null
  fi
  "${ctl[@]}" consumer create bench > /dev/null
  local key
  key=$("${ctl[@]}" -o json key create --consumer bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["plaintext"])')
  count "$label" "$pid" "http://127.0.0.1:$PROXY_PORT/$ROUTE" -H "x-api-key: $key"
}

if [ "${BARE:-0}" = 1 ]; then
  taskset -c 1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/bare.cg" \
    "$BARE_BIN" "127.0.0.1:$BARE_PORT" "127.0.0.1:$MOCK_PORT" > /dev/null 2>&1 &
  BARE_PID=$!
  PIDS+=($BARE_PID)
  ready "$BARE_PID" "http://127.0.0.1:$BARE_PORT/"
  count bare "$BARE_PID" "http://127.0.0.1:$BARE_PORT/$ROUTE"
fi
[ -n "${A:-}" ] && gateway A "$A"
[ -n "${B:-}" ] && gateway B "$B"
if [ -n "${A:-}" ] && [ -n "${B:-}" ]; then
  awk '{v[$1] = $2} END {printf "B/A %.3f (B %+d instructions per request)\n", v["B"] / v["A"], v["B"] - v["A"]}' "$WORK/results"
fi
