#!/usr/bin/env bash
# A/B of two Tollgate builds on the request path, for docs/benchmarks.md:
# the same API-key route (and an open route) on both, measured in interleaved
# closed-loop rounds (A, B, A, B, ...) so drift in the machine hits both
# alike; prints each round's B/A throughput ratio and the median.
#
#   A=/path/to/old/tollgate B=target/release/tollgate ROUNDS=7 DUR=6s \
#     loadtest/scenarios/ab-tollgate.sh
#
# Build the old one from a worktree of the commit before the change:
#   git worktree add /tmp/tg-a <commit> && (cd /tmp/tg-a && . scripts/env.sh &&
#   cargo build --release -p tollgate-node)
# LIMIT_B=1 puts one request limit on B's `key` route (B may then be the
# same binary as A: the limit's cost, side by side); LIMIT_A=1 puts it on
# A's too (both: a change to the limits path, A/B). GOVERN_B=1 makes B's
# `mock` service versioned (a published v1 chosen by default) and needing an
# approved subscription, which the bench consumer holds: the cost of the
# lifecycle and subscription checks, side by side.
# Routes: `key` (API key), `open` (no auth), and `ai` (an OpenAI-format chat
# completion through the AI gateway to the OpenAI mock, API key, ledger and
# metrics on). Generator on core 0; upstreams and both gateways on core 1
# (only the one under test is busy). Everything listens on 127.0.0.1 only,
# on ports the system chooses.
set -euo pipefail
cd "$(dirname "$0")/../.."
. loadtest/scenarios/lib/ports.sh
. loadtest/scenarios/lib/tollgate.sh
LOAD=${LOAD:-target/release/tollgate-load}
A=${A:?set A to the baseline tollgate binary}
B=${B:-target/release/tollgate}
DUR=${DUR:-6s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-7}
ROUTES=${ROUTES:-key open}
WORK=$(mktemp -d /tmp/tollgate-ab.XXXXXX)
TOKEN=bench-admin-token-0123456789
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
free_ports MOCK_PORT OPENAI_PORT

taskset -c 1 "$LOAD" --threads 1 mock http --listen "127.0.0.1:$MOCK_PORT" > "$WORK/mock.out" 2>/dev/null &
PIDS+=($!)
taskset -c 1 "$LOAD" --threads 1 mock openai --listen "127.0.0.1:$OPENAI_PORT" --tokens 64 > "$WORK/mock-openai.out" 2>&1 &
PIDS+=($!)
for url in "http://127.0.0.1:$MOCK_PORT/" "http://127.0.0.1:$OPENAI_PORT/v1/models"; do
  for _ in $(seq 1 50); do curl -s -o /dev/null "$url" && break; sleep 0.1; done
  curl -s -o /dev/null "$url" || { echo "a mock upstream did not start ($url)" >&2; exit 1; }
done

start() { # name binary: starts a gateway, configures it, writes its API key to
  # $WORK/name.key and its proxy, admin and ops ports to $WORK/name.ports
  local name=$1 bin=$2 config=()
  # B_CONFIG: a TOML file for B only (e.g. `[limits] admitted_headers = false`).
  if [ "$name" = b ] && [ -n "${B_CONFIG:-}" ]; then config=(--config "$B_CONFIG"); fi
  tollgate_start "$bin" "$WORK/$name" "${config[@]}"
  echo "${TG_PROXY##*:} ${TG_ADMIN##*:} ${TG_OPS##*:}" > "$WORK/$name.ports"
  local ctl=("${TG_CTL[@]}")
  "${ctl[@]}" service create mock --target "127.0.0.1:$MOCK_PORT" >/dev/null
  "${ctl[@]}" route create open --service mock --path /open --auth none >/dev/null
  "${ctl[@]}" route create key --service mock --path /key >/dev/null
  "${ctl[@]}" provider create mock --kind openai --base-url "http://127.0.0.1:$OPENAI_PORT/v1" --key main=sk-bench >/dev/null
  "${ctl[@]}" alias create mock-gpt --target mock/mock-gpt >/dev/null
  "${ctl[@]}" route create ai --ai --path /ai/v1 >/dev/null
  "${ctl[@]}" consumer create bench >/dev/null
  "${ctl[@]}" -o json key create --consumer bench \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["plaintext"])' > "$WORK/$name.key"
}
start a "$A"
start b "$B"
read -r PROXY_A ADMIN_A OPS_A < "$WORK/a.ports"
read -r PROXY_B ADMIN_B OPS_B < "$WORK/b.ports"
# LIMIT_A=1 / LIMIT_B=1: that gateway also enforces one request limit per
# API key on the `key` route, high enough never to refuse: the cost of
# admission from leases.
limit() { # binary admin-port
  "$1" ctl --admin "127.0.0.1:$2" --token "$TOKEN" limit create bench-per-key --requests 1000000000 \
    --per second --scope key --route key >/dev/null
}
if [ "${LIMIT_A:-0}" = 1 ]; then limit "$A" "$ADMIN_A"; fi
if [ "${LIMIT_B:-0}" = 1 ]; then limit "$B" "$ADMIN_B"; fi
if [ "${GOVERN_B:-0}" = 1 ]; then
  ctl_b=("$B" ctl --admin "127.0.0.1:$ADMIN_B" --token "$TOKEN")
  echo '{"versioning": {"header": "api-version", "default_version": "v1"}, "subscription": "SUBSCRIPTION_MODE_APPROVAL"}' \
    | "${ctl_b[@]}" update service mock -f - >/dev/null
  "${ctl_b[@]}" version put mock v1 >/dev/null
  "${ctl_b[@]}" version publish mock v1 >/dev/null
  sub=$("${ctl_b[@]}" -o json subscription create --consumer bench --service mock \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  "${ctl_b[@]}" subscription approve "$sub" >/dev/null
fi
KEY_A=$(cat "$WORK/a.key")
KEY_B=$(cat "$WORK/b.key")

rps() { # url key [extra load args]
  local out url=$1 key=$2
  shift 2
  out=$(taskset -c 0 "$LOAD" --threads 1 run "$url" -c "$CONNS" -d "$DUR" -q -H "Authorization: Bearer $key" "$@" 2>&1)
  if echo "$out" | grep -qE "failed +[1-9]"; then echo "failures: $out" >&2; fi
  # "<req/s> <p99 ms>"
  echo "$out" | awk '/requests / {r = $NF; sub("/s", "", r); sub("=", "", r)}
    /latency/ {for (i = 1; i <= NF; i++) if ($i == "p99") {p = $(i + 1); sub("ms", "", p)}}
    END {print r, p}'
}

# warm-up
for u in "http://127.0.0.1:$PROXY_A/open" "http://127.0.0.1:$PROXY_B/open"; do
  taskset -c 0 "$LOAD" --threads 1 run "$u" -c 8 -d 1s -q >/dev/null 2>&1 || true # refused on a governed B
done

CHAT=(--body-file loadtest/scenarios/bodies/openai-chat.json -H "Content-Type: application/json")
for route in $ROUTES; do
  ratios=() p99s=()
  path=$route extra=()
  if [ "$route" = ai ]; then path=ai/v1/chat/completions extra=("${CHAT[@]}"); fi
  for round in $(seq 1 "$ROUNDS"); do
    read -r a a99 <<< "$(rps "http://127.0.0.1:$PROXY_A/$path" "$KEY_A" "${extra[@]}")"
    read -r b b99 <<< "$(rps "http://127.0.0.1:$PROXY_B/$path" "$KEY_B" "${extra[@]}")"
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b / a }')
    p99=$(awk -v a="$a99" -v b="$b99" 'BEGIN { printf "%.3f", b / a }')
    ratios+=("$ratio") p99s+=("$p99")
    echo "[$route round $round] A $a req/s p99 ${a99} ms, B $b req/s p99 ${b99} ms, B/A $ratio, p99 B/A $p99"
  done
  median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
  echo "[$route] median B/A over $ROUNDS interleaved rounds: $(median "${ratios[@]}") (${ratios[*]})"
  echo "[$route] median p99 B/A: $(median "${p99s[@]}") (${p99s[*]})"
done
# Lease commands each limited gateway proposed over the whole run, against
# its admissions. (Stranded units are comparable only between builds that
# count them alike: c60db17 and a078ee9 changed when they are counted.)
for side in A B; do
  limited=LIMIT_$side ops=OPS_$side
  if [ "${!limited:-0}" = 1 ]; then
    curl -s "http://127.0.0.1:${!ops}/metrics" | grep -E '^tollgate_limit_(lease_asks|lease_ask_failures|admitted|refused|stranded_units)_total' \
      | sed "s/^/[$side] /" || true
  fi
done
