#!/usr/bin/env bash
# Raft proposals for quota leases on a three-node cluster, for
# docs/benchmarks.md (issue 14): one request limit per API key on a route
# (high enough never to refuse), load spread evenly over the three nodes'
# proxies at 1,000 and 10,000 requests/s (open loop) and at the most the
# machine gives (closed loop); for each, the lease commands every node
# proposed per second (`tollgate_limit_lease_asks_total` before and after),
# and requests per lease command.
#
#   cargo build --release -p tollgate-node -p tollgate-loadtest -p tollgate-cluster
#   DUR=10s loadtest/scenarios/bench-lease-proposals.sh
#
# Everything listens on 127.0.0.1 only, on ports the system chooses.
set -euo pipefail
cd "$(dirname "$0")/../.."
. loadtest/scenarios/lib/ports.sh
BIN=${BIN:-target/release/tollgate}
LOAD=${LOAD:-target/release/tollgate-load}
CLUSTER=${CLUSTER:-target/release/tollgate-cluster}
DUR=${DUR:-10s}
RATES=${RATES:-1000 10000 max}
WORK=$(mktemp -d /tmp/tollgate-lease-bench.XXXXXX)
PIDS=()
cleanup() {
  "$CLUSTER" --dir "$WORK/cluster" down >/dev/null 2>&1 || true
  kill "${PIDS[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
free_ports MOCK_PORT

"$LOAD" --threads 1 mock http --listen "127.0.0.1:$MOCK_PORT" > "$WORK/mock.out" 2>/dev/null &
PIDS+=($!)
TOLLGATE_BIN=$BIN "$CLUSTER" --dir "$WORK/cluster" -o json up -n 3 > "$WORK/up.json" 2> "$WORK/up.err" &
PIDS+=($!)
for _ in $(seq 1 300); do [ -s "$WORK/up.json" ] && break; sleep 0.2; done
[ -s "$WORK/up.json" ] || { echo "cluster did not come up: $(cat "$WORK/up.err")" >&2; exit 1; }
curl -s -o /dev/null "http://127.0.0.1:$MOCK_PORT/" || { echo "the mock upstream did not start on port $MOCK_PORT" >&2; exit 1; }

field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$WORK/up.json" "$1"; }
TOKEN=$(field 'd["admin_token"]')
read -r -a PROXIES <<< "$(field '" ".join(n["proxy"] for n in d["nodes"])')"
read -r -a OPS <<< "$(field '" ".join(n["ops"] for n in d["nodes"])')"
ADMIN=$(field 'd["nodes"][0]["admin"]')
ctl=("$BIN" ctl --admin "$ADMIN" --token "$TOKEN")
"${ctl[@]}" service create mock --target "127.0.0.1:$MOCK_PORT" >/dev/null
"${ctl[@]}" route create key --service mock --path /key >/dev/null
"${ctl[@]}" consumer create bench >/dev/null
KEY=$("${ctl[@]}" -o json key create --consumer bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["plaintext"])')
"${ctl[@]}" limit create bench-per-key --requests 1000000000 --per second --scope key --route key >/dev/null
# Every node serves the route and the limit before the load starts.
for proxy in "${PROXIES[@]}"; do
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" "http://$proxy/key")" = 200 ] && break
    sleep 0.1
  done
done

asks() { # the lease commands node $1 has proposed so far
  curl -s "http://${OPS[$1]}/metrics" | awk '/^tollgate_limit_lease_asks_total/ {s += $NF} END {print s + 0}'
}

echo "| offered | admitted req/s (3 nodes) | lease commands/s per node (1, 2, 3) | requests per lease command |"
echo "|---|---:|---|---:|"
for rate in $RATES; do
  before=() after=() out=()
  for n in 0 1 2; do before+=("$(asks "$n")"); done
  gen=()
  for n in 0 1 2; do
    args=(--threads 1 run "http://${PROXIES[$n]}/key" -d "$DUR" -q -H "Authorization: Bearer $KEY" --max-error-rate 1)
    if [ "$rate" = max ]; then args+=(-c 16); else args+=(-c 64 --rate $((rate / 3))); fi
    "$LOAD" "${args[@]}" > "$WORK/load-$rate-$n.out" 2>&1 &
    gen+=($!)
  done
  wait "${gen[@]}" || true
  for n in 0 1 2; do after+=("$(asks "$n")"); done
  secs=${DUR%s}
  total=0
  for n in 0 1 2; do
    # "requests  N in Ts = R/s ...", open and closed loop alike
    r=$(awk '/^ *requests / {for (i = 1; i < NF; i++) if ($i == "=") {r = $(i + 1); sub("/s", "", r)}} END {print r + 0}' \
      "$WORK/load-$rate-$n.out")
    total=$(awk -v a="$total" -v b="$r" 'BEGIN {print a + b}')
  done
  per_node=() commands=0
  for n in 0 1 2; do
    d=$((after[n] - before[n]))
    commands=$((commands + d))
    per_node+=("$(awk -v d="$d" -v s="$secs" 'BEGIN {printf "%.1f", d / s}')")
  done
  per_command=$(awk -v t="$total" -v s="$secs" -v c="$commands" 'BEGIN {if (c) printf "%.0f", t * s / c; else print "-"}')
  printf '| %s | %.0f | %s | %s |\n' "$rate" "$total" "${per_node[*]}" "$per_command"
done
