# shellcheck shell=bash
# The home-layer bench scripts' shared set-up, sourced by them: which hubfs
# binary to time, how to take down the two mounts (hubfs, bindfs) and the
# optional tmpfs below $BASE, and the median of a bench's rounds.

# build_hubfs: sets HUBFS to $HUBFS_BIN, or builds the release binary under
# $ROOT and uses that (HUBFS_BIN=path skips the build, e.g. to time an
# installed binary).
build_hubfs() {
    HUBFS=${HUBFS_BIN:-$ROOT/target/release/hubfs}
    if [ -z "${HUBFS_BIN:-}" ]; then
        echo "building hubfs (release)..." >&2
        (cd "$ROOT" && cargo build --release -q -p hubfs --bin hubfs)
    fi
}

# cleanup: unmounts $BASE/hubfs, $BASE/bindfs and, when $TMPFS is 1, the
# tmpfs at $BASE; safe to run when none of them is mounted.
cleanup() {
    umount "$BASE/hubfs" 2>/dev/null || true
    umount "$BASE/bindfs" 2>/dev/null || true
    if [ "$TMPFS" = 1 ] && mountpoint -q "$BASE"; then
        # The hubfs daemon leaves a moment after its unmount, holding files
        # of the tmpfs until then.
        for _ in $(seq 50); do umount "$BASE" 2>/dev/null && break; sleep 0.1; done
        if mountpoint -q "$BASE"; then umount -l "$BASE"; fi
    fi
}

# median X...: the median of the numbers given as arguments (the mean of the
# middle two for an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
