"""Turn scripts/bench.sh's records into a table, a JSON file and a PNG chart.

    bench_report.py META.json RECORDS.jsonl RESULTS_DIR

Every figure is shown as min/median/max over its rounds. A ratio is pond's speed over the
baseline's, from the medians (time: baseline seconds / pond seconds; IOPS: pond / baseline), so
1.0 means as fast and higher is better; the chart's whiskers span the same ratio taken round by
round (each round ran the targets one after the other). Goals are issue 13's (targets against the
passthrough and native, daemon CPU) and issue 15's (the history group); pond-only figures keep
issue 6's. A figure is marked `*` when a quiet wait before one of its rounds timed out and `+`
when other processes used more than 10% of the CPU during one of its rounds.
"""

import json
import os
import sys
import time

# workload -> (label, goals); a goal is (baseline, kind, value):
#   kind ">=": pond's speed / baseline's speed >= value
#   kind "time<=": pond's time <= value x the baseline's time
WORKLOADS = {
    "seq_write_dd": ("sequential write {SEQ_MIB} MiB (dd bs=1M conv=fsync)",
                     [("passthrough", ">=", 1.0), ("native", ">=", 0.7)]),
    "seq_write_cp": ("sequential write {SEQ_MIB} MiB (cp)", [("passthrough", ">=", 1.0), ("native", ">=", 0.7)]),
    "seq_read_cold": ("cold sequential read {SEQ_MIB} MiB (dd)", [("passthrough", ">=", 1.0), ("native", ">=", 0.5)]),
    "rand_read_4k_1job": ("random 4 KiB reads, fio 1 job", [("passthrough", ">=", 0.9)]),
    "rand_read_4k_4jobs": ("random 4 KiB reads, fio 4 jobs", [("passthrough", ">=", 0.9)]),
    "tar_x_small": ("tar -x of {SMALL_FILES} x {SMALL_KIB} KiB", [("passthrough", ">=", 1.0)]),
    "tar_x_medium": ("tar -x of {MEDIUM_FILES} x {MEDIUM_KIB} KiB", [("passthrough", ">=", 1.0)]),
    "rsync_initial": ("rsync -a of a {TREE_MIB} MiB mixed tree", [("passthrough", "time<=", 1.0)]),
    "rsync_no_change": ("rsync -a again, no change", [("passthrough", "time<=", 1.0)]),
    "find_10k": ("find over {SMALL_FILES} files (cold)", []),
    "ls_lR_10k": ("ls -lR over {SMALL_FILES} files (cold)", [("passthrough", "time<=", 1.0)]),
    "rm_rf_10k": ("rm -rf of {SMALL_FILES} files", [("passthrough", "time<=", 1.0)]),
    "create_1byte_latency": ("open+write 1 byte+close, median", []),
}
# The daemon's CPU per GiB moved: workload -> (label, goal in s/GiB or None)
CPU = {
    "seq_write_dd": ("daemon CPU per GiB written (dd)", 1.5),
    "seq_write_cp": ("daemon CPU per GiB written (cp)", 1.5),
    "seq_read_cold": ("daemon CPU per GiB read (cold read)", None),
    "rss_write_4g": ("daemon CPU per GiB written (dd of {RSS_MIB} MiB)", 1.5),
}
POND_ONLY = {
    "mount_100k_files": ("mount of a {BIG_FILES}-file pond + stat, cold (s)", 2.0),
    "rss_peak_write_4g": ("daemon peak RSS writing {RSS_MIB} MiB (MiB)", 200),
    "rss_write_4g": ("write {RSS_MIB} MiB from /dev/urandom, conv=fsync (s)", None),
}
PEERS = {
    "replicate": ("pond replicate of {REPLICA_MIB} MiB vs cp -r (+sync)", 0.8),
    "restore": ("pond restore, verified, vs cp -r (+sync)", 0.5),
}
MIB = 1 << 20


def stats(values):
    v = sorted(values)
    return dict(min=v[0], median=v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2,
                max=v[-1], n=len(v), all=values)


def speed(value, metric):
    """A figure where higher is better: 1/seconds, IOPS, 1/latency."""
    if metric in ("seconds", "us"):
        return 1.0 / value if value > 0 else float("inf")
    return value


def fmt(x):
    if x is None:
        return ""
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def mmm(s, scale=1.0):
    """min/median/max as text."""
    return f"{fmt(s['min'] * scale)}/{fmt(s['median'] * scale)}/{fmt(s['max'] * scale)}"


def main():
    meta_path, records_path, out_dir = sys.argv[1:4]
    meta = json.load(open(meta_path))
    recs = [json.loads(line) for line in open(records_path) if line.strip()]
    sizes = meta["sizes"]
    by = {}  # (workload, target, metric) -> [records]
    for r in recs:
        by.setdefault((r["workload"], r["target"], r["metric"]), []).append(r)

    def get(w, t, m):
        return by.get((w, t, m), [])

    def timeouts(rs):
        return sum(1 for r in rs if isinstance(r.get("quiet"), dict) and not r["quiet"].get("ok", True))

    def crowded(rs):
        return sum(1 for r in rs if isinstance(r.get("beside"), dict) and r["beside"].get("busy"))

    def marks(rs):
        return ("*" if timeouts(rs) else "") + ("+" if crowded(rs) else "")

    rows, lines = [], []
    rounds = meta["rounds"]
    lines.append(f"pond benchmark, commit {meta['commit']}, {meta['cpus']} cores, {rounds} rounds; "
                 f"each figure min/median/max; ratios from the medians (> 1: pond is faster)")
    if rounds < 3:
        lines.append(f"NOTE: {rounds} round(s): fewer than 3, not a result")
    lines.append("")

    # --- the three targets -----------------------------------------------------------------------
    w_fmt = "{:<44} {:>22} {:>22} {:>22} {:>7} {:>7}  {}"
    if any(w in WORKLOADS for (w, _, _) in by):
        lines.append(w_fmt.format("workload", "native", "passthrough", "pond", "pond/pt", "pond/nat", "goals"))
    for w, (label, goals) in WORKLOADS.items():
        label = label.format(**sizes)
        metric = next((m for (ww, t, m) in by if ww == w and t == "pond" and m != "daemon_cpu_s"), None)
        if metric is None or not all(get(w, t, metric) for t in ("native", "passthrough", "pond")):
            continue
        st = {t: stats([r["value"] for r in get(w, t, metric)]) for t in ("native", "passthrough", "pond")}
        per_round = {t: {r["round"]: r["value"] for r in get(w, t, metric)} for t in st}
        ratios, spans = {}, {}
        for base in ("passthrough", "native"):
            ratios[base] = speed(st["pond"]["median"], metric) / speed(st[base]["median"], metric)
            paired = [speed(per_round["pond"][k], metric) / speed(per_round[base][k], metric)
                      for k in per_round["pond"] if k in per_round[base]]
            spans[base] = (min(paired), max(paired)) if paired else (ratios[base], ratios[base])
        goal_out, texts = [], []
        for base, kind, value in goals:
            if kind == ">=":
                ok = ratios[base] >= value
                text = f"vs {'pt' if base == 'passthrough' else 'nat'} >= {value}"
            else:
                ok = st["pond"]["median"] <= value * st[base]["median"]
                text = f"<= {value}x {'pt' if base == 'passthrough' else 'nat'} time"
            goal_out.append(dict(baseline=base, kind=kind, value=value, met=ok))
            texts.append(f"{text} {'met' if ok else 'MISSED'}")
        n_to = sum(timeouts(get(w, t, metric)) for t in st)
        n_cr = sum(crowded(get(w, t, metric)) for t in st)
        unit = {"seconds": "s", "iops": "IOPS", "us": "us"}[metric]
        rows.append(dict(group="targets", workload=w, label=label, unit=unit, figures=st,
                         ratio_to_passthrough=ratios["passthrough"], ratio_to_native=ratios["native"],
                         ratio_span_passthrough=spans["passthrough"], ratio_span_native=spans["native"],
                         goals=goal_out, quiet_timeouts=n_to, crowded_rounds=n_cr))
        star = ("*" if n_to else "") + ("+" if n_cr else "")
        lines.append(w_fmt.format(f"{label} ({unit}){star}", mmm(st["native"]), mmm(st["passthrough"]), mmm(st["pond"]),
                                  f"{ratios['passthrough']:.2f}", f"{ratios['native']:.2f}", "; ".join(texts)))

    # --- daemon CPU --------------------------------------------------------------------------------
    cpu_lines = []
    for w, (label, goal) in CPU.items():
        label = label.format(**sizes)
        per_gib = {}
        for t in ("passthrough", "pond"):
            rs = get(w, t, "daemon_cpu_s")
            if rs:
                per_gib[t] = stats([r["value"] / (r["bytes"] / (1 << 30)) for r in rs])
        if "pond" not in per_gib:
            continue
        ok = per_gib["pond"]["median"] <= goal if goal is not None else None
        rows.append(dict(group="cpu", workload=w, label=label, unit="s/GiB", figures=per_gib, goal=goal, goal_met=ok))
        pt = mmm(per_gib["passthrough"]) if "passthrough" in per_gib else ""
        g = "" if goal is None else f"<= {goal} s/GiB {'met' if ok else 'MISSED'}"
        cpu_lines.append(f"{label:<52} {pt:>22} {mmm(per_gib['pond']):>22}  {g}")
    if cpu_lines:
        lines += ["", f"{'daemon CPU (utime+stime), s per GiB':<52} {'passthrough':>22} {'pond':>22}  goal"] + cpu_lines

    # --- history -----------------------------------------------------------------------------------
    hist = history(by, sizes, rows, marks)
    if hist:
        lines += [""] + hist

    # --- pond alone --------------------------------------------------------------------------------
    alone = []
    for w, (label, goal) in POND_ONLY.items():
        rs = [r for (ww, t, m), v in by.items() if ww == w and t == "pond" and m != "daemon_cpu_s" for r in v]
        if not rs:
            continue
        label = label.format(**sizes)
        st = stats([r["value"] for r in rs])
        ok = st["median"] < goal if goal is not None else None
        rows.append(dict(group="pond", workload=w, label=label, unit=rs[0]["metric"], figures={"pond": st},
                         goal=goal, goal_met=ok))
        star = marks(rs)
        g = "" if goal is None else f"< {goal} {'met' if ok else 'MISSED'}"
        alone.append(f"{label + star:<58} {mmm(st):>24}  {g}")
    for w, (label, goal) in PEERS.items():
        tools = {t: [r for r in get(w, t, "seconds")] for t in ("pond", "cp_r", "restic")}
        if not tools["pond"] or not tools["cp_r"]:
            continue
        label = label.format(**sizes)
        secs = {t: stats([r["value"] for r in rs]) for t, rs in tools.items() if rs}
        size = tools["pond"][0]["bytes"]
        mibs = {t: size / s["median"] / MIB for t, s in secs.items()}
        ratio = mibs["pond"] / mibs["cp_r"]
        ahead = "restic" not in mibs or mibs["pond"] > mibs["restic"]
        ok = ratio >= goal and ahead
        rows.append(dict(group="peers", workload=w, label=label, unit="s", figures=secs, mib_per_s=mibs,
                         ratio_to_cp=ratio, goal=f">= {goal} of cp -r, ahead of restic", goal_met=ok))
        peers = ", ".join(f"{t} {mmm(secs[t])} s ({mibs[t]:.0f} MiB/s)" for t in ("pond", "cp_r", "restic") if t in secs)
        alone.append(f"{label:<58} {peers}; ratio {ratio:.2f} (>= {goal}, ahead of restic: {'met' if ok else 'MISSED'})")
    if alone:
        lines += ["", "pond alone (min/median/max)"] + alone

    figures = [rs for (w, t, m), rs in by.items() if m != "daemon_cpu_s"]
    n_to = sum(timeouts(rs) for rs in figures)
    n_cr = sum(crowded(rs) for rs in figures)
    if n_to or n_cr:
        lines.append("")
    if n_to:
        lines.append(f"* {n_to} measurement(s) followed a quiet wait that timed out (QUIET_TIMEOUT {meta['quiet']['timeout_s']} s): "
                     "the machine was not idle before them; see each record's 'quiet' in the JSON")
    if n_cr:
        lines.append(f"+ {n_cr} measurement(s) ran while other processes used more than 10% of the CPU: "
                     "see each record's 'beside' in the JSON")
    if "elapsed_s" in meta:
        lines += ["", f"workloads took {meta['elapsed_s'] / 60:.1f} min"]

    table = "\n".join(lines)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = dict(meta=meta, rows=rows, table=table, records=recs)
    os.makedirs(out_dir, exist_ok=True)
    for name in (f"bench-{stamp}.json", "latest.json"):
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(out, f, indent=1)
    print(table)
    if any(r["group"] in ("targets", "peers") for r in rows):
        chart(rows, meta, os.path.join(out_dir, "bench.png"))
        print(f"\nresults: {out_dir}/bench-{stamp}.json, {out_dir}/latest.json, chart {out_dir}/bench.png")
    else:
        print(f"\nresults: {out_dir}/bench-{stamp}.json, {out_dir}/latest.json")


def history(by, sizes, rows, marks):
    """Issue 15's history group: pond against the native directory, each figure with its target."""

    def st(w, t, m):
        rs = by.get((w, t, m), [])
        return (stats([r["value"] for r in rs]), rs) if rs else (None, [])

    if not any(w.startswith("hist_") for (w, _, _) in by):
        return []
    out = [f"{'history (issue 15), min/median/max':<58} {'native':>26} {'pond':>26}  target"]

    def line(key, label, nat, pond, target, met, unit):
        star = marks(pond[1] + (nat[1] if nat else [])) if pond else ""
        out.append(f"{label + star:<58} {(mmm(nat[0], 1 / unit) if nat and nat[0] else ''):>26} "
                   f"{(mmm(pond[0], 1 / unit) if pond and pond[0] else ''):>26}  "
                   f"{target} {'not run' if met is None else 'met' if met else 'MISSED'}")
        rows.append(dict(group="history", workload=key, label=label, target=target,
                         native=nat[0] if nat else None, pond=pond[0] if pond else None,
                         goal_met=met, status="not run" if met is None else "met" if met else "missed"))

    appended = sizes["HIST_APPENDS"] << 20
    # 1. appends: store size and time
    ns, ps = st("hist_appends_store", "native", "bytes"), st("hist_appends_store", "pond", "bytes")
    if ns[0] and ps[0]:
        line("hist_appends_store", f"{sizes['HIST_FILE_MIB']} MiB + {sizes['HIST_APPENDS']} x 1 MiB appends: stored (MiB)",
             ns, ps, "<= 1.3x native", ps[0]["median"] <= 1.3 * ns[0]["median"], MIB)
    nt, pt = st("hist_appends", "native", "seconds"), st("hist_appends", "pond", "seconds")
    commit = st("hist_commit", "pond", "seconds")
    if nt[0] and pt[0] and commit[0]:
        limit = 3 * nt[0]["median"] + sizes["HIST_APPENDS"] * commit[0]["median"]
        line("hist_appends", f"  the appends (s); one commit {commit[0]['median'] * 1000:.0f} ms", nt, pt,
             f"<= 3x native + {sizes['HIST_APPENDS']} commits = {limit:.3f} s", pt[0]["median"] <= limit, 1)
    rs = st("hist_replicate_sent", "pond", "bytes")
    if rs[0]:
        line("hist_replicate_sent", "  pond replicate after the appends: sent (MiB)", None, rs,
             f"<= 1.2x the {appended / MIB:.0f} MiB appended", rs[0]["median"] <= 1.2 * appended, MIB)
    # 2. overwrite
    ng, pg = st("hist_overwrite_growth", "native", "bytes"), st("hist_overwrite_growth", "pond", "bytes")
    if pg[0]:
        line("hist_overwrite_growth", f"4 KiB overwritten in a {sizes['SEQ_MIB']} MiB file: growth (MiB)", ng, pg,
             "<= 1 MiB", pg[0]["median"] <= MIB, MIB)
    nc, pc = st("hist_overwrite_close", "native", "seconds"), st("hist_overwrite_close", "pond", "seconds")
    if pc[0]:
        line("hist_overwrite_close", "  its close (ms)", nc, pc, "<= 100 ms", pc[0]["median"] <= 0.1, 1e-3)
    # 3. rsync of an edit
    ng, pg = st("hist_rsync_growth", "native", "bytes"), st("hist_rsync_growth", "pond", "bytes")
    if pg[0]:
        changed = pg[1][0]["bytes"]
        line("hist_rsync_growth", f"rsync -a of the file, {changed / MIB:.0f} MiB changed: growth (MiB)", ng, pg,
             f"<= 2x changed = {2 * changed / MIB:.0f} MiB", pg[0]["median"] <= 2 * changed, MIB)
    nt, pt = st("hist_rsync_edit", "native", "seconds"), st("hist_rsync_edit", "pond", "seconds")
    if pt[0]:
        out.append(f"{'  its time (s)':<58} {(mmm(nt[0]) if nt[0] else ''):>26} {mmm(pt[0]):>26}")
    # 4. sqlite
    ng, pg = st("hist_sqlite_growth", "native", "bytes"), st("hist_sqlite_growth", "pond", "bytes")
    if pg[0]:
        db = pg[1][0]["bytes"]
        line("hist_sqlite_growth", f"sqlite {db / 1e6:.0f} MB + {sizes['SQLITE_TX']} transactions: growth (MiB)", ng, pg,
             f"<= 3x the database = {3 * db / MIB:.0f} MiB", pg[0]["median"] <= 3 * db, MIB)
    nt, pt = st("hist_sqlite_tx", "native", "seconds"), st("hist_sqlite_tx", "pond", "seconds")
    if nt[0] and pt[0]:
        line("hist_sqlite_tx", f"  the {sizes['SQLITE_TX']} transactions (s)", nt, pt,
             f"<= 10x native = {10 * nt[0]['median']:.3f} s", pt[0]["median"] <= 10 * nt[0]["median"], 1)
    # 5. prune
    nf, pf = st("hist_final_store", "native", "bytes"), st("hist_final_store", "pond", "bytes")
    if nf[0] and pf[0]:
        out.append(f"{'everything, before prune: stored (MiB)':<58} {mmm(nf[0], 1 / MIB):>26} {mmm(pf[0], 1 / MIB):>26}")
    pp = st("hist_prune_store", "pond", "bytes")
    if nf[0] and pp[0]:
        line("hist_prune_store", "pond prune --keep-last 1: stored (MiB)", nf, pp, "<= 1.2x native",
             pp[0]["median"] <= 1.2 * nf[0]["median"], MIB)
    elif nf[0] and by.get(("hist_prune_store", "pond", "not_run")):
        line("hist_prune_store", "pond prune --keep-last 1: stored (MiB)", nf, None,
             "<= 1.2x native (pond prune not available)", None, MIB)
    return out


def chart(rows, meta, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    bars = [r for r in rows if r["group"] == "targets"]
    peers = [r for r in rows if r["group"] == "peers"]
    labels = [r["label"] for r in bars] + [r["label"] for r in peers]
    pt = [r["ratio_to_passthrough"] for r in bars] + [r["ratio_to_cp"] for r in peers]
    nat = [r["ratio_to_native"] for r in bars] + [None for _ in peers]

    def err(r, base):
        lo, hi = r[f"ratio_span_{base}"]
        mid = r[f"ratio_to_{base}"]
        return max(0.0, mid - lo), max(0.0, hi - mid)

    pt_err = [err(r, "passthrough") for r in bars] + [(0, 0) for _ in peers]
    nat_err = [err(r, "native") for r in bars] + [(0, 0) for _ in peers]
    def goal(r, base):
        g = next((g for g in r["goals"] if g["baseline"] == base), None)
        return None if g is None else g["value"] if g["kind"] == ">=" else 1.0 / g["value"]

    goals = [goal(r, "passthrough") for r in bars] + [float(r["goal"].split()[1]) for r in peers]
    nat_goals = [goal(r, "native") for r in bars] + [None for _ in peers]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(labels) + 1.8))
    ys = range(len(labels))
    ax.barh([y + 0.2 for y in ys], pt, height=0.4, color="#2a7ab0",
            xerr=[[e[0] for e in pt_err], [e[1] for e in pt_err]], error_kw=dict(lw=0.8, capsize=2),
            label="pond / passthrough (replica rows: pond / cp -r)")
    ax.barh([y - 0.2 for y in ys], [v or 0 for v in nat], height=0.4, color="#a6cee3",
            xerr=[[e[0] for e in nat_err], [e[1] for e in nat_err]], error_kw=dict(lw=0.8, capsize=2),
            label="pond / native")
    for y, g, gn in zip(ys, goals, nat_goals):
        if g is not None:
            ax.plot([g, g], [y + 0.0, y + 0.42], color="#d62728", lw=2)
        if gn is not None:
            ax.plot([gn, gn], [y - 0.42, y - 0.0], color="#ff7f0e", lw=2)
    ax.plot([], [], color="#d62728", lw=2, label="goal vs passthrough (cp -r)")
    ax.plot([], [], color="#ff7f0e", lw=2, label="goal vs native")
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_yticks(list(ys))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator([0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("pond's speed relative to the baseline, median of rounds; whiskers: round-by-round range (> 1 is faster)")
    ax.set_title(f"pond benchmark, {meta['started'][:10]}, commit {meta['commit']}, {meta['cpus']} cores, "
                 f"{meta['rounds']} rounds", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
