#!/usr/bin/env bash
# Side-by-side benchmark for docs/benchmarks.md: (a) direct to a fixed-response
# upstream, (b) nginx as a keep-alive reverse proxy, (c) Tollgate with one open
# route, (d) Tollgate with API-key auth, with JWT (HS256) auth, and with the
# response cache. Generator pinned to core 0; upstream and proxies on core 1.
# Three reference rows: nginx adding the forwarding and request-id headers
# Tollgate adds, nginx checking a static API key (auth like for like), and a
# bare hyper proxy (the floor for any hyper-based proxy on this machine).
# Each closed-loop row also prints the proxy's CPU per request (user and
# kernel, from /proc) and how often it was preempted per request.
# Needs release builds (cargo build --release -p tollgate-node -p tollgate-loadtest
# --bin tollgate --bin tollgate-load --example bare_proxy) and nginx (apt-get install -y nginx).
# After the rounds it prints the median per-round throughput ratios of the API-key
# row against bare hyper and nginx's static key check. SYSCALLS=1 adds strace -c
# counts per request for those three; OPEN_LOOP=0 skips the fixed-rate runs.
# Everything listens on 127.0.0.1 only, on ports the system chooses.
set -euo pipefail
cd "$(dirname "$0")/../.."
. loadtest/scenarios/lib/ports.sh
. loadtest/scenarios/lib/nginx.sh
. loadtest/scenarios/lib/tollgate.sh
LOAD=${LOAD:-target/release/tollgate-load}
TG=${TG:-target/release/tollgate}
BARE=${BARE:-target/release/examples/bare_proxy}
DUR=${DUR:-10s}
CONNS=${CONNS:-50}
RATE=${RATE:-5000}
ROUNDS=${ROUNDS:-2}
WORK=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
TOKEN=bench-admin-token-0123456789
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
PIDS=()
trap cleanup EXIT
free_ports MOCK_PORT NGINX_PORT BARE_PORT
MOCK=127.0.0.1:$MOCK_PORT NGINX=127.0.0.1:$NGINX_PORT BARE_ADDR=127.0.0.1:$BARE_PORT

# upstream: fixed 200 "ok\n"
taskset -c 1 "$LOAD" --threads 1 mock http --listen "$MOCK" > "$WORK/mock.out" 2>/dev/null &
MOCK_PID=$!
PIDS+=($!)

# Tollgate: one core (tokio sizes its pool from the affinity mask), no access log (lib/tollgate.sh)
tollgate_start "$TG" "$WORK/tg"
PROXY=$TG_PROXY
CTL=("${TG_CTL[@]}")
curl -s -o /dev/null "http://$MOCK/" || { echo "the mock upstream did not start on $MOCK" >&2; exit 1; }

"${CTL[@]}" service create mock --target "$MOCK" >/dev/null
"${CTL[@]}" route create open --service mock --path /open --auth none >/dev/null
"${CTL[@]}" route create key --service mock --path /key >/dev/null
SECRET=bench-secret-0123456789abcdef0123
"${CTL[@]}" route create jwt --service mock --path /jwt --auth jwt --jwt-alg HS256 --jwt-secret "$SECRET" >/dev/null
"${CTL[@]}" route create cached --service mock --path /cached --auth none --cache-ttl-ms 600000 >/dev/null
"${CTL[@]}" consumer create bench >/dev/null
KEY=$("${CTL[@]}" -o json key create --consumer bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["plaintext"])')
JWT=$(SECRET=$SECRET python3 loadtest/scenarios/lib/hs256-jwt.py bench)

# nginx: one worker, upstream keep-alive, no access log (lib/nginx.sh)
nginx_conf "$WORK/nginx" "$MOCK" <<CONF
  server {
    listen $NGINX;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
    # Like for like: the headers Tollgate adds to every request and response.
    location /fwd {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Host \$http_host;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Request-Id \$request_id;
      add_header X-Request-Id \$request_id;
    }
    location /key {
      if (\$http_authorization != "Bearer $KEY") { return 401; }
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
CONF
taskset -c 1 nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' 2> "$WORK/nginx/stderr" &
NGINX_MASTER=$!
PIDS+=($!)
for _ in $(seq 1 50); do curl -s -o /dev/null "http://$NGINX/" 2>/dev/null && break; sleep 0.1; done
NGINX_WORKER=$(pgrep -P "$NGINX_MASTER" | head -1 || true)
if [ -z "$NGINX_WORKER" ] || ! curl -s -o /dev/null "http://$NGINX/"; then
  echo "nginx did not start on $NGINX:" >&2
  tail -5 "$WORK/nginx/stderr" "$WORK/nginx/logs/error.log" >&2 2>/dev/null || true
  exit 1
fi

# the bare hyper proxy (reference floor)
BARE_PID=
if [ -x "$BARE" ]; then
  taskset -c 1 "$BARE" "$BARE_ADDR" "$MOCK" > "$WORK/bare.log" 2>&1 &
  BARE_PID=$!
  PIDS+=($!)
  for _ in $(seq 1 50); do curl -s -o /dev/null "http://$BARE_ADDR/" && break; sleep 0.1; done
  curl -s -o /dev/null "http://$BARE_ADDR/" || { echo "the bare proxy ($BARE) did not start:" >&2; tail -5 "$WORK/bare.log" >&2; exit 1; }
else
  echo "note: $BARE missing (cargo build --release -p tollgate-loadtest --example bare_proxy); skipping that row"
fi



# utime stime (clock ticks) of the whole process (threads that exited included)
# and involuntary context switches summed over its live threads
proc_cpu() {
  local pid=$1 i=0 t c
  local -a f
  read -r -a f < "/proc/$pid/stat"
  for t in /proc/"$pid"/task/*; do
    c=$(awk '/^nonvoluntary_ctxt_switches/ {print $2}' "$t/status" 2>/dev/null) || continue
    i=$((i + ${c:-0}))
  done
  echo "${f[13]} ${f[14]} $i"
}
run() { # label pid url [header]
  local label=$1 pid=$2 url=$3; shift 3
  local extra=()
  if [ $# -gt 0 ]; then extra=(-H "$1"); fi
  local out before after
  before=$(proc_cpu "$pid")
  # tollgate-load exits 3 past 1% failed requests: the row still counts its successes.
  out=$(taskset -c 0 "$LOAD" --threads 1 run "$url" -c "$CONNS" -d "$DUR" -q "${extra[@]}" --json "$WORK/$label.json" 2>&1) || true
  after=$(proc_cpu "$pid")
  echo "$out" | grep -E "requests |latency|failed|status" | sed "s/^/[$label closed] /"
  local n
  n=$(echo "$out" | awk '/requests / {print $2; exit}')
  # Successful requests per second: a route answering fast errors must not look fast.
  echo "$label $(echo "$out" | awk '/requests / {sub("/s", "", $6); r = $6; t = $4; sub("s", "", t)} /failed / {f = $2} END {if (t > 0) printf "%.1f", r - f / t}')" >> "$WORK/rates.$ROUND"
  read -r u0 s0 i0 <<< "$before"
  read -r u1 s1 i1 <<< "$after"
  awk -v n="$n" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v i=$((i1 - i0)) -v hz="$(getconf CLK_TCK)" -v l="$label" \
    'BEGIN { if (n > 0) printf "[%s closed]   proxy cpu     user %.1f us + kernel %.1f us per request, preempted %.2f times per request\n", l, u * 1e6 / hz / n, s * 1e6 / hz / n, i / n }'
}
run_open() {
  local label=$1 url=$2; shift 2
  local extra=()
  if [ $# -gt 0 ]; then extra=(-H "$1"); fi
  taskset -c 0 "$LOAD" --threads 1 run "$url" -r "$RATE" -c "$CONNS" -d "$DUR" -q "${extra[@]}" 2>&1 \
    | grep -E "requests |latency|failed|send lag" | sed "s/^/[$label open@$RATE] /"
}

# warm-up (connections, cache entry)
WARM=("http://$MOCK/" "http://$NGINX/" "http://$PROXY/open" "http://$PROXY/cached")
if [ -n "$BARE_PID" ]; then WARM+=("http://$BARE_ADDR/"); fi
for u in "${WARM[@]}"; do
  taskset -c 0 "$LOAD" --threads 1 run "$u" -c 8 -d 1s -q >/dev/null 2>&1 || true
done

for round in $(seq 1 "$ROUNDS"); do
  ROUND=$round
  echo "### closed loop, $CONNS connections, $DUR, round $round"
  run direct "$MOCK_PID" "http://$MOCK/"
  run nginx "$NGINX_WORKER" "http://$NGINX/"
  run nginx-fwd-headers "$NGINX_WORKER" "http://$NGINX/fwd"
  run nginx-static-key "$NGINX_WORKER" "http://$NGINX/key" "Authorization: Bearer $KEY"
  if [ -n "$BARE_PID" ]; then run bare-hyper "$BARE_PID" "http://$BARE_ADDR/"; fi
  run tollgate-open "$TG_PID" "http://$PROXY/open"
  run tollgate-apikey "$TG_PID" "http://$PROXY/key" "Authorization: Bearer $KEY"
  run tollgate-jwt "$TG_PID" "http://$PROXY/jwt" "Authorization: Bearer $JWT"
  run tollgate-cache "$TG_PID" "http://$PROXY/cached"
done
# Issue 17's REST bar: the API-key row against bare hyper and nginx's static
# key check, as the median of the per-round ratios (rows of one round run
# back to back, so a round's ratio compares like with like).
median_ratio() { # numerator-row denominator-row
  for r in $(seq 1 "$ROUNDS"); do
    awk -v a="$1" -v b="$2" '$1 == a {x = $2} $1 == b {y = $2} END {if (x > 0 && y > 0) printf "%.4f\n", x / y}' "$WORK/rates.$r"
  done | sort -n | awk '{v[NR] = $1} END {if (NR) printf "%.3f (rounds %.3f - %.3f, n=%d)", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2), v[1], v[NR], NR}'
}
echo "### median throughput ratios over $ROUNDS rounds"
if [ -z "$BARE_PID" ]; then echo "(no bare-hyper row: build --example bare_proxy)"; fi
echo "tollgate-apikey / bare-hyper:       $(median_ratio tollgate-apikey bare-hyper)  (issue 17: >= 0.90)"
echo "tollgate-apikey / nginx-static-key: $(median_ratio tollgate-apikey nginx-static-key)  (issue 17: >= 1.00)"
echo "tollgate-open / nginx:              $(median_ratio tollgate-open nginx)"

# Syscalls per request (SYSCALLS=1): strace -c on the proxy for one closed-loop
# run each; strace slows the proxy, so these runs are not throughput figures.
syscalls() { # label pid url [header]
  local label=$1 pid=$2 url=$3; shift 3
  local extra=()
  if [ $# -gt 0 ]; then extra=(-H "$1"); fi
  strace -c -f -o "$WORK/$label.strace" -p "$pid" 2> "$WORK/$label.strace.err" &
  local tracer=$!
  sleep 1
  if ! kill -0 "$tracer" 2>/dev/null; then
    echo "[$label syscalls] strace could not attach (ptrace not allowed?): $(cat "$WORK/$label.strace.err")"
    return 0
  fi
  local n
  n=$(taskset -c 0 "$LOAD" --threads 1 run "$url" -c "$CONNS" -d 3s -q "${extra[@]}" 2>&1 | awk '/requests / {print $2; exit}')
  kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
  if [ -z "$n" ] || [ "$n" -eq 0 ] || [ ! -s "$WORK/$label.strace" ]; then
    echo "[$label syscalls] no requests or no strace output; see $WORK/$label.strace.err"
    return 0
  fi
  # strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall; then a "total" row.
  awk -v n="$n" -v l="$label" '
    $NF == "total" && $4 ~ /^[0-9]+$/ {total = $4; next}
    $NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $4 / n >= 0.01 {rows = rows sprintf("%s %.2f, ", $NF, $4 / n)}
    END {printf "[%s syscalls] per request: %stotal %.2f (over %d requests)\n", l, rows, total / n, n}' "$WORK/$label.strace"
}
if [ "${SYSCALLS:-0}" = 1 ]; then
  command -v strace >/dev/null || { echo "SYSCALLS=1 needs strace (apt-get install -y strace)" >&2; exit 1; }
  echo "### syscalls per request (strace -c, $CONNS connections, 3 s each)"
  syscalls nginx-static-key "$NGINX_WORKER" "http://$NGINX/key" "Authorization: Bearer $KEY"
  if [ -n "$BARE_PID" ]; then syscalls bare-hyper "$BARE_PID" "http://$BARE_ADDR/"; fi
  syscalls tollgate-apikey "$TG_PID" "http://$PROXY/key" "Authorization: Bearer $KEY"
fi

[ "${OPEN_LOOP:-1}" = 1 ] || { echo "results in $WORK"; exit 0; }
echo "### open loop at $RATE req/s (latency from scheduled send time)"
run_open direct "http://$MOCK/"
run_open nginx "http://$NGINX/"
run_open tollgate-open "http://$PROXY/open"
run_open tollgate-apikey "http://$PROXY/key" "Authorization: Bearer $KEY"
run_open tollgate-jwt "http://$PROXY/jwt" "Authorization: Bearer $JWT"
run_open tollgate-cache "http://$PROXY/cached"
echo "results in $WORK"
