#!/usr/bin/env bash
# Deploys (research/gatehouse-kamal.md; issue: blue-green deploys). Three figures, one run:
#  1. the time of a deploy whose old target is idle, next to its health gate (goal: gate time
#     + under 5 ms), over IDLE_DEPLOYS deploys;
#  2. DEPLOYS deploys alternating two targets of service "churn" under keep-alive load on it,
#     with 20 WebSockets open on another service: failed requests (goal 0), WebSockets alive;
#  3. p99 of another service at a fixed rate while deploys run every 100 ms (sent over the
#     admin socket by one process, so no process start per deploy sits next to the load
#     generator), against the same load without deploys (goal <= 1.1x), median of REPEATS
#     pairs, with nginx reloading an upstream change as contrast.
# Gatehouse on CPU 1 with one worker; backends, load and the deploy CLI on CPU 0. Loopback
# only; every loop is bounded.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/packages.sh"
need_commands nginx:nginx-light curl:curl taskset:util-linux
DEPLOYS="${DEPLOYS:-100}"
IDLE_DEPLOYS="${IDLE_DEPLOYS:-30}"
RATE="${RATE:-2000}"
SECS="${SECONDS_PER_RUN:-5}"
source "$ROOT/bench/common.sh"
BACKEND=127.0.0.1:19200 BLUE=127.0.0.1:19201 GREEN=127.0.0.1:19202 WS=127.0.0.1:19203
PROXY=127.0.0.1:18280 ADMIN=127.0.0.1:16200 SOCKET="$B/gatehouse.sock"

start_backend "$BACKEND=hello world" "$BLUE=blue" "$GREEN=green"
taskset -c 0 "$TOOLS" ws-backend --listen "$WS" & PIDS+=($!)
{
  echo "admin_socket = \"$SOCKET\""
  echo "deploy_state = \"$B/deploys.json\""
  gatehouse_config
  printf '[[services]]\nname = "ws"\nhosts = ["ws.local"]\ntargets = ["http://%s"]\n' "$WS"
} >"$B/gatehouse.toml"
taskset -c 1 "$GATEHOUSE" run -c "$B/gatehouse.toml" 2>"$B/gatehouse.log" & GH=$!; PIDS+=($GH)
wait_ready "$PROXY" || { echo "gatehouse did not start" >&2; exit 1; }

# deploy N: one deploy of "churn" to blue (even N) or green (odd N), timed in microseconds.
deploy() {
  local target=$BLUE; (( $1 % 2 )) && target=$GREEN
  local start=$(date +%s%N)
  taskset -c 0 "$GATEHOUSE" deploy churn --socket "$SOCKET" --host churn.local --target "$target" \
    --health-check-path / --json >>"$B/deploys.jsonl"
  echo $(( ($(date +%s%N) - start) / 1000 )) >>"$B/deploy_us.txt"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

deploy 0
: >"$B/deploys.jsonl"; : >"$B/deploy_us.txt"
for n in $(seq 1 "$IDLE_DEPLOYS"); do deploy "$n"; done
echo "1. $IDLE_DEPLOYS deploys with an idle old target (medians):"
echo "   whole CLI call $(median <"$B/deploy_us.txt") us;" \
  "health gate $(sed -n 's/.*"gate_us":\([0-9]*\).*/\1/p' "$B/deploys.jsonl" | median) us;" \
  "save + switch $(sed -n 's/.*"switch_us":\([0-9]*\).*/\1/p' "$B/deploys.jsonl" | median) us;" \
  "drain $(sed -n 's/.*"drain_us":\([0-9]*\).*/\1/p' "$B/deploys.jsonl" | median) us"

echo "2. $DEPLOYS deploys under keep-alive load on churn.local (20 clients), 20 WebSockets on ws.local:"
taskset -c 0 "$TOOLS" reload-storm --addr "$PROXY" --host churn.local --ws-host ws.local --reloads "$DEPLOYS" \
  --websockets 20 --connections 20 --interval-ms 20 \
  --reload-cmd "t=$BLUE; [ \$(({n} % 2)) = 1 ] && t=$GREEN; $GATEHOUSE deploy churn --socket $SOCKET --host churn.local --target \$t --health-check-path / >/dev/null" \
  | sed 's/^/   /'

# p99 NAME CHANGES: app.local's open-loop p99, quiet and while the command CHANGES runs (it
# makes its changes for SECS + 1 seconds by itself), REPEATS times; each pair's ratio and
# their median (one quiet second on a shared machine can double a p99 by itself).
REPEATS="${REPEATS:-7}"
p99() {
  local ratios=() q b quiet busy changes
  for r in $(seq 1 "$REPEATS"); do
    quiet=$(taskset -c 0 "$TOOLS" open-loop --addr "$PROXY" --host app.local --rate "$RATE" --seconds "$SECS" --connections 50)
    ( eval "$2" >/dev/null 2>&1 || true ) & changes=$!
    busy=$(taskset -c 0 "$TOOLS" open-loop --addr "$PROXY" --host app.local --rate "$RATE" --seconds "$SECS" --connections 50)
    wait $changes
    q=$(sed -n 's/.*"p99_ms":\([0-9.]*\).*/\1/p' <<<"$quiet") b=$(sed -n 's/.*"p99_ms":\([0-9.]*\).*/\1/p' <<<"$busy")
    ratios+=("$(awk -v q="$q" -v b="$b" 'BEGIN {printf "%.2f", b / q}')")
    echo "   $1 #$r: p99 quiet $q ms, with changes $b ms ($(sed -n 's/.*"errors":\([0-9]*\).*/\1/p' <<<"$busy") errors)"
  done
  echo "   $1: p99 with changes / without, median of $REPEATS: $(printf '%s\n' "${ratios[@]}" | median)x"
}
echo "3. app.local at $RATE req/s for ${SECS}s, without and with a change to churn.local every 100 ms:"
p99 gatehouse "taskset -c 0 $TOOLS deploys --socket $SOCKET --service churn --host churn.local --targets $BLUE,$GREEN --interval-ms 100 --seconds $((SECS + 1))"
kill $GH; wait $GH 2>/dev/null || true

# nginx: the same change as an upstream rewrite and `nginx -s reload`.
nginx_churn_config() {
  nginx_config "listen $PROXY;" "upstream churn { server $1; }
  server { listen $PROXY; server_name churn.local; location / { proxy_pass http://churn; } }"
}
nginx_churn_config "$BLUE" >"$B/nginx-0.conf"
nginx_churn_config "$GREEN" >"$B/nginx-1.conf"
cp "$B/nginx-0.conf" "$B/nginx.conf"
taskset -c 1 nginx -c "$B/nginx.conf" & NG=$!; PIDS+=($NG)
wait_ready "$PROXY" || { echo "nginx did not start" >&2; exit 1; }
p99 "nginx (contrast)" "end=\$((SECONDS + SECS + 1)); n=0; while [ \$SECONDS -lt \$end ]; do cp $B/nginx-\$((n % 2)).conf $B/nginx.tmp && mv $B/nginx.tmp $B/nginx.conf && nginx -c $B/nginx.conf -s reload; n=\$((n + 1)); sleep 0.1; done"
kill $NG; wait $NG 2>/dev/null || true
