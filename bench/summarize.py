#!/usr/bin/env python3
"""Prints the median of each figure per proxy, its spread, and its ratio to a peer's (HAProxy,
or the proxy named as the second argument): the ratio of the medians, and the median of the
per-round ratios (each round runs the proxies one after the other, so a round's ratio
compares runs made under the same conditions)."""
import collections
import statistics
import sys

LABELS = [
    ("rps", "requests/s (wrk -c50, closed loop)"),
    ("cpu_us_per_req", "CPU us/request (closed loop)"),
    ("user_share", "user-space share of that CPU"),
    ("open_loop_p50_ms", "p50 ms at 5k req/s (open loop)"),
    ("open_loop_p99_ms", "p99 ms at 5k req/s (open loop)"),
    ("open_loop_p999_ms", "p99.9 ms at 5k req/s"),
    ("open_loop_cpu_us_per_req", "CPU us/request at 5k req/s"),
    ("bytes_per_idle_conn", "RSS bytes per idle keep-alive connection, 2 s after opening"),
    ("bytes_per_idle_conn_settled", "RSS bytes per idle keep-alive connection, settled (min over 10 s)"),
    ("open_loop_errors", "errors at 5k req/s"),
    ("wrk_error_lines", "wrk socket-error/non-2xx lines"),
    ("tls_new_per_s", "new TLS connections/s (wrk -c20, Connection: close)"),
    ("tls_new_cpu_us", "CPU us per new TLS connection (wrk, Connection: close: resumed session)"),
    ("tls_full_cpu_us", "CPU us per full TLS handshake + request (no resumption)"),
    ("tls_keepalive_cpu_us", "CPU us/request, TLS keep-alive (wrk -c50)"),
]
BASE = sys.argv[2] if len(sys.argv) > 2 else "haproxy"

values = collections.defaultdict(list)
by_round = {}
with open(sys.argv[1]) as f:
    for line in f:
        proxy, rnd, metric, value = line.rstrip("\n").split("\t")
        values[(proxy, metric)].append(float(value))
        by_round[(proxy, metric, rnd)] = float(value)

proxies = [
    p
    for p in ["gatehouse", "gatehouse+access_log", "gatehouse+aws-lc-rs", "nginx", "nginx-tls1.2", "haproxy"]
    if any(k[0] == p for k in values)
]
print(f"| figure | {' | '.join(proxies)} | gatehouse / {BASE} | per round |")
print("|---|" + "---|" * (len(proxies) + 2))
for metric, label in LABELS:
    cells = []
    medians = {}
    for p in proxies:
        v = values.get((p, metric), [])
        if not v:
            cells.append("-")
            continue
        medians[p] = statistics.median(v)
        cells.append(f"{medians[p]:.3g} ({min(v):.3g}-{max(v):.3g})")
    ratio = "-"
    if medians.get(BASE) and "gatehouse" in medians:
        ratio = f"{medians['gatehouse'] / medians[BASE]:.2f}x"
    paired = [
        by_round[("gatehouse", m, r)] / v
        for (p, m, r), v in by_round.items()
        if p == BASE and m == metric and v and ("gatehouse", m, r) in by_round
    ]
    per_round = f"{statistics.median(paired):.2f}x" if paired else "-"
    print(f"| {label} | {' | '.join(cells)} | {ratio} | {per_round} |")
print("\nmedian (min-max) over rounds; each proxy on CPU 1 with one worker, load and backend on CPU 0")
if any(k[0] == "gatehouse+access_log" for k in values):
    for metric in ("cpu_us_per_req", "open_loop_cpu_us_per_req"):
        paired = [
            by_round[("gatehouse+access_log", metric, r)] / v
            for (p, m, r), v in by_round.items()
            if p == "gatehouse" and m == metric and v and ("gatehouse+access_log", metric, r) in by_round
        ]
        if paired:
            print(f"access log on / off, {metric} (median of per-round ratios; goal under 1.05x): {statistics.median(paired):.3f}x")
