#!/usr/bin/env bash
# Set up and show the main job on a fresh machine: build pond, create a pond, mount it, use ordinary
# tools on it, show its history, unmount, read it back without mounting, verify it, replicate it to
# a directory and restore a verified copy. Leaves nothing mounted. Work dir: DEMO_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pond-target}
if ! command -v fusermount3 >/dev/null || ! command -v rsync >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 rsync >/dev/null
fi
cargo build --release --locked -q
pond=$CARGO_TARGET_DIR/release/pond
demo=${DEMO_DIR:-/tmp/pond-demo}
rm -rf "$demo"; mkdir -p "$demo/mnt"
trap '$pond umount "$demo/mnt" 2>/dev/null || true' EXIT
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; eval "$@"; }

run "$pond init $demo/pond"
run "$pond mount $demo/pond $demo/mnt"
run "mkdir -p $demo/mnt/photos $demo/mnt/logs"
run "printf 'city,temp\nOslo,3\nLima,19\n' > $demo/mnt/weather.csv"
run "head -c 5000000 /dev/urandom > $demo/mnt/photos/big.raw   # > 64 KiB: a chunked parquet object"
run "rsync -a /usr/share/doc/bash/ $demo/mnt/docs/ && rsync -a --itemize-changes /usr/share/doc/bash/ $demo/mnt/docs/ | wc -l"
run "ln -s weather.csv $demo/mnt/latest.csv && ls -l $demo/mnt"
run "sed -i 's/Oslo,3/Oslo,4/' $demo/mnt/weather.csv   # an editor's save by rename"
run "$pond umount $demo/mnt   # returns once everything is committed"
run "$pond log $demo/pond"
run "$pond ls $demo/pond"
run "$pond cat $demo/pond weather.csv"
run "ls $demo/pond $demo/pond/_large_files && b3sum $demo/pond/_large_files/*.parquet 2>/dev/null | head -1 || true"
run "$pond verify $demo/pond"
run "$pond replicate $demo/pond $demo/replica"
run "$pond restore $demo/replica $demo/restored"
run "$pond cat $demo/restored weather.csv"
echo; echo "demo done: pond at $demo/pond, replica at $demo/replica, restored copy at $demo/restored"
