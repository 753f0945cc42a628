#!/bin/bash
# Alternating wrk / tollgate-load closed-loop max throughput, then an open-loop rate sweep.
set -u
B=${B:-target/release/tollgate-load}
URL=http://127.0.0.1:9000/
taskset -c 1 $B --threads 1 mock http --listen 127.0.0.1:9000 --exit-after 900s > /tmp/bench-mock.out 2>/dev/null &
MOCK=$!
sleep 1
echo "mock: $(head -1 /tmp/bench-mock.out)"
for round in 1 2 3; do
  echo "### round $round wrk"
  /usr/bin/time -f "cpu user %U s sys %S s wall %e s" taskset -c 0 wrk -t1 -c50 -d10s $URL 2>&1 | grep -E "Requests/sec|Latency|cpu|requests in|Socket"
  echo "### round $round tollgate-load"
  /usr/bin/time -f "cpu user %U s sys %S s wall %e s" taskset -c 0 $B --threads 1 run $URL -c 50 -d 10s -q 2>&1 | grep -E "requests |latency|failed|cpu"
done
for rate in 20000 30000 40000 50000 60000 70000; do
  echo "### open loop rate $rate"
  taskset -c 0 $B --threads 1 run $URL -r $rate -c 50 -d 10s -q 2>&1 | grep -E "requests |latency|send lag|failed"
done
kill $MOCK
