"""Turn scripts/bench.sh's records into a table of pond's ratios, a JSON file and a PNG chart.

    bench_report.py META.json RECORDS.jsonl RESULTS_DIR

Every ratio compares figures taken in the same run: a ratio is pond's speed over the baseline's
(time: baseline seconds / pond seconds; IOPS: pond / baseline), so 1.0 means as fast and higher is
better. Goals are the figures issue 6 asks for.
"""

import json
import os
import sys
import time

# workload -> (label, goal kind, goal value); goal kinds:
#   "pt": ratio to the passthrough >= value      "pt_time": pond time <= value x passthrough time
#   "max": pond's value < value (its own unit)   "cp": throughput ratio to cp -r >= value (and ahead of restic)
WORKLOADS = {
    "seq_write_dd": ("sequential write {SEQ_MIB} MiB (dd bs=1M conv=fsync)", "pt", 0.8),
    "seq_write_cp": ("sequential write {SEQ_MIB} MiB (cp)", "pt", 0.8),
    "seq_read_cold": ("cold sequential read {SEQ_MIB} MiB (dd)", "pt", 0.9),
    "rand_read_4k_1job": ("random 4 KiB reads, fio 1 job", "pt", 0.7),
    "rand_read_4k_4jobs": ("random 4 KiB reads, fio 4 jobs", "pt", 0.7),
    "tar_x_small": ("tar -x of {SMALL_FILES} x {SMALL_KIB} KiB", "pt", 0.5),
    "tar_x_medium": ("tar -x of {MEDIUM_FILES} x {MEDIUM_KIB} KiB", None, None),
    "rsync_initial": ("rsync -a of a {TREE_MIB} MiB mixed tree", "pt_time", 1.5),
    "rsync_no_change": ("rsync -a again, no change", "pt_time", 2.0),
    "find_10k": ("find over {SMALL_FILES} files (cold)", None, None),
    "ls_lR_10k": ("ls -lR over {SMALL_FILES} files (cold)", None, None),
    "rm_rf_10k": ("rm -rf of {SMALL_FILES} files", None, None),
    "create_1byte_latency": ("open+write 1 byte+close, median", None, None),
}
POND_ONLY = {
    "mount_100k_files": ("mount of a {BIG_FILES}-file pond + stat, cold (s)", "max", 2.0),
    "rss_peak_write_4g": ("daemon peak RSS writing {RSS_MIB} MiB (MiB)", "max", 200),
    "rss_write_4g": ("write {RSS_MIB} MiB from /dev/urandom, conv=fsync (s)", None, None),
}
PEERS = {
    "replicate": ("pond replicate of {REPLICA_MIB} MiB vs cp -r (+sync)", "cp", 0.8),
    "restore": ("pond restore, verified, vs cp -r (+sync)", "cp", 0.5),
}


def speed(rec):
    """A figure where higher is better: 1/seconds, IOPS, 1/latency."""
    v = rec["value"]
    if rec["metric"] in ("seconds", "us"):
        return 1.0 / v if v > 0 else float("inf")
    return v


def main():
    meta_path, records_path, out_dir = sys.argv[1:4]
    meta = json.load(open(meta_path))
    recs = [json.loads(line) for line in open(records_path) if line.strip()]
    for table in (WORKLOADS, POND_ONLY, PEERS):
        for w, (label, kind, goal) in table.items():
            table[w] = (label.format(**meta["sizes"]), kind, goal)
    by = {}
    for r in recs:
        by.setdefault(r["workload"], {}).setdefault(r["target"], []).append(r)

    def median(rs):
        rs = sorted(rs, key=lambda r: r["value"])
        return rs[len(rs) // 2]

    rows, lines = [], []
    fmt = "{:<46} {:>11} {:>11} {:>11} {:>8} {:>8}  {}"
    lines.append(fmt.format("workload", "native", "passthru", "pond", "vs pt", "vs nat", "goal"))
    for w, (label, kind, goal) in WORKLOADS.items():
        if w not in by or not all(t in by[w] for t in ("native", "passthrough", "pond")):
            continue
        n, p, o = (median(by[w][t]) for t in ("native", "passthrough", "pond"))
        vs_pt, vs_nat = speed(o) / speed(p), speed(o) / speed(n)
        ok = None
        if kind == "pt":
            ok, goal_text = vs_pt >= goal, f">= {goal} of passthrough"
        elif kind == "pt_time":
            ok, goal_text = o["value"] <= goal * p["value"], f"<= {goal}x passthrough time"
        else:
            goal_text = ""
        unit = {"seconds": "s", "iops": "IOPS", "us": "us"}[o["metric"]]
        rows.append(dict(workload=w, label=label, unit=unit, native=n["value"], passthrough=p["value"],
                         pond=o["value"], ratio_to_passthrough=vs_pt, ratio_to_native=vs_nat, goal=goal_text,
                         goal_met=ok))
        mark = "" if ok is None else ("met" if ok else "MISSED")
        lines.append(fmt.format(f"{label} ({unit})", f"{n['value']:.4g}", f"{p['value']:.4g}", f"{o['value']:.4g}",
                                f"{vs_pt:.2f}", f"{vs_nat:.2f}", f"{goal_text} {mark}".strip()))
    lines.append("")
    for w, (label, kind, goal) in POND_ONLY.items():
        if w not in by:
            continue
        o = median(by[w]["pond"])
        ok = o["value"] < goal if kind == "max" else None
        rows.append(dict(workload=w, label=label, unit=o["metric"], pond=o["value"], all=[r["value"] for r in by[w]["pond"]],
                         goal=f"< {goal}" if kind else "", goal_met=ok))
        mark = "" if ok is None else ("met" if ok else "MISSED")
        lines.append(f"{label:<58} {o['value']:>10.4g}  {('< ' + str(goal) + ' ' + mark) if kind else ''}")
    for w, (label, kind, goal) in PEERS.items():
        if w not in by:
            continue
        figs = {t: median(rs) for t, rs in by[w].items()}
        mibs = {t: r["bytes"] / r["value"] / 2**20 for t, r in figs.items()}
        ratio = mibs["pond"] / mibs["cp_r"]
        ahead = "restic" not in mibs or mibs["pond"] > mibs["restic"]
        ok = ratio >= goal and ahead
        rows.append(dict(workload=w, label=label, unit="MiB/s", seconds={t: r["value"] for t, r in figs.items()},
                         mib_per_s=mibs, ratio_to_cp=ratio, goal=f">= {goal} of cp -r, ahead of restic", goal_met=ok))
        peers = ", ".join(f"{t} {mibs[t]:.0f} MiB/s ({figs[t]['value']:.2f} s)" for t in ("pond", "cp_r", "restic") if t in mibs)
        lines.append(f"{label:<46} {peers}; ratio {ratio:.2f} (>= {goal}, ahead of restic: {'met' if ok else 'MISSED'})")

    table = "\n".join(lines)
    print(table)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = dict(meta=meta, rows=rows, records=recs)
    os.makedirs(out_dir, exist_ok=True)
    for name in (f"bench-{stamp}.json", "latest.json"):
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(out, f, indent=1)
    chart(rows, meta, os.path.join(out_dir, "bench.png"))
    print(f"\nresults: {out_dir}/bench-{stamp}.json, {out_dir}/latest.json, chart {out_dir}/bench.png")


def chart(rows, meta, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [r for r in rows if "ratio_to_passthrough" in r]
    peers = [r for r in rows if "ratio_to_cp" in r]
    labels = [r["label"] for r in bars] + [r["label"] for r in peers]
    pt = [r["ratio_to_passthrough"] for r in bars] + [r["ratio_to_cp"] for r in peers]
    nat = [r["ratio_to_native"] for r in bars] + [None for _ in peers]
    goals = []
    for r in bars + peers:
        g = r.get("goal", "")
        if g.startswith(">= ") and ("passthrough" in g or "cp -r" in g):
            goals.append(float(g.split()[1]))
        elif g.startswith("<= ") and "passthrough time" in g:
            goals.append(1.0 / float(g.split()[1].rstrip("x")))
        else:
            goals.append(None)
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(labels) + 1.5))
    ys = range(len(labels))
    ax.barh([y + 0.2 for y in ys], pt, height=0.4, label="pond / passthrough (replica rows: pond / cp -r)", color="#2a7ab0")
    ax.barh([y - 0.2 for y in ys], [v or 0 for v in nat], height=0.4, label="pond / native", color="#a6cee3")
    for y, g in zip(ys, goals):
        if g is not None:
            ax.plot([g, g], [y - 0.45, y + 0.45], color="#d62728", lw=2)
    ax.plot([], [], color="#d62728", lw=2, label="goal")
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_yticks(list(ys))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.xaxis.set_major_locator(FixedLocator([0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("pond's speed relative to the baseline (same run; > 1 is faster)")
    ax.set_title(f"pond benchmark, {meta['started'][:10]}, commit {meta['commit']}, {meta['cpus']} cores")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
