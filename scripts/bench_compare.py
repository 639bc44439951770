#!/usr/bin/env python3
"""Compares weft-bench runs of two builds: the JSON line each run prints (the last line starting
with '{' in each file). With several files per side (A1,A2,... -- B1,B2,...), medians.

    ./target/release/weft-bench --secs 5 > a1.txt   # build A, then build B, interleaved
    python3 scripts/bench_compare.py a1.txt a2.txt a3.txt -- b1.txt b2.txt b3.txt

For each figure: the mesh value and its ratio to the same run's no-mesh value, for A and B, and
B's change against A. Compare ratios within a run, and interleave the runs of the two builds:
this machine's speed drifts between runs.
"""

import json
import statistics
import sys

FIGURES = [
    ("throughput_1_stream_gbps", "throughput, 1 stream (Gbit/s)"),
    ("throughput_4_streams_gbps", "throughput, 4 streams (Gbit/s)"),
    ("latency_64b_p50_us", "64 B p50 (us)"),
    ("latency_64b_p99_us", "64 B p99 (us)"),
    ("new_connections_per_sec", "new connections/s"),
]


def load(path):
    with open(path) as f:
        lines = [l for l in f if l.startswith("{")]
    if not lines:
        sys.exit(f"{path}: no JSON line (is it weft-bench output?)")
    return json.loads(lines[-1])


def side(paths):
    runs = [load(p) for p in paths]
    out = {}
    for key, _ in FIGURES:
        out[key] = (
            statistics.median(r[key]["mesh"] for r in runs),
            statistics.median(r[key]["ratio"] for r in runs),
        )
    out["cpu"] = statistics.median(
        r["cpu_seconds_per_gb"]["source_proxy"] + r["cpu_seconds_per_gb"]["destination_proxy"]
        for r in runs
    )
    out["rss"] = statistics.median(max(r["rss_kib"]["load"]) / 1024 for r in runs)
    return out


def main(argv):
    if "--" not in argv:
        sys.exit(__doc__)
    cut = argv.index("--")
    a, b = side(argv[:cut]), side(argv[cut + 1 :])
    print(f"{'figure':34} {'A mesh':>10} {'A ratio':>8} {'B mesh':>10} {'B ratio':>8} {'B/A':>7}")
    for key, label in FIGURES:
        (am, ar), (bm, br) = a[key], b[key]
        print(f"{label:34} {am:10.2f} {ar:8.3f} {bm:10.2f} {br:8.3f} {bm / am:7.3f}")
    print(f"{'CPU s/GB, both proxies':34} {a['cpu']:10.3f} {'':8} {b['cpu']:10.3f} {'':8} {b['cpu'] / a['cpu']:7.3f}")
    print(f"{'RSS under load, larger (MiB)':34} {a['rss']:10.1f} {'':8} {b['rss']:10.1f} {'':8} {b['rss'] / a['rss']:7.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
