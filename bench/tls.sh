#!/usr/bin/env bash
# What TLS costs per connection: Gatehouse, nginx and HAProxy side by side, each pinned to
# CPU 1 with one worker and the same ECDSA P-256 certificate, the backend and the clients on
# CPU 0, runs interleaved, medians with their ratio to nginx's (research/peers.md §4.2).
#   new:       wrk -H 'Connection: close': a new connection per request; wrk resumes its
#              last session each time (TLS 1.3: a ticket plus a fresh X25519 exchange)
#   full:      the bench tool's handshake loop (rustls, resumption off): every connection a
#              full handshake with the certificate and its ECDSA signature
#   keep-alive: wrk -c50 over TLS, for scale
# Every proxy offers TLS 1.2 and 1.3. Debian's nginx 1.22 offers only up to TLS 1.2 unless
# told (1.23.4 and later offer 1.3 by default), and a resumed TLS 1.2 session skips the key
# exchange, so it also runs as such (nginx-tls1.2) for scale; each row's protocol is printed.
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

NGINX_TLS="listen $PROXY ssl; ssl_certificate $B/cert.pem; ssl_certificate_key $B/key.pem;"
nginx_config "$NGINX_TLS ssl_protocols TLSv1.2 TLSv1.3;" >"$B/nginx.conf"
nginx_config "$NGINX_TLS" >"$B/nginx-tls1.2.conf"
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
  launch "$name" ready_tls "$@" || return 1
  local pid=$PID
  [ "$round" = 1 ] && printf '%s: %s\n' "$name" "$(openssl s_client -connect "$PROXY" -servername app.local -brief </dev/null 2>&1 |
    grep -E 'Protocol version|Ciphersuite|Server Temp Key' | tr '\n' ' ')" >>"$B/protocols.txt"
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
  out=$(taskset -c 0 "$TOOLS" handshakes --addr "$PROXY" --name app.local --connections 20 --seconds "$SECS")
  t1=$(ticks "$pids")
  n=$(echo "$out" | python3 -c 'import json,sys; print(sum(json.load(sys.stdin)["per_second"]))')
  printf '%s\t%s\ttls_full_cpu_us\t%s\n' "$name" "$round" "$(cpu_us $((t1-t0)) "$n")" >>"$RESULTS"
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
  measure nginx-tls1.2 "$round" nginx -c "$B/nginx-tls1.2.conf"
  measure haproxy "$round" haproxy -db -f "$B/haproxy.cfg"
done

python3 "$ROOT/bench/summarize.py" "$RESULTS" nginx
echo; echo "what an OpenSSL client negotiates with each:"; cat "$B/protocols.txt"
