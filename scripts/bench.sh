#!/usr/bin/env bash
# pond's benchmark: the same workloads on (a) the native directory, (b) libfuse's passthrough_ll
# example over a native directory (compiled here from Debian's libfuse3-dev) and (c) a pond mount
# (release build), plus pond-only figures and the `history` group (pond against the native
# directory). Prints a table of min/median/max per figure with pond / passthrough and pond / native
# side by side and each goal met or missed, writes results/bench-<time>.json (+ results/latest.json)
# and draws results/bench.png.
#
#   scripts/bench.sh                  # the default run: about 20 minutes on 2 cores (estimated; it
#                                     # prints what it took) once its inputs and the 100,000-file
#                                     # pond are cached in BENCH_DIR (the first run makes them:
#                                     # about 5 minutes more)
#   ONLY="seq tar" scripts/bench.sh   # some groups only
#   SEQ_MIB=64 ROUNDS=1 QUIET_TIMEOUT=5 ONLY=history scripts/bench.sh   # a quick check that it works
#
# The method (why: README, "Benchmark"):
# - One target mounted at a time: for each group, round and target, the target is mounted on fresh
#   directories, the group's steps run, the target is unmounted and its files removed.
# - Targets alternate: round r runs them in an order rotated by r, so each is first, middle and last.
# - Before every timed step: sync (and drop caches where the step is a cold read or a write), then wait until the
#   machine is quiet (scripts/bench_quiet.py): Dirty + Writeback <= QUIET_DIRTY_KB, the target's
#   daemon using no CPU and the machine's CPU busy <= QUIET_BUSY, over one 0.5 s window. A wait
#   longer than QUIET_TIMEOUT seconds is printed, recorded with the figure and marked in the table.
# - Inputs live on a private tmpfs (BENCH_DIR/inputs, unmounted at exit), so dropping caches or
#   the kernel's reclaim never turns a step's source into disk reads.
# - After every step the daemon is given time to finish what the step left (commits): its CPU
#   (utime + stime of the daemon and its threads, /proc/PID/stat) is read before the step and after
#   that, and reported per GiB written and read.
# - During every step, the CPU that other processes used (the machine's user+system time minus the
#   step's processes, the daemon and kernel threads) is recorded; a figure where it passed 10% of
#   the machine is marked `+` in the table (`*`: the quiet wait before it timed out).
# - ROUNDS (default 3, at least 3 for a result) of everything; each figure min/median/max.
#
# Groups (ONLY): seq (dd, cp, cold read, fio), tar, rsync, tree (find, ls -lR, rm -rf), latency,
# history (pond and native: appends, an overwrite, rsync of an edit, sqlite, replicate, prune),
# mount (pond of BIG_FILES files and BIG_COMMITS commits), rss, replica (vs cp -r and restic),
# remote (a replica mounted from a local S3 server: scripts/bench-remote.sh; not in the default run).
# Sizes: SEQ_MIB (1024; also the history group's large file), FIO_SECS (10), SMALL_FILES (10000) x
# SMALL_KIB (4), MEDIUM_FILES (1000) x MEDIUM_KIB (200), TREE_MIB (~200, the rsync tree), LAT_OPS
# (2000), HIST_FILE_MIB (100) + HIST_APPENDS (20) x 1 MiB, HIST_CHANGED_MIB (4), SQLITE_MB (10),
# SQLITE_TX (100), BIG_FILES (100000), BIG_COMMITS (10000), RSS_MIB (4096), REPLICA_MIB (2048).
# Quiet: QUIET_TIMEOUT (30 s), QUIET_DIRTY_KB (8192), QUIET_BUSY (0.10 of all cores).
# Work dir: BENCH_DIR (default ~/.cache/pond-bench-main). Results: RESULTS_DIR (default results/).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pond-target}
SEQ_MIB=${SEQ_MIB:-1024} FIO_SECS=${FIO_SECS:-10}
SMALL_FILES=${SMALL_FILES:-10000} SMALL_KIB=${SMALL_KIB:-4}
MEDIUM_FILES=${MEDIUM_FILES:-1000} MEDIUM_KIB=${MEDIUM_KIB:-200}
TREE_MIB=${TREE_MIB:-200} LAT_OPS=${LAT_OPS:-2000}
HIST_FILE_MIB=${HIST_FILE_MIB:-100} HIST_APPENDS=${HIST_APPENDS:-20} HIST_CHANGED_MIB=${HIST_CHANGED_MIB:-4}
SQLITE_MB=${SQLITE_MB:-10} SQLITE_TX=${SQLITE_TX:-100}
BIG_FILES=${BIG_FILES:-100000} BIG_COMMITS=${BIG_COMMITS:-10000}
RSS_MIB=${RSS_MIB:-4096} REPLICA_MIB=${REPLICA_MIB:-2048}
ROUNDS=${ROUNDS:-3}
QUIET_TIMEOUT=${QUIET_TIMEOUT:-30} QUIET_DIRTY_KB=${QUIET_DIRTY_KB:-8192} QUIET_BUSY=${QUIET_BUSY:-0.10}
ONLY=${ONLY:-seq tar rsync tree latency history mount rss replica}
work=${BENCH_DIR:-$HOME/.cache/pond-bench-main}
results=${RESULTS_DIR:-$repo/results}
((ROUNDS >= 1)) || { echo "bench.sh: ROUNDS must be at least 1" >&2; exit 2; }
# The remote group (issue 14) is its own script, scripts/bench-remote.sh: it needs the local S3
# server, a delaying proxy and inputs of its own. It runs after the others, with the same rounds
# and quiet settings, and writes its own results (results/remote-latest.json).
remote_group() {
    ROUNDS=$ROUNDS QUIET_TIMEOUT=$QUIET_TIMEOUT QUIET_BUSY=$QUIET_BUSY RESULTS_DIR=$results bash scripts/bench-remote.sh
}
run_remote=0
if [[ " $ONLY " == *" remote "* ]]; then
    run_remote=1
    ONLY=" $ONLY "; ONLY=${ONLY// remote / }
    if [[ -z "${ONLY// /}" ]]; then remote_group; exit; fi
fi

need=()
for tool in fusermount3:fuse3 pkg-config:pkg-config fio:fio restic:restic rsync:rsync bc:bc fincore:util-linux \
    sqlite3:sqlite3 /usr/bin/time:time; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
[[ -f /usr/share/doc/libfuse3-dev/examples/passthrough_ll.c ]] || need+=(libfuse3-dev)
if ((${#need[@]})); then
    echo "bench.sh: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[[ -e /dev/fuse ]] || { echo "bench.sh: /dev/fuse is missing: the benchmark mounts FUSE filesystems" >&2; exit 1; }
venv=$HOME/.cache/pond-venv-bench
if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    echo "bench.sh: making $venv with matplotlib" >&2
    python3 -m venv "$venv" && "$venv/bin/pip" install -q matplotlib
fi

cargo build --release --locked -q
pond=$CARGO_TARGET_DIR/release/pond
mkdir -p "$work/bin" "$work/data" "$results"
ex=/usr/share/doc/libfuse3-dev/examples
if [[ ! -x $work/bin/passthrough_ll || $ex/passthrough_ll.c -nt $work/bin/passthrough_ll ]]; then
    cp "$ex/passthrough_ll.c" "$ex/passthrough_helpers.h" "$work/bin/"
    gcc -O2 -Wall "$work/bin/passthrough_ll.c" $(pkg-config fuse3 --cflags --libs) -o "$work/bin/passthrough_ll"
fi

run=$work/run
inputs=$work/inputs
records=$work/records.jsonl
: >"$records"
mounts=() daemons=()
log() { printf '%s\n' "$*" >&2; }
# is_mounted DIR: in the mount table, even when its FUSE daemon is gone (mountpoint(1) fails there)
is_mounted() { grep -qF " $1 " /proc/self/mountinfo; }
cleanup() {
    local m p
    for m in "${mounts[@]}"; do
        is_mounted "$m" || continue
        timeout 120 "$pond" umount "$m" 2>/dev/null || fusermount3 -u "$m" 2>/dev/null || umount -l "$m" || true
    done
    for p in "${daemons[@]}"; do # a daemon this script started and still serving under BENCH_DIR, by pid
        [[ -r /proc/$p/cmdline ]] && tr '\0' ' ' <"/proc/$p/cmdline" | grep -qF -- "$work/" || continue
        log "bench.sh: stopping daemon $p, still running after its unmount"
        kill "$p" 2>/dev/null || true
    done
    if is_mounted "$inputs"; then umount "$inputs" || umount -l "$inputs" || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Mounts a killed earlier run left behind (rm -rf must never walk into a live or dead FUSE mount).
for m in "$run/pt" "$run/pond-mnt" "$inputs"; do
    if is_mounted "$m"; then
        log "bench.sh: unmounting $m, left by an earlier run"
        fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || umount -l "$m"
    fi
done

# --- helpers -------------------------------------------------------------------------------------
since() { printf '%.6f' "$(echo "$EPOCHREALTIME - $1" | bc)"; }
wait_mounted() {
    local i
    for i in $(seq 100); do mountpoint -q "$1" && return 0; sleep 0.1; done
    log "bench.sh: $1 did not come up"; return 1
}
du_bytes() { du -sb --exclude=_pond "$1" | cut -f1; }
wants() { [[ " $ONLY " == *" $1 "* ]]; }
tck=$(getconf CLK_TCK)

# The state every record carries: the round, the target's place in the round's order, and what the
# quiet wait before the step found (JSON from bench_quiet.py).
round=0 place=0 quiet_json=null settle_json=null beside_json=null
daemon_pid=
# record WORKLOAD TARGET METRIC VALUE [BYTES]
record() {
    printf '{"workload":"%s","target":"%s","metric":"%s","value":%s,"bytes":%s,"round":%s,"place":%s,"quiet":%s,"settle":%s,"beside":%s}\n' \
        "$1" "$2" "$3" "$4" "${5:-null}" "$round" "$place" "$quiet_json" "$settle_json" "$beside_json" >>"$records"
    local mark=""
    [[ $quiet_json == *'"ok": false'* ]] && mark="  (after a quiet timeout)"
    [[ $settle_json == *'"ok": false'* ]] && mark+="  (the daemon did not settle)"
    if [[ $beside_json == *'"busy": true'* ]]; then
        local other=${beside_json#*other_cpu_s\": }
        mark+="  (other processes used ${other%%,*} CPU-s meanwhile)"
    fi
    log "  $(printf '%-26s %-12s %12s %s' "$1" "$2" "$4" "$3")$mark"
}
daemon_ticks() { # utime + stime of the target's daemon (all its threads), 0 without one
    [[ -n $daemon_pid ]] || { echo 0; return; }
    local line rest
    read -r line <"/proc/$daemon_pid/stat"
    rest=${line##*) }
    set -- $rest
    echo $((${12} + ${13}))
}
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# cpu_snapshot: sets snap (ticks): the machine's user+nice+system, all kernel threads' (writeback,
# journal, reclaim: work a step causes), and this shell's own with its waited-for children (every
# step's processes). Called in this shell, not a subshell, so that its children are this shell's.
cpu_snapshot() {
    local line r f u n sy ks=0
    read -r _ u n sy _ </proc/stat
    for f in /proc/[0-9]*/stat; do
        read -r line 2>/dev/null <"$f" || continue
        r=${line##*) }
        set -- $r
        [[ $2 == 2 ]] && ks=$((ks + ${12} + ${13}))
    done
    read -r line <"/proc/$$/stat"
    r=${line##*) }
    set -- $r
    snap=($((u + n + sy)) "$ks" $((${12} + ${13} + ${14} + ${15})))
}
# beside S0... S1... SPAN DAEMON_TICKS: beside_json for a step: CPU seconds that neither the step's
# processes, nor the daemon, nor kernel threads used during it (other processes on the machine);
# "busy" when that is over 10% of the machine's capacity for the step's span (and over 0.05 s).
beside() {
    local b0=$1 k0=$2 o0=$3 b1=$4 k1=$5 o1=$6 span=$7 dt=$8
    beside_json=$(awk -v b="$((b1 - b0))" -v k="$((k1 - k0))" -v o="$((o1 - o0))" -v d="$dt" -v t="$tck" \
        -v span="$span" -v n="$(nproc)" 'BEGIN {
            other = (b - k - o - d) / t; if (other < 0) other = 0
            printf "{\"other_cpu_s\": %.2f, \"kernel_threads_s\": %.2f, \"span_s\": %.2f, \"busy\": %s}",
                other, k / t, span, (other > 0.1 * span * n && other > 0.05 ? "true" : "false") }')
}
# quiet WHAT: wait (bounded) for a quiet machine; sets quiet_json for the next records.
quiet() {
    local pids=()
    [[ -n $daemon_pid ]] && pids=(--pid "$daemon_pid")
    quiet_json=$(python3 "$repo/scripts/bench_quiet.py" "${pids[@]}" --timeout "$QUIET_TIMEOUT" \
        --dirty-kb "$QUIET_DIRTY_KB" --busy "$QUIET_BUSY" --what "$1")
}
# settle: after a step, wait (up to 30 s) until the daemon's CPU stops advancing, so that its CPU
# figure includes the work the step left behind (a commit after a close).
settle() {
    settle_json=null
    [[ -n $daemon_pid ]] || return 0
    settle_json=$(python3 "$repo/scripts/bench_quiet.py" --pid "$daemon_pid" --daemon-only --timeout 30 \
        --what "after ${1:-a step}: the daemon finishing")
}
# measure WORKLOAD TARGET METRIC BYTES PREP CMD...: one figure.
#   METRIC seconds: the wall time of CMD; =METRIC: CMD prints the value (=seconds: seconds it
#   timed itself, without an interpreter's start).
#   PREP: cold (sync, drop caches: a read that must come from disk), clean (the same, before a
#   write: the page cache holds nothing of earlier steps, so no target pays for reclaiming what
#   another left; on this VM a write into a full page cache ran the passthrough's dd 2.4x and
#   native's 2.6x slower than into an empty one, pond's no slower) or warm (sync only); then the
#   quiet wait.
# For a target with a daemon, also records METRIC daemon_cpu_s: its CPU from the step's start until
# it settles.
measure() {
    local w=$1 t=$2 metric=$3 b=$4 prep=$5 s v c0 c1
    shift 5
    sync
    [[ $prep == cold || $prep == clean ]] && echo 3 >/proc/sys/vm/drop_caches
    quiet "before $w on $t"
    c0=$(daemon_ticks)
    cpu_snapshot
    local snap0=("${snap[@]}")
    s=$EPOCHREALTIME
    if [[ $metric == seconds ]]; then
        "$@" >/dev/null
        v=$(since "$s")
    else
        v=$("$@")
        metric=${metric#=}
    fi
    settle "$w"
    c1=$(daemon_ticks)
    cpu_snapshot
    beside "${snap0[@]}" "${snap[@]}" "$(since "$s")" $((c1 - c0))
    record "$w" "$t" "$metric" "$v" "$b"
    [[ -z $daemon_pid ]] || record "$w" "$t" daemon_cpu_s "$(awk -v a="$c0" -v b="$c1" -v t="$tck" 'BEGIN { printf "%.2f", (b - a) / t }')" "$b"
}

# The targets, mounted one at a time on fresh directories. dir[TARGET] is where the workloads run.
declare -A dir
mount_target() {
    local t=$1
    rm -rf "$run"
    mkdir -p "$run"
    case $t in
    native)
        mkdir "$run/native"
        dir[$t]=$run/native daemon_pid=
        ;;
    passthrough)
        mkdir "$run/pt-src" "$run/pt"
        mounts+=("$run/pt")
        "$work/bin/passthrough_ll" -f -o source="$run/pt-src" "$run/pt" 2>>"$work/passthrough.log" &
        daemon_pid=$!
        daemons+=("$daemon_pid")
        wait_mounted "$run/pt"
        dir[$t]=$run/pt
        ;;
    pond)
        mkdir "$run/pond-mnt"
        "$pond" init "$run/pond" >/dev/null
        mounts+=("$run/pond-mnt")
        "$pond" mount "$run/pond" "$run/pond-mnt"
        daemon_pid=$(pgrep -fx -- "$pond mount $run/pond $run/pond-mnt" | head -1)
        [[ -n $daemon_pid ]] || { log "bench.sh: no daemon found for $run/pond-mnt"; exit 1; }
        daemons+=("$daemon_pid")
        dir[$t]=$run/pond-mnt
        ;;
    esac
}
unmount_target() {
    case $1 in
    passthrough) fusermount3 -u "$run/pt"; wait "$daemon_pid" 2>/dev/null || true ;;
    pond) "$pond" umount "$run/pond-mnt" ;;
    esac
    daemon_pid=
    rm -rf "$run"
}
targets=(native passthrough pond)
order() { # order ROUND TARGET...: the targets rotated by ROUND
    local r=$1
    shift
    local a=("$@") n=$#
    local i
    for ((i = 0; i < n; i++)); do echo "${a[(i + r - 1) % n]}"; done
}

# --- inputs: made once in BENCH_DIR/data, staged on a private tmpfs for the run -----------------
gen() { # gen NAME SCRIPT: run the python SCRIPT once to make $work/data/NAME
    [[ -e $work/data/$1 ]] || { log "making input $1"; (cd "$work/data" && python3 -c "$2") && touch "$work/data/$1.done"; }
    [[ -e $work/data/$1.done ]] || { log "bench.sh: input $1 is incomplete; remove $work/data/$1"; exit 1; }
}
random_file() { # random_file NAME MIB
    gen "$1" "
import os
with open('$1.tmp', 'wb') as f:
    for _ in range($2): f.write(os.urandom(1 << 20))
os.rename('$1.tmp', '$1')"
}
# Two different files, so that pond cannot deduplicate the cp against the dd.
seq_in=seq-$SEQ_MIB.bin seq_cp_in=seq-$SEQ_MIB-b.bin
hist_in=hist-$((HIST_FILE_MIB + HIST_APPENDS)).bin
staged=()
if wants seq || wants history; then random_file "$seq_in" "$SEQ_MIB"; staged+=("$seq_in"); fi
if wants seq; then random_file "$seq_cp_in" "$SEQ_MIB"; staged+=("$seq_cp_in"); fi
if wants history; then random_file "$hist_in" $((HIST_FILE_MIB + HIST_APPENDS)); staged+=("$hist_in"); fi
mk_tar='
import os, random, sys, tarfile, io
name, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with tarfile.open(name + ".tmp", "w") as t:
    for i in range(n):
        data = os.urandom(kib * 1024)
        info = tarfile.TarInfo(f"d{i % 100:02d}/f{i:06d}"); info.size = len(data); info.mode = 0o644; info.mtime = 1700000000
        t.addfile(info, io.BytesIO(data))
os.rename(name + ".tmp", name)'
small_tar=small-${SMALL_FILES}x${SMALL_KIB}k.tar medium_tar=medium-${MEDIUM_FILES}x${MEDIUM_KIB}k.tar
if wants tar || wants tree; then
    [[ -e $work/data/$small_tar ]] || (cd "$work/data" && python3 -c "$mk_tar" "$small_tar" "$SMALL_FILES" "$SMALL_KIB" && touch "$small_tar.done")
    staged+=("$small_tar")
fi
if wants tar; then
    [[ -e $work/data/$medium_tar ]] || (cd "$work/data" && python3 -c "$mk_tar" "$medium_tar" "$MEDIUM_FILES" "$MEDIUM_KIB" && touch "$medium_tar.done")
    staged+=("$medium_tar")
fi
mk_tree='
import os, random, sys
root, mib = sys.argv[1], int(sys.argv[2])
random.seed(7); total = 0; i = 0
# A mixed tree: most files small (1-16 KiB), some medium (100 KiB-2 MiB), a few of 16 MiB.
while total < mib << 20:
    r = random.random()
    size = random.randint(1024, 16384) if r < 0.9 else random.randint(100 << 10, 2 << 20) if r < 0.995 else 16 << 20
    d = os.path.join(root, f"d{i % 40}", f"e{i % 7}"); os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.dat"), "wb") as f: f.write(os.urandom(size))
    total += size; i += 1'
tree_in=tree-$TREE_MIB
if wants rsync; then
    [[ -e $work/data/$tree_in.done ]] || { rm -rf "$work/data/$tree_in"; python3 -c "$mk_tree" "$work/data/$tree_in" "$TREE_MIB"; touch "$work/data/$tree_in.done"; }
    staged+=("$tree_in")
fi
seq_bytes=$((SEQ_MIB << 20))

if ((${#staged[@]})); then
    edit_kb=0
    wants history && edit_kb=$((SEQ_MIB << 10)) # the edited copy of the large file
    need_kb=$(($(du -sk "${staged[@]/#/$work/data/}" | awk '{s += $1} END {print s}') + edit_kb + 65536))
    avail_kb=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
    if ((need_kb + (4 << 20) > avail_kb)); then
        log "bench.sh: the inputs need $((need_kb >> 10)) MiB of tmpfs and 4 GiB must stay free; $((avail_kb >> 10)) MiB available"
        exit 1
    fi
    mkdir -p "$inputs"
    mount -t tmpfs -o size=$((need_kb))k,mode=0755 bench-inputs "$inputs"
    log "staging inputs on a tmpfs ($((need_kb >> 10)) MiB): ${staged[*]}"
    for f in "${staged[@]}"; do cp -a "$work/data/$f" "$inputs/"; done
fi

echo "{\"started\":\"$(date -Is)\",\"kernel\":\"$(uname -r)\",\"cpus\":$(nproc),\"commit\":\"$(git rev-parse --short HEAD)\",\"rounds\":$ROUNDS,\"only\":\"$ONLY\",\"quiet\":{\"timeout_s\":$QUIET_TIMEOUT,\"dirty_kb\":$QUIET_DIRTY_KB,\"busy\":$QUIET_BUSY},\"sizes\":{\"SEQ_MIB\":$SEQ_MIB,\"FIO_SECS\":$FIO_SECS,\"SMALL_FILES\":$SMALL_FILES,\"SMALL_KIB\":$SMALL_KIB,\"MEDIUM_FILES\":$MEDIUM_FILES,\"MEDIUM_KIB\":$MEDIUM_KIB,\"TREE_MIB\":$TREE_MIB,\"LAT_OPS\":$LAT_OPS,\"HIST_FILE_MIB\":$HIST_FILE_MIB,\"HIST_APPENDS\":$HIST_APPENDS,\"HIST_CHANGED_MIB\":$HIST_CHANGED_MIB,\"SQLITE_MB\":$SQLITE_MB,\"SQLITE_TX\":$SQLITE_TX,\"BIG_FILES\":$BIG_FILES,\"BIG_COMMITS\":$BIG_COMMITS,\"RSS_MIB\":$RSS_MIB,\"REPLICA_MIB\":$REPLICA_MIB}}" >"$work/meta.json"
run_start=$EPOCHREALTIME

# --- the three targets, one mounted at a time --------------------------------------------------
fio_iops() { # fio_iops FILE JOBS
    fio --name=randread --filename="$1" --readonly --rw=randread --bs=4k --ioengine=psync --numjobs="$2" \
        --time_based --runtime="$FIO_SECS" --group_reporting --output-format=json 2>/dev/null |
        python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))'
}
latency_us() { # median microseconds of open(O_CREAT|O_TRUNC)+write(1 byte)+close, over LAT_OPS files
    python3 - "$1" "$LAT_OPS" <<'PY'
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2]); os.makedirs(d, exist_ok=True); lat = []
for i in range(n):
    s = time.perf_counter_ns()
    fd = os.open(os.path.join(d, f"l{i}"), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644); os.write(fd, b"x"); os.close(fd)
    lat.append(time.perf_counter_ns() - s)
lat.sort(); print(round(lat[len(lat) // 2] / 1000, 1))
PY
}

group_seq() {
    local t=$1 d=$2
    measure seq_write_dd "$t" seconds $seq_bytes clean dd if="$inputs/$seq_in" of="$d/seq.bin" bs=1M conv=fsync status=none
    measure seq_write_cp "$t" seconds $seq_bytes clean cp "$inputs/$seq_cp_in" "$d/seq-cp.bin"
    measure seq_read_cold "$t" seconds $seq_bytes cold dd if="$d/seq.bin" of=/dev/null bs=1M status=none
    measure rand_read_4k_1job "$t" =iops 0 cold fio_iops "$d/seq.bin" 1
    measure rand_read_4k_4jobs "$t" =iops 0 cold fio_iops "$d/seq.bin" 4
}
group_tar() {
    local t=$1 d=$2
    mkdir -p "$d/small" "$d/medium"
    measure tar_x_small "$t" seconds $((SMALL_FILES * SMALL_KIB * 1024)) clean tar -xf "$inputs/$small_tar" -C "$d/small"
    measure tar_x_medium "$t" seconds $((MEDIUM_FILES * MEDIUM_KIB * 1024)) clean tar -xf "$inputs/$medium_tar" -C "$d/medium"
}
group_rsync() {
    local t=$1 d=$2
    measure rsync_initial "$t" seconds "$(du_bytes "$inputs/$tree_in")" clean rsync -a "$inputs/$tree_in/" "$d/tree/"
    measure rsync_no_change "$t" seconds 0 warm rsync -a "$inputs/$tree_in/" "$d/tree/"
}
group_tree() {
    local t=$1 d=$2
    mkdir -p "$d/small"
    tar -xf "$inputs/$small_tar" -C "$d/small" # untimed: the tree the steps walk
    measure find_10k "$t" seconds 0 cold sh -c "find '$d/small' >/dev/null"
    measure ls_lR_10k "$t" seconds 0 cold sh -c "ls -lR '$d/small' >/dev/null"
    measure rm_rf_10k "$t" seconds 0 warm rm -rf "$d/small"
}
group_latency() {
    local t=$1 d=$2
    measure create_1byte_latency "$t" =us 0 warm latency_us "$d/lat"
}

for g in seq tar rsync tree latency; do
    wants "$g" || continue
    for ((round = 1; round <= ROUNDS; round++)); do
        place=0
        for t in $(order "$round" "${targets[@]}"); do
            place=$((place + 1))
            log "== $g, round $round/$ROUNDS: $t"
            mount_target "$t"
            "group_$g" "$t" "${dir[$t]}"
            unmount_target "$t"
        done
    done
done
round=0 place=0

# --- history: pond and native, the store against the native directory's size -------------------
# One round on one target: a file that grows by appends, an edit in the middle of a large file,
# rsync of an edited copy, a sqlite database, then (pond) replicate and prune. Sizes of the store
# are taken once the daemon is idle (what it commits is in).
store_bytes() { # the target's stored bytes: pond's store without _pond/, or the native directory
    if [[ $1 == pond ]]; then du_bytes "$run/pond"; else du -sb "$run/native" | cut -f1; fi
}
record_value() { # record_value WORKLOAD TARGET METRIC VALUE [BYTES]: a figure that is not timed
    local q=$quiet_json s=$settle_json o=$beside_json
    quiet_json=null settle_json=null beside_json=null
    record "$@"
    quiet_json=$q settle_json=$s beside_json=$o
}
appends() { # appends FILE SOURCE: HIST_APPENDS appends of 1 MiB, each its own open/append/close; prints their seconds
    python3 - "$1" "$2" "$HIST_FILE_MIB" "$HIST_APPENDS" <<'PY'
import os, sys, time
path, src, base, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with open(src, "rb") as f:
    f.seek(base << 20); chunks = [f.read(1 << 20) for _ in range(n)]
s = time.perf_counter()
for c in chunks:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, c); os.close(fd)
print(f"{time.perf_counter() - s:.6f}")
PY
}
overwrite_close_s() { # overwrite_close_s FILE: 4 KiB written in the middle; prints the close's seconds
    python3 - "$1" <<'PY'
import os, sys, time
path = sys.argv[1]
size = os.stat(path).st_size
fd = os.open(path, os.O_WRONLY)
os.pwrite(fd, os.urandom(4096), size // 2 + 1000)
s = time.perf_counter(); os.close(fd); print(f"{time.perf_counter() - s:.6f}")
PY
}
commit_s() { # commit_s DIR: median seconds of write 1 byte + fsync + close of a small file, 5 times
    python3 - "$1" <<'PY'
import os, sys, time
d = sys.argv[1]; ts = []
for i in range(5):
    s = time.perf_counter()
    fd = os.open(os.path.join(d, "commit-probe"), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    os.write(fd, str(i).encode()); os.fsync(fd); os.close(fd)
    ts.append(time.perf_counter() - s)
os.unlink(os.path.join(d, "commit-probe"))
print(f"{sorted(ts)[2]:.6f}")
PY
}
sqlite_make() { # sqlite_make DB: a SQLITE_MB database of 1000-byte rows, in one transaction
    python3 - "$1" "$SQLITE_MB" <<'PY'
import os, sqlite3, sys
db, mb = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db)
c.execute("create table t (id integer primary key, v blob)")
with c:
    c.executemany("insert into t (v) values (?)", ((os.urandom(1000),) for _ in range(mb * 1000)))
c.close()
PY
}
sqlite_tx() { # sqlite_tx DB: SQLITE_TX transactions of one row each (an update of a random row); prints their seconds
    python3 - "$1" "$SQLITE_TX" <<'PY'
import os, random, sqlite3, sys, time
db, n = sys.argv[1], int(sys.argv[2])
random.seed(13)
c = sqlite3.connect(db)
rows = c.execute("select max(id) from t").fetchone()[0]
s = time.perf_counter()
for _ in range(n):
    with c:
        c.execute("update t set v = ? where id = ?", (os.urandom(1000), random.randint(1, rows)))
print(f"{time.perf_counter() - s:.6f}")
c.close()
PY
}
have_prune() { "$pond" prune --help >/dev/null 2>&1; }

pond_versions() { ls "$run/pond/_delta_log" | grep -c '\.json$'; }
# committed TARGET VERSIONS: on pond, wait (up to 30 s, reported) until the log has more than
# VERSIONS entries and the daemon is idle, so a size taken next includes what was just closed.
committed() {
    [[ $1 == pond ]] || return 0
    local i
    for ((i = 0; i < 300; i++)); do
        (($(pond_versions) > $2)) && break
        sleep 0.1
    done
    ((i < 300)) || log "  no new version within 30 s (the size taken next may lack the last change)"
    settle "the commit"
}
history_round() {
    local t=$1 d=${dir[$1]} s0 s1 r0 r1 v=0
    local appended=$((HIST_APPENDS << 20))
    # 1. A file of HIST_FILE_MIB, then HIST_APPENDS appends of 1 MiB.
    [[ $t == pond ]] && v=$(pond_versions)
    head -c $((HIST_FILE_MIB << 20)) "$inputs/$hist_in" >"$d/grow.bin"
    committed "$t" "$v"
    if [[ $t == pond ]]; then
        record_value hist_commit "$t" seconds "$(commit_s "$d")"
        "$pond" replicate "$run/pond" "$run/remote" >/dev/null
        v=$(pond_versions)
    fi
    measure hist_appends "$t" =seconds "$appended" warm appends "$d/grow.bin" "$inputs/$hist_in"
    committed "$t" "$v"
    cmp -s "$d/grow.bin" "$inputs/$hist_in" || { log "bench.sh: $t: the appended file differs from its source"; exit 1; }
    record_value hist_appends_store "$t" bytes "$(store_bytes "$t")"
    if [[ $t == pond ]]; then
        r0=$(du -sb "$run/remote" | cut -f1)
        measure hist_replicate "$t" seconds "$appended" warm "$pond" replicate "$run/pond" "$run/remote"
        r1=$(du -sb "$run/remote" | cut -f1)
        record_value hist_replicate_sent "$t" bytes $((r1 - r0)) "$appended"
    fi
    # 2. A large file, 4 KiB overwritten in its middle, then close.
    [[ $t == pond ]] && v=$(pond_versions)
    cp "$inputs/$seq_in" "$d/big.bin"
    committed "$t" "$v"
    s0=$(store_bytes "$t")
    [[ $t == pond ]] && v=$(pond_versions)
    measure hist_overwrite_close "$t" =seconds 4096 warm overwrite_close_s "$d/big.bin"
    committed "$t" "$v"
    s1=$(store_bytes "$t")
    record_value hist_overwrite_growth "$t" bytes $((s1 - s0)) 4096
    # 3. rsync -a of an edited copy of the large file (HIST_CHANGED_MIB changed).
    s0=$s1
    [[ $t == pond ]] && v=$(pond_versions)
    measure hist_rsync_edit "$t" seconds $((HIST_CHANGED_MIB << 20)) warm rsync -a "$inputs/hist-edit/big.bin" "$d/big.bin"
    committed "$t" "$v"
    s1=$(store_bytes "$t")
    record_value hist_rsync_growth "$t" bytes $((s1 - s0)) $((HIST_CHANGED_MIB << 20))
    # 4. A sqlite database of SQLITE_MB, then SQLITE_TX single-row transactions.
    s0=$s1
    [[ $t == pond ]] && v=$(pond_versions)
    measure hist_sqlite_make "$t" seconds $((SQLITE_MB * 1000000)) warm sqlite_make "$d/db.sqlite"
    measure hist_sqlite_tx "$t" =seconds "$SQLITE_TX" warm sqlite_tx "$d/db.sqlite"
    committed "$t" "$v"
    s1=$(store_bytes "$t")
    record_value hist_sqlite_growth "$t" bytes $((s1 - s0)) "$(stat -c %s "$d/db.sqlite")"
    # 5. Everything the target holds now (pond: before prune).
    record_value hist_final_store "$t" bytes "$(store_bytes "$t")"
}

if wants history; then
    # The edited copy of the large file: HIST_CHANGED_MIB in 16 pieces at seeded offsets.
    mkdir -p "$inputs/hist-edit"
    cp "$inputs/$seq_in" "$inputs/hist-edit/big.bin"
    python3 - "$inputs/hist-edit/big.bin" "$HIST_CHANGED_MIB" <<'PY'
import os, random, sys
path, mib = sys.argv[1], int(sys.argv[2])
size = os.path.getsize(path); piece = (mib << 20) // 16
random.seed(11)
with open(path, "r+b") as f:
    for _ in range(16):
        f.seek(random.randrange(0, size - piece)); f.write(os.urandom(piece))
PY
    touch -d '2030-01-01' "$inputs/hist-edit/big.bin"
    prune_ok=
    have_prune && prune_ok=1
    for ((round = 1; round <= ROUNDS; round++)); do
        place=0
        for t in $(order "$round" pond native); do
            place=$((place + 1))
            log "== history, round $round/$ROUNDS: $t"
            mount_target "$t"
            history_round "$t"
            if [[ $t == pond ]]; then
                "$pond" umount "$run/pond-mnt"
                daemon_pid=
                if [[ -n $prune_ok ]]; then
                    measure hist_prune "$t" seconds 0 warm "$pond" prune "$run/pond" --keep-last 1
                    record_value hist_prune_store "$t" bytes "$(store_bytes "$t")"
                else
                    log "  pond prune is not available in this build: the prune figure is not run"
                    record_value hist_prune_store "$t" not_run 0
                fi
                rm -rf "$run"
            else
                unmount_target "$t"
            fi
        done
    done
    round=0 place=0
    rm -rf "$inputs/hist-edit"
fi

# --- pond alone ----------------------------------------------------------------------------------
if wants mount; then
    big=$work/big-pond-${BIG_FILES}f-${BIG_COMMITS}c
    if [[ ! -e $big.done ]]; then
        log "== building $big (once; cached for later runs)"
        rm -rf "$big" "$big.mnt"
        mkdir -p "$big.mnt"
        "$pond" init "$big" >/dev/null
        mounts+=("$big.mnt")
        "$pond" mount "$big" "$big.mnt"
        python3 - "$big.mnt" "$BIG_FILES" "$BIG_COMMITS" <<'PY'
import os, sys
mnt, files, commits = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
big = os.path.join(mnt, "big"); os.makedirs(big, exist_ok=True)
for i in range(files):
    os.close(os.open(os.path.join(big, f"file-{i:06d}"), os.O_CREAT | os.O_WRONLY, 0o644))
    if (i + 1) % 10000 == 0:
        fd = os.open(big, os.O_RDONLY); os.fsync(fd); os.close(fd)
d = os.path.join(mnt, "commits"); os.makedirs(d, exist_ok=True)
for i in range(commits):
    fd = os.open(os.path.join(d, f"c{i % 100}"), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    os.write(fd, f"commit {i}\n".encode()); os.fsync(fd); os.close(fd)
PY
        "$pond" umount "$big.mnt"
        touch "$big.done"
    fi
    versions=$(ls "$big/_delta_log" | grep -c '\.json$')
    log "== mount of a pond with $BIG_FILES files and $versions versions (cold cache)"
    mount_big() {
        "$pond" mount "$big" "$big.mnt"
        stat "$big.mnt/big/file-$(printf %06d $((BIG_FILES / 2)))" >/dev/null
    }
    mounts+=("$big.mnt")
    for ((round = 1; round <= ROUNDS; round++)); do
        measure mount_100k_files pond seconds "$versions" cold mount_big
        "$pond" umount "$big.mnt"
    done
    round=0
fi

if wants rss; then
    log "== daemon peak RSS while writing $RSS_MIB MiB"
    for ((round = 1; round <= ROUNDS; round++)); do
        mount_target pond
        measure rss_write_4g pond seconds $((RSS_MIB << 20)) warm \
            dd if=/dev/urandom of="${dir[pond]}/big" bs=1M count="$RSS_MIB" conv=fsync status=none
        record_value rss_peak_write_4g pond MiB "$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$daemon_pid/status")"
        unmount_target pond
    done
    round=0
fi

if wants replica; then
    rp=$work/replica-$REPLICA_MIB
    if [[ ! -e $rp.done ]]; then
        log "== building a $REPLICA_MIB MiB mixed pond (once; cached)"
        rm -rf "$rp"
        mkdir -p "$rp/mnt"
        python3 -c "$mk_tree" "$rp/src" "$REPLICA_MIB"
        "$pond" init "$rp/pond" >/dev/null
        mounts+=("$rp/mnt")
        "$pond" mount "$rp/pond" "$rp/mnt"
        cp -r "$rp/src/." "$rp/mnt/"
        "$pond" umount "$rp/mnt"
        rm -rf "$rp/src"
        touch "$rp.done"
    fi
    bytes=$(du_bytes "$rp/pond")
    files=$(find "$rp/pond" -type f -not -path '*/_pond/*' | wc -l)
    log "== replica: $bytes bytes in $files files"
    export RESTIC_PASSWORD=pond-bench
    cd "$rp"
    rm -rf remote copy restored restic-repo restic-out
    # Every source is read into the page cache right before each step (the kernel reclaims what
    # is idle for a minute here), so each tool reads from memory and writes to the disk.
    warm() { find "$@" -type f -not -path '*/_pond/*' -exec cat {} + >/dev/null; }
    for ((round = 1; round <= ROUNDS; round++)); do
        rm -rf remote copy restic-repo
        restic init -q -r restic-repo >/dev/null
        # the three take turns in an order rotated by the round
        for tool in $(order "$round" pond cp_r restic); do
            warm pond
            case $tool in
            pond) measure replicate pond seconds "$bytes" warm "$pond" replicate pond remote ;;
            cp_r) measure replicate cp_r seconds "$bytes" warm sh -c 'cp -r pond copy && sync' ;;
            restic) measure replicate restic seconds "$bytes" warm sh -c 'restic -q -r restic-repo backup --exclude=pond/_pond pond >/dev/null && sync' ;;
            esac
        done
        rm -rf copy
        for tool in $(order "$round" pond cp_r restic); do
            rm -rf restored copy restic-out
            case $tool in
            pond) warm remote; measure restore pond seconds "$bytes" warm "$pond" restore remote restored ;;
            cp_r) warm remote; measure restore cp_r seconds "$bytes" warm sh -c 'cp -r remote copy && sync' ;;
            restic) warm restic-repo; measure restore restic seconds "$bytes" warm sh -c 'restic -q -r restic-repo restore latest --target restic-out && sync' ;;
            esac
        done
    done
    round=0
    rm -rf remote copy restored restic-repo restic-out
    cd "$repo"
fi

elapsed=$(since "$run_start")
log "== workloads took $(printf '%.0f' "$elapsed") s"
python3 - "$work/meta.json" "$elapsed" <<'PY'
import json, sys
m = json.load(open(sys.argv[1])); m["elapsed_s"] = round(float(sys.argv[2])); json.dump(m, open(sys.argv[1], "w"))
PY
"$venv/bin/python" scripts/bench_report.py "$work/meta.json" "$records" "$results"
if ((run_remote)); then remote_group; fi
