#!/usr/bin/env bash
# Cheap attacks against Gatehouse, nginx and HAProxy, one proxy at a time, each pinned to
# CPU 1 with one worker (the backend, the attacker and the well-behaved client on CPU 0; with
# LAYOUT=one-cpu all of them on CPU 1, for VMs whose idle vCPUs wake slowly: there a request
# crossing CPUs can wait milliseconds for the host, which the "machine floor" row shows; with
# LAYOUT=attacker-apart the attacker alone on CPU 0 and the rest on CPU 1, as an attacker on
# another machine: its own work, client-side TLS above all, is not charged to the proxy).
# For each attack: the proxy's CPU and peak RSS while it runs, and the p99 latency of a
# well-behaved client (1,000 req/s from 127.0.0.1, open loop) against its quiet p99 (goal:
# within 1.2x). The attacker connects from 127.0.0.2 so that per-client limits apply to it
# alone. Every proxy runs with its default limits. Latency on a shared VM drifts and jumps
# whatever runs, so each proxy does ROUNDS rounds, each attack with a quiet window just
# before it, and the table compares p99s of the pooled samples.
#   slowloris        500 connections sending a head one byte every 2 s
#   slow-body        500 bodies sending one byte every 2 s
#   tiny-chunks      4 connections uploading 64 KiB bodies in 1-byte chunks, back to back
#   pipeline-unread  10 connections writing 10,000 pipelined GETs each, reading nothing
#   h2-zero-window   50 HTTP/2 connections, 100 streams each, flow-control window 0
#   h2-idle          500 HTTP/2 connections that send the preface and then nothing
#   tls-storm        50 clients opening TLS connections back to back, a full handshake each
# Loopback only; every run is bounded. ROUNDS (default 3), SECONDS_PER_RUN (default 10);
# ATTACKS and PROXIES (space-separated) pick a subset; LAYOUT is two-cpus (default), one-cpu
# or attacker-apart. CONTROL=1 adds, after each window, one with the client straight to the
# backend (the attack still running in the attacked one): what the attack costs a client that
# does not pass through the proxy at all, which no proxy can undo.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/packages.sh"
need_commands nginx:nginx-light haproxy:haproxy taskset:util-linux curl:curl openssl:openssl
SECS="${SECONDS_PER_RUN:-10}"
ROUNDS="${ROUNDS:-3}"
ATTACKS="${ATTACKS:-slowloris slow-body tiny-chunks pipeline-unread h2-zero-window h2-idle tls-storm}"
PROXIES="${PROXIES:-gatehouse nginx haproxy}"
case "${LAYOUT:-two-cpus}" in
  two-cpus) PROXY_CPU=1 BACKEND_CPU=0 CLIENT_CPU=0 ATTACKER_CPU=0 ;;
  one-cpu) PROXY_CPU=1 BACKEND_CPU=1 CLIENT_CPU=1 ATTACKER_CPU=1 ;;
  attacker-apart) PROXY_CPU=1 BACKEND_CPU=1 CLIENT_CPU=1 ATTACKER_CPU=0 ;;
  *) echo "LAYOUT is two-cpus, one-cpu or attacker-apart" >&2; exit 2 ;;
esac
source "$ROOT/bench/common.sh"
BACKEND=127.0.0.1:19000 PROXY=127.0.0.1:18080 PROXY_TLS=127.0.0.1:18443 ADMIN=127.0.0.1:16000
make_certificate

nginx_config "listen $PROXY; listen $PROXY_TLS ssl http2; ssl_certificate $B/cert.pem; ssl_certificate_key $B/key.pem;" \
  >"$B/nginx.conf"
haproxy_config | sed "s|  bind $PROXY|&\n  bind $PROXY_TLS ssl crt $B/combined.pem alpn h2,http/1.1|" >"$B/haproxy.cfg"
{
  gatehouse_config
  printf '[[listeners]]\naddress = "%s"\ntls_certificates = [{ cert = "%s", key = "%s" }]\n' "$PROXY_TLS" "$B/cert.pem" "$B/key.pem"
} >"$B/gatehouse.toml"

start_backend "$BACKEND=hello world"
wait_ready "$BACKEND" || { echo "backend did not start" >&2; exit 1; }
TICK=$(getconf CLK_TCK)
RESULTS="$B/results.tsv" SAMPLES="$B/samples"
mkdir -p "$SAMPLES"
: >"$RESULTS"

rss_kb() { local s=0; for p in $1; do s=$((s + $(awk '/VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done; echo "$s"; }

# well_behaved FILE [ADDR CPU]: 1,000 req/s from 127.0.0.1 to the proxy (or ADDR, from CPU) for
# SECS, each latency written to FILE; prints the p99 (ms) and the errors.
well_behaved() {
  taskset -c "${3:-$CLIENT_CPU}" "$TOOLS" open-loop --addr "${2:-$PROXY}" --rate 1000 --seconds "$SECS" --connections 20 \
    --samples "$1" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["p99_ms"], d["errors"])'
}

# record NAME ATTACK ROUND METRIC VALUE
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }

# quiet_then_attack NAME ROUND ATTACK "PIDS": the well-behaved client alone, then while ATTACK
# runs (with the proxy's CPU and peak RSS meanwhile). Each attack gets its own quiet window
# just before it, so the VM's drift over a run falls on both sides of the comparison.
quiet_then_attack() {
  local name=$1 round=$2 attack=$3 pids=$4 conns=500
  local p99 errors t0 t1 peak sampler
  read -r p99 errors < <(well_behaved "$SAMPLES/$name.$attack.$round.quiet")
  record "$name" "$attack" "$round" quiet_p99_ms "$p99"
  [ -z "${CONTROL:-}" ] || well_behaved "$SAMPLES/$name.$attack.$round.quiet-direct" "$BACKEND" >/dev/null
  case $attack in tiny-chunks) conns=4 ;; pipeline-unread) conns=10 ;; h2-zero-window | tls-storm) conns=50 ;; esac
  # The attacker runs at nice 19: where it shares a CPU with the well-behaved client, its own
  # work (client-side TLS, thousands of sockets) would otherwise delay the client's timers
  # and count as the proxy's latency.
  taskset -c "$ATTACKER_CPU" nice -n 19 "$TOOLS" attack --kind "$attack" --addr "$PROXY" --tls "$PROXY_TLS" --connections "$conns" \
    --seconds $((SECS + 3 + ${CONTROL:+SECS+}0)) >"$B/attack.json" 2>"$B/attack.err" & local attacker=$!
  sleep 2
  t0=$(ticks "$pids")
  ( while sleep 0.5; do rss_kb "$pids"; done ) >"$B/rss.log" & sampler=$!
  read -r p99 errors < <(well_behaved "$SAMPLES/$name.$attack.$round.attack")
  t1=$(ticks "$pids")
  kill $sampler 2>/dev/null || true
  [ -z "${CONTROL:-}" ] || well_behaved "$SAMPLES/$name.$attack.$round.attack-direct" "$BACKEND" >/dev/null
  wait $attacker 2>/dev/null || true
  peak=$(sort -n "$B/rss.log" | tail -1)
  record "$name" "$attack" "$round" p99_ms "$p99"
  record "$name" "$attack" "$round" errors "$errors"
  record "$name" "$attack" "$round" cpu_pct "$(awk -v d=$((t1-t0)) -v hz="$TICK" -v s="$SECS" 'BEGIN{printf "%.0f", d/hz/s*100}')"
  record "$name" "$attack" "$round" rss_mb "$(( ${peak:-0} / 1024 ))"
  echo "$name round $round $attack: p99 ${p99} ms, errors $errors, $(cat "$B/attack.json" 2>/dev/null)" >&2
  sleep 1
}

run_proxy() {
  local name=$1; shift
  launch "$name" "wait_ready $PROXY" "$@" || return 1
  local pid=$PID
  local pids="$pid $(pgrep -P $pid | tr '\n' ' ')"
  well_behaved /dev/null >/dev/null # warm-up
  record "$name" quiet 0 rss_mb "$(( $(rss_kb "$pids") / 1024 ))"
  for round in $(seq 1 "$ROUNDS"); do
    for attack in $ATTACKS; do
      quiet_then_attack "$name" "$round" "$attack" "$pids"
    done
  done
  kill $pid; wait $pid 2>/dev/null || true
  sleep 1
}

# The machine floor: the client straight to the backend from the proxy's CPU (across CPUs in
# the two-CPU layout, as proxied requests go): no proxy's p99 can be lower.
for round in $(seq 1 "$ROUNDS"); do
  read -r p99 errors < <(well_behaved "$SAMPLES/floor.none.$round.quiet" "$BACKEND" "$PROXY_CPU")
  record floor none "$round" quiet_p99_ms "$p99"
done

for proxy in $PROXIES; do
  case $proxy in
    gatehouse) GATEHOUSE_LOG=warn run_proxy gatehouse "$GATEHOUSE" run -c "$B/gatehouse.toml" ;;
    nginx) run_proxy nginx nginx -c "$B/nginx.conf" ;;
    haproxy) run_proxy haproxy haproxy -db -f "$B/haproxy.cfg" ;;
    *) echo "unknown proxy $proxy (gatehouse, nginx or haproxy)" >&2; exit 2 ;;
  esac
done

python3 - "$RESULTS" "$SAMPLES" <<'PY'
import collections, glob, os, statistics, sys
v = collections.defaultdict(list)
for line in open(sys.argv[1]):
    proxy, attack, rnd, metric, value = line.rstrip("\n").split("\t")
    v[(proxy, attack, metric)].append(float(value))
def pooled_p99(proxy, attack, side, rnd="*"):
    samples = sorted(int(x) for f in glob.glob(os.path.join(sys.argv[2], f"{proxy}.{attack}.{rnd}.{side}"))
                     for x in open(f).read().split())
    return samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000 if samples else float("nan")
def round_ratios(proxy, attack):
    rounds = sorted({f.split(".")[-2] for f in glob.glob(os.path.join(sys.argv[2], f"{proxy}.{attack}.*.attack"))})
    return [pooled_p99(proxy, attack, "attack", r) / pooled_p99(proxy, attack, "quiet", r) for r in rounds]
med = lambda p, a, m: statistics.median(v[(p, a, m)]) if v.get((p, a, m)) else float("nan")
proxies = [p for p in ("gatehouse", "nginx", "haproxy") if (p, "quiet", "rss_mb") in v]
attacks = [a for a in ("slowloris", "slow-body", "tiny-chunks", "pipeline-unread", "h2-zero-window", "h2-idle", "tls-storm")
           if any((p, a, "p99_ms") in v for p in proxies)]
print(f"machine floor (client straight to the backend across the same CPUs): p99 {pooled_p99('floor', 'none', 'quiet'):.2f} ms\n")
print("| attack | " + " | ".join(proxies) + " |")
print("|---|" + "---|" * len(proxies))
print("| idle RSS | " + " | ".join(f"{med(p, 'quiet', 'rss_mb'):.0f} MB" for p in proxies) + " |")
for a in attacks:
    cells = []
    for p in proxies:
        if not v.get((p, a, "p99_ms")):
            cells.append("-")
            continue
        quiet, attacked = pooled_p99(p, a, "quiet"), pooled_p99(p, a, "attack")
        ratios = round_ratios(p, a)
        cells.append(f"p99 {attacked:.2f} ms vs {quiet:.2f} quiet (**{attacked / quiet:.2f}x**; by round "
                     f"{', '.join(f'{r:.2f}' for r in ratios)}, median {statistics.median(ratios):.2f}x), "
                     f"CPU {med(p, a, 'cpu_pct'):.0f}%, RSS {max(v[(p, a, 'rss_mb')]):.0f} MB, errors {sum(v[(p, a, 'errors')]):.0f}")
    print(f"| {a} | " + " | ".join(cells) + " |")
controls = [(p, a) for p in proxies for a in attacks
            if glob.glob(os.path.join(sys.argv[2], f"{p}.{a}.*.attack-direct"))]
for p, a in controls:
    quiet, attacked = pooled_p99(p, a, "quiet-direct"), pooled_p99(p, a, "attack-direct")
    print(f"\ncontrol, {a} against {p}: the client straight to the backend, p99 {attacked:.2f} ms vs "
          f"{quiet:.2f} quiet ({attacked / quiet:.2f}x)", end="")
if controls:
    print()
print("\np99s pool every round's samples: the attack's windows against the quiet windows just before them"
      "\n(goal: 1.2x at most); each round's own ratio, and their median, show how far one noisy window moved"
      "\nthe pooled one; CPU is the median, RSS the peak; well-behaved client: 1,000 req/s open loop"
      "\nfrom 127.0.0.1, attacker from 127.0.0.2 at nice 19")
PY
