#!/usr/bin/env bash
# Run pond's test suite with everything its tests need: a local S3 server (scripts/s3-local.sh, for
# the replica's S3 test) and a Python venv with deltalake (the replica is read by a Delta reader).
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh replica`).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pond-target}
venv=${POND_PY_VENV:-$HOME/.cache/pond-venv-deltalake}

if ! "$venv/bin/python" -c 'import deltalake, pyarrow' 2>/dev/null; then
    echo "test.sh: making $venv with deltalake" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q deltalake pyarrow
fi
export POND_PY_VENV=$venv

trap 'scripts/s3-local.sh stop' EXIT
eval "$(scripts/s3-local.sh start)"

cargo build --locked
cargo test --locked --test tests "$@"
