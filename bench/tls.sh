#!/usr/bin/env bash
# What TLS costs per connection: Gatehouse, nginx and HAProxy side by side, each pinned to
# CPU 1 with one worker and the same ECDSA P-256 certificate, the backend and the clients on
# CPU 0, runs interleaved, medians with their ratio to nginx's (research/peers.md §4.2).
#   new:       wrk -H 'Connection: close': a full handshake per request (wrk does not resume)
#   resumed:   openssl s_time -reuse: every handshake after the first resumes its session
#   keep-alive: wrk -c50 over TLS, for scale
# Gatehouse runs twice: with ring (the default) and with aws-lc-rs (`--features aws-lc-rs`).
# Loopback only; every run is bounded. ROUNDS (default 3) and SECONDS_PER_RUN (default 10).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/packages.sh"
need_commands nginx:nginx-light haproxy:haproxy wrk:wrk taskset:util-linux curl:curl openssl:openssl
ROUNDS="${ROUNDS:-3}"
SECS="${SECONDS_PER_RUN:-10}"
source "$ROOT/bench/common.sh"
# The same Gatehouse with aws-lc-rs instead of ring for the client side's TLS.
(cd "$ROOT" && cargo build --release --locked -q -p gatehouse --features aws-lc-rs --target-dir target/aws-lc-rs)
GATEHOUSE_AWS_LC="$ROOT/target/aws-lc-rs/release/gatehouse"
BACKEND=127.0.0.1:19000 PROXY=127.0.0.1:18443 ADMIN=127.0.0.1:16000

make_certificate

nginx_config "listen $PROXY ssl; ssl_certificate $B/cert.pem; ssl_certificate_key $B/key.pem;" >"$B/nginx.conf"
haproxy_config | sed "s|  bind $PROXY|  bind $PROXY ssl crt $B/combined.pem|" >"$B/haproxy.cfg"
gatehouse_config | sed "s|^address = \"$PROXY\"|&\ntls_certificates = [{ cert = \"$B/cert.pem\", key = \"$B/key.pem\" }]|" >"$B/gatehouse.toml"

start_backend "$BACKEND=hello world"
wait_ready "$BACKEND" || { echo "backend did not start" >&2; exit 1; }
TICK=$(getconf CLK_TCK)
cpu_us() { awk -v d="$1" -v n="$2" -v hz="$TICK" 'BEGIN{printf "%.1f", d/hz*1e6/(n>0?n:1)}'; }
RESULTS="$B/results.tsv"
: >"$RESULTS"
ready_tls() {
  for _ in $(seq 1 100); do
    [ "$(curl -sk -o /dev/null -w '%{http_code}' -H 'Host: app.local' --resolve "app.local:${PROXY##*:}:127.0.0.1" "https://app.local:${PROXY##*:}/")" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}

measure() {
  local name=$1 round=$2; shift 2
  taskset -c 1 "$@" >"$B/$name.out" 2>&1 & local pid=$!
  PIDS+=($pid)
  ready_tls || { echo "$name did not come up: $(cat "$B/$name.out")" >&2; kill $pid; return 1; }
  local pids="$pid $(pgrep -P $pid | tr '\n' ' ')" t0 t1 out n
  local url="https://$PROXY/"
  taskset -c 0 wrk -t1 -c20 -d2s -H 'Host: app.local' -H 'Connection: close' "$url" >/dev/null
  t0=$(ticks "$pids")
  out=$(taskset -c 0 wrk -t1 -c20 -d"${SECS}s" -H 'Host: app.local' -H 'Connection: close' "$url")
  t1=$(ticks "$pids")
  n=$(echo "$out" | awk '/requests in/{print $1}')
  printf '%s\t%s\ttls_new_per_s\t%s\n' "$name" "$round" "$(echo "$out" | awk '/Requests\/sec/{print $2}')" >>"$RESULTS"
  printf '%s\t%s\ttls_new_cpu_us\t%s\n' "$name" "$round" "$(cpu_us $((t1-t0)) "$n")" >>"$RESULTS"
  t0=$(ticks "$pids")
  out=$(taskset -c 0 openssl s_time -connect "$PROXY" -reuse -time "$SECS" 2>&1 || true)
  t1=$(ticks "$pids")
  n=$(echo "$out" | awk '/connections in/{print $1; exit}')
  printf '%s\t%s\ttls_resumed_cpu_us\t%s\n' "$name" "$round" "$(cpu_us $((t1-t0)) "${n:-0}")" >>"$RESULTS"
  t0=$(ticks "$pids")
  out=$(taskset -c 0 wrk -t1 -c50 -d"${SECS}s" -H 'Host: app.local' "$url")
  t1=$(ticks "$pids")
  n=$(echo "$out" | awk '/requests in/{print $1}')
  printf '%s\t%s\ttls_keepalive_cpu_us\t%s\n' "$name" "$round" "$(cpu_us $((t1-t0)) "$n")" >>"$RESULTS"
  kill $pid; wait $pid 2>/dev/null || true
  sleep 1
}

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  GATEHOUSE_LOG=warn measure gatehouse "$round" "$GATEHOUSE" run -c "$B/gatehouse.toml"
  GATEHOUSE_LOG=warn measure gatehouse+aws-lc-rs "$round" "$GATEHOUSE_AWS_LC" run -c "$B/gatehouse.toml"
  measure nginx "$round" nginx -c "$B/nginx.conf"
  measure haproxy "$round" haproxy -db -f "$B/haproxy.cfg"
done

python3 "$ROOT/bench/summarize.py" "$RESULTS" nginx
