#!/usr/bin/env python3
"""Compares weft-bench runs of two builds: the JSON line each run prints (the last line starting
with '{' in each file). With several files per side (A1,A2,... -- B1,B2,...), medians.
weft-waypoint-bench output is recognised too: its figures are printed as medians (min-max).

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
    ("new_connection_p50_us", "new connection p50 (us)"),
    ("new_connection_p99_us", "new connection p99 (us)"),
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
        if not all(key in r for r in runs):
            continue  # a figure older runs did not print
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


WAYPOINT_FIGURES = [
    ("waypoint p50 (us)", lambda r: r["l4_waypoint"]["p50_us"]),
    ("waypoint p99 (us)", lambda r: r["l4_waypoint"]["p99_us"]),
    ("waypoint p50 added (us)", lambda r: r["l4_waypoint"]["p50_us"] - r["no_mesh"]["p50_us"]),
    ("waypoint p99 added (us)", lambda r: r["l4_waypoint"]["p99_us"] - r["no_mesh"]["p99_us"]),
    ("L4 p50 added (us)", lambda r: r["l4"]["p50_us"] - r["no_mesh"]["p50_us"]),
    ("L4 p99 added (us)", lambda r: r["l4"]["p99_us"] - r["no_mesh"]["p99_us"]),
    ("waypoint CPU-s/s", lambda r: r["waypoint_cpu_s_per_s"]),
    ("waypoint RSS after (MiB)", lambda r: r["waypoint_rss_kib"] / 1024),
]


def spread(values):
    return statistics.median(values), min(values), max(values)


def waypoint(a_paths, b_paths):
    a, b = [load(p) for p in a_paths], [load(p) for p in b_paths]
    print(f"{'figure':26} {'A median (min-max)':>26} {'B median (min-max)':>26} {'B/A':>7}")
    for label, get in WAYPOINT_FIGURES:
        (am, al, ah), (bm, bl, bh) = spread([get(r) for r in a]), spread([get(r) for r in b])
        ratio = bm / am if am else float("nan")
        print(
            f"{label:26} {f'{am:.3f} ({al:.3f}-{ah:.3f})':>26} "
            f"{f'{bm:.3f} ({bl:.3f}-{bh:.3f})':>26} {ratio:7.3f}"
        )


def main(argv):
    if "--" not in argv:
        sys.exit(__doc__)
    cut = argv.index("--")
    if "l4_waypoint" in load(argv[0]):
        return waypoint(argv[:cut], argv[cut + 1 :])
    a, b = side(argv[:cut]), side(argv[cut + 1 :])
    print(f"{'figure':34} {'A mesh':>10} {'A ratio':>8} {'B mesh':>10} {'B ratio':>8} {'B/A':>7}")
    for key, label in FIGURES:
        if key not in a or key not in b:
            continue
        (am, ar), (bm, br) = a[key], b[key]
        print(f"{label:34} {am:10.2f} {ar:8.3f} {bm:10.2f} {br:8.3f} {bm / am:7.3f}")
    print(f"{'CPU s/GB, both proxies':34} {a['cpu']:10.3f} {'':8} {b['cpu']:10.3f} {'':8} {b['cpu'] / a['cpu']:7.3f}")
    print(f"{'RSS under load, larger (MiB)':34} {a['rss']:10.1f} {'':8} {b['rss']:10.1f} {'':8} {b['rss'] / a['rss']:7.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
