#!/usr/bin/env bash
# Set up and run every pond test on a fresh machine of this kind (Debian, root, /dev/fuse):
# installs the system tools the tests drive (fuse3, rsync, git, tar, attr, curl, strace for the
# tests of durability order, systemd for systemd-analyze and the fstab generator), a Python venv
# with deltalake (an external Delta reader), starts a local S3-compatible server on 127.0.0.1 for the
# replica's S3 tests (scripts/s3-local.sh, stopped on exit), builds with --locked, checks rustfmt, runs clippy and
# every test. Extra arguments go to `cargo test` (e.g. `scripts/test.sh replica`).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pond-target}
export CARGO_TERM_COLOR=never

need=()
for tool in fusermount3:fuse3 rsync:rsync git:git tar:tar setfattr:attr curl:curl systemd-analyze:systemd flock:util-linux setpriv:util-linux strace:strace; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if ((${#need[@]})); then
    echo "test.sh: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[[ -e /dev/fuse ]] || { echo "test.sh: /dev/fuse is missing: the mount tests need FUSE" >&2; exit 1; }

venv=${POND_PY_VENV:-$HOME/.cache/pond-venv-deltalake}
if ! "$venv/bin/python" -c 'import deltalake, pyarrow' 2>/dev/null; then
    echo "test.sh: making $venv with deltalake" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q deltalake pyarrow
fi
export POND_PY_VENV=$venv

# Nothing of ours may outlive the run (the S3 server, mounts a crashed test left).
source scripts/leftovers.sh
trap 'rc=$?; cleanup_leftovers; exit $rc' EXIT
eval "$(scripts/s3-local.sh start)"

# --release everywhere: the demo, the benchmark and this share one build of the dependencies, and
# the tests run the optimised code users run.
cargo build --release --locked --all-targets
cargo fmt --check
cargo clippy --release --locked --all-targets -- -D warnings
cargo test --release --locked "$@"
