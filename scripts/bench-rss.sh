#!/usr/bin/env bash
# Peak RSS of the pond daemon while writing one big file through the mount (default 4 GiB) and reading
# it back; the daemon's VmHWM from /proc is the figure. SIZE_MIB sets the size.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pond-target}
SIZE_MIB=${SIZE_MIB:-4096}
work=${BENCH_DIR:-$HOME/.cache/pond-bench-rss}
cargo build --release --locked -q
pond=$CARGO_TARGET_DIR/release/pond
rm -rf "$work"; mkdir -p "$work/mnt"
trap '$pond umount "$work/mnt" 2>/dev/null || umount -l "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
$pond init "$work/pond" >/dev/null
$pond mount "$work/pond" "$work/mnt"
pid=$(pgrep -f "pond mount $work/pond $work/mnt" | head -1)
rss() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$pid/status"; }
echo "daemon pid $pid, peak RSS after mount: $(rss) MiB"
t=$(date +%s.%N)
dd if=/dev/urandom of="$work/mnt/big" bs=1M count="$SIZE_MIB" conv=fsync status=none
echo "wrote $SIZE_MIB MiB (dd bs=1M conv=fsync) in $(echo "$(date +%s.%N) - $t" | bc) s; daemon peak RSS: $(rss) MiB"
sync; echo 3 > /proc/sys/vm/drop_caches
t=$(date +%s.%N)
b3=$(b3sum --no-names "$work/mnt/big" 2>/dev/null || cat "$work/mnt/big" | sha256sum)
echo "read back in $(echo "$(date +%s.%N) - $t" | bc) s; daemon peak RSS: $(rss) MiB"
ls "$work/pond/_large_files/"
$pond umount "$work/mnt"
$pond verify "$work/pond" | tail -1
