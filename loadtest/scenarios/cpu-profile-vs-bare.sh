#!/usr/bin/env bash
# Where a proxied request's CPU goes, Tollgate's API-key route against the
# bare hyper proxy (examples/bare_proxy), kernel included: `perf record -e
# cpu-clock` (a software event, so it works in VMs without hardware
# counters) samples each proxy under the same closed-loop load, and the
# samples become microseconds per request, split into user space and kernel
# and, for the kernel, by function. Both proxies make the same syscalls per
# request (bench-vs-nginx.sh SYSCALLS=1), so a kernel function that costs
# more per request in Tollgate runs slower per call there; when nearly every
# kernel function does, by a similar factor, the cause is how Tollgate's own
# work leaves the caches and TLBs for the kernel, not extra kernel work.
#
#   ROUNDS=3 DUR=5s TOP=25 loadtest/scenarios/cpu-profile-vs-bare.sh
#
# Rounds alternate bare, Tollgate, bare, ...; the table sums all rounds.
# The mock upstream and the proxy under test on core 1, the generator on
# core 0, as in bench-vs-nginx.sh. Needs perf (apt-get install -y
# linux-perf) with kernel.perf_event_paranoid <= 2 for one's own processes
# and, for kernel symbol names, kernel.kptr_restrict = 0; and release
# builds (cargo build --release -p tollgate-node -p tollgate-loadtest --bin
# tollgate --bin tollgate-load --example bare_proxy). Everything on
# 127.0.0.1, on ports the system chooses.
set -euo pipefail
cd "$(dirname "$0")/../.."
. loadtest/scenarios/lib/ports.sh
. loadtest/scenarios/lib/tollgate.sh
for tool in perf taskset curl python3; do
  command -v "$tool" > /dev/null || { echo "needs $tool (perf: apt-get install -y linux-perf)" >&2; exit 2; }
done
[ "$(nproc)" -ge 2 ] || { echo "needs two CPUs: the proxy runs on CPU 1, the generator on CPU 0" >&2; exit 2; }
LOAD=${LOAD:-target/release/tollgate-load}
TG=${TG:-target/release/tollgate}
BARE=${BARE:-target/release/examples/bare_proxy}
DUR=${DUR:-5s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
TOP=${TOP:-25}
WORK=$(mktemp -d /tmp/tollgate-cpu-profile.XXXXXX)
TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
PIDS=()
cleanup() { kill "${PIDS[@]}" 2> /dev/null || true; wait 2> /dev/null || true; }
trap cleanup EXIT
read -r MOCK_PORT BARE_PORT <<< "$(free_ports 2)"

taskset -c 1 "$LOAD" --threads 1 mock http --listen "127.0.0.1:$MOCK_PORT" > "$WORK/mock.out" 2>&1 &
PIDS+=($!)
taskset -c 1 "$BARE" "127.0.0.1:$BARE_PORT" "127.0.0.1:$MOCK_PORT" > /dev/null 2>&1 &
BARE_PID=$!
PIDS+=($!)
tollgate_start "$TG" "$WORK/tg"
curl -s -o /dev/null "http://127.0.0.1:$BARE_PORT/" || { echo "the bare proxy did not start ($BARE)" >&2; exit 1; }
CTL=("${TG_CTL[@]}")
"${CTL[@]}" service create mock --target "127.0.0.1:$MOCK_PORT" > /dev/null
"${CTL[@]}" route create key --service mock --path /key > /dev/null
"${CTL[@]}" consumer create bench > /dev/null
KEY=$("${CTL[@]}" -o json key create --consumer bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["plaintext"])')

SECS=${DUR%s}
# profile LABEL PID URL [HEADER]: load for DUR + 2 s, perf samples the middle DUR.
profile() {
  local label=$1 pid=$2 url=$3 extra=()
  shift 3
  if [ $# -gt 0 ]; then extra=(-H "$1"); fi
  taskset -c 0 "$LOAD" --threads 1 run "$url" -c "$CONNS" -d "$((SECS + 2))s" -q "${extra[@]}" > "$WORK/$label.$ROUND.load" 2>&1 &
  local load=$!
  sleep 1
  perf record -q -e cpu-clock -F 4000 -p "$pid" -o "$WORK/$label.$ROUND.data" -- sleep "$SECS" > /dev/null 2> "$WORK/$label.perf.err" ||
    { echo "perf record failed (kernel.perf_event_paranoid?): $(tail -1 "$WORK/$label.perf.err")" >&2; exit 1; }
  wait "$load"
  grep -q "failed         0 " "$WORK/$label.$ROUND.load" || { echo "$label: requests failed" >&2; cat "$WORK/$label.$ROUND.load" >&2; exit 1; }
  # Requests in the sampled seconds, at the run's rate.
  awk -v s="$SECS" '/requests / {r = $NF; sub("/s", "", r); sub("=", "", r); printf "%.0f\n", r * s}' \
    "$WORK/$label.$ROUND.load" >> "$WORK/$label.requests"
  perf report -i "$WORK/$label.$ROUND.data" --stdio -n --no-children --sort dso,sym -g none 2> /dev/null \
    | awk '!/^#/ && NF >= 4 {print}' >> "$WORK/$label.samples"
}

# warm-up
taskset -c 0 "$LOAD" --threads 1 run "http://127.0.0.1:$BARE_PORT/" -c 8 -d 1s -q > /dev/null 2>&1
taskset -c 0 "$LOAD" --threads 1 run "http://$TG_PROXY/key" -c 8 -d 1s -q -H "Authorization: Bearer $KEY" > /dev/null 2>&1
for round in $(seq 1 "$ROUNDS"); do
  ROUND=$round
  profile bare "$BARE_PID" "http://127.0.0.1:$BARE_PORT/"
  profile tollgate "$TG_PID" "http://$TG_PROXY/key" "Authorization: Bearer $KEY"
  echo "round $round: bare $(tail -1 "$WORK/bare.requests") requests, tollgate $(tail -1 "$WORK/tollgate.requests") in ${SECS}s sampled"
done

python3 - "$WORK" "$TOP" <<'PY'
import collections, sys
work, top = sys.argv[1], int(sys.argv[2])
US_PER_SAMPLE = 1e6 / 4000  # -F 4000 on cpu-clock

def load(label):
    requests = sum(int(l) for l in open(f"{work}/{label}.requests"))
    user, kernel, syms = 0.0, 0.0, collections.Counter()
    for line in open(f"{work}/{label}.samples"):
        # overhead%  samples  dso  [k]|[.]  symbol...
        parts = line.split()
        samples, dso, kind, sym = int(parts[1]), parts[2], parts[3], " ".join(parts[4:])
        us = samples * US_PER_SAMPLE / requests
        if kind == "[k]":
            kernel += us
            syms[sym] += us
        else:
            user += us
    return requests, user, kernel, syms

rb, ub, kb, sb = load("bare")
rt, ut, kt, st = load("tollgate")
print(f"\n| CPU per request (perf cpu-clock) | bare hyper | Tollgate, API key | ratio |")
print(f"|---|---:|---:|---:|")
print(f"| user space | {ub:.1f} µs | {ut:.1f} µs | {ut / ub:.2f} |")
print(f"| kernel | {kb:.1f} µs | {kt:.1f} µs | {kt / kb:.2f} |")
print(f"| requests sampled | {rb} | {rt} | |")
common = [s for s in sb if s in st]
ranked = sorted(common, key=lambda s: -(sb[s] + st[s]))[:top]
print(f"\n| kernel function (top {len(ranked)} by time in both) | bare µs/request | Tollgate µs/request | ratio |")
print("|---|---:|---:|---:|")
for s in ranked:
    print(f"| `{s}` | {sb[s]:.2f} | {st[s]:.2f} | {st[s] / sb[s]:.2f} |")
ratios = sorted(st[s] / sb[s] for s in ranked)
if ratios:
    q = lambda p: ratios[min(len(ratios) - 1, int(p * len(ratios)))]
    print(f"\nper-function ratio over these {len(ratios)}: median {q(0.5):.2f}, "
          f"quartiles {q(0.25):.2f}-{q(0.75):.2f}; kernel total {kt / kb:.2f}")
only = sorted((s for s in st if s not in sb), key=lambda s: -st[s])[:5]
if only:
    print("kernel functions sampled in Tollgate only: " + ", ".join(f"{s} {st[s]:.2f} µs" for s in only))
PY
echo "perf data and loads in $WORK"
