#!/usr/bin/env bash
# The AI path against its peers, for docs/benchmarks.md (issue 17): one static
# OpenAI-format upstream (`tollgate-load mock openai`, 64 tokens, no think
# time) and the same closed-loop load (CONNS connections for DUR) sent through
#
#   direct         the mock itself (the floor)
#   nginx          nginx as a plain keep-alive reverse proxy (if nginx is there)
#   tollgate-rest  Tollgate's REST route with an API key, forwarding to the mock
#                  (the yardstick: issue 17 wants the AI route at <= 2x its CPU)
#   tollgate-ai    Tollgate's AI route with an API key (ledger, metrics)
#   tollgate-rest-tls, tollgate-ai-tls
#                  the same two routes to a second mock that speaks TLS (a
#                  throwaway CA made with openssl; Tollgate trusts it through
#                  SSL_CERT_FILE, as it would a provider's public CA): what
#                  the cloud providers' https costs on each path. The TLS
#                  mock shares core 1, so its own encryption lowers these
#                  rows' req/s; CPU per request counts Tollgate's alone
#   litellm        LiteLLM proxy (PyPI, pinned, in a venv), static master key, no DB
#   portkey        Portkey AI gateway (npm, pinned), provider openai + custom host
#
# each as a JSON chat completion and as an SSE stream (`stream: true`,
# include_usage). Generator pinned to core 0; the mock and every gateway on
# core 1. Each row prints req/s, p50/p99, the server's CPU per request (utime
# + stime from /proc/<pid>/stat over its whole process tree, delta over the
# run, divided by the requests that succeeded) and its RSS after the run
# (VmRSS summed over the tree). A markdown table and the Tollgate AI/REST CPU
# ratios close the run. Rows that cannot run print "skipped: <reason>".
#
#   ROUNDS=1 DUR=8s ./loadtest/scenarios/bench-ai-gateways.sh
#
# Environment: DUR (8s), CONNS (32), ROUNDS (1; rounds run every row in
# turn, and with more than one the table shows the median), SLOW_DUR /
# SLOW_CONNS (duration and connections for LiteLLM and Portkey; default DUR
# and CONNS), ROWS (which rows, default all eight), MODES ("json sse"), WARMUP
# (2s per row and body), INSTALL_NGINX (auto: apt-get install nginx only where
# a package install cannot start a system daemon, i.e. policy-rc.d refuses;
# 1 always; 0 never), PYTHON (for LiteLLM's venv, >= 3.10; python3), LOAD
# and TG (binaries).
# LiteLLM and Portkey are installed on first use under
# ${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/bench-ai/ (needs PyPI and npm).
# Needs release builds: cargo build --release -p tollgate-node -p tollgate-loadtest
# Everything listens on 127.0.0.1 only, on ports the system chooses;
# LiteLLM's cost-map download and telemetry are switched off, so no request
# leaves loopback.
set -euo pipefail
cd "$(dirname "$0")/../.."
LOAD=${LOAD:-target/release/tollgate-load}
TG=${TG:-target/release/tollgate}
DUR=${DUR:-8s}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-1}
SLOW_DUR=${SLOW_DUR:-$DUR}
SLOW_CONNS=${SLOW_CONNS:-$CONNS}
ROWS=${ROWS:-direct nginx tollgate-rest tollgate-ai tollgate-rest-tls tollgate-ai-tls litellm portkey}
MODES=${MODES:-json sse}
WARMUP=${WARMUP:-2s}
INSTALL_NGINX=${INSTALL_NGINX:-auto}

# Pinned peers. LiteLLM 1.108.7 is the newest release whose [proxy] extra
# resolved on PyPI when this was written (1.109.x and 1.110.x pin
# litellm-proxy-extras versions that are not published). It is clear of the
# compromised 1.82.7/1.82.8 uploads and of 1.107.x, which PyPI no longer has.
LITELLM_VERSION=1.108.7
PORTKEY_VERSION=1.15.2
# Portkey 1.15.2 appends x-portkey-* headers to the upstream's fetch()
# Response; @hono/node-server >= 1.14.2 hands those immutable headers through
# and every SSE request fails with "TypeError: immutable" (Portkey-AI/gateway
# issue 1389). 1.14.1 still copies them, so it is pinned by npm override.
HONO_NODE_SERVER_VERSION=1.14.1
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/bench-ai

# Ports the system chooses. NGINX_PORT is buffered (nginx's default), for
# JSON; NGINX_SSE_PORT has proxy_buffering off, for SSE.
. loadtest/scenarios/lib/ports.sh
. loadtest/scenarios/lib/nginx.sh
free_ports MOCK_PORT MOCK_TLS_PORT NGINX_PORT NGINX_SSE_PORT TG_PROXY TG_ADMIN TG_OPS TG_CONSOLE TG_CLUSTER \
  LITELLM_PORT PORTKEY_PORT
TOKEN=bench-admin-token-0123456789
MOCK_KEY=sk-bench
LITELLM_KEY=sk-litellm-bench-0123456789
BODIES=$PWD/loadtest/scenarios/bodies

for r in $ROWS; do
  case $r in direct | nginx | tollgate-rest | tollgate-ai | tollgate-rest-tls | tollgate-ai-tls | litellm | portkey) ;; *) echo "error: unknown row $r" >&2; exit 2 ;; esac
done
for m in $MODES; do
  case $m in json | sse) ;; *) echo "error: unknown mode $m (json, sse)" >&2; exit 2 ;; esac
done
for bin in "$LOAD" "$TG"; do
  if [ ! -x "$bin" ]; then
    echo "error: $bin missing; build first: cargo build --release -p tollgate-node -p tollgate-loadtest" >&2
    exit 1
  fi
done
command -v taskset >/dev/null || { echo "error: taskset (util-linux) is needed" >&2; exit 1; }
WORK=$(mktemp -d /tmp/tollgate-ai-gateways.XXXXXX)
RESULTS=$WORK/results.tsv
: > "$RESULTS"

# Every server runs in a process group of its own (setsid keeps the pid, as a
# background job of this shell is not a group leader), so cleanup stops its
# workers too, by group id.
PIDS=()
alive() { [ -r "/proc/$1/stat" ] && ! awk '{ sub(/^.*\) /, ""); exit ($1 == "Z" ? 0 : 1) }' "/proc/$1/stat" 2>/dev/null; }
cleanup() {
  local p
  [ ${#PIDS[@]} -gt 0 ] || return 0
  for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local any=0
    for p in "${PIDS[@]}"; do if alive "$p"; then any=1; fi; done
    [ "$any" = 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

want_row() { case " $ROWS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
skip() { # row reason: one line per mode in the results
  local m
  echo "[$1] skipped: $2"
  for m in $MODES; do printf '%s\t%s\tskipped\t%s\n' 0 "$1-$m" "$2" >> "$RESULTS"; done
}
wait_http() { # url pid seconds [curl flags]: 0 once the url answers, 1 if the process died or time ran out
  local url=$1 pid=$2 secs=$3
  shift 3
  for _ in $(seq 1 $((secs * 5))); do
    if curl -s -o /dev/null "$@" "$url" 2>/dev/null; then return 0; fi
    alive "$pid" || return 1
    sleep 0.2
  done
  return 1
}

# CPU ticks (utime stime, with the cutime cstime of children already reaped)
# and VmRSS over a process and all its descendants.
cat > "$WORK/proc.py" <<'PY'
import os, sys

def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    return s[s.rindex(")") + 2:].split()

def tree(root):
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                kids.setdefault(int(stat(d)[1]), []).append(int(d))
            except (OSError, IndexError):
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out

what, roots = sys.argv[1], [int(a) for a in sys.argv[2:]]
pids = [p for r in roots for p in tree(r)]
if what == "cpu":
    u = s = 0
    for p in pids:
        try:
            f = stat(p)
        except OSError:
            continue
        u += int(f[11]) + int(f[13])
        s += int(f[12]) + int(f[14])
    print(u, s)
else:
    kb = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                kb += next((int(l.split()[1]) for l in f if l.startswith("VmRSS:")), 0)
        except OSError:
            pass
    print(kb)
PY
proc() { taskset -c 0 python3 "$WORK/proc.py" "$@"; }

########## the upstream and Tollgate ##########
# --no-auth: Tollgate's REST route removes the caller's credential before it
# forwards, as it should; every other row still sends the mock a key.
setsid taskset -c 1 "$LOAD" --threads 1 mock openai --listen "127.0.0.1:$MOCK_PORT" --tokens 64 --no-auth \
  > "$WORK/mock.out" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_http "http://127.0.0.1:$MOCK_PORT/v1/models" "$MOCK_PID" 10 || { echo "error: the mock did not start" >&2; cat "$WORK/mock.out" >&2; exit 1; }

# The TLS rows' upstream: the same mock behind a certificate for 127.0.0.1
# from a CA made for this run. Tollgate reads its trusted roots once at
# start-up; SSL_CERT_FILE makes that CA the system store for this process.
TLS_ENV=()
want_tls() { want_row tollgate-rest-tls || want_row tollgate-ai-tls; }
if want_tls; then
  command -v openssl >/dev/null 2>&1 ||
    { echo "error: the TLS rows need openssl (apt-get install -y openssl), or leave them out of ROWS" >&2; exit 1; }
  bash loadtest/scenarios/lib/loopback-certs.sh "$WORK"
  setsid taskset -c 1 "$LOAD" --threads 1 mock openai --listen "127.0.0.1:$MOCK_TLS_PORT" --tokens 64 --no-auth \
    --tls-cert "$WORK/server.pem" --tls-key "$WORK/server.key" > "$WORK/mock-tls.out" 2>&1 &
  MOCK_TLS_PID=$!
  PIDS+=("$MOCK_TLS_PID")
  wait_http "https://127.0.0.1:$MOCK_TLS_PORT/v1/models" "$MOCK_TLS_PID" 10 --cacert "$WORK/ca.pem" ||
    { echo "error: the TLS mock did not start" >&2; cat "$WORK/mock-tls.out" >&2; exit 1; }
  TLS_ENV=(SSL_CERT_FILE="$WORK/ca.pem")
fi

env ${TLS_ENV[@]+"${TLS_ENV[@]}"} "TOLLGATE_CONSOLE_LISTEN=127.0.0.1:$TG_CONSOLE" setsid taskset -c 1 "$TG" serve --data-dir "$WORK/tg" \
  --proxy-listen "127.0.0.1:$TG_PROXY" --admin-listen "127.0.0.1:$TG_ADMIN" --ops-listen "127.0.0.1:$TG_OPS" \
  --cluster-listen "127.0.0.1:$TG_CLUSTER" --admin-token "$TOKEN" --access-log off --log-format json \
  > /dev/null 2> "$WORK/tollgate.log" &
TG_PID=$!
PIDS+=("$TG_PID")
wait_http "http://127.0.0.1:$TG_OPS/readyz" "$TG_PID" 30 -f || { echo "error: tollgate did not become ready" >&2; tail -20 "$WORK/tollgate.log" >&2; exit 1; }
CTL=("$TG" ctl --admin "127.0.0.1:$TG_ADMIN" --token "$TOKEN")
# REST: the mock as a service behind an API-key route on /v1 (forwarded as is)
"${CTL[@]}" service create mockai --target "127.0.0.1:$MOCK_PORT" >/dev/null
"${CTL[@]}" route create rest --service mockai --path /v1 >/dev/null
# AI: the mock as an OpenAI provider, alias mock-gpt, an AI route on /ai/v1
"${CTL[@]}" provider create mock --kind openai --base-url "http://127.0.0.1:$MOCK_PORT/v1" --key "main=$MOCK_KEY" >/dev/null
"${CTL[@]}" alias create mock-gpt --target mock/mock-gpt >/dev/null
"${CTL[@]}" route create ai --ai --path /ai/v1 >/dev/null
"${CTL[@]}" consumer create bench >/dev/null
if want_tls; then
  "${CTL[@]}" service create mockai-tls --target "127.0.0.1:$MOCK_TLS_PORT" --upstream-tls --upstream-ca-file "$WORK/ca.pem" >/dev/null
  "${CTL[@]}" route create rest-tls --service mockai-tls --path /tls --strip-prefix >/dev/null
  "${CTL[@]}" provider create mock-tls --kind openai --base-url "https://127.0.0.1:$MOCK_TLS_PORT/v1" --key "main=$MOCK_KEY" >/dev/null
  "${CTL[@]}" alias create mock-gpt-tls --target mock-tls/mock-gpt >/dev/null
  "${CTL[@]}" route create ai-tls --ai --path /ai-tls/v1 >/dev/null
  mkdir -p "$WORK/bodies-tls"
  for b in openai-chat.json openai-chat-stream.json; do
    python3 -c 'import json, sys; b = json.load(open(sys.argv[1])); b["model"] = "mock-gpt-tls"; print(json.dumps(b))' \
      "$BODIES/$b" > "$WORK/bodies-tls/$b"
  done
fi
KEY=$("${CTL[@]}" -o json key create --consumer bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["plaintext"])')

########## nginx (optional) ##########
NGINX_PID=
start_nginx() {
  if ! command -v nginx >/dev/null 2>&1; then
    local why="" policy=1
    if [ -x /usr/sbin/policy-rc.d ]; then /usr/sbin/policy-rc.d nginx start >/dev/null 2>&1 || policy=$?; fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
      why="nginx not installed (apt-get install -y nginx)"
    elif [ "$INSTALL_NGINX" = 0 ]; then
      why="nginx not installed and INSTALL_NGINX=0"
    elif [ "$INSTALL_NGINX" = auto ] && [ "$policy" != 101 ]; then
      # On a host whose package installs start services, installing nginx
      # would leave a system nginx on port 80: that is the operator's call.
      why="nginx not installed (apt-get install -y nginx, or INSTALL_NGINX=1 to let this script do it)"
    else
      echo "[nginx] installing nginx with apt-get (log: $WORK/apt.log)"
      if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx > "$WORK/apt.log" 2>&1 ||
             { apt-get update -q >> "$WORK/apt.log" 2>&1 &&
               DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx >> "$WORK/apt.log" 2>&1; }; } ||
         ! command -v nginx >/dev/null 2>&1; then
        why="apt-get install nginx failed: $(tail -1 "$WORK/apt.log")"
      fi
    fi
    if [ -n "$why" ]; then skip nginx "$why"; return; fi
  fi
  nginx_conf "$WORK/nginx" "127.0.0.1:$MOCK_PORT" <<CONF
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  # SSE as nginx is deployed for it: each chunk passed on as it arrives.
  server {
    listen 127.0.0.1:$NGINX_SSE_PORT;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
CONF
  setsid taskset -c 1 nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' 2> "$WORK/nginx/stderr" &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  if ! wait_http "http://127.0.0.1:$NGINX_PORT/v1/models" "$NGINX_PID" 10 -H "Authorization: Bearer $MOCK_KEY"; then
    skip nginx "nginx did not start: $(tail -1 "$WORK/nginx/stderr" "$WORK/nginx/logs/error.log" 2>/dev/null | tail -1)"
    NGINX_PID=
  fi
}

########## LiteLLM (PyPI, pinned, own venv) ##########
LITELLM_PID=
LITELLM_ENV=(
  -u DATABASE_URL -u DIRECT_URL -u DATABASE_HOST -u DATABASE_USERNAME -u DATABASE_PASSWORD -u DATABASE_NAME
  -u REDIS_HOST -u REDIS_URL -u REDIS_PORT -u LITELLM_MASTER_KEY
  LITELLM_LOCAL_MODEL_COST_MAP=True          # the bundled cost map, no download at import
  LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS=True  # the bundled beta-header table, no download
  LITELLM_LOCAL_AUTOROUTER_PRESETS=True      # the bundled presets, no download
  LITELLM_TELEMETRY_DISABLED=true            # telemetry vetoed (it is also off unless consented)
  LITELLM_MODE=PRODUCTION                    # no .env loaded from the working directory
  LITELLM_LOG=ERROR                          # errors only; uvicorn's access log is at INFO
  HF_HUB_OFFLINE=1
  NO_PROXY='*' no_proxy='*'
)
install_litellm() { # venv: 0 when it holds the pinned LiteLLM and nothing suspicious
  local venv=$1 py=${PYTHON:-python3} pth
  if [ ! -f "$venv/.installed" ]; then
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || { echo "Python >= 3.10 needed (PYTHON=...)"; return 1; }
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    echo "[litellm] installing litellm[proxy]==$LITELLM_VERSION into $venv (log: $WORK/pip.log)" >&2
    if ! "$py" -m venv "$venv" > "$WORK/pip.log" 2>&1; then
      echo "$py -m venv failed (python3-venv missing?): $(tail -1 "$WORK/pip.log")"
      return 1
    fi
    if ! "$venv/bin/pip" install -q --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION" >> "$WORK/pip.log" 2>&1; then
      echo "pip install litellm[proxy]==$LITELLM_VERSION failed: $(grep -m1 ERROR "$WORK/pip.log" || tail -1 "$WORK/pip.log")"
      return 1
    fi
    touch "$venv/.installed"
  fi
  # A .pth file runs at every interpreter start: the compromised 1.82.8 upload
  # hid its payload in one. Only setuptools' own is expected.
  pth=$(find "$venv/lib" -name '*.pth' ! -name distutils-precedence.pth 2>/dev/null | head -3)
  if [ -n "$pth" ]; then echo "unexpected .pth file(s) in the venv, not running it: $pth"; return 1; fi
  return 0
}
start_litellm() {
  local venv=$CACHE/litellm-$LITELLM_VERSION why
  if ! why=$(install_litellm "$venv"); then skip litellm "$why"; return; fi
  cat > "$WORK/litellm.yaml" <<YAML
model_list:
  - model_name: mock-gpt
    litellm_params:
      model: openai/mock-gpt
      api_base: http://127.0.0.1:$MOCK_PORT/v1
      api_key: $MOCK_KEY
general_settings:
  master_key: $LITELLM_KEY   # a static key checked per request; no database
litellm_settings:
  turn_off_message_logging: true
YAML
  # One uvicorn worker (LiteLLM's default), like every other server here on one core.
  (cd "$WORK" && exec setsid env "${LITELLM_ENV[@]}" taskset -c 1 "$venv/bin/litellm" --config "$WORK/litellm.yaml" \
    --host 127.0.0.1 --port "$LITELLM_PORT" --num_workers 1 > "$WORK/litellm.log" 2>&1) &
  LITELLM_PID=$!
  PIDS+=("$LITELLM_PID")
  if ! wait_http "http://127.0.0.1:$LITELLM_PORT/health/liveliness" "$LITELLM_PID" 120 -f; then
    skip litellm "did not start: $(grep -v '^\s*$' "$WORK/litellm.log" | tail -1)"
    LITELLM_PID=
  fi
}

########## Portkey (npm, pinned) ##########
PORTKEY_PID=
start_portkey() {
  local dir=$CACHE/portkey-$PORTKEY_VERSION js
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then skip portkey "node and npm not installed"; return; fi
  node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 6) ? 0 : 1)' ||
    { skip portkey "Node >= 20.6 needed (node --import), found $(node --version)"; return; }
  if [ ! -f "$dir/.installed" ]; then
    rm -rf "$dir"
    mkdir -p "$dir"
    printf '{"private": true, "dependencies": {"@portkey-ai/gateway": "%s"}, "overrides": {"@hono/node-server": "%s"}}\n' \
      "$PORTKEY_VERSION" "$HONO_NODE_SERVER_VERSION" > "$dir/package.json"
    echo "[portkey] installing @portkey-ai/gateway@$PORTKEY_VERSION into $dir (log: $WORK/npm.log)"
    if ! npm install --prefix "$dir" --omit=dev --ignore-scripts --no-audit --no-fund > "$WORK/npm.log" 2>&1; then
      skip portkey "npm install @portkey-ai/gateway@$PORTKEY_VERSION failed: $(grep -m1 -i 'err' "$WORK/npm.log" || tail -1 "$WORK/npm.log")"
      return
    fi
    touch "$dir/.installed"
  fi
  js=$dir/node_modules/@portkey-ai/gateway/build/start-server.js
  [ -f "$js" ] || { skip portkey "$js missing after npm install"; return; }
  # The gateway's start script listens on every interface (it passes no host
  # to @hono/node-server); this preload binds its listeners to 127.0.0.1.
  cat > "$WORK/loopback.mjs" <<'JS'
import net from 'node:net';
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' || (typeof args[0] === 'string' && /^\d+$/.test(args[0]))) {
    if (typeof args[1] !== 'string') args.splice(1, args[1] === undefined ? 1 : 0, '127.0.0.1');
  } else if (args[0] && typeof args[0] === 'object' && args[0].port !== undefined && !args[0].path) {
    args[0] = { ...args[0], host: '127.0.0.1' };
  }
  return listen.apply(this, args);
};
JS
  # --headless and NODE_ENV=production: no UI and no log stream. Custom hosts
  # on loopback are trusted by default; say so explicitly.
  NODE_ENV=production TRUSTED_CUSTOM_HOSTS=127.0.0.1 setsid taskset -c 1 node --import "$WORK/loopback.mjs" "$js" \
    --port="$PORTKEY_PORT" --headless > "$WORK/portkey.log" 2>&1 &
  PORTKEY_PID=$!
  PIDS+=("$PORTKEY_PID")
  if ! wait_http "http://127.0.0.1:$PORTKEY_PORT/" "$PORTKEY_PID" 30; then
    skip portkey "did not start: $(tr '\r' '\n' < "$WORK/portkey.log" | grep -v '^\s*$' | tail -1)"
    PORTKEY_PID=
  fi
}

want_row nginx && start_nginx
want_row litellm && start_litellm
want_row portkey && start_portkey

########## rows ##########
# Per row: the process tree measured, the URL, the headers (separated by |)
# and the load. Portkey gets its provider from headers and the mock's key as
# the caller's Authorization, which it passes on.
PORTKEY_HEADERS="x-portkey-provider: openai|x-portkey-custom-host: http://127.0.0.1:$MOCK_PORT/v1|Authorization: Bearer $MOCK_KEY"
row_pid() {
  case $1 in
    direct) echo "$MOCK_PID" ;;
    nginx) echo "$NGINX_PID" ;;
    tollgate-rest | tollgate-ai | tollgate-rest-tls | tollgate-ai-tls) echo "$TG_PID" ;;
    litellm) echo "$LITELLM_PID" ;;
    portkey) echo "$PORTKEY_PID" ;;
  esac
}
row_url() { # row mode
  case $1 in
    direct) echo "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" ;;
    nginx) if [ "$2" = sse ]; then echo "http://127.0.0.1:$NGINX_SSE_PORT/v1/chat/completions"; else echo "http://127.0.0.1:$NGINX_PORT/v1/chat/completions"; fi ;;
    tollgate-rest) echo "http://127.0.0.1:$TG_PROXY/v1/chat/completions" ;;
    tollgate-ai) echo "http://127.0.0.1:$TG_PROXY/ai/v1/chat/completions" ;;
    tollgate-rest-tls) echo "http://127.0.0.1:$TG_PROXY/tls/v1/chat/completions" ;;  # /tls stripped
    tollgate-ai-tls) echo "http://127.0.0.1:$TG_PROXY/ai-tls/v1/chat/completions" ;;
    litellm) echo "http://127.0.0.1:$LITELLM_PORT/v1/chat/completions" ;;
    portkey) echo "http://127.0.0.1:$PORTKEY_PORT/v1/chat/completions" ;;
  esac
}
row_headers() {
  case $1 in
    direct | nginx) echo "Authorization: Bearer $MOCK_KEY" ;;
    tollgate-rest | tollgate-ai | tollgate-rest-tls | tollgate-ai-tls) echo "Authorization: Bearer $KEY" ;;
    litellm) echo "Authorization: Bearer $LITELLM_KEY" ;;
    portkey) echo "$PORTKEY_HEADERS" ;;
  esac
}
row_load() { # row -> "connections duration"
  case $1 in
    litellm | portkey) echo "$SLOW_CONNS $SLOW_DUR" ;;
    *) echo "$CONNS $DUR" ;;
  esac
}
load_args() { # row mode: the request half of a tollgate-load command line
  local h x
  LOAD_ARGS=(-H "Content-Type: application/json")
  IFS='|' read -r -a h <<< "$(row_headers "$1")"
  for x in "${h[@]}"; do LOAD_ARGS+=(-H "$x"); done
  # The AI TLS row names the alias of the TLS provider.
  local bodies=$BODIES
  [ "$1" = tollgate-ai-tls ] && bodies=$WORK/bodies-tls
  if [ "$2" = sse ]; then
    LOAD_ARGS+=(--body-file "$bodies/openai-chat-stream.json" --sse openai)
  else
    LOAD_ARGS+=(--body-file "$bodies/openai-chat.json")
  fi
}

ACTIVE=()
for r in $ROWS; do
  [ -n "$(row_pid "$r")" ] || continue
  # One request of each kind first: a row that answers wrongly is skipped, not measured.
  ok=1
  for m in $MODES; do
    load_args "$r" "$m"
    rc=0
    out=$(taskset -c 0 "$LOAD" --threads 1 run "$(row_url "$r" "$m")" -n 1 -c 1 -q "${LOAD_ARGS[@]}" 2>&1) || rc=$?
    if [ "$rc" != 0 ]; then
      skip "$r" "a first $m request failed: $(echo "$out" | grep -E 'status codes|errors|error:' | tr -s ' ' | sed 's/^ //' | paste -sd ';' -)"
      ok=0
      break
    fi
  done
  [ "$ok" = 1 ] && ACTIVE+=("$r")
done

# Warm-up: connections, JIT (Node), lazily imported modules (LiteLLM), pools.
for r in "${ACTIVE[@]}"; do
  for m in $MODES; do
    load_args "$r" "$m"
    taskset -c 0 "$LOAD" --threads 1 run "$(row_url "$r" "$m")" -c 8 -d "$WARMUP" -q "${LOAD_ARGS[@]}" > /dev/null 2>&1 || true
  done
done

HZ=$(getconf CLK_TCK)
measure() { # round row mode
  local round=$1 r=$2 m=$3 pid conns dur label=$2-$3 rc=0 out before after rss
  pid=$(row_pid "$r")
  read -r conns dur <<< "$(row_load "$r")"
  load_args "$r" "$m"
  before=$(proc cpu "$pid")
  out=$(taskset -c 0 "$LOAD" --threads 1 run "$(row_url "$r" "$m")" -c "$conns" -d "$dur" -q "${LOAD_ARGS[@]}" \
    --json "$WORK/$label.r$round.json" 2>&1) || rc=$?
  after=$(proc cpu "$pid")
  rss=$(proc rss "$pid")
  echo "$out" > "$WORK/$label.r$round.txt"
  if [ "$rc" != 0 ] || [ ! -s "$WORK/$label.r$round.json" ]; then
    local why
    why=$(echo "$out" | grep -E 'status codes|errors|error:' | tr -s ' ' | sed 's/^ //' | paste -sd ';' -)
    echo "[$label round $round] failed (exit $rc): $why"
    printf '%s\t%s\tfailed\t%s\n' "$round" "$label" "exit $rc: $why" >> "$RESULTS"
    return
  fi
  read -r u0 s0 <<< "$before"
  read -r u1 s1 <<< "$after"
  python3 - "$WORK/$label.r$round.json" "$round" "$label" "$conns" "$dur" $((u1 - u0)) $((s1 - s0)) "$HZ" "$rss" \
    >> "$RESULTS" <<'PY'
import json, sys
path, rnd, label, conns, dur, du, ds, hz, rss = sys.argv[1:]
s = json.load(open(path))
ok = s["requests"] - s["failed"]
us = lambda ticks: int(ticks) * 1e6 / int(hz) / max(ok, 1)
ttft = (s.get("llm") or {}).get("ttft", {}).get("p50_ms", "")
print("\t".join(map(str, [rnd, label, "ok", s["achieved_rate"], s["latency"]["p50_ms"], s["latency"]["p99_ms"],
                          us(du), us(ds), int(rss) / 1024, conns, dur, ok, s["failed"], ttft])))
PY
  tail -1 "$RESULTS" | awk -F'\t' -v l="$label" -v r="$round" '{
    printf "[%s round %s] %.0f req/s  p50 %.3f ms  p99 %.3f ms  server CPU %.1f us/request (user %.1f + kernel %.1f)  RSS %.1f MB  (%s connections, %s, %d ok, %d failed%s)\n",
      l, r, $4, $5, $6, $7 + $8, $7, $8, $9, $10, $11, $12, $13, ($14 != "" ? sprintf(", TTFT p50 %.3f ms", $14) : "") }'
}

echo "### closed loop, generator on core 0, servers on core 1; $CONNS connections for $DUR (LiteLLM and Portkey: $SLOW_CONNS for $SLOW_DUR)"
for round in $(seq 1 "$ROUNDS"); do
  for m in $MODES; do
    for r in "${ACTIVE[@]}"; do measure "$round" "$r" "$m"; done
  done
done

########## summary ##########
python3 - "$RESULTS" "$ROUNDS" "$ROWS" "$MODES" \
  "LiteLLM $LITELLM_VERSION (1 uvicorn worker, master key, no DB)" "Portkey gateway $PORTKEY_VERSION (Node $(node --version 2>/dev/null || echo -), no gateway auth)" <<'PY'
import statistics, sys
path, rounds, rows, modes, litellm, portkey = sys.argv[1:]
names = {
    "direct": "direct (the mock)",
    "nginx": "nginx, plain reverse proxy",
    "tollgate-rest": "Tollgate REST route, API key",
    "tollgate-ai": "Tollgate AI route, API key (ledger, metrics)",
    "tollgate-rest-tls": "Tollgate REST route, API key, TLS to the upstream",
    "tollgate-ai-tls": "Tollgate AI route, API key, TLS to the provider",
    "litellm": litellm,
    "portkey": portkey,
}
ok, bad = {}, {}
for line in open(path):
    f = line.rstrip("\n").split("\t")
    if f[2] == "ok":
        ok.setdefault(f[1], []).append(f)
    else:
        bad.setdefault(f[1], f[3] if f[2] == "skipped" else "failed: " + f[3])
med = lambda xs: statistics.median(xs)
def fmt_n(x): return f"{x:,.0f}"
def fmt_ms(x): return f"{x:.2f} ms" if x < 10 else f"{x:.1f} ms" if x < 100 else f"{x:,.0f} ms"
def fmt_us(x): return f"{x:,.1f} µs" if x < 1000 else f"{x:,.0f} µs"
cpu = {}
print()
title = "median of %s rounds" % rounds if int(rounds) > 1 else "one run"
print(f"### AI path through each gateway ({title}; server CPU = user + kernel of the server's process tree per successful request)")
print()
print("| through | body | req/s | p50 | p99 | server CPU per request (user + kernel) | RSS after | connections × duration |")
print("|---|---|---:|---:|---:|---:|---:|---|")
for m in modes.split():
    for r in rows.split():
        label = f"{r}-{m}"
        body = "SSE" if m == "sse" else "JSON"
        rs = ok.get(label)
        if not rs:
            why = bad.get(label, "not run")
            why = why if why.startswith("failed") else "skipped: " + why
            print(f"| {names[r]} | {body} | {why} | | | | | |")
            continue
        col = lambda i: med([float(x[i]) for x in rs])
        u, k = col(6), col(7)
        cpu[label] = u + k
        rss = float(rs[-1][8])
        failed = sum(int(x[12]) for x in rs)
        note = f", {failed} failed" if failed else ""
        print(f"| {names[r]} | {body} | {fmt_n(col(3))} | {fmt_ms(col(4))} | {fmt_ms(col(5))} | "
              f"{fmt_us(u + k)} ({fmt_us(u)} + {fmt_us(k)}) | {rss:,.0f} MB | {rs[0][9]} × {rs[0][10]}{note} |")
print()
for m, body in (("json", "JSON"), ("sse", "SSE")):
    if m not in modes.split():
        continue
    for tls in ("", "-tls"):
        a, b = cpu.get(f"tollgate-ai{tls}-{m}"), cpu.get(f"tollgate-rest{tls}-{m}")
        what = f"{body}{', TLS upstream' if tls else ''}"
        if a and b:
            verdict = "within" if a / b <= 2 else "above"
            print(f"Tollgate AI ÷ Tollgate REST, server CPU per request, {what}: {a / b:.2f} "
                  f"({fmt_us(a)} ÷ {fmt_us(b)}; issue 17 target ≤ 2.00, {verdict})")
        elif tls == "":
            print(f"Tollgate AI ÷ Tollgate REST, server CPU per request, {what}: n/a (a Tollgate row did not run)")
PY
if { want_row litellm || want_row portkey; } && { [ "$SLOW_DUR" != "$DUR" ] || [ "$SLOW_CONNS" != "$CONNS" ]; }; then
  echo
  echo "Note: LiteLLM and Portkey ran with $SLOW_CONNS connections for $SLOW_DUR (SLOW_CONNS/SLOW_DUR), the others with $CONNS for $DUR."
fi
echo
echo "results in $WORK"
