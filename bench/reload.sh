#!/usr/bin/env bash
# 100 reloads under keep-alive load, with 50 WebSockets open on a route the reloads do not
# touch. Each reload rewrites the configuration (a changing route, written atomically) and asks
# for a reload; prints failed requests and surviving WebSockets. With CONTRAST=1 (default) the
# same run is made against nginx reloading with `nginx -s reload`, for comparison.
# Loopback only; bounded by the number of reloads.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/packages.sh"
need_commands nginx:nginx-light curl:curl taskset:util-linux
RELOADS="${RELOADS:-100}"
source "$ROOT/bench/common.sh"
BACKEND=127.0.0.1:19100 BACKEND2=127.0.0.1:19101 WS=127.0.0.1:19102 PROXY=127.0.0.1:18180 ADMIN=127.0.0.1:16100

start_backend "$BACKEND=hello world" "$BACKEND2=backend two"
taskset -c 0 "$TOOLS" ws-backend --listen "$WS" & PIDS+=($!)

# The changing route: "churn" flips between the two backends on every reload.
churn_config() {
  gatehouse_config
  service ws ws.local "$WS"
  service churn churn.local "$1"
}
# Both variants are written up front; reload n installs variant n % 2 with an atomic rename.
churn_config "$BACKEND" >"$B/gatehouse-0.toml"
churn_config "$BACKEND2" >"$B/gatehouse-1.toml"
install_variant() { echo "cp $B/$1-\$(({n} % 2)).$2 $B/$1.tmp && mv $B/$1.tmp $B/$1.$2"; }

cp "$B/gatehouse-0.toml" "$B/gatehouse.toml"
taskset -c 1 "$GATEHOUSE" run -c "$B/gatehouse.toml" 2>"$B/gatehouse.log" & GH=$!; PIDS+=($GH)
wait_ready "$PROXY" || { echo "gatehouse did not start" >&2; exit 1; }
rss_before=$(awk '/VmRSS/{print $2}' /proc/$GH/status)
echo "gatehouse: $RELOADS reloads (rewrite + POST /v1/reload), 20 keep-alive clients, 50 WebSockets on ws.local"
taskset -c 0 "$TOOLS" reload-storm --addr "$PROXY" --reloads "$RELOADS" --websockets 50 --connections 20 --interval-ms 50 \
  --reload-cmd "$(install_variant gatehouse toml) && curl -sf -XPOST http://$ADMIN/v1/reload >/dev/null"
generation=$(curl -s "http://$ADMIN/v1/health" | sed -n 's/.*"RouteTableGeneration":\([0-9]*\).*/\1/p')
echo "gatehouse afterwards: route table generation $generation, RSS ${rss_before} kB -> $(awk '/VmRSS/{print $2}' /proc/$GH/status) kB, one process"
kill $GH; wait $GH 2>/dev/null || true

if [ "${CONTRAST:-1}" = 1 ]; then
  nginx_churn_config() {
    nginx_config "listen $PROXY;" "map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream ws { server $WS; }
  upstream churn { server $1; }
  server { listen $PROXY; server_name ws.local;
    location / { proxy_pass http://ws; proxy_http_version 1.1; proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection \$connection_upgrade; proxy_read_timeout 1h; } }
  server { listen $PROXY; server_name churn.local; location / { proxy_pass http://churn; } }"
  }
  nginx_churn_config "$BACKEND" >"$B/nginx-0.conf"
  nginx_churn_config "$BACKEND2" >"$B/nginx-1.conf"
  cp "$B/nginx-0.conf" "$B/nginx.conf"
  taskset -c 1 nginx -c "$B/nginx.conf" & NG=$!; PIDS+=($NG)
  wait_ready "$PROXY" || { echo "nginx did not start" >&2; exit 1; }
  echo "nginx (contrast): $RELOADS reloads (rewrite + nginx -s reload), same load"
  taskset -c 0 "$TOOLS" reload-storm --addr "$PROXY" --reloads "$RELOADS" --websockets 50 --connections 20 --interval-ms 50 \
    --reload-cmd "$(install_variant nginx conf) && nginx -c $B/nginx.conf -s reload 2>/dev/null"
  echo "nginx afterwards: $(pgrep -c -P $NG || true) worker processes (old ones stay while they hold connections)"
  kill $NG; wait $NG 2>/dev/null || true
fi
