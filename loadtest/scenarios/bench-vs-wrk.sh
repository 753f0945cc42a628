#!/usr/bin/env bash
# Alternating wrk / tollgate-load closed-loop max throughput, then an
# open-loop rate sweep, against the fixed-response mock: how the load
# generator compares with wrk (apt-get install -y wrk). Generator on core 0,
# mock on core 1; 127.0.0.1 only, on a port the system chooses.
# A run that fails (tollgate-load exits 3 past 1% failed requests) still
# prints its lines; the sweep goes on.
#
#   [DUR=10s] [ROUNDS=3] [RATES="20000 30000 40000 50000 60000 70000"] loadtest/scenarios/bench-vs-wrk.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. loadtest/scenarios/lib/ports.sh
command -v wrk > /dev/null || { echo "needs wrk (apt-get install -y wrk)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install -y time)" >&2; exit 2; }
B=${B:-target/release/tollgate-load}
DUR=${DUR:-10s}
ROUNDS=${ROUNDS:-3}
RATES=${RATES:-20000 30000 40000 50000 60000 70000}
SECS=${DUR%s}
if [ "$SECS" = "$DUR" ] || ! [[ $SECS =~ ^[1-9][0-9]*$ ]]; then
  echo "DUR is whole seconds with an s (10s), not $DUR" >&2
  exit 2
fi
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS is a whole number, at least 1, not $ROUNDS" >&2; exit 2; }
for rate in $RATES; do
  [[ $rate =~ ^[1-9][0-9]*$ ]] || { echo "RATES are whole requests a second, not $rate" >&2; exit 2; }
done
# The mock outlives every run by two minutes at most, should this script be killed.
MOCK_SECS=$(((ROUNDS * 2 + $(wc -w <<< "$RATES")) * SECS + 120))
WORK=$(mktemp -d /tmp/tollgate-wrk.XXXXXX)
free_ports MOCK_PORT
URL=http://127.0.0.1:$MOCK_PORT/
taskset -c 1 "$B" --threads 1 mock http --listen "127.0.0.1:$MOCK_PORT" --exit-after "${MOCK_SECS}s" > "$WORK/mock.out" 2> /dev/null &
MOCK=$!
trap 'kill "$MOCK" 2> /dev/null || true; rm -rf "$WORK"' EXIT
sleep 1
curl -s -o /dev/null "$URL" || { echo "the mock did not start on $URL" >&2; exit 1; }
echo "mock: $(head -1 "$WORK/mock.out")"
for round in $(seq 1 "$ROUNDS"); do
  echo "### round $round wrk"
  /usr/bin/time -f "cpu user %U s sys %S s wall %e s" taskset -c 0 wrk -t1 -c50 -d"$DUR" "$URL" 2>&1 | grep -E "Requests/sec|Latency|cpu|requests in|Socket" || true
  echo "### round $round tollgate-load"
  /usr/bin/time -f "cpu user %U s sys %S s wall %e s" taskset -c 0 "$B" --threads 1 run "$URL" -c 50 -d "$DUR" -q 2>&1 | grep -E "requests |latency|failed|cpu" || true
done
for rate in $RATES; do
  echo "### open loop rate $rate"
  taskset -c 0 "$B" --threads 1 run "$URL" -r "$rate" -c 50 -d "$DUR" -q 2>&1 | grep -E "requests |latency|send lag|failed" || true
done
