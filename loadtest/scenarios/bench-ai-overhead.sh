#!/usr/bin/env bash
# AI gateway overhead for docs/benchmarks.md: the OpenAI mock hit directly (A)
# and through Tollgate's AI route (B), alternating rounds in one run, for
# non-streaming chat (latency) and streaming chat (time to first token).
# Generator pinned to core 0; mock and Tollgate on core 1. Loopback only, on
# ports the system chooses.
# Needs release builds: cargo build --release -p tollgate-node -p tollgate-loadtest
set -euo pipefail
cd "$(dirname "$0")/../.."
LOAD=${LOAD:-target/release/tollgate-load}
TG=${TG:-target/release/tollgate}
DUR=${DUR:-10s}
RATE=${RATE:-500}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-2}
WORK=$(mktemp -d /tmp/tollgate-ai-bench.XXXXXX)
TOKEN=bench-admin-token-0123456789
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
. loadtest/scenarios/lib/ports.sh
. loadtest/scenarios/lib/tollgate.sh
free_ports MOCK_PORT

# A provider that answers at once: what remains is the gateway's own cost.
taskset -c 1 "$LOAD" --threads 1 mock openai --listen "127.0.0.1:$MOCK_PORT" --tokens 64 > "$WORK/mock.out" 2>&1 &
PIDS+=($!)
tollgate_start "$TG" "$WORK/tg"
PROXY_PORT=${TG_PROXY##*:}
curl -s -o /dev/null "http://127.0.0.1:$MOCK_PORT/v1/models" || { echo "the OpenAI mock did not start:" >&2; tail -5 "$WORK/mock.out" >&2; exit 1; }

CTL=("${TG_CTL[@]}")
"${CTL[@]}" provider create mock --kind openai --base-url "http://127.0.0.1:$MOCK_PORT/v1" --key main=sk-bench >/dev/null
"${CTL[@]}" alias create mock-gpt --target mock/mock-gpt >/dev/null
"${CTL[@]}" route create llm --ai --path /v1 >/dev/null
"${CTL[@]}" consumer create bench >/dev/null
KEY=$("${CTL[@]}" -o json key create --consumer bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["plaintext"])')

BODIES=loadtest/scenarios/bodies
compare() { # label body [extra args]
  local label=$1 body=$2; shift 2
  taskset -c 0 "$LOAD" --threads 1 compare \
    --a "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" --label-a direct \
    --b "http://127.0.0.1:$PROXY_PORT/v1/chat/completions" --label-b through-tollgate \
    --rounds "$ROUNDS" -r "$RATE" -c "$CONNS" -d "$DUR" --body-file "$BODIES/$body" \
    -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \
    --markdown "$WORK/$label.md" --json "$WORK/$label.json" "$@" 2>&1 | sed "s/^/[$label] /"
}

# warm-up: connections, the tokenizer, allocator pools
taskset -c 0 "$LOAD" --threads 1 run "http://127.0.0.1:$PROXY_PORT/v1/chat/completions" -c 8 -d 2s -q \
  --body-file "$BODIES/openai-chat.json" -H "Authorization: Bearer $KEY" >/dev/null 2>&1 || true

echo "### non-streaming chat at $RATE req/s"
compare chat openai-chat.json
echo "### streaming chat at $RATE req/s (TTFT, inter-token latency)"
compare stream openai-chat-stream.json --sse openai
echo "### the gateway's own accounting of the run"
"${CTL[@]}" usage --by model
echo "results in $WORK"
