"""Wait until the machine is quiet enough to start a timed benchmark step; say what it waited for.

    bench_quiet.py [--pid PID]... [--timeout S] [--dirty-kb N] [--busy F] [--window S] [--daemon-only]

Quiet means, all within one window (default 0.5 s):
  - Dirty + Writeback in /proc/meminfo at most --dirty-kb (default 8192), sync(2) called whenever
    they are above it;
  - the CPU time (utime + stime, all threads) of every --pid did not advance;
  - the whole machine's CPU (every state but idle; iowait counts as busy: a disk still working) was
    busy at most --busy of its capacity (default 0.10, i.e. 10% of all cores).
--daemon-only waits for the --pid condition alone (used right after a step, so that the daemon's
CPU for the work the step left behind is counted).

Prints one line of JSON on stdout: ok (false on timeout), waited (s), the last window's figures and,
on timeout, which conditions held it and in how many windows. Prints a line on stderr when it
waited more than 2 s or timed out, naming the cause. Exit status 0 either way: a timeout is
reported, and bench.sh records it with the figure it precedes.
"""

import argparse
import json
import os
import sys
import time

TCK = os.sysconf("SC_CLK_TCK")


def meminfo():
    m = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            if k in ("Dirty", "Writeback"):
                m[k] = int(v.split()[0])
    return m["Dirty"], m["Writeback"]


def cpu_total():
    """(busy, total) jiffies over all CPUs; iowait counts as busy."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest and guest_nice are inside user/nice)
    total = sum(fields[:8])
    return total - fields[3], total


def proc_ticks(pid):
    """utime + stime of a process (the kernel sums its threads), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(rest[11]) + int(rest[12])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, action="append", default=[])
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--dirty-kb", type=int, default=8192)
    ap.add_argument("--busy", type=float, default=0.10)
    ap.add_argument("--window", type=float, default=0.5)
    ap.add_argument("--daemon-only", action="store_true")
    ap.add_argument("--what", default="", help="the step waited for, for the stderr line")
    a = ap.parse_args()

    start = time.monotonic()
    held = {"dirty": 0, "daemon": 0, "cpu": 0}
    windows = 0
    said = False
    while True:
        dirty, wb = meminfo()
        if not a.daemon_only and dirty + wb > a.dirty_kb:
            os.sync()
        b0, t0 = cpu_total()
        p0 = {p: proc_ticks(p) for p in a.pid}
        time.sleep(a.window)
        b1, t1 = cpu_total()
        p1 = {p: proc_ticks(p) for p in a.pid}
        dirty, wb = meminfo()
        busy = (b1 - b0) / max(1, t1 - t0)
        daemon = {p: (p1[p] - p0[p]) / TCK for p in a.pid if p0[p] is not None and p1[p] is not None}
        windows += 1
        bad = []
        if any(v > 0 for v in daemon.values()):
            bad.append("daemon")
        if not a.daemon_only:
            if dirty + wb > a.dirty_kb:
                bad.append("dirty")
            if busy > a.busy:
                bad.append("cpu")
        for k in bad:
            held[k] += 1
        waited = time.monotonic() - start
        state = dict(dirty_kb=dirty, writeback_kb=wb, cpu_busy=round(busy, 3),
                     daemon_cpu_s={str(p): round(v, 2) for p, v in daemon.items()})
        if not bad:
            out = dict(ok=True, waited=round(waited, 2), **state)
            if said or waited > 2:
                print(f"  quiet after {waited:.1f} s{(' (' + a.what + ')') if a.what else ''}", file=sys.stderr)
            print(json.dumps(out))
            return
        if waited >= a.timeout:
            why = ", ".join(f"{k} in {n}/{windows} windows" for k, n in held.items() if n)
            out = dict(ok=False, waited=round(waited, 2), held=why, **state)
            print(f"  QUIET TIMEOUT after {waited:.0f} s{(' (' + a.what + ')') if a.what else ''}: not quiet ({why}); "
                  f"last window: dirty+writeback {(dirty + wb) // 1024} MiB, CPU busy {busy:.0%}, daemon CPU "
                  f"{sum(daemon.values()):.2f} s/{a.window} s; the figure is recorded with this timeout",
                  file=sys.stderr)
            print(json.dumps(out))
            return
        if not said and waited > 2:
            said = True
            print(f"  waiting for quiet{(' (' + a.what + ')') if a.what else ''}: " + ", ".join(
                {"dirty": f"dirty+writeback {(dirty + wb) // 1024} MiB > {a.dirty_kb // 1024} MiB",
                 "daemon": f"daemon CPU {sum(daemon.values()):.2f} s in {a.window} s",
                 "cpu": f"CPU busy {busy:.0%} > {a.busy:.0%}"}[k] for k in bad), file=sys.stderr)


if __name__ == "__main__":
    main()
