#!/usr/bin/env bash
# pond's benchmark: the same workloads, in one run, on (a) the native directory, (b) libfuse's
# passthrough_ll example over a native directory (compiled here from Debian's libfuse3-dev), and
# (c) a pond mount (release build). Prints a table with pond's ratio to the passthrough and to native,
# writes results/bench-<time>.json (+ results/latest.json) and draws results/bench.png.
#
#   scripts/bench.sh                  # the default run, about 10 minutes on 2 cores; the first run
#                                     # also makes its inputs and the 100,000-file pond (about 5
#                                     # minutes more, cached in BENCH_DIR)
#   ONLY="seq tar" scripts/bench.sh   # some workload groups only
#
# Groups (ONLY): seq (dd, cp, cold read, fio), tar, rsync, tree (find, ls -lR, rm -rf), latency,
# mount (pond of BIG_FILES files and BIG_COMMITS commits), rss, replica (vs cp -r and restic).
# Sizes: SEQ_MIB (1024), FIO_SECS (10), SMALL_FILES (10000) x SMALL_KIB (4), MEDIUM_FILES (1000) x
# MEDIUM_KIB (200), TREE_MIB (~200, the rsync tree), LAT_OPS (2000), BIG_FILES (100000),
# BIG_COMMITS (10000), RSS_MIB (4096), REPLICA_MIB (2048). ROUNDS (3): the workloads on the three
# targets run ROUNDS times, each round on fresh directories with the targets in a rotated order,
# and the report takes each figure's median (one run of one workload swings by tens of percent
# here). Work dir: BENCH_DIR (default ~/.cache/pond-bench-main). Results: RESULTS_DIR (default results/).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pond-target}
SEQ_MIB=${SEQ_MIB:-1024} FIO_SECS=${FIO_SECS:-10}
SMALL_FILES=${SMALL_FILES:-10000} SMALL_KIB=${SMALL_KIB:-4}
MEDIUM_FILES=${MEDIUM_FILES:-1000} MEDIUM_KIB=${MEDIUM_KIB:-200}
TREE_MIB=${TREE_MIB:-200} LAT_OPS=${LAT_OPS:-2000}
BIG_FILES=${BIG_FILES:-100000} BIG_COMMITS=${BIG_COMMITS:-10000}
RSS_MIB=${RSS_MIB:-4096} REPLICA_MIB=${REPLICA_MIB:-2048}
ROUNDS=${ROUNDS:-3}
ONLY=${ONLY:-seq tar rsync tree latency mount rss replica}
work=${BENCH_DIR:-$HOME/.cache/pond-bench-main}
results=${RESULTS_DIR:-$repo/results}

need=()
for tool in fusermount3:fuse3 pkg-config:pkg-config fio:fio restic:restic rsync:rsync bc:bc /usr/bin/time:time; do
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
records=$work/records.jsonl
: >"$records"
mounts=()
cleanup() {
    local m
    for m in "${mounts[@]}"; do
        if mountpoint -q "$m"; then "$pond" umount "$m" 2>/dev/null || fusermount3 -u "$m" 2>/dev/null || umount -l "$m" || true; fi
    done
    pkill -f "$work/bin/passthrough_ll" 2>/dev/null || true
}
trap cleanup EXIT

# --- helpers -------------------------------------------------------------------------------------
log() { printf '%s\n' "$*" >&2; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# record WORKLOAD TARGET METRIC VALUE [BYTES]
record() {
    printf '{"workload":"%s","target":"%s","metric":"%s","value":%s,"bytes":%s}\n' \
        "$1" "$2" "$3" "$4" "${5:-null}" >>"$records"
    log "  $(printf '%-24s %-12s %12s %s' "$1" "$2" "$4" "$3")"
}
# timed WORKLOAD TARGET BYTES CMD...: wall seconds of CMD
timed() {
    local w=$1 t=$2 b=$3; shift 3
    local s=$EPOCHREALTIME
    "$@"
    record "$w" "$t" seconds "$(since "$s")" "$b"
}
since() { printf '%.6f' "$(echo "$EPOCHREALTIME - $1" | bc)"; }
wait_mounted() {
    local i
    for i in $(seq 100); do mountpoint -q "$1" && return 0; sleep 0.1; done
    log "bench.sh: $1 did not come up"; return 1
}
du_bytes() { du -sb --exclude=_pond "$1" | cut -f1; }

# The three targets, each a directory where the workloads run.
declare -A dir
start_targets() {
    rm -rf "$run"; mkdir -p "$run/native" "$run/pt-src" "$run/pt" "$run/pond-mnt"
    dir[native]=$run/native
    "$work/bin/passthrough_ll" -f -o source="$run/pt-src" "$run/pt" &
    mounts+=("$run/pt"); wait_mounted "$run/pt"
    dir[passthrough]=$run/pt
    "$pond" init "$run/pond" >/dev/null
    "$pond" mount "$run/pond" "$run/pond-mnt"
    mounts+=("$run/pond-mnt")
    dir[pond]=$run/pond-mnt
}
stop_targets() {
    "$pond" umount "$run/pond-mnt"
    fusermount3 -u "$run/pt"
    wait
    rm -rf "$run"
}
targets=(native passthrough pond)
wants() { [[ " $ONLY " == *" $1 "* ]]; }

# --- inputs (cached by size) ---------------------------------------------------------------------
gen() { # gen NAME SCRIPT: run the python SCRIPT once to make $work/data/NAME
    [[ -e $work/data/$1 ]] || { log "making input $1"; (cd "$work/data" && python3 -c "$2") && touch "$work/data/$1.done"; }
    [[ -e $work/data/$1.done ]] || { log "bench.sh: input $1 is incomplete; remove $work/data/$1"; exit 1; }
}
# Two different files, so that pond cannot deduplicate the cp against the dd.
seq_in=seq-$SEQ_MIB.bin seq_cp_in=seq-$SEQ_MIB-b.bin
for f in $seq_in $seq_cp_in; do
    gen "$f" "
import os
with open('$f.tmp', 'wb') as f:
    for _ in range($SEQ_MIB): f.write(os.urandom(1 << 20))
os.rename('$f.tmp', '$f')"
done
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
[[ -e $work/data/$small_tar ]] || (cd "$work/data" && python3 -c "$mk_tar" "$small_tar" "$SMALL_FILES" "$SMALL_KIB" && touch "$small_tar.done")
[[ -e $work/data/$medium_tar ]] || (cd "$work/data" && python3 -c "$mk_tar" "$medium_tar" "$MEDIUM_FILES" "$MEDIUM_KIB" && touch "$medium_tar.done")
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
[[ -e $work/data/$tree_in.done ]] || { rm -rf "$work/data/$tree_in"; python3 -c "$mk_tree" "$work/data/$tree_in" "$TREE_MIB"; touch "$work/data/$tree_in.done"; }
seq_bytes=$((SEQ_MIB << 20))

echo "{\"started\":\"$(date -Is)\",\"kernel\":\"$(uname -r)\",\"cpus\":$(nproc),\"commit\":\"$(git rev-parse --short HEAD)\",\"rounds\":$ROUNDS,\"sizes\":{\"SEQ_MIB\":$SEQ_MIB,\"FIO_SECS\":$FIO_SECS,\"SMALL_FILES\":$SMALL_FILES,\"SMALL_KIB\":$SMALL_KIB,\"MEDIUM_FILES\":$MEDIUM_FILES,\"MEDIUM_KIB\":$MEDIUM_KIB,\"TREE_MIB\":$TREE_MIB,\"LAT_OPS\":$LAT_OPS,\"BIG_FILES\":$BIG_FILES,\"BIG_COMMITS\":$BIG_COMMITS,\"RSS_MIB\":$RSS_MIB,\"REPLICA_MIB\":$REPLICA_MIB}}" >"$work/meta.json"

# --- workloads on the three targets --------------------------------------------------------------
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

if wants seq || wants tar || wants rsync || wants tree || wants latency; then
    cat "$work/data/$seq_in" "$work/data/$seq_cp_in" >/dev/null # sources stay in the page cache
  for ((round = 0; round < ROUNDS; round++)); do
    start_targets
    shift_by=$((round % ${#targets[@]}))
    for t in "${targets[@]:shift_by}" "${targets[@]:0:shift_by}"; do
        d=${dir[$t]}
        log "== round $((round + 1))/$ROUNDS: $t ($d)"
        if wants seq; then
            sync
            timed seq_write_dd "$t" $seq_bytes dd if="$work/data/$seq_in" of="$d/seq.bin" bs=1M conv=fsync status=none
            sync
            timed seq_write_cp "$t" $seq_bytes cp "$work/data/$seq_cp_in" "$d/seq-cp.bin"
            drop_caches
            timed seq_read_cold "$t" $seq_bytes dd if="$d/seq.bin" of=/dev/null bs=1M status=none
            drop_caches
            record rand_read_4k_1job "$t" iops "$(fio_iops "$d/seq.bin" 1)"
            drop_caches
            record rand_read_4k_4jobs "$t" iops "$(fio_iops "$d/seq.bin" 4)"
        fi
        if wants tar; then
            mkdir -p "$d/small" "$d/medium"; sync
            timed tar_x_small "$t" $((SMALL_FILES * SMALL_KIB * 1024)) tar -xf "$work/data/$small_tar" -C "$d/small"
            sync
            timed tar_x_medium "$t" $((MEDIUM_FILES * MEDIUM_KIB * 1024)) tar -xf "$work/data/$medium_tar" -C "$d/medium"
        fi
        if wants rsync; then
            sync
            timed rsync_initial "$t" "$(du_bytes "$work/data/$tree_in")" rsync -a "$work/data/$tree_in/" "$d/tree/"
            sync
            timed rsync_no_change "$t" 0 rsync -a "$work/data/$tree_in/" "$d/tree/"
        fi
        if wants tree; then
            [[ -d $d/small ]] || { mkdir -p "$d/small"; tar -xf "$work/data/$small_tar" -C "$d/small"; }
            drop_caches
            timed find_10k "$t" 0 sh -c "find '$d/small' >/dev/null"
            drop_caches
            timed ls_lR_10k "$t" 0 sh -c "ls -lR '$d/small' >/dev/null"
            sync
            timed rm_rf_10k "$t" 0 rm -rf "$d/small"
        fi
        if wants latency; then
            record create_1byte_latency "$t" us "$(latency_us "$d/lat")"
        fi
    done
    stop_targets
  done
fi

# --- pond alone ----------------------------------------------------------------------------------
if wants mount; then
    big=$work/big-pond-${BIG_FILES}f-${BIG_COMMITS}c
    if [[ ! -e $big.done ]]; then
        log "== building $big (once; cached for later runs)"
        rm -rf "$big" "$big.mnt"; mkdir -p "$big.mnt"
        "$pond" init "$big" >/dev/null
        "$pond" mount "$big" "$big.mnt"; mounts+=("$big.mnt")
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
    for i in 1 2 3; do
        drop_caches
        s=$EPOCHREALTIME
        "$pond" mount "$big" "$big.mnt"; mounts+=("$big.mnt")
        stat "$big.mnt/big/file-$(printf %06d $((BIG_FILES / 2)))" >/dev/null
        record mount_100k_files pond seconds "$(since "$s")" "$versions"
        "$pond" umount "$big.mnt"
    done
fi

if wants rss; then
    log "== daemon peak RSS while writing $RSS_MIB MiB"
    rm -rf "$run"; mkdir -p "$run/mnt"
    "$pond" init "$run/pond" >/dev/null
    "$pond" mount "$run/pond" "$run/mnt"; mounts+=("$run/mnt")
    pid=$(pgrep -f "pond mount $run/pond $run/mnt" | head -1)
    timed rss_write_4g pond $((RSS_MIB << 20)) dd if=/dev/urandom of="$run/mnt/big" bs=1M count="$RSS_MIB" conv=fsync status=none
    record rss_peak_write_4g pond MiB "$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$pid/status")"
    "$pond" umount "$run/mnt"
    rm -rf "$run"
fi

if wants replica; then
    rp=$work/replica-$REPLICA_MIB
    if [[ ! -e $rp.done ]]; then
        log "== building a $REPLICA_MIB MiB mixed pond (once; cached)"
        rm -rf "$rp"; mkdir -p "$rp/mnt"
        python3 -c "$mk_tree" "$rp/src" "$REPLICA_MIB"
        "$pond" init "$rp/pond" >/dev/null
        "$pond" mount "$rp/pond" "$rp/mnt"; mounts+=("$rp/mnt")
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
    cat_all() { find pond -type f -not -path '*/_pond/*' -exec cat {} + >/dev/null; }
    cat_all
    # pond and cp -r take turns three times (the report takes each one's median): a single pair
    # swings with whatever writeback the step before left behind. restic runs once (a second
    # backup of the same data is incremental).
    for _ in 1 2 3; do
        rm -rf remote copy
        sync; timed replicate pond "$bytes" "$pond" replicate pond remote
        sync; timed replicate cp_r "$bytes" sh -c 'cp -r pond copy && sync'
    done
    rm -rf copy
    restic init -q -r restic-repo >/dev/null
    sync; timed replicate restic "$bytes" sh -c 'restic -q -r restic-repo backup --exclude=pond/_pond pond >/dev/null && sync'
    drop_caches; cat_all; find remote -type f -exec cat {} + >/dev/null
    for _ in 1 2 3; do
        rm -rf restored copy
        sync; timed restore pond "$bytes" "$pond" restore remote restored
        sync; timed restore cp_r "$bytes" sh -c 'cp -r remote copy && sync'
    done
    sync; timed restore restic "$bytes" sh -c 'restic -q -r restic-repo restore latest --target restic-out && sync'
    rm -rf remote copy restored restic-repo restic-out
    cd "$repo"
fi

"$venv/bin/python" scripts/bench_report.py "$work/meta.json" "$records" "$results"
