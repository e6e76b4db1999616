#!/usr/bin/env bash
# 20 binary upgrades in a row (`gatehouse upgrade`) under keep-alive load, with 20 WebSockets
# open and a long streaming response in flight; prints failed requests, refused connections,
# the WebSockets and the stream still alive at the end (all opened before the first upgrade,
# so each must outlive the upgrades, which take less than the 10 s drain), and the time from
# `upgrade` to the new process serving. CONTRAST=1 (default) runs the same load against a
# stop/start restart (`gatehouse stop`, then `gatehouse start`), as `systemctl restart` does.
# Loopback only; bounded by the number of upgrades.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/packages.sh"
need_commands nginx:nginx-light curl:curl taskset:util-linux
UPGRADES="${UPGRADES:-20}"
source "$ROOT/bench/common.sh"
BACKEND=127.0.0.1:19200 WS=127.0.0.1:19202 STREAM=127.0.0.1:19203 PROXY=127.0.0.1:18280 ADMIN=127.0.0.1:16200

start_backend "$BACKEND=hello world"
taskset -c 0 "$TOOLS" ws-backend --listen "$WS" & PIDS+=($!)
taskset -c 0 "$TOOLS" stream-backend --listen "$STREAM" --seconds 120 & PIDS+=($!)
{ gatehouse_config; service ws ws.local "$WS"; service stream stream.local "$STREAM"; } >"$B/gatehouse.toml"
# `gatehouse start` (the release interface): the pid file and the admin socket in $B.
export GATEHOUSE_CONFIG="$B/gatehouse.toml" XDG_RUNTIME_DIR="$B"
start_gatehouse() { taskset -c 1 setsid "$GATEHOUSE" start 2>>"$B/gatehouse.log" </dev/null & }
start_gatehouse
wait_ready "$PROXY" || { echo "gatehouse did not start" >&2; exit 1; }
storm() {
  taskset -c 0 "$TOOLS" reload-storm --addr "$PROXY" --reloads "$UPGRADES" --websockets 20 --connections 20 \
    --stream-host stream.local --interval-ms 200 --reload-cmd "$1"
}
echo "gatehouse upgrade: $UPGRADES upgrades, 20 keep-alive clients, 20 WebSockets, one streaming response"
storm "$GATEHOUSE upgrade --socket $B/gatehouse.sock >>$B/upgrades.txt"
ms=$(sed -n 's/.*serves (\([0-9]*\) ms).*/\1/p' "$B/upgrades.txt" | sort -n)
n=$(echo "$ms" | grep -c . || true)
echo "upgrade to the new process serving: median $(echo "$ms" | sed -n "$(( (n + 1) / 2 ))p") ms, max $(echo "$ms" | tail -1) ms over $n upgrades"
"$GATEHOUSE" stop

if [ "${CONTRAST:-1}" = 1 ]; then
  start_gatehouse
  wait_ready "$PROXY" || { echo "gatehouse did not start" >&2; exit 1; }
  echo "stop/start (contrast, as systemctl restart): $UPGRADES restarts, same load"
  storm "$GATEHOUSE stop && { taskset -c 1 setsid $GATEHOUSE start 2>>$B/gatehouse.log </dev/null & } && for i in \$(seq 100); do curl -s -o /dev/null -H 'Host: app.local' http://$PROXY/ && break; sleep 0.01; done"
  "$GATEHOUSE" stop
fi
