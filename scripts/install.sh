#!/bin/sh
# Install pond and its mount helpers, so that `mount -t pond`, /etc/fstab lines and systemd .mount
# units work. Run as root; running it again changes only what differs.
#
#   scripts/install.sh [--binary PATH]
#
# Installs
#   /usr/local/bin/pond       built here with `cargo build --release --locked` (target directory
#                             $CARGO_TARGET_DIR, default /root/.cache/pond-target), or the
#                             already-built binary given with --binary
#   /sbin/mount.pond          the mount(8) helper (`mount -t pond`, fstab, systemd)
#   /sbin/mount.fuse.pond     the same helper for `mount -t fuse.pond` (a symlink)
#   /sbin/umount.fuse.pond    the umount(8) helper: `umount` and `systemctl stop` wait for the
#                             final commit (a pond mount's type is fuse.pond)
# and prints one line per file: installed, or unchanged.
# DESTDIR=DIR installs under DIR instead of / (for packaging; needs no root).

set -eu

me=${0##*/}
die() {
    printf '%s: %s\n' "$me" "$*" >&2
    exit 1
}

repo=$(cd "$(dirname "$0")/.." && pwd)
binary=
while [ $# -gt 0 ]; do
    case $1 in
        --binary) [ $# -ge 2 ] || die "--binary needs a path"
                  binary=$2
                  shift ;;
        --binary=*) binary=${1#--binary=} ;;
        -h|--help) sed -n '2,17s/^# \{0,1\}//p' "$0"
                   exit 0 ;;
        *) die "unknown argument $1 (usage: $me [--binary PATH])" ;;
    esac
    shift
done

destdir=${DESTDIR:-}
if [ -z "$destdir" ] && [ "$(id -u)" != 0 ]; then
    die "run as root (it writes /usr/local/bin and /sbin), or set DESTDIR"
fi

if [ -z "$binary" ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust, or give an already-built binary with --binary PATH"
    target=${CARGO_TARGET_DIR:-/root/.cache/pond-target}
    printf '%s: building pond (cargo build --release --locked, target directory %s)\n' "$me" "$target"
    CARGO_TARGET_DIR=$target cargo build --release --locked --manifest-path "$repo/Cargo.toml" ||
        die "cargo build failed"
    binary=$target/release/pond
fi
if ! { [ -f "$binary" ] && [ -x "$binary" ]; }; then
    die "$binary is not an executable file"
fi
version=$("$binary" --version 2>/dev/null) || die "$binary --version failed: is it a pond binary?"
case $version in
    pond\ *) ;;
    *) die "$binary is not a pond binary (--version says: $version)" ;;
esac

# Copy SRC to DEST with MODE unless DEST already has that content and mode. Through a temp file
# and rename, so a running daemon's binary is replaced, never overwritten in place (ETXTBSY).
put() {
    src=$1 dest=$2 mode=$3 what=$4
    mkdir -p "$(dirname "$dest")"
    if [ -f "$dest" ] && [ ! -L "$dest" ] && cmp -s "$src" "$dest" &&
        [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
        printf 'unchanged  %s (%s)\n' "$dest" "$what"
        return
    fi
    tmp=$dest.install.$$
    cp "$src" "$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$dest"
    printf 'installed  %s (%s)\n' "$dest" "$what"
}

# Make DEST a symlink to TARGET unless it is one already.
link() {
    target=$1 dest=$2 what=$3
    if [ -L "$dest" ] && [ "$(readlink "$dest")" = "$target" ]; then
        printf 'unchanged  %s -> %s (%s)\n' "$dest" "$target" "$what"
        return
    fi
    tmp=$dest.install.$$
    ln -s "$target" "$tmp"
    mv -fT "$tmp" "$dest"
    printf 'installed  %s -> %s (%s)\n' "$dest" "$target" "$what"
}

put "$binary" "$destdir/usr/local/bin/pond" 0755 "$version"
put "$repo/mount-helper/mount.pond" "$destdir/sbin/mount.pond" 0755 "mount -t pond"
link mount.pond "$destdir/sbin/mount.fuse.pond" "mount -t fuse.pond"
put "$repo/mount-helper/umount.fuse.pond" "$destdir/sbin/umount.fuse.pond" 0755 "umount waits for the final commit"
printf '%s: done; see mount-helper/README.md for fstab lines and systemd units\n' "$me"
