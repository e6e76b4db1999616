#!/usr/bin/env bash
# Automatic certificates against a real ACME CA (Pebble, validation delay off, real HTTP-01
# validation), Gatehouse and Caddy (the peer that does ACME itself) in one run:
#  1. time from asking for a new HTTPS host to the first answer curl verifies against
#     Pebble's root, ROUNDS times each: Gatehouse `deploy --tls` (which includes the deploy's
#     health gate), Caddy a `caddy reload` adding the site; medians, min and max;
#  2. new TLS connections per second (4 loops of handshake + GET + close) across renewals of
#     30-second certificates (renewed every 20 s), Gatehouse only: the seconds in which the
#     certificate changed against the others, and failed connections (goal: no dip beyond
#     noise, no failure).
# Each proxy on CPU 1, Pebble, the backend and the clients on CPU 0. Loopback only; bounded.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/packages.sh"
need_commands nginx:nginx-light curl:curl openssl:openssl taskset:util-linux pebble:pebble \
  pebble-challtestsrv:pebble caddy:caddy python3:python3
ROUNDS="${ROUNDS:-10}"
RENEWAL_SECONDS="${RENEWAL_SECONDS:-50}"
source "$ROOT/bench/common.sh"
BACKEND=127.0.0.1:19400 PLAIN=18480 TLS=18443 ADMIN=127.0.0.1:16400 SOCKET="$B/gatehouse.sock"
ACME=127.0.0.1:14400 ACME_MANAGEMENT=127.0.0.1:15400 DNS=127.0.0.1:18453 DNS_MANAGEMENT=127.0.0.1:18455

# Pebble's own HTTPS certificate, signed by a CA the clients trust through `ca_root`.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$B/ca.key" -out "$B/ca.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
  -keyout "$B/pebble.key" -out "$B/pebble.csr" 2>/dev/null
openssl x509 -req -in "$B/pebble.csr" -CA "$B/ca.pem" -CAkey "$B/ca.key" -CAcreateserial -days 2 \
  -extfile <(printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n') -out "$B/pebble.pem" 2>/dev/null

# start_pebble VALIDITY_SECONDS: challtestsrv (every name is 127.0.0.1) and Pebble validating
# on the proxy's ports; PEBBLE_PIDS are theirs.
start_pebble() {
  cat >"$B/pebble.json" <<JSON
{"pebble": {"listenAddress": "$ACME", "managementListenAddress": "$ACME_MANAGEMENT",
  "certificate": "$B/pebble.pem", "privateKey": "$B/pebble.key", "httpPort": $PLAIN, "tlsPort": $TLS,
  "ocspResponderURL": "", "externalAccountBindingRequired": false, "certificateValidityPeriod": $1}}
JSON
  taskset -c 0 pebble-challtestsrv -defaultIPv4 127.0.0.1 -defaultIPv6 "" -http01 "" -https01 "" -tlsalpn01 "" \
    -dns01 "$DNS" -management "$DNS_MANAGEMENT" >/dev/null 2>&1 & PEBBLE_PIDS=($!)
  PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 taskset -c 0 pebble -config "$B/pebble.json" -dnsserver "$DNS" \
    >"$B/pebble.log" 2>&1 & PEBBLE_PIDS+=($!)
  PIDS+=("${PEBBLE_PIDS[@]}")
  for _ in $(seq 1 100); do curl -s -o /dev/null --cacert "$B/ca.pem" "https://$ACME/dir" && break; sleep 0.1; done
  curl -s --cacert "$B/ca.pem" "https://$ACME_MANAGEMENT/roots/0" >"$B/issuing-root.pem"
}
stop_pebble() { kill "${PEBBLE_PIDS[@]}" 2>/dev/null || true; wait "${PEBBLE_PIDS[@]}" 2>/dev/null || true; }

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# verified HOST: succeeds once https://HOST:$TLS/ answers with a certificate that Pebble's
# root verifies (fails after 30 s).
verified() {
  for _ in $(seq 1 3000); do
    curl -s -o /dev/null --max-time 2 --resolve "$1:$TLS:127.0.0.1" --cacert "$B/issuing-root.pem" "https://$1:$TLS/" && return 0
    sleep 0.01
  done
  return 1
}
# rounds PREFIX OUT ASK: ROUNDS times, `ASK n` asks for the host PREFIXn.test; the
# milliseconds from asking to its first verified answer go to OUT, one line each.
rounds() {
  local prefix=$1 out=$2 ask=$3 start
  : >"$out"
  for n in $(seq 1 "$ROUNDS"); do
    start=$(now_ms)
    "$ask" "$n"
    if verified "$prefix$n.test"; then
      echo $(( $(now_ms) - start )) >>"$out"
    else
      echo "   $prefix$n.test: no verified answer in 30 s" >&2
    fi
  done
}
stats() { sort -n | awk '{a[NR]=$1} END {if (!NR) {print "no samples"; exit} printf "median %s ms (min %s, max %s, n=%d)", (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2, a[1], a[NR], NR}'; }

start_backend "$BACKEND=hello world"
wait_ready "$BACKEND" || { echo "backend did not start" >&2; exit 1; }

echo "1. From asking for a new HTTPS host to its first verified answer ($ROUNDS rounds each):"
start_pebble 7776000
cat >"$B/gatehouse.toml" <<CONF
address = "127.0.0.1"
port = ${ADMIN##*:}
loglevel = "warn"
workers = 1
admin_socket = "$SOCKET"
deploy_state = "$B/deploys.json"
[acme]
directory = "https://$ACME/dir"
ca_root = "$B/ca.pem"
storage = "$B/acme"
[[listeners]]
address = "127.0.0.1:$PLAIN"
[[listeners]]
address = "127.0.0.1:$TLS"
tls = true
CONF
taskset -c 1 "$GATEHOUSE" run -c "$B/gatehouse.toml" 2>"$B/gatehouse.log" & GH=$!; PIDS+=($GH)
for _ in $(seq 1 100); do [ -S "$SOCKET" ] && break; sleep 0.1; done
deploy_tls() {
  taskset -c 0 "$GATEHOUSE" deploy "g$1" --socket "$SOCKET" --host "g$1.test" --target "$BACKEND" --tls \
    --health-check-path / --health-check-interval 100ms >/dev/null
}
rounds g "$B/gatehouse_ms.txt" deploy_tls
echo "   Gatehouse (deploy --tls): $(stats <"$B/gatehouse_ms.txt")"
kill $GH; wait $GH 2>/dev/null || true

caddyfile() {
  printf '{\n  admin 127.0.0.1:16401\n  http_port %s\n  https_port %s\n  acme_ca https://%s/dir\n  acme_ca_root %s\n  storage file_system %s\n  email ops@example.com\n}\n' \
    "$PLAIN" "$TLS" "$ACME" "$B/ca.pem" "$B/caddy"
  for n in $(seq 1 "$1"); do printf 'c%s.test {\n  reverse_proxy %s\n}\n' "$n" "$BACKEND"; done
}
caddyfile 0 >"$B/Caddyfile"
XDG_DATA_HOME="$B" XDG_CONFIG_HOME="$B" taskset -c 1 caddy run --config "$B/Caddyfile" --adapter caddyfile \
  >"$B/caddy.log" 2>&1 & CADDY=$!; PIDS+=($CADDY)
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:16401/config/" && break; sleep 0.1; done
caddy_reload() {
  caddyfile "$1" >"$B/Caddyfile"
  XDG_DATA_HOME="$B" XDG_CONFIG_HOME="$B" taskset -c 0 caddy reload --config "$B/Caddyfile" --adapter caddyfile \
    --address 127.0.0.1:16401 >/dev/null 2>&1
}
rounds c "$B/caddy_ms.txt" caddy_reload
echo "   Caddy $(caddy version | cut -d' ' -f1) (caddy reload): $(stats <"$B/caddy_ms.txt")"
kill $CADDY; wait $CADDY 2>/dev/null || true
stop_pebble

echo "2. New TLS connections per second across renewals (30 s certificates, renewed every 20 s; Gatehouse):"
start_pebble 30
rm -rf "$B/acme" "$B/deploys.json"
taskset -c 1 "$GATEHOUSE" run -c "$B/gatehouse.toml" 2>"$B/gatehouse.log" & GH=$!; PIDS+=($GH)
for _ in $(seq 1 100); do [ -S "$SOCKET" ] && break; sleep 0.1; done
taskset -c 0 "$GATEHOUSE" deploy renew --socket "$SOCKET" --host renew.test --target "$BACKEND" --tls \
  --health-check-path / --health-check-interval 100ms >/dev/null
verified renew.test || { echo "renew.test got no certificate" >&2; exit 1; }
taskset -c 0 "$TOOLS" handshakes --addr "127.0.0.1:$TLS" --name renew.test --connections 4 \
  --seconds "$RENEWAL_SECONDS" >"$B/handshakes.json"
kill $GH; wait $GH 2>/dev/null || true
python3 - "$B/handshakes.json" <<'PY'
import json, statistics, sys
d = json.load(open(sys.argv[1]))
rates = d["per_second"][1:-1]  # the first and last seconds are partial
changes = {c - 1 for c in d["certificate_changed_in_second"]}  # indexes into rates
near = [r for i, r in enumerate(rates) if any(abs(i - c) <= 1 for c in changes)]
far = [r for i, r in enumerate(rates) if all(abs(i - c) > 1 for c in changes)]
failed = sum(d["failed_per_second"])
print(f"   renewals seen by the clients: {len(changes)}; failed connections: {failed}")
if near and far:
    print(f"   within 1 s of a renewal: median {statistics.median(near):.0f}/s (min {min(near)}); "
          f"other seconds: median {statistics.median(far):.0f}/s (min {min(far)}); "
          f"ratio {statistics.median(near) / statistics.median(far):.2f}")
else:
    print(f"   per second: {rates}")
PY
