#!/usr/bin/env python3
"""Prints the median of each figure per proxy, its spread, and its ratio to HAProxy's."""
import collections
import statistics
import sys

LABELS = [
    ("rps", "requests/s (wrk -c50, closed loop)"),
    ("cpu_us_per_req", "CPU us/request (closed loop)"),
    ("open_loop_p50_ms", "p50 ms at 5k req/s (open loop)"),
    ("open_loop_p99_ms", "p99 ms at 5k req/s (open loop)"),
    ("open_loop_p999_ms", "p99.9 ms at 5k req/s"),
    ("open_loop_cpu_us_per_req", "CPU us/request at 5k req/s"),
    ("bytes_per_idle_conn", "RSS bytes per idle keep-alive connection, 2 s after opening"),
    ("bytes_per_idle_conn_settled", "RSS bytes per idle keep-alive connection, settled (min over 10 s)"),
    ("open_loop_errors", "errors at 5k req/s"),
    ("wrk_error_lines", "wrk socket-error/non-2xx lines"),
]

values = collections.defaultdict(list)
with open(sys.argv[1]) as f:
    for line in f:
        proxy, _round, metric, value = line.rstrip("\n").split("\t")
        values[(proxy, metric)].append(float(value))

proxies = ["gatehouse", "nginx", "haproxy"]
print(f"| figure | {' | '.join(proxies)} | gatehouse / haproxy |")
print("|---|" + "---|" * (len(proxies) + 1))
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
    if medians.get("haproxy") and "gatehouse" in medians:
        ratio = f"{medians['gatehouse'] / medians['haproxy']:.2f}x"
    print(f"| {label} | {' | '.join(cells)} | {ratio} |")
print("\nmedian (min-max) over rounds; each proxy on CPU 1 with one worker, load and backend on CPU 0")
