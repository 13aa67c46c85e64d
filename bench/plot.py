"""Plots for `keel-bench compare`: a latency CDF per scenario (Keel and etcd on one chart)
and put throughput against clients. Reads OUT/runs.jsonl and OUT/hgrm/*.hgrm, writes
OUT/*.png.  usage: python3 bench/plot.py OUT   (needs matplotlib)"""
import glob
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = sys.argv[1]


def hgrm(path):
    xs, ys = [], []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 4 and not line.startswith("#") and parts[0][0].isdigit():
                xs.append(float(parts[0]))
                ys.append(float(parts[1]))
    return xs, ys


cases = {}
for path in sorted(glob.glob(os.path.join(out, "hgrm", "*.hgrm"))):
    name = os.path.basename(path)[: -len(".hgrm")]
    case, server = name.rsplit("-", 1)
    cases.setdefault(case, {})[server] = path

for case, servers in cases.items():
    fig, ax = plt.subplots(figsize=(6, 4))
    for server, path in sorted(servers.items()):
        xs, ys = hgrm(path)
        if xs:
            ax.plot(xs, ys, label=server)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(case)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"cdf-{case}.png"), dpi=110)
    plt.close(fig)

runs = [json.loads(line) for line in open(os.path.join(out, "runs.jsonl"))]
series = {}
for r in runs:
    if not r["case"].startswith("put c") or r["run"]["errors"]:
        continue
    series.setdefault(r["run"]["label"], {}).setdefault(r["run"]["clients"], []).append(
        r["run"]["throughput"]
    )
fig, ax = plt.subplots(figsize=(6, 4))
for server, points in sorted(series.items()):
    xs = sorted(points)
    ax.plot(xs, [statistics.median(points[x]) for x in xs], marker="o", label=server)
ax.set_xscale("log")
ax.set_xlabel("clients")
ax.set_ylabel("puts/s (median)")
ax.set_title("put throughput against clients")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(out, "put-throughput.png"), dpi=110)
print(f"plots: {len(cases) + 1} PNG files in {out}")
