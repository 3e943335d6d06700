#!/usr/bin/env bash
# Core storage figures, measured through a real mount with the release build:
#  - creating FILES empty files in one directory, in batches of BATCH (rate per batch: it must not
#    fall as the directory grows), each batch ending with an fsync of the directory;
#  - COMMITS separate commits (write + fsync of a small file each);
#  - then opening the pond: `pond ls` of the big directory, `pond mount` until live, a cold `stat`
#    of one file in the big directory, `ls` of it, and the table's shape (versions, checkpoints,
#    active data files).
# Sizes: FILES (default 100000), BATCH (10000), COMMITS (10000). Work dir: BENCH_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pond-target}
FILES=${FILES:-100000} BATCH=${BATCH:-10000} COMMITS=${COMMITS:-10000}
work=${BENCH_DIR:-$HOME/.cache/pond-bench-core}
cargo build --release --locked -q
pond=$CARGO_TARGET_DIR/release/pond
rm -rf "$work"; mkdir -p "$work/mnt"
trap '$pond umount "$work/mnt" 2>/dev/null || umount -l "$work/mnt" 2>/dev/null || true' EXIT
$pond init "$work/pond" >/dev/null
$pond mount "$work/pond" "$work/mnt"
now() { date +%s.%N; }
python3 - "$work/mnt" "$FILES" "$BATCH" "$COMMITS" <<'PY'
import os, sys, time
mnt, files, batch, commits = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
big = os.path.join(mnt, "big"); os.mkdir(big)
for b in range(files // batch):
    t = time.time()
    for i in range(batch):
        os.close(os.open(os.path.join(big, f"file-{b*batch+i:06d}"), os.O_CREAT | os.O_WRONLY, 0o644))
    fd = os.open(big, os.O_RDONLY); os.fsync(fd); os.close(fd)
    dt = time.time() - t
    print(f"create batch {b+1}: {batch} files in {dt:.2f} s = {batch/dt:.0f} files/s (directory now {(b+1)*batch})", flush=True)
d = os.path.join(mnt, "commits"); os.mkdir(d)
t = time.time(); lat = []
for i in range(commits):
    s = time.time()
    fd = os.open(os.path.join(d, f"c{i % 100}"), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    os.write(fd, f"commit {i}\n".encode()); os.fsync(fd); os.close(fd)
    lat.append(time.time() - s)
    if (i + 1) % (commits // 5) == 0:
        recent = sorted(lat[-(commits // 5):])
        print(f"commits {i+1}: write+fsync median {recent[len(recent)//2]*1000:.1f} ms, p99 {recent[int(len(recent)*0.99)]*1000:.1f} ms", flush=True)
print(f"{commits} commits in {time.time()-t:.1f} s", flush=True)
PY
t=$(now); $pond umount "$work/mnt"; echo "umount (final commit): $(echo "$(now) - $t" | bc) s"
echo "table: $(ls "$work/pond/_delta_log" | grep -c '\.json$') versions, $(ls "$work/pond/_delta_log" | grep -c checkpoint.parquet) checkpoints, $(du -sh "$work/pond" | cut -f1) on disk"
for i in 1 2 3; do
  t=$(now); n=$($pond ls "$work/pond" big | wc -l); echo "pond ls big ($n entries): $(echo "$(now) - $t" | bc) s"
done
for i in 1 2 3; do
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  t=$(now); $pond mount "$work/pond" "$work/mnt"; m=$(echo "$(now) - $t" | bc)
  t=$(now); stat "$work/mnt/big/file-077777" >/dev/null; s=$(echo "$(now) - $t" | bc)
  t=$(now); n=$(ls "$work/mnt/big" | wc -l); l=$(echo "$(now) - $t" | bc)
  echo "mount (cold cache) until live: $m s; stat of one file in the big dir: $s s; ls of it ($n): $l s"
  $pond umount "$work/mnt"
done
$pond verify "$work/pond" | tail -1
