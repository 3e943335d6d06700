#!/usr/bin/env bash
# The write workloads of scripts/bench.sh, each target on its own: the check that a baseline runs
# as fast as it does alone. Inside a long bench.sh run the page-cache writers (native, the
# passthrough) have written 2-4x slower than by hand, for a cause not yet found (README,
# "Benchmark"); this script is the by-hand run, kept so that its figures can be made again.
#
#   bash scripts/bench-solo.sh          # ROUNDS (3) x native, passthrough, pond; SEQ_MIB (1024)
#
# For each round and target (rotated: each is first, middle and last once in 3 rounds): mount the
# target alone on a fresh directory (the passthrough as bench.sh starts it), and for each of `dd
# bs=1M conv=fsync` of SEQ_MIB, `cp` of SEQ_MIB and `tar -x` of MEDIUM_FILES (1000) x 200 KiB
# files, from a private tmpfs: sync, drop caches, 3 s idle, run it timed. Then unmount and delete.
# Prints min/median/max per target and pond's ratios from the medians (> 1: pond is faster).
# Needs the passthrough built by scripts/bench.sh (its BENCH_DIR/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3} SEQ_MIB=${SEQ_MIB:-1024} MEDIUM_FILES=${MEDIUM_FILES:-1000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pond-target}
bench_dir=${BENCH_DIR:-$HOME/.cache/pond-bench-main}
passthrough=$bench_dir/bin/passthrough_ll
[[ -x $passthrough ]] || { echo "bench-solo: no $passthrough: run scripts/bench.sh once first" >&2; exit 1; }
cargo build --release --locked -q
pond=$CARGO_TARGET_DIR/release/pond

work=$(mktemp -d /var/tmp/pond-solo.XXXXXX)
inputs=$work/inputs run=$work/run
cleanup() {
    local m
    for m in "$run/pt" "$run/pond-mnt"; do
        mountpoint -q "$m" 2>/dev/null && { "$pond" umount "$m" 2>/dev/null || umount -l "$m" || true; }
    done
    mountpoint -q "$inputs" && umount "$inputs"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$inputs" && mount -t tmpfs -o size=$((2 * SEQ_MIB + 400))m,mode=0700 pond-solo "$inputs"
dd if=/dev/urandom of="$inputs/dd-src" bs=1M count="$SEQ_MIB" status=none
dd if=/dev/urandom of="$inputs/cp-src" bs=1M count="$SEQ_MIB" status=none
python3 - "$inputs/medium.tar" "$MEDIUM_FILES" <<'PY'
import io, os, sys, tarfile
with tarfile.open(sys.argv[1], "w") as tar:
    for i in range(int(sys.argv[2])):
        data = os.urandom(200 << 10)
        info = tarfile.TarInfo(f"m/f{i:05d}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
PY

timed() { local s=$EPOCHREALTIME; "$@"; printf '%.3f' "$(echo "$EPOCHREALTIME - $s" | bc)"; }
settle() { sync; echo 3 >/proc/sys/vm/drop_caches; sleep 3; }
results=$work/results
: >"$results"
one_target() { # TARGET ROUND
    local t=$1 d
    rm -rf "$run" && mkdir -p "$run"
    case $t in
    native) d=$run/native && mkdir "$d" ;;
    passthrough)
        mkdir "$run/pt-src" "$run/pt"
        "$passthrough" -f -o source="$run/pt-src" "$run/pt" 2>/dev/null &
        for _ in $(seq 50); do mountpoint -q "$run/pt" && break; sleep 0.1; done
        d=$run/pt
        ;;
    pond)
        "$pond" init "$run/pond" >/dev/null && mkdir "$run/pond-mnt"
        "$pond" mount "$run/pond" "$run/pond-mnt"
        d=$run/pond-mnt
        ;;
    esac
    settle && echo "$t dd $(timed dd if="$inputs/dd-src" of="$d/dd" bs=1M conv=fsync status=none)" >>"$results"
    settle && echo "$t cp $(timed cp "$inputs/cp-src" "$d/cp")" >>"$results"
    mkdir "$d/x" && settle && echo "$t tar $(timed tar -xf "$inputs/medium.tar" -C "$d/x")" >>"$results"
    case $t in
    passthrough) fusermount3 -u "$run/pt" && wait ;;
    pond) "$pond" umount "$run/pond-mnt" ;;
    esac
    rm -rf "$run"
    tail -3 "$results" | sed "s/^/round $2: /"
}
targets=(native passthrough pond)
for ((r = 0; r < ROUNDS; r++)); do
    for k in 0 1 2; do one_target "${targets[$(((k + r) % 3))]}" $((r + 1)); done
done
python3 - "$results" "$SEQ_MIB" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def fig(t, w):
    return [float(v) for tt, ww, v in rows if tt == t and ww == w]
print(f"\n{'workload':<34}{'native':>20}{'passthrough':>20}{'pond':>20}{'pond/pt':>9}{'pond/nat':>9}")
names = {"dd": f"dd bs=1M conv=fsync {sys.argv[2]} MiB (s)", "cp": f"cp {sys.argv[2]} MiB (s)", "tar": "tar -x of 200 KiB files (s)"}
for w, name in names.items():
    cells, med = [], {}
    for t in ("native", "passthrough", "pond"):
        v = fig(t, w)
        med[t] = statistics.median(v)
        cells.append(f"{min(v):.2f}/{med[t]:.2f}/{max(v):.2f}")
    print(f"{name:<34}{cells[0]:>20}{cells[1]:>20}{cells[2]:>20}"
          f"{med['passthrough'] / med['pond']:>9.2f}{med['native'] / med['pond']:>9.2f}")
PY
