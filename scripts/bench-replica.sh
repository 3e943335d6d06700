#!/usr/bin/env bash
# Replicate and restore throughput against `cp -r` of the same directory, on a ~300 MiB mixed pond
# (3000 files of 1-16 KiB, 150 of 100 KiB-2 MiB, 4 of 32 MiB) written through a mount. Warm page
# cache; replicate and restore sync what they write (syncfs), so `cp -r && sync` is the fair
# comparison; plain `cp -r` is shown too.
#   scripts/bench-replica.sh [WORKDIR]     (release build; WORKDIR default ~/.cache/pond-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pond-target}
cargo build --locked --release -q
pond=$CARGO_TARGET_DIR/release/pond
work=${1:-$HOME/.cache/pond-bench}
mkdir -p "$work" && cd "$work"

if [[ ! -d src ]]; then
    python3 - <<'PY'
import os, random
random.seed(42)
for d in range(30): os.makedirs(f'src/small/d{d}', exist_ok=True)
for i in range(3000):
    open(f'src/small/d{i%30}/s{i}.txt', 'wb').write(os.urandom(random.randint(1024, 16 * 1024)))
os.makedirs('src/medium', exist_ok=True)
for i in range(150):
    open(f'src/medium/m{i}.bin', 'wb').write(os.urandom(random.randint(100 * 1024, 2 * 1024 * 1024)))
os.makedirs('src/large', exist_ok=True)
for i in range(4):
    open(f'src/large/l{i}.img', 'wb').write(os.urandom(32 * 1024 * 1024))
PY
fi
if [[ ! -d pond ]]; then
    mkdir -p mnt
    "$pond" init pond >/dev/null
    "$pond" mount pond mnt
    trap '"$pond" umount mnt 2>/dev/null || umount -l mnt 2>/dev/null || true' EXIT
    cp -r src/. mnt/
    "$pond" umount mnt
    trap - EXIT
fi
echo "pond: $(du -sh --exclude=_pond pond | cut -f1) in $(find pond -type f -not -path 'pond/_pond/*' | wc -l) files"
t() { local what=$1; shift; sync; /usr/bin/time -f "$what: %e s (max RSS %M KiB)" "$@"; }
for i in 1 2 3; do
    rm -rf remote copy restored copy2; sync
    t "replicate        " "$pond" replicate pond remote >/dev/null
    t "cp -r pond + sync" sh -c 'cp -r pond copy && sync'; rm -rf copy; sync
    t "cp -r pond       " cp -r pond copy; sync
    t "restore (verified)" "$pond" restore remote restored >/dev/null
    t "cp -r remote + sync" sh -c 'cp -r remote copy2 && sync'; rm -rf copy2; sync
    t "cp -r remote     " cp -r remote copy2; sync
done
t "replicate, nothing new" "$pond" replicate pond remote
t "verify restored pond" "$pond" verify restored >/dev/null
rm -rf remote copy restored copy2
