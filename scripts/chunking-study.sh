#!/usr/bin/env bash
# The chunking study: bytes stored by pond's fixed 64 KiB chunks (keyed by position and content)
# against content-defined chunks (FastCDC, min 16 / average 64 / max 256 KiB, keyed by content) for
# the versions of one file, on eight workloads, plus the CPU cost of chunking 1 GiB each way.
# Installs what it needs (python3, git, tar, e2fsprogs), makes the tool-made versions with
# scripts/chunking_study_gen.py (SQLite, tar, git gc, mkfs.ext4), runs
# `cargo run --release --locked --example chunking_study`, prints the tables and writes them into
# results/chunking-study.md between its "generated" markers (the prose around them is kept).
#
#   scripts/chunking-study.sh                  # the defaults below: ~3 GB of scratch in STUDY_DIR,
#                                              # 1 GiB in /dev/shm, a few minutes on 2 cores
#   QUICK=1 OUT=/tmp/cs.md scripts/chunking-study.sh   # small sizes, for trying changes
#
# Sizes: APPEND_BASE_MIB (100) APPENDS (20) APPEND_MIB (1); SQLITE_MB (10) SQLITE_TXNS (100);
# BIG_MIB (1024); INSERT_MIB (64); CSV_ROWS (100000) CSV_INSERTS (100); TAR_FILES (2000);
# GIT_FILES (2000) GIT_COMMITS (200) GIT_MORE (20); VM_MIB (256) VM_WRITES (1000) VM_VERSIONS (3);
# CPU_MIB (1024). ONLY=1,3,... runs some workloads. Scratch: STUDY_DIR (default
# /var/tmp/pond-chunking-study, emptied first and removed at the end). Report: OUT (default
# results/chunking-study.md).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pond-target}
export CARGO_TERM_COLOR=never

if [[ ${QUICK:-} == 1 ]]; then
    : "${APPEND_BASE_MIB:=8}" "${APPENDS:=3}" "${SQLITE_MB:=2}" "${SQLITE_TXNS:=10}" "${BIG_MIB:=64}"
    : "${INSERT_MIB:=8}" "${CSV_ROWS:=10000}" "${CSV_INSERTS:=10}" "${TAR_FILES:=300}" "${GIT_FILES:=300}"
    : "${GIT_COMMITS:=30}" "${GIT_MORE:=5}" "${VM_MIB:=64}" "${VM_VERSIONS:=2}" "${CPU_MIB:=128}"
fi
APPEND_BASE_MIB=${APPEND_BASE_MIB:-100} APPENDS=${APPENDS:-20} APPEND_MIB=${APPEND_MIB:-1}
SQLITE_MB=${SQLITE_MB:-10} SQLITE_TXNS=${SQLITE_TXNS:-100}
BIG_MIB=${BIG_MIB:-1024} INSERT_MIB=${INSERT_MIB:-64}
CSV_ROWS=${CSV_ROWS:-100000} CSV_INSERTS=${CSV_INSERTS:-100}
TAR_FILES=${TAR_FILES:-2000}
GIT_FILES=${GIT_FILES:-2000} GIT_COMMITS=${GIT_COMMITS:-200} GIT_MORE=${GIT_MORE:-20}
VM_MIB=${VM_MIB:-256} VM_WRITES=${VM_WRITES:-1000} VM_VERSIONS=${VM_VERSIONS:-3}
CPU_MIB=${CPU_MIB:-1024}
ONLY=${ONLY:-1,2,3,4,5,6,7,8}
work=${STUDY_DIR:-/var/tmp/pond-chunking-study}
out=${OUT:-$repo/results/chunking-study.md}
cpu_file=/dev/shm/pond-chunking-study-cpu.bin

need=()
for tool in python3:python3 git:git tar:tar mkfs.ext4:e2fsprogs; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if ((${#need[@]})); then
    echo "chunking-study.sh: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -c 'import sqlite3' || { echo "chunking-study.sh: python3 lacks the sqlite3 module" >&2; exit 1; }
[[ $(stat -f -c %T /dev/shm) == tmpfs ]] || echo "chunking-study.sh: /dev/shm is not tmpfs: the CPU figures include a disk" >&2

rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work" "$cpu_file"' EXIT

wanted() { [[ ,$ONLY, == *,$1,* ]]; }
gen=(python3 "$repo/scripts/chunking_study_gen.py")
t0=$SECONDS
load=$(cut -d' ' -f1 /proc/loadavg)
wanted 2 && "${gen[@]}" sqlite --mb "$SQLITE_MB" --txns "$SQLITE_TXNS" "$work/sqlite"
wanted 6 && "${gen[@]}" tar --files "$TAR_FILES" "$work/tar"
wanted 7 && "${gen[@]}" git --files "$GIT_FILES" --commits "$GIT_COMMITS" --more "$GIT_MORE" "$work/git"
wanted 8 && "${gen[@]}" vm --mib "$VM_MIB" "$work/vm"
echo "chunking-study.sh: inputs made in $((SECONDS - t0)) s" >&2

args=(--work "$work" --only "$ONLY" --cpu "$cpu_file"
      --append-base-mib "$APPEND_BASE_MIB" --appends "$APPENDS" --append-mib "$APPEND_MIB"
      --big-mib "$BIG_MIB" --insert-mib "$INSERT_MIB" --csv-rows "$CSV_ROWS" --csv-inserts "$CSV_INSERTS"
      --vm-writes "$VM_WRITES" --vm-versions "$VM_VERSIONS" --cpu-mib "$CPU_MIB")
tables=$(cargo run -q --release --locked --example chunking_study -- "${args[@]}")
echo "chunking-study.sh: done in $((SECONDS - t0)) s" >&2

sizes="APPEND_BASE_MIB=$APPEND_BASE_MIB APPENDS=$APPENDS APPEND_MIB=$APPEND_MIB SQLITE_MB=$SQLITE_MB"
sizes+=" SQLITE_TXNS=$SQLITE_TXNS BIG_MIB=$BIG_MIB INSERT_MIB=$INSERT_MIB CSV_ROWS=$CSV_ROWS"
sizes+=" CSV_INSERTS=$CSV_INSERTS TAR_FILES=$TAR_FILES GIT_FILES=$GIT_FILES GIT_COMMITS=$GIT_COMMITS"
sizes+=" GIT_MORE=$GIT_MORE VM_MIB=$VM_MIB VM_WRITES=$VM_WRITES VM_VERSIONS=$VM_VERSIONS CPU_MIB=$CPU_MIB"
generated=$(
    echo "<!-- chunking-study.sh: generated from here -->"
    echo
    echo "Produced by \`bash scripts/chunking-study.sh\` (sizes: $sizes; ONLY=$ONLY) at commit"
    echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' (with local changes)'), $(date -u +%Y-%m-%d), on $(nproc) cores of"
    echo "$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1) (load average $load when it started; the machine is shared),"
    echo "rustc $(rustc --version | cut -d' ' -f2),"
    echo "running \`cargo run --release --locked --example chunking_study -- ${args[*]}\`."
    echo
    echo "$tables"
    echo
    echo "<!-- chunking-study.sh: generated up to here -->"
)
echo "$generated"

mkdir -p "$(dirname "$out")"
if [[ -f $out ]] && grep -q 'chunking-study.sh: generated from here' "$out"; then
    python3 - "$out" "$generated" <<'EOF'
import re, sys
path, new = sys.argv[1], sys.argv[2]
text = open(path).read()
pat = re.compile(r"<!-- chunking-study.sh: generated from here -->.*?<!-- chunking-study.sh: generated up to here -->", re.S)
open(path, "w").write(pat.sub(lambda m: new, text, count=1))
EOF
else
    printf '# Fixed 64 KiB chunks against FastCDC: bytes stored per version\n\n%s\n' "$generated" >"$out"
fi
echo "chunking-study.sh: wrote $out" >&2
