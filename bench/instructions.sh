#!/usr/bin/env bash
# User-space instructions per request, Gatehouse against HAProxy (research/peers.md §4.2 A),
# and Gatehouse with its access log on:
# each proxy runs under valgrind's callgrind on CPU 1 (one worker), the backend and wrk on
# CPU 0; counters are zeroed after a warm-up, then wrk -c50 runs for SECONDS_PER_RUN and the
# instructions counted are divided by the requests wrk completed. Unlike CPU time, this count
# repeats to within 1-2% on a noisy VM (how many requests each wakeup finds ready still moves
# it). It leaves out the kernel's share, which is the same work for both (2 recv + 2 send per
# request, checked with strace).
#
# The access log's goal is a share of all the CPU a request costs, and most of that is the
# kernel's (sockets), which callgrind does not see. So each Gatehouse also runs natively:
# its user-space share of the CPU and the log's writer thread (its write calls included) are
# read from /proc, and the log's cost is put as
#   (the log's instructions x user CPU per instruction + writer thread CPU) / CPU,
# all per request. The log's instructions are those of its three steps on the request path
# (access_log::Start::new, Pending::new and Pending's drop, never inlined), read from the
# profile with what they call: unlike the difference of two runs' totals, this does not move
# with how each run's wakeups batch requests. The request path makes no system call for the log (clocks are read
# through the vDSO, the line goes into memory), so nothing else changes in the kernel's part.
# Loopback only; every run is bounded. ROUNDS (default 2) and SECONDS_PER_RUN (default 8).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/packages.sh"
need_commands haproxy:haproxy nginx:nginx-light wrk:wrk taskset:util-linux curl:curl valgrind:valgrind callgrind_control:valgrind
ROUNDS="${ROUNDS:-2}"
SECS="${SECONDS_PER_RUN:-8}"
source "$ROOT/bench/common.sh"
BACKEND=127.0.0.1:19000 PROXY=127.0.0.1:18080 ADMIN=127.0.0.1:16000
haproxy_config >"$B/haproxy.cfg"
gatehouse_config >"$B/gatehouse.toml"
ACCESS_LOG="$B/access.log" gatehouse_config >"$B/gatehouse-logging.toml"
start_backend "$BACKEND=hello world"
wait_ready "$BACKEND" || { echo "backend did not start" >&2; exit 1; }

# count NAME ROUND COMMAND...: prints "NAME ROUND requests instructions log_instructions".
count() {
  local name=$1 round=$2; shift 2
  local out="$B/callgrind.$name.$round"
  launch "$name.callgrind" "wait_ready $PROXY 600" valgrind --tool=callgrind --callgrind-out-file="$out" "$@" || return 1
  local pid=$PID
  taskset -c 0 wrk -t1 -c50 -d3s -H 'Host: app.local' "http://$PROXY/" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local requests
  requests=$(taskset -c 0 wrk -t1 -c50 -d"${SECS}s" -H 'Host: app.local' "http://$PROXY/" | awk '/requests in/{print $1}')
  callgrind_control -d "$pid" >/dev/null 2>&1
  local dump
  dump=$(ls -t "$out".* | head -1)
  echo "$name $round $requests $(awk '/^(summary|totals):/{print $2; exit}' "$dump") $(log_instructions "$dump")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  sleep 1
}

# log_instructions DUMP: instructions in the access log's steps on the request path, with
# what they call: the cost their callers' calls to them carry (callgrind_annotate's caller
# tree; its per-function lines split a function by the source files inlined into it).
log_instructions() {
  callgrind_annotate --tree=caller --inclusive=yes --threshold=100 --show-percs=no "$1" 2>/dev/null | python3 -c '
import re, sys
steps = re.compile(r":(gatehouse_native::access_log::(Start|Pending)::new|<gatehouse_native::access_log::Pending as core::ops::drop::Drop>::drop)( \[|$)")
total, calls = 0, []
for line in sys.stdin:
    fields = line.split()
    if len(fields) > 2 and fields[1] == "<":
        calls.append(int(fields[0].replace(",", "")))
        continue
    if len(fields) > 2 and fields[1] == "*" and steps.search(line):
        total += sum(calls)
    calls = []
print(total)'
}

# writer_ticks PID: CPU time (user and system) of the access log's writer thread, or 0, in
# clock ticks with three decimals (from its schedstat nanoseconds: a tick is too coarse).
writer_ticks() {
  local task
  for task in /proc/"$1"/task/*; do
    if [ "$(cat "$task/comm" 2>/dev/null)" = "gatehouse-acces" ]; then
      awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f", $1 * hz / 1e9}' "$task/schedstat"; return
    fi
  done
  echo 0
}

# native NAME ROUND COMMAND...: prints "NAME ROUND requests ticks user_ticks writer_ticks".
native() {
  local name=$1 round=$2; shift 2
  launch "$name" "wait_ready $PROXY" "$@" || return 1
  local pid=$PID
  taskset -c 0 wrk -t1 -c50 -d2s -H 'Host: app.local' "http://$PROXY/" >/dev/null
  local t0 u0 w0 t1 u1 w1 requests
  t0=$(ticks $pid) u0=$(user_ticks $pid) w0=$(writer_ticks $pid)
  requests=$(taskset -c 0 wrk -t1 -c50 -d"${SECS}s" -H 'Host: app.local' "http://$PROXY/" | awk '/requests in/{print $1}')
  t1=$(ticks $pid) u1=$(user_ticks $pid) w1=$(writer_ticks $pid)
  echo "$name $round $requests $((t1-t0)) $((u1-u0)) $(awk -v a="$w0" -v b="$w1" 'BEGIN{printf "%.3f", b-a}')"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  sleep 1
}

RESULTS="$B/instructions.txt" NATIVE="$B/native.txt"
: >"$RESULTS"; : >"$NATIVE"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  GATEHOUSE_LOG=warn count gatehouse "$round" "$GATEHOUSE" run -c "$B/gatehouse.toml" >>"$RESULTS"
  # The access log's whole cost: the line built on the request path and its writer thread.
  GATEHOUSE_LOG=warn count gatehouse+access_log "$round" "$GATEHOUSE" run -c "$B/gatehouse-logging.toml" >>"$RESULTS"
  rm -f "$B/access.log"
  count haproxy "$round" haproxy -db -f "$B/haproxy.cfg" >>"$RESULTS"
  GATEHOUSE_LOG=warn native gatehouse "$round" "$GATEHOUSE" run -c "$B/gatehouse.toml" >>"$NATIVE"
  GATEHOUSE_LOG=warn native gatehouse+access_log "$round" "$GATEHOUSE" run -c "$B/gatehouse-logging.toml" >>"$NATIVE"
  rm -f "$B/access.log"
done

python3 - "$RESULTS" "$NATIVE" <<'PY'
import collections, statistics, sys
per_request = collections.defaultdict(list)
log_steps = []
for line in open(sys.argv[1]):
    name, _round, requests, instructions, in_log = line.split()
    per_request[name].append(int(instructions) / int(requests))
    if name == "gatehouse+access_log":
        log_steps.append(int(in_log) / int(requests))
native = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[2]):
    name, _round, requests, ticks, user, writer = line.split()
    for key, value in (("cpu", ticks), ("user", user), ("writer", writer)):
        native[name][key].append(float(value) / int(requests))
print("| proxy | user-space instructions per request (median, min-max) |")
print("|---|---|")
for name, values in per_request.items():
    print(f"| {name} | {statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f}) |")
ratio = statistics.median(per_request["gatehouse"]) / statistics.median(per_request["haproxy"])
print(f"\ngatehouse / haproxy: {ratio:.2f}x")
logging = statistics.median(per_request["gatehouse+access_log"]) / statistics.median(per_request["gatehouse"])
print(f"access log on / off, user-space instructions: {logging:.3f}x (difference of two runs' totals)")
steps = statistics.median(log_steps)
print(f"access log's steps on the request path: {steps:,.0f} instructions per request "
      f"({min(log_steps):,.0f}-{max(log_steps):,.0f}), {steps / statistics.median(per_request['gatehouse']):.1%} of Gatehouse's")
off, on = native["gatehouse"], native["gatehouse+access_log"]
cpu, user, writer = (statistics.median(off["cpu"]), statistics.median(off["user"]), statistics.median(on["writer"]))
extra = steps / statistics.median(per_request["gatehouse"]) * user + writer
print(f"natively, log off: user space is {user / cpu:.0%} of the CPU per request; "
      f"log on: the writer thread takes {writer / cpu:.2%} of it")
print(f"access log's cost, share of the CPU per request (goal under 5%): {extra / cpu:.2%}")
direct = statistics.median(on["cpu"]) / cpu
print(f"(measured directly, CPU per request on / off: {direct:.3f}x, to within this VM's noise)")
PY
echo "raw results: $RESULTS" >&2
