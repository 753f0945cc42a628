# Sourced by the benchmark scripts (after lib/ports.sh): one Tollgate node
# as the scripts run it, on core 1 with no access log.
#
#   TOKEN=... tollgate_start BIN DATA_DIR [more `serve` flags]
#
# starts BIN on ports the system chooses and waits until it is ready
# (exiting with its log's tail if it is not), then sets TG_PID, TG_PROXY,
# TG_ADMIN and TG_OPS (host:port of the proxy, admin and ops listeners) and
# TG_CTL (the `ctl` command line for it, an array). The console's port goes by
# environment, which a build from before the console ignores.
tollgate_start() {
  local bin=$1 dir=$2 proxy admin ops console cluster
  shift 2
  free_ports proxy admin ops console cluster
  mkdir -p "$dir"
  TOLLGATE_CONSOLE_LISTEN="127.0.0.1:$console" taskset -c 1 "$bin" serve --data-dir "$dir" \
    --proxy-listen "127.0.0.1:$proxy" --admin-listen "127.0.0.1:$admin" --ops-listen "127.0.0.1:$ops" \
    --cluster-listen "127.0.0.1:$cluster" --admin-token "$TOKEN" --access-log off --log-format json "$@" \
    > /dev/null 2> "$dir.log" &
  TG_PID=$!
  PIDS+=("$TG_PID")
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$ops/readyz" > /dev/null 2>&1 && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$ops/readyz" > /dev/null || { echo "tollgate ($bin) did not start:" >&2; tail -5 "$dir.log" >&2; exit 1; }
  TG_PROXY=127.0.0.1:$proxy
  TG_ADMIN=127.0.0.1:$admin
  TG_OPS=127.0.0.1:$ops
  TG_CTL=("$bin" ctl --admin "$TG_ADMIN" --token "$TOKEN")
}
