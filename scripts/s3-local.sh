#!/usr/bin/env bash
# A throwaway S3-compatible server (moto) on 127.0.0.1 for the replica tests.
#
#   eval "$(scripts/s3-local.sh start)"   # start it, create the bucket, export the env to use
#   scripts/s3-local.sh stop              # kill it
#
# start picks a free port, waits until the server answers, creates the bucket with an unsigned
# PUT, and prints `export` lines: the AWS_* settings pond reads (endpoint, plain HTTP allowed,
# dummy credentials, region) and POND_S3_ENDPOINT / POND_S3_BUCKET for the tests. moto is used from
# the system Python when it is importable, otherwise from a venv it creates once
# ($POND_MOTO_VENV, default ~/.cache/pond-venv-moto). State (pid, log) lives in $POND_S3_STATE.
set -euo pipefail

state=${POND_S3_STATE:-${TMPDIR:-/tmp}/pond-s3-local}
bucket=${POND_S3_BUCKET:-pond-test}
venv=${POND_MOTO_VENV:-$HOME/.cache/pond-venv-moto}

python_with_moto() {
    if python3 -c 'import moto.server, flask, flask_cors' 2>/dev/null; then
        command -v python3
        return
    fi
    if ! "$venv/bin/python" -c 'import moto.server' 2>/dev/null; then
        echo "s3-local: installing moto[server] into $venv" >&2
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install -q 'moto[server]' >&2
    fi
    echo "$venv/bin/python"
}

stop() {
    if [[ -f $state/pid ]]; then
        pid=$(cat "$state/pid")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$state/pid"
    fi
}

start() {
    stop
    mkdir -p "$state"
    py=$(python_with_moto)
    port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$py" -m moto.server -H 127.0.0.1 -p "$port" >"$state/log" 2>&1 &
    echo $! >"$state/pid"
    endpoint="http://127.0.0.1:$port"
    for _ in $(seq 150); do
        if curl -s -o /dev/null "$endpoint/"; then break; fi
        if ! kill -0 "$(cat "$state/pid")" 2>/dev/null; then
            echo "s3-local: moto exited; its log:" >&2; cat "$state/log" >&2; exit 1
        fi
        sleep 0.1
    done
    curl -sf -o /dev/null -X PUT "$endpoint/$bucket" || { echo "s3-local: cannot create bucket $bucket at $endpoint" >&2; stop; exit 1; }
    cat <<ENV
export AWS_ENDPOINT_URL=$endpoint
export AWS_ALLOW_HTTP=true
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
export POND_S3_ENDPOINT=$endpoint
export POND_S3_BUCKET=$bucket
ENV
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
