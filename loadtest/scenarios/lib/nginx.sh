# Sourced by the benchmark scripts that run nginx as a yardstick: one worker,
# no access log (Tollgate's is off too), keep-alive to the upstream, and
# every path nginx writes (pid, logs, temp files) inside the run's own
# directory, so that it runs beside a system nginx and without root.
#
#   nginx_conf DIR UPSTREAM < server-blocks
#
# writes DIR/nginx.conf: the common part, `upstream mock` at UPSTREAM
# (host:port), and the `server { ... }` blocks read from stdin. Start it with
#   nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'
nginx_conf() {
  local dir=$1 upstream=$2
  mkdir -p "$dir/logs" "$dir/tmp"
  {
    cat <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  upstream mock { server $upstream; keepalive 128; }
CONF
    cat
    echo "}"
  } > "$dir/nginx.conf"
}
