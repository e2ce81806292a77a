#!/usr/bin/env bash
# A home with a huge directory, as a hostile (or careless) user makes one:
# N empty files in one directory (default a million), listed and walked as
# uid 1000 through a `hubfs mount home` (ls -f, ls -l, find, du --inodes),
# and, with HUBFS_BASE_BIN, through that other hubfs build the same way.
# While each step runs, the daemon's descriptors (/proc/PID/fd) and memory
# (VmRSS, VmHWM of /proc/PID/status) are sampled every 0.2 s; printed: each
# step's entries seen (must be N + what the step adds), seconds (native and
# through each home, median of ROUNDS), the daemon's most descriptors and
# memory. The files are made on the backing filesystem of BASE (default
# /var/tmp/hubfs-scale, ext4 here), not through the mount.
#
#   N=1000000 ROUNDS=3 HUBFS_BASE_BIN=/tmp/hubfs-base bench/scale.sh
#   HUBFS_BIN=path skips the release build.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${BASE:-/var/tmp/hubfs-scale}
TMPFS=0
N=${N:-1000000}
ROUNDS=${ROUNDS:-3}
USER_ID=1000

[ "$(id -u)" = 0 ] || { echo "run as root (mounts)" >&2; exit 1; }
. "$ROOT/bench/lib/homes.sh"
build_hubfs

# mounted DIR: whether a mount is at DIR (mountinfo: `mountpoint` fails on
# a mount whose server is gone).
mounted() { grep -q " $1 " /proc/self/mountinfo; }
unmount_all() {
    local m
    for m in "$BASE"/mnt-*; do
        if mounted "$m"; then umount "$m" 2>/dev/null || umount -l "$m" || true; fi
    done
}
trap unmount_all EXIT
unmount_all
mkdir -p "$BASE/src/big"
# The directory once (it takes a while): kept across runs of the same N.
if [ "$(cat "$BASE/made" 2>/dev/null)" != "$N" ]; then
    rm -rf "$BASE/src/big"
    mkdir -p "$BASE/src/big"
    python3 - "$BASE/src/big" "$N" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    os.close(os.open("%s/entry-%07d" % (d, i), os.O_WRONLY | os.O_CREAT, 0o644))
PY
    chown -R "$USER_ID:$USER_ID" "$BASE/src"
    echo "$N" > "$BASE/made"
fi

as_user() { setpriv --reuid=$USER_ID --regid=$USER_ID --clear-groups -- env LC_ALL=C sh -c "$1"; }

# step NAME DIR: prints "entries seconds"
step() {
    local cmd t0 t1 out
    case $1 in
        ls-f) cmd="ls -f $2/big | wc -l" ;;
        ls-l) cmd="ls -l $2/big | wc -l" ;;
        find) cmd="find $2 | wc -l" ;;
        du) cmd="du -s --inodes $2/big | cut -f1" ;;
    esac
    t0=$(date +%s.%N)
    out=$(as_user "$cmd")
    t1=$(date +%s.%N)
    echo "$out $(echo "$t1 - $t0" | bc -l)"
}

# sample PID FILE: appends "fds rss_kib hwm_kib" every 0.2 s until killed.
sample() {
    while kill -0 "$1" 2>/dev/null; do
        echo "$(ls "/proc/$1/fd" 2>/dev/null | wc -l) $(awk '/^VmRSS/ {r=$2} /^VmHWM/ {h=$2} END {print r+0, h+0}' "/proc/$1/status" 2>/dev/null)" >> "$2"
        sleep 0.2
    done
}

STEPS="ls-f ls-l find du"
declare -A T E F M
WHERES="native hubfs"
[ -n "${HUBFS_BASE_BIN:-}" ] && WHERES="$WHERES base"
for where in $WHERES; do
    for round in $(seq "$ROUNDS"); do
        dir=$BASE/src pid=""
        if [ "$where" != native ]; then
            bin=$HUBFS; [ "$where" = base ] && bin=$HUBFS_BASE_BIN
            dir=$BASE/mnt-$where
            mkdir -p "$dir"
            "$bin" mount home --user bench --quota 1TiB -f "$BASE/src" "$dir" 2>"$BASE/$where.log" &
            pid=$!
            for _ in $(seq 100); do mounted "$dir" && break; sleep 0.1; done
            rm -f "$BASE/samples"
            sample "$pid" "$BASE/samples" &
            spid=$!
        fi
        for s in $STEPS; do
            read -r e t < <(step "$s" "$dir")
            E[$where.$s]=$e T[$where.$s.$round]=$t
        done
        if [ -n "$pid" ]; then
            sleep 0.3
            F[$where.$round]=$(awk 'BEGIN {m=0} $1 > m {m=$1} END {print m}' "$BASE/samples")
            M[$where.$round]=$(awk 'BEGIN {r=0; h=0} $2 > r {r=$2} $3 > h {h=$3} END {print r, h}' "$BASE/samples")
            kill "$spid" 2>/dev/null || true
            kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
            for _ in $(seq 50); do mounted "$dir" || break; sleep 0.1; done
            if mounted "$dir"; then
                echo "$where: the mount outlived its server; detached" >&2
                umount -l "$dir"
            fi
        fi
    done
done

echo "$N entries in one directory; seconds are medians of $ROUNDS rounds (machine shared)"
printf '%-6s' step; for w in $WHERES; do printf ' %12s %9s' "$w-entries" "$w-s"; done; echo
for s in $STEPS; do
    printf '%-6s' "$s"
    for w in $WHERES; do
        vals=(); for round in $(seq "$ROUNDS"); do vals+=("${T[$w.$s.$round]}"); done
        printf ' %12s %9.2f' "${E[$w.$s]}" "$(median "${vals[@]}")"
    done
    echo
done
for w in $WHERES; do
    [ "$w" = native ] && continue
    for round in $(seq "$ROUNDS"); do
        read -r rss hwm <<<"${M[$w.$round]}"
        printf '%-6s round %d: daemon descriptors at most %s, VmRSS at most %s KiB, VmHWM %s KiB\n' \
            "$w" "$round" "${F[$w.$round]}" "$rss" "$hwm"
    done
done
