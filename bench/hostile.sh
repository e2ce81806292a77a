#!/usr/bin/env bash
# The hostile user's table: every technique of
# tests/tests/home_hostile/techniques.py (a writer or appender joining a
# passthrough reader, growth through a shared mapping beside one, splice
# beside one, ftruncate with a mapping, fallocate, copy_file_range,
# O_DIRECT, four parallel writers, extended attributes) run as uid 1000 in a
# fresh home with a QUOTA (default 100 MiB) quota, trying to store three
# times that; printed: what landed on the share (apparent bytes of files,
# plus extended attribute names and values) and how the attempt ended, for
# this build and, with HUBFS_BASE_BIN, for that one, side by side.
#
#   HUBFS_BASE_BIN=/tmp/hubfs-base bench/hostile.sh
#   HUBFS_BIN=path skips the release build; QUOTA=bytes.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${BASE:-/var/tmp/hubfs-hostile}
TMPFS=0
QUOTA=${QUOTA:-104857600}
USER_ID=1000
SCRIPT=$ROOT/tests/tests/home_hostile/techniques.py

[ "$(id -u)" = 0 ] || { echo "run as root (mounts)" >&2; exit 1; }
. "$ROOT/bench/lib/homes.sh"
build_hubfs

MNT=$BASE/mnt
unmount() { if mountpoint -q "$MNT"; then umount "$MNT" 2>/dev/null || umount -l "$MNT"; fi; }
trap unmount EXIT
unmount
rm -rf "$BASE"
mkdir -p "$MNT"
chmod 755 "$BASE"
cp "$SCRIPT" "$BASE/techniques.py"

# landed DIR: apparent bytes of files and symlinks plus extended attributes.
landed() {
    python3 - "$1" <<'PY'
import os, sys
total = 0
for d, dirs, files in os.walk(sys.argv[1]):
    for n in dirs + files:
        p = os.path.join(d, n)
        st = os.lstat(p)
        if not os.path.isdir(p):
            total += st.st_size
        for a in os.listxattr(p, follow_symlinks=False):
            total += len(a) + len(os.getxattr(p, a, follow_symlinks=False))
print(total)
PY
}

# attempt BIN TECHNIQUE: prints "BYTES HOW"
attempt() {
    local bin=$1 name=$2 pid how
    rm -rf "$BASE/src"
    mkdir -p "$BASE/src"
    chown "$USER_ID:$USER_ID" "$BASE/src"
    "$bin" mount home --user hostile --quota "$QUOTA" -f "$BASE/src" "$MNT" >/dev/null 2>"$BASE/server.log" &
    pid=$!
    for _ in $(seq 100); do mountpoint -q "$MNT" && break; sleep 0.1; done
    how=$(setpriv --reuid=$USER_ID --regid=$USER_ID --clear-groups -- \
        /usr/bin/python3 "$BASE/techniques.py" "$MNT" "$QUOTA" "$name" 2>&1 | tail -1 | awk '{print $2}')
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    for _ in $(seq 50); do mountpoint -q "$MNT" || break; sleep 0.1; done
    unmount
    echo "$(landed "$BASE/src") $how"
}

WHERES="hubfs"
[ -n "${HUBFS_BASE_BIN:-}" ] && WHERES="base hubfs"
printf 'quota %d MiB, each technique tries to store %d MiB (machine shared)\n' $((QUOTA >> 20)) $((3 * QUOTA >> 20))
printf '%-24s' technique; for w in $WHERES; do printf ' %14s %-8s' "$w-MiB" how; done; echo
for name in $(python3 "$SCRIPT" list); do
    printf '%-24s' "$name"
    for w in $WHERES; do
        bin=$HUBFS; [ "$w" = base ] && bin=$HUBFS_BASE_BIN
        read -r bytes how < <(attempt "$bin" "$name")
        printf ' %14.2f %-8s' "$(echo "$bytes / 1048576" | bc -l)" "$how"
    done
    echo
done
