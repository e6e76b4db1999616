#!/usr/bin/env bash
# Gatehouse, nginx and HAProxy side by side (research/peers.md §4.2 A): each proxy pinned to
# CPU 1 with one worker, the backend and the load generators on CPU 0, runs interleaved
# (A B C, A B C, ...), medians reported with their ratio to HAProxy's.
# Loopback only; every run is bounded. ROUNDS (default 3) and SECONDS_PER_RUN (default 10) tune it;
# PROXIES (space-separated, default all four) picks a subset.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/packages.sh"
need_commands nginx:nginx-light haproxy:haproxy wrk:wrk taskset:util-linux curl:curl
ROUNDS="${ROUNDS:-3}"
SECS="${SECONDS_PER_RUN:-10}"
PROXIES="${PROXIES:-gatehouse gatehouse+access_log nginx haproxy}"
source "$ROOT/bench/common.sh"
BACKEND=127.0.0.1:19000 PROXY=127.0.0.1:18080 ADMIN=127.0.0.1:16000

nginx_config "listen $PROXY;" >"$B/nginx.conf"
haproxy_config >"$B/haproxy.cfg"
# The idle-memory figure holds 2,000 connections from one address, over Gatehouse's default
# cap of 1,000 per client (nginx and HAProxy have none): the cap is lifted here.
NO_CLIENT_CAP=$'[limits]\nmax_connections_per_client = 0'
{ gatehouse_config; echo "$NO_CLIENT_CAP"; } >"$B/gatehouse.toml"
{ ACCESS_LOG="$B/access.log" gatehouse_config; echo "$NO_CLIENT_CAP"; } >"$B/gatehouse-logging.toml"

start_backend "$BACKEND=hello world"
wait_ready "$BACKEND" || { echo "backend did not start" >&2; exit 1; }
TICK=$(getconf CLK_TCK)
RESULTS="$B/results.tsv"
: >"$RESULTS"

measure() {
  local name=$1 round=$2; shift 2
  launch "$name" "wait_ready $PROXY" "$@" || return 1
  local pid=$PID
  local pids="$pid $(pgrep -P $pid | tr '\n' ' ')"
  taskset -c 0 wrk -t1 -c50 -d2s -H 'Host: app.local' "http://$PROXY/" >/dev/null
  local t0 t1 u0 u1 out reqs
  t0=$(ticks "$pids") u0=$(user_ticks "$pids")
  out=$(taskset -c 0 wrk -t1 -c50 -d"${SECS}s" -H 'Host: app.local' "http://$PROXY/")
  t1=$(ticks "$pids") u1=$(user_ticks "$pids")
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  local errors; errors=$(echo "$out" | grep -cE 'Socket errors|Non-2xx' || true)
  printf '%s\t%s\trps\t%s\n' "$name" "$round" "$(echo "$out" | awk '/Requests\/sec/{print $2}')" >>"$RESULTS"
  printf '%s\t%s\tcpu_us_per_req\t%s\n' "$name" "$round" "$(awk -v d=$((t1-t0)) -v n="$reqs" -v hz="$TICK" 'BEGIN{printf "%.2f", d/hz*1e6/n}')" >>"$RESULTS"
  printf '%s\t%s\tuser_share\t%s\n' "$name" "$round" "$(awk -v u=$((u1-u0)) -v t=$((t1-t0)) 'BEGIN{printf "%.3f", t ? u/t : 0}')" >>"$RESULTS"
  printf '%s\t%s\twrk_error_lines\t%s\n' "$name" "$round" "$errors" >>"$RESULTS"
  t0=$(ticks "$pids")
  out=$(taskset -c 0 "$TOOLS" open-loop --addr "$PROXY" --rate 5000 --seconds "$SECS" --connections 50)
  t1=$(ticks "$pids")
  python3 - "$name" "$round" "$out" "$((t1-t0))" "$TICK" >>"$RESULTS" <<'PY'
import json, sys
name, rnd, out, dt, hz = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
for k in ("p50_ms", "p99_ms", "p999_ms", "errors"):
    print(f"{name}\t{rnd}\topen_loop_{k}\t{out[k]}")
print(f"{name}\t{rnd}\topen_loop_cpu_us_per_req\t{dt / hz * 1e6 / max(out['ok'], 1):.2f}")
PY
  out=$(taskset -c 0 "$TOOLS" idle --addr "$PROXY" --connections 2000 $pids)
  echo "$out" | python3 -c '
import json, sys
d = json.load(sys.stdin)
for key, metric in (("bytes_per_connection", "bytes_per_idle_conn"), ("bytes_per_connection_settled", "bytes_per_idle_conn_settled")):
    print("%s\t%s\t%s\t%d" % (sys.argv[1], sys.argv[2], metric, round(d[key])))' "$name" "$round" >>"$RESULTS"
  kill $pid; wait $pid 2>/dev/null || true
  sleep 1
}

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  for proxy in $PROXIES; do
    case $proxy in
      gatehouse) GATEHOUSE_LOG=warn measure gatehouse "$round" "$GATEHOUSE" run -c "$B/gatehouse.toml" ;;
      # With its access log on (kamal-proxy's JSON lines to a file): the log's CPU cost.
      gatehouse+access_log)
        GATEHOUSE_LOG=warn measure gatehouse+access_log "$round" "$GATEHOUSE" run -c "$B/gatehouse-logging.toml"
        rm -f "$B/access.log" ;;
      nginx) measure nginx "$round" nginx -c "$B/nginx.conf" ;;
      haproxy) measure haproxy "$round" haproxy -db -f "$B/haproxy.cfg" ;;
      *) echo "unknown proxy in PROXIES: $proxy (known: gatehouse gatehouse+access_log nginx haproxy)" >&2; exit 2 ;;
    esac
  done
done

python3 "$ROOT/bench/summarize.py" "$RESULTS"
echo "raw results: $RESULTS" >&2
