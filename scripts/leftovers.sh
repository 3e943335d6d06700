# Sourced by scripts/test.sh and scripts/soak.sh: nothing of ours may outlive a run. Stops the
# local S3 server and unmounts what a crashed test left under /tmp: pond FUSE mounts (by source, or
# by type for a replica mounted by URL), and the small tmpfs filesystems the full-disk test makes
# (named pond-test-full).
cleanup_leftovers() {
    scripts/s3-local.sh stop || true
    local m
    for m in $(awk '(($3 ~ /^fuse/ && $1 ~ /pond/) || $3 == "fuse.pond" || $1 == "pond-test-full") && $2 ~ /^\/tmp\// {print $2}' /proc/mounts); do
        umount -l "$m" 2>/dev/null || true
    done
}
