#!/usr/bin/env bash
# The training run of the profile-guided build (scripts/build-pgo.sh).
#
# Drives an instrumented tollgate through the work a gateway spends its time
# on, in rough proportion: REST with an API key (most), an open route, JWT, the
# response cache, HTTP/2 clients, a TLS upstream; the AI routes with an OpenAI
# caller (JSON and SSE, passed through), an Anthropic caller (passed through)
# and an Anthropic caller served by an OpenAI provider (translated); admin
# writes. Then it stops tollgate with SIGTERM: the profile runtime writes its
# counters when the process exits, so a kill -9 would lose the whole run.
#
# Usage: TG=<instrumented tollgate> [LOAD=target/release/tollgate-load] [SCALE=1]
#        loadtest/scenarios/pgo-training.sh
# SCALE multiplies every run's length. Everything listens on 127.0.0.1, on
# ports the system chooses.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${TG:?set TG to the instrumented tollgate binary}"
LOAD=${LOAD:-target/release/tollgate-load}
SCALE=${SCALE:-1}
for tool in "$TG" "$LOAD"; do
  [ -x "$tool" ] || { echo "error: $tool is missing; build it first (scripts/build-pgo.sh does)" >&2; exit 1; }
done
for tool in openssl curl python3; do
  command -v "$tool" >/dev/null || { echo "error: the training run needs $tool (scripts/setup.sh installs it)" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/tollgate-pgo-training.XXXXXX)
MOCK_PIDS=()
TG_PID=
cleanup() {
  local pids=(${MOCK_PIDS[@]+"${MOCK_PIDS[@]}"} $TG_PID)
  if [ ${#pids[@]} -gt 0 ]; then kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
# A throwaway admin token, made for this run and passed by environment (not
# on a command line other users can read): the node listens on loopback only,
# but nobody else on the machine should be able to change it. The JWT secret,
# the API key and the token are throwaway too, and reach only the mocks; they
# travel by environment (`--jwt-secret env:SECRET`) and in files of this
# run's private directory (`--api-keys-file`), never on a command line.
TOLLGATE_ADMIN_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
export TOLLGATE_ADMIN_TOKEN
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
export SECRET

# Everything binds port 0; a mock prints its bound address on its first line
# of stdout, tollgate writes its own to <data-dir>/endpoints.json.
start_mock() { # name args...
  local name=$1; shift
  "$LOAD" --threads 1 mock "$@" --listen 127.0.0.1:0 > "$WORK/$name.addr" 2> "$WORK/$name.log" &
  MOCK_PIDS+=($!)
}
mock_addr() { # name
  for _ in $(seq 1 100); do
    local addr
    addr=$(head -n 1 "$WORK/$1.addr" 2>/dev/null | grep -Eo '^127\.0\.0\.1:[0-9]+$' || true)
    if [ -n "$addr" ]; then echo "$addr"; return 0; fi
    sleep 0.1
  done
  echo "error: the $1 mock did not start: $(cat "$WORK/$1.log")" >&2
  return 1
}
seconds() { awk -v s="$1" -v k="$SCALE" 'BEGIN { printf "%ds", (s * k < 1 ? 1 : s * k) }'; }

bash loadtest/scenarios/lib/loopback-certs.sh "$WORK"

start_mock http http
start_mock openai openai --tokens 64
start_mock anthropic anthropic --tokens 64
start_mock openai-tls openai --tokens 64 --no-auth --tls-cert "$WORK/server.pem" --tls-key "$WORK/server.key"
HTTP=$(mock_addr http)
OPENAI=$(mock_addr openai)
ANTHROPIC=$(mock_addr anthropic)
OPENAI_TLS=$(mock_addr openai-tls)

# The caller's own settings (a debug log level, a config file, a cluster to
# join, a profile file of its own) must not shape the profile.
env -u TOLLGATE_LOG -u TOLLGATE_CONFIG -u TOLLGATE_JOIN -u TOLLGATE_JOIN_TOKEN -u TOLLGATE_NODE_ID \
  -u TOLLGATE_CLUSTER_ADVERTISE -u LLVM_PROFILE_FILE \
  SSL_CERT_FILE="$WORK/ca.pem" TOLLGATE_CONSOLE_LISTEN=127.0.0.1:0 "$TG" serve --data-dir "$WORK/tg" \
  --proxy-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --ops-listen 127.0.0.1:0 \
  --cluster-listen 127.0.0.1:0 --access-log off --log-format json \
  > /dev/null 2> "$WORK/tollgate.log" &
TG_PID=$!
endpoint() { # name: from endpoints.json, once this process has written it
  python3 - "$WORK/tg/endpoints.json" "$TG_PID" "$1" <<'PY'
import json, sys
path, pid, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    with open(path) as f:
        endpoints = json.load(f)
except (OSError, ValueError):
    sys.exit(1)
if endpoints.get("pid") != pid:
    sys.exit(1)
print(endpoints[name])
PY
}
for _ in $(seq 1 600); do
  kill -0 "$TG_PID" 2>/dev/null || { echo "error: tollgate exited at start-up: $(tail -5 "$WORK/tollgate.log")" >&2; exit 1; }
  OPS=$(endpoint ops) && curl -sf "http://$OPS/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
OPS=$(endpoint ops) && curl -sf "http://$OPS/readyz" >/dev/null ||
  { echo "error: tollgate did not become ready: $(tail -5 "$WORK/tollgate.log")" >&2; exit 1; }
PROXY=$(endpoint proxy)
ADMIN=$(endpoint admin)

# The admin client's own profile goes elsewhere: CLI code is not the server's hot path.
CTL=(env LLVM_PROFILE_FILE="$WORK/ctl-%p.profraw" "$TG" ctl --admin "$ADMIN")
"${CTL[@]}" service create mock --target "$HTTP" >/dev/null
"${CTL[@]}" service create mock-tls --target "$OPENAI_TLS" --upstream-tls --upstream-ca-file "$WORK/ca.pem" >/dev/null
"${CTL[@]}" route create open --service mock --path /open --auth none >/dev/null
"${CTL[@]}" route create key --service mock --path /key >/dev/null
"${CTL[@]}" route create tls --service mock-tls --path /tls --strip-prefix >/dev/null
"${CTL[@]}" route create jwt --service mock --path /jwt --auth jwt --jwt-alg HS256 --jwt-secret env:SECRET >/dev/null
"${CTL[@]}" route create cached --service mock --path /cached --auth none --cache-ttl-ms 600000 >/dev/null
"${CTL[@]}" provider create oai --kind openai --base-url "http://$OPENAI/v1" --key main=sk-training >/dev/null
"${CTL[@]}" provider create ant --kind anthropic --base-url "http://$ANTHROPIC" --key main=sk-ant-training >/dev/null
"${CTL[@]}" alias create mock-gpt --target oai/mock-gpt >/dev/null
"${CTL[@]}" alias create mock-claude --target ant/mock-claude >/dev/null
"${CTL[@]}" route create ai --ai --path /v1 >/dev/null
"${CTL[@]}" consumer create training >/dev/null
(
  umask 077
  "${CTL[@]}" -o json key create --consumer training | python3 -c 'import json,sys; print(json.load(sys.stdin)["plaintext"])' > "$WORK/key"
  python3 loadtest/scenarios/lib/hs256-jwt.py training > "$WORK/jwt"
)
[ -s "$WORK/key" ] && [ -s "$WORK/jwt" ] || { echo "error: no API key or token for the training" >&2; exit 1; }
# tollgate-load puts each file's line where a header says {{key}}.
BEARER=(--api-keys-file "$WORK/key" -H "Authorization: Bearer {{key}}")
X_API_KEY=(--api-keys-file "$WORK/key" -H "x-api-key: {{key}}")
# The Anthropic caller served by the OpenAI provider: the same body, another model.
sed 's/"mock-claude"/"mock-gpt"/' loadtest/scenarios/bodies/anthropic-messages-stream.json > "$WORK/cross.json"
grep -q '"mock-gpt"' "$WORK/cross.json" ||
  { echo "error: bodies/anthropic-messages-stream.json no longer asks for mock-claude; mend the cross-format run" >&2; exit 1; }

BASE="http://$PROXY"
drive() { # label seconds url [run options]
  local label=$1 secs=$2 url=$3; shift 3
  echo "training: $label" >&2
  "$LOAD" --threads 1 run "$url" -c 32 -d "$(seconds "$secs")" -q --max-error-rate 0.01 "$@" > "$WORK/$label.out" 2>&1 ||
    { echo "error: the $label run failed: $(tail -3 "$WORK/$label.out")" >&2; exit 1; }
}
BODIES=loadtest/scenarios/bodies
drive rest-key 12 "$BASE/key" "${BEARER[@]}"
drive rest-open 5 "$BASE/open"
drive rest-jwt 3 "$BASE/jwt" --api-keys-file "$WORK/jwt" -H "Authorization: Bearer {{key}}"
drive rest-cache 2 "$BASE/cached"
drive rest-h2 3 "$BASE/key" --http2 "${BEARER[@]}"
drive rest-tls 3 "$BASE/tls/v1/models" "${BEARER[@]}"
drive ai-json 6 "$BASE/v1/chat/completions" "${BEARER[@]}" --body-file "$BODIES/openai-chat.json"
drive ai-sse 6 "$BASE/v1/chat/completions" "${BEARER[@]}" --body-file "$BODIES/openai-chat-stream.json" --sse openai
drive ai-anthropic 3 "$BASE/v1/messages" "${X_API_KEY[@]}" --body-file "$BODIES/anthropic-messages-stream.json" --sse anthropic
drive ai-cross 3 "$BASE/v1/messages" "${X_API_KEY[@]}" --body-file "$WORK/cross.json" --sse anthropic
# Admin writes go through Raft and the proxy's rebuild.
for i in $(seq 1 20); do
  "${CTL[@]}" route create "extra-$i" --service mock --path "/extra/$i" >/dev/null
done
drive rest-key-after-writes 3 "$BASE/key" "${BEARER[@]}"

kill -TERM "$TG_PID"
stopping=$TG_PID
TG_PID=
wait "$stopping" || { echo "error: tollgate did not exit cleanly; its profile may be incomplete: $(tail -5 "$WORK/tollgate.log")" >&2; exit 1; }
echo "training: done" >&2
