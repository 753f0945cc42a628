#!/usr/bin/env bash
# Where a proxied request's CPU goes, Tollgate's API-key route against the
# bare hyper proxy (examples/bare_proxy), kernel included: `perf record -e
# cpu-clock` (a software event, so it works in VMs without hardware
# counters) samples each proxy under the same closed-loop load, and the
# samples become microseconds per request, split into user space and kernel
# and, for the kernel, by function. Both proxies make the same syscalls per
# request (bench-vs-nginx.sh SYSCALLS=1); the per-function table shows
# whether Tollgate's extra kernel time is in a few functions (work to
# remove) or spread over all of them. Time, not work: cpu-clock cannot count
# calls or cache misses. Each round also prints the hypervisor's steal time
# on the proxies' core (which would slow every function alike) and how many
# threads each proxy has (a process with more than one thread takes and
# drops a reference on the file for every fd syscall, `fdget`), and the TCP
# segments and IP bytes sent per request during its load (`nstat`, which
# counts the whole network namespace: all loopback here, with the same
# generator and mock for both, so a difference is the proxy's: more packets
# to process, or more bytes to copy; other traffic on the machine counts too).
#
#   ROUNDS=3 DUR=5s TOP=25 loadtest/scenarios/cpu-profile-vs-bare.sh
#   RATE=6000 ROUNDS=3 DUR=5s loadtest/scenarios/cpu-profile-vs-bare.sh
#
# Closed loop by default: each proxy at its own highest rate. RATE=n offers
# both the same open-loop rate instead (below Tollgate's highest), so that
# costs that depend on the rate (how often a core idles, and so how dear a
# wake-up is) are alike on both sides.
#
# Rounds alternate bare, Tollgate, bare, ...; the tables sum all rounds, and
# each round's user and kernel time per request is printed as it ends. The
# mock upstream and the proxy under test on core 1, the generator on core 0,
# as in bench-vs-nginx.sh. Needs perf (apt-get install -y linux-perf) and
# nstat (apt-get install -y iproute2), perf
# allowed to sample the kernel: kernel.perf_event_paranoid <= 1, or root
# (CAP_PERFMON); for kernel symbol names, kernel.kptr_restrict = 0. And
# release builds (cargo build --release -p tollgate-node -p tollgate-loadtest
# --bin tollgate --bin tollgate-load --example bare_proxy). Everything on
# 127.0.0.1, on ports the system chooses.
set -euo pipefail
cd "$(dirname "$0")/../.."
. loadtest/scenarios/lib/ports.sh
. loadtest/scenarios/lib/tollgate.sh
for tool in perf nstat taskset curl python3; do
  command -v "$tool" > /dev/null || { echo "needs $tool (perf: apt-get install -y linux-perf; nstat: iproute2)" >&2; exit 2; }
done
[ "$(nproc)" -ge 2 ] || { echo "needs two CPUs: the proxy runs on CPU 1, the generator on CPU 0" >&2; exit 2; }
LOAD=${LOAD:-target/release/tollgate-load}
TG=${TG:-target/release/tollgate}
BARE=${BARE:-target/release/examples/bare_proxy}
DUR=${DUR:-5s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
TOP=${TOP:-25}
RATE=${RATE:-}
OPEN_LOOP=()
if [ -n "$RATE" ]; then
  [[ $RATE =~ ^[1-9][0-9]*$ ]] || { echo "RATE must be a whole number of requests a second, not $RATE" >&2; exit 2; }
  OPEN_LOOP=(-r "$RATE")
fi
# One sample every 250 µs of the process's CPU time (perf turns a frequency
# on cpu-clock into a fixed period).
FREQ=4000
SECS=${DUR%s}
[[ $SECS =~ ^[1-9][0-9]*$ ]] || { echo "DUR must be whole seconds, at least 1 (5s), not $DUR" >&2; exit 2; }
if [ "$(cat /proc/sys/kernel/kptr_restrict 2> /dev/null || echo 1)" != 0 ] && [ "$(id -u)" != 0 ]; then
  echo "kernel symbols are hidden (kernel.kptr_restrict != 0): set it to 0, or run as root" >&2
  exit 2
fi
WORK=$(mktemp -d /tmp/tollgate-cpu-profile.XXXXXX)
TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
PIDS=()
cleanup() { kill "${PIDS[@]}" 2> /dev/null || true; wait 2> /dev/null || true; }
trap cleanup EXIT
free_ports MOCK_PORT BARE_PORT

taskset -c 1 "$LOAD" --threads 1 mock http --listen "127.0.0.1:$MOCK_PORT" > "$WORK/mock.out" 2>&1 &
PIDS+=($!)
taskset -c 1 "$BARE" "127.0.0.1:$BARE_PORT" "127.0.0.1:$MOCK_PORT" > "$WORK/bare.log" 2>&1 &
BARE_PID=$!
PIDS+=($!)
tollgate_start "$TG" "$WORK/tg"
for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$BARE_PORT/" && break; sleep 0.1; done
curl -s -o /dev/null "http://127.0.0.1:$BARE_PORT/" || { echo "the bare proxy ($BARE) did not start:" >&2; tail -5 "$WORK/bare.log" >&2; exit 1; }
CTL=("${TG_CTL[@]}")
"${CTL[@]}" service create mock --target "127.0.0.1:$MOCK_PORT" > /dev/null
"${CTL[@]}" route create key --service mock --path /key > /dev/null
"${CTL[@]}" consumer create bench > /dev/null
KEY=$("${CTL[@]}" -o json key create --consumer bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["plaintext"])')

# steal_ms: the hypervisor's steal time on CPU 1 so far, in ms (/proc/stat, USER_HZ ticks).
steal_ms() { awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu1" {print $9 * 1000 / hz}' /proc/stat; }

# profile LABEL PID URL [HEADER]: load for DUR + 2 s; perf samples DUR of it,
# starting a second in (perf's own start and stop add a little, alike for both).
profile() {
  local label=$1 pid=$2 url=$3 extra=() load steal0 steal1 requests
  shift 3
  if [ $# -gt 0 ]; then extra=(-H "$1"); fi
  # Counters from here to the load's end, in this script's own history file
  # (nstat's default one is shared by every nstat the user runs).
  NSTAT_HISTORY=$WORK/nstat.history nstat -n
  taskset -c 0 "$LOAD" --threads 1 run "$url" -c "$CONNS" -d "$((SECS + 2))s" -q ${OPEN_LOOP[@]+"${OPEN_LOOP[@]}"} ${extra[@]+"${extra[@]}"} > "$WORK/$label.$ROUND.load" 2>&1 &
  load=$!
  PIDS+=("$load")
  sleep 1
  steal0=$(steal_ms)
  # --strict-freq: fail rather than sample less often than FREQ (a lowered
  # kernel.perf_event_max_sample_rate would silently change the period).
  perf record -q --strict-freq -e cpu-clock -F "$FREQ" -p "$pid" -o "$WORK/$label.$ROUND.data" -- sleep "$SECS" > /dev/null 2> "$WORK/$label.perf.err" ||
    { echo "perf record failed: $(tail -1 "$WORK/$label.perf.err")" >&2; exit 1; }
  steal1=$(steal_ms)
  wait "$load" || true # tollgate-load exits 3 past 1% failed requests: checked next
  NSTAT_HISTORY=$WORK/nstat.history nstat -z TcpOutSegs IpExtOutOctets > "$WORK/$label.$ROUND.nstat"
  grep -q "failed         0 " "$WORK/$label.$ROUND.load" || { echo "$label: requests failed:" >&2; cat "$WORK/$label.$ROUND.load" >&2; exit 1; }
  # Requests in the sampled seconds, at the run's rate.
  # ("requests N in T = R/s", and in open loop a note on the target rate after it.)
  requests=$(awk -v s="$SECS" '/requests / && match($0, /= [0-9.]+\/s/) {printf "%.0f\n", substr($0, RSTART + 2, RLENGTH - 4) * s}' "$WORK/$label.$ROUND.load")
  if ! perf report -i "$WORK/$label.$ROUND.data" --stdio -n --no-children --sort dso,sym -g none > "$WORK/$label.$ROUND.report" 2> "$WORK/$label.report.err"; then
    echo "perf report failed: $(tail -1 "$WORK/$label.report.err")" >&2
    exit 1
  fi
  grep -q '\[k\]' "$WORK/$label.$ROUND.report" || {
    echo "perf recorded no kernel samples: allow it with sysctl kernel.perf_event_paranoid=1 (or run as root)" >&2
    exit 1
  }
  awk '$1 ~ /%$/ && NF >= 5 {print}' "$WORK/$label.$ROUND.report" > "$WORK/$label.$ROUND.samples"
  echo "$requests" > "$WORK/$label.$ROUND.requests"
  printf '%s %s %s\n' "$label" "$(awk -v a="$steal0" -v b="$steal1" 'BEGIN {print b - a}')" "$(ls /proc/"$pid"/task | wc -l)" \
    > "$WORK/$label.$ROUND.facts"
  python3 - "$WORK" "$label" "$ROUND" "$FREQ" <<'PY'
import sys
work, label, rnd, freq = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
requests = int(open(f"{work}/{label}.{rnd}.requests").read())
_, steal, threads = open(f"{work}/{label}.{rnd}.facts").read().split()
# Segments and bytes over the whole load (not only the sampled seconds).
load_total = int(next(l.split()[1] for l in open(f"{work}/{label}.{rnd}.load") if l.split()[:1] == ["requests"]))
net = {l.split()[0]: int(l.split()[1]) for l in open(f"{work}/{label}.{rnd}.nstat") if l[:1].isalpha() and len(l.split()) > 1}
user = kernel = 0
for line in open(f"{work}/{label}.{rnd}.samples"):
    parts = line.split()
    if parts[3] == "[k]":
        kernel += int(parts[1])
    else:
        user += int(parts[1])
us = 1e6 / freq / max(requests, 1)
print(f"round {rnd} {label:8s}: {requests} requests sampled, user {user * us:.1f} µs + kernel {kernel * us:.1f} µs "
      f"per request; {threads} threads; steal on CPU 1 {float(steal):.0f} ms; "
      f"sent per request: {net.get('TcpOutSegs', 0) / max(load_total, 1):.2f} TCP segments, "
      f"{net.get('IpExtOutOctets', 0) / max(load_total, 1):.0f} IP bytes")
PY
}

# warm-up
taskset -c 0 "$LOAD" --threads 1 run "http://127.0.0.1:$BARE_PORT/key" -c 8 -d 1s -q -H "Authorization: Bearer $KEY" > /dev/null 2>&1 || true
taskset -c 0 "$LOAD" --threads 1 run "http://$TG_PROXY/key" -c 8 -d 1s -q -H "Authorization: Bearer $KEY" > /dev/null 2>&1 || true
for round in $(seq 1 "$ROUNDS"); do
  ROUND=$round
  # The same request to both (bare hyper forwards the key as it is).
  profile bare "$BARE_PID" "http://127.0.0.1:$BARE_PORT/key" "Authorization: Bearer $KEY"
  profile tollgate "$TG_PID" "http://$TG_PROXY/key" "Authorization: Bearer $KEY"
done

python3 - "$WORK" "$ROUNDS" "$TOP" "$FREQ" <<'PY'
import collections, sys
work, rounds, top, freq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def network(label):
    """Loopback TCP segments and IP bytes per request over every round's whole load."""
    requests, net = 0, collections.Counter()
    for r in range(1, rounds + 1):
        requests += int(next(l.split()[1] for l in open(f"{work}/{label}.{r}.load") if l.split()[:1] == ["requests"]))
        for line in open(f"{work}/{label}.{r}.nstat"):
            if line[:1].isalpha() and len(line.split()) > 1:
                net[line.split()[0]] += int(line.split()[1])
    return net["TcpOutSegs"] / max(requests, 1), net["IpExtOutOctets"] / max(requests, 1)

def load(label):
    requests, user, kernel, syms = 0, 0, 0, collections.Counter()
    for r in range(1, rounds + 1):
        requests += int(open(f"{work}/{label}.{r}.requests").read())
        for line in open(f"{work}/{label}.{r}.samples"):
            # overhead%  samples  dso  [k]|[.]  symbol...
            parts = line.split()
            samples, kind, sym = int(parts[1]), parts[3], " ".join(parts[4:])
            if kind == "[k]":
                kernel += samples
                syms[sym] += samples
            else:
                user += samples
    us = 1e6 / freq / requests  # µs per request of one sample
    return requests, user * us, kernel * us, {s: n * us for s, n in syms.items()}

rb, ub, kb, sb = load("bare")
rt, ut, kt, st = load("tollgate")
print(f"\n| CPU per request (perf cpu-clock, {rounds} rounds) | bare hyper | Tollgate, API key | ratio |")
print("|---|---:|---:|---:|")
print(f"| user space | {ub:.1f} µs | {ut:.1f} µs | {ut / ub:.2f} |")
print(f"| kernel | {kb:.1f} µs | {kt:.1f} µs | {kt / kb:.2f} |")
print(f"| requests sampled | {rb} | {rt} | |")
(segs_b, bytes_b), (segs_t, bytes_t) = network("bare"), network("tollgate")
ratio = lambda t, b: f"{t / b:.2f}" if b else "-"
print(f"| TCP segments per request | {segs_b:.2f} | {segs_t:.2f} | {ratio(segs_t, segs_b)} |")
print(f"| IP bytes per request | {bytes_b:.0f} | {bytes_t:.0f} | {ratio(bytes_t, bytes_b)} |")
ranked = sorted((s for s in sb if s in st), key=lambda s: -(sb[s] + st[s]))[:top]
print(f"\n| kernel function (top {len(ranked)} by time in both) | bare µs/request | Tollgate µs/request | ratio |")
print("|---|---:|---:|---:|")
for s in ranked:
    print(f"| `{s}` | {sb[s]:.2f} | {st[s]:.2f} | {st[s] / sb[s]:.2f} |")
ratios = sorted(st[s] / sb[s] for s in ranked)
if ratios:
    q = lambda p: ratios[min(len(ratios) - 1, int(p * len(ratios)))]
    print(f"\nper-function ratio over these {len(ratios)}: median {q(0.5):.2f}, "
          f"quartiles {q(0.25):.2f}-{q(0.75):.2f}, range {ratios[0]:.2f}-{ratios[-1]:.2f}; kernel total {kt / kb:.2f}")
for label, mine, other in (("Tollgate", st, sb), ("bare hyper", sb, st)):
    only = sorted((s for s in mine if s not in other), key=lambda s: -mine[s])[:5]
    if only:
        print(f"kernel functions sampled in {label} only: " + ", ".join(f"{s} {mine[s]:.2f} µs" for s in only))
PY
echo "perf data and loads in $WORK"
