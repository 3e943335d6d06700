#!/usr/bin/env bash
# The long form of pond's fault suite: runs the fault tests again and again, each at
# POND_SOAK_SCALE times its short form (more kills, rounds, cases and seconds), until DURATION is
# up, then prints what every part went through: runs, faults injected, data lost (must be 0).
#
#   scripts/soak.sh [DURATION] [PARTS...]     DURATION: 30m (default), 2h, 900s ...
#   POND_SOAK_SCALE=20 scripts/soak.sh 8h     (default scale 10)
#
# Parts (test modules): crash_loop concurrency full_disk replica_faults hostile_input prune_race.
# The setup is scripts/test.sh's (system tools, the S3 server on 127.0.0.1), and so is the promise:
# nothing is left mounted or running afterwards. Exit status: 0 only when every run passed and
# nothing was lost.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-30m}
shift || true
parts=("$@")
((${#parts[@]})) || parts=(crash_loop concurrency full_disk replica_faults hostile_input prune_race)
export POND_SOAK_SCALE=${POND_SOAK_SCALE:-10}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pond-target}
export CARGO_TERM_COLOR=never

secs() {
    case $1 in
        *h) echo $((${1%h} * 3600)) ;;
        *m) echo $((${1%m} * 60)) ;;
        *s) echo "${1%s}" ;;
        *) echo "$1" ;;
    esac
}
deadline=$((SECONDS + $(secs "$duration")))

# The environment of the test command (tools, venv, S3 server), without running its tests.
need=()
for tool in fusermount3:fuse3 rsync:rsync setfattr:attr curl:curl git:git; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if ((${#need[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[[ -e /dev/fuse ]] || { echo "soak.sh: /dev/fuse is missing: the fault suite mounts FUSE" >&2; exit 1; }
report=$(mktemp /tmp/pond-soak-report.XXXXXX)
log=$(mktemp /tmp/pond-soak-log.XXXXXX)
# Nothing of ours may outlive the run (the S3 server, mounts a crashed test left).
source scripts/leftovers.sh
trap 'rc=$?; cleanup_leftovers; exit $rc' EXIT
eval "$(scripts/s3-local.sh start)"
export POND_FAULT_REPORT=$report

cargo build --release --locked --tests -q
echo "soak: scale $POND_SOAK_SCALE, for $duration, parts: ${parts[*]}; log $log"
failed=0 passes=0
while ((SECONDS < deadline)); do
    for part in "${parts[@]}"; do
        ((SECONDS < deadline)) || break
        start=$SECONDS
        if cargo test --release --locked -q --test tests -- "$part::" --test-threads=1 >>"$log" 2>&1; then
            echo "soak: pass $((passes + 1)) $part ok ($((SECONDS - start)) s)"
        else
            echo "soak: pass $((passes + 1)) $part FAILED ($((SECONDS - start)) s; see $log)"
            failed=$((failed + 1))
        fi
    done
    passes=$((passes + 1))
done

echo
echo "soak: $passes passes over ${parts[*]} at scale $POND_SOAK_SCALE, $failed failed runs"
awk '{
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    p = v["part"]; runs[p] += v["runs"]; faults[p] += v["faults"]; lost[p] += v["lost"]; n[p]++
} END {
    printf "%-28s %8s %10s %10s %6s\n", "part", "tests", "runs", "faults", "lost"
    for (p in runs) { printf "%-28s %8d %10d %10d %6d\n", p, n[p], runs[p], faults[p], lost[p]; total += lost[p] }
    exit total > 0
}' "$report" || failed=$((failed + 1))
exit $((failed > 0))
