#!/usr/bin/env bash
# Benchmark of the usage walker: `hubfs du` against GNU `du -sb` (and `dua`
# when installed) on one generated tree (~200,000 files in ~10,000 dirs), warm
# and cold cache, in the same run. Prints times and ratios (peer time / hubfs
# time: above 1 means hubfs is faster) and checks the byte totals agree.
#
#   bench/du.sh [TREE_DIR]        (default /var/tmp/hubfs-du-bench)
#   RUNS=5 DIRS=10000 FILES_PER_DIR=20 bench/du.sh
#
# Cold runs need root (echo 3 > /proc/sys/vm/drop_caches); they are skipped
# with a note otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TREE=${1:-/var/tmp/hubfs-du-bench}
DIRS=${DIRS:-10000}
FILES_PER_DIR=${FILES_PER_DIR:-20}
RUNS=${RUNS:-5}
COLD_RUNS=${COLD_RUNS:-3}

# HUBFS_BIN=path skips the build (e.g. to time an installed binary).
HUBFS=${HUBFS_BIN:-$ROOT/target/release/hubfs}
if [ -z "${HUBFS_BIN:-}" ]; then
    echo "building hubfs (release)..." >&2
    (cd "$ROOT" && cargo build --release -q -p hubfs --bin hubfs)
fi

marker="$TREE/.generated-$DIRS-$FILES_PER_DIR"
if [ ! -e "$marker" ]; then
    echo "generating $((DIRS * FILES_PER_DIR)) files in $DIRS dirs under $TREE..." >&2
    rm -rf "$TREE"
    python3 - "$TREE" "$DIRS" "$FILES_PER_DIR" <<'PY'
import os, random, sys
root, dirs, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(42)
top = max(1, int(dirs ** 0.5))
made = 0
blob = os.urandom(64 * 1024)
for t in range(top):
    for s in range(dirs // top):
        d = os.path.join(root, f"t{t:03d}", f"s{s:03d}")
        os.makedirs(d, exist_ok=True)
        for f in range(per):
            n = int(rng.expovariate(1 / 4096)) % len(blob)
            with open(os.path.join(d, f"f{f:03d}.dat"), "wb") as fh:
                fh.write(blob[:n])
        made += 1
# a few hard links and symlinks, as homes have
os.link(os.path.join(root, "t000", "s000", "f000.dat"), os.path.join(root, "hardlink"))
os.symlink("/etc", os.path.join(root, "symlink"))
PY
    touch "$marker"
fi

DUA=$(command -v dua || true)
can_drop=0
if [ "$(id -u)" = 0 ] && sync && echo 3 2>/dev/null >/proc/sys/vm/drop_caches; then can_drop=1; fi

# best-of-N wall time in seconds of "$@" (output discarded)
time_best() {
    local n=$1 cold=$2; shift 2
    local best=""
    for _ in $(seq "$n"); do
        if [ "$cold" = 1 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi
        local t0 t1
        t0=$(date +%s.%N)
        "$@" >/dev/null 2>&1
        t1=$(date +%s.%N)
        best=$(python3 -c "a=$t1-$t0; b='$best'; print(min(a, float(b)) if b else a)")
    done
    printf '%.3f' "$best"
}

ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }

# identical totals
du_bytes=$(du -sb "$TREE" | cut -f1)
hubfs_bytes=$("$HUBFS" du --json "$TREE" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])')
echo "byte totals: du -sb=$du_bytes hubfs du=$hubfs_bytes $([ "$du_bytes" = "$hubfs_bytes" ] && echo IDENTICAL || echo DIFFERENT)"
if [ -n "$DUA" ]; then
    echo "dua: $("$DUA" aggregate --apparent-size --format bytes "$TREE" 2>/dev/null | tail -1)"
fi

files=$(( DIRS * FILES_PER_DIR ))
printf '\n%-6s %-10s %10s %10s\n' cache tool seconds "du/hubfs"
for mode in warm cold; do
    cold=0; n=$RUNS
    if [ "$mode" = cold ]; then
        [ "$can_drop" = 1 ] || { echo "cold: skipped (cannot drop caches; run as root)"; continue; }
        cold=1; n=$COLD_RUNS
    else
        du -sb "$TREE" >/dev/null # warm up
    fi
    t_du=$(time_best "$n" $cold du -sb "$TREE")
    t_hubfs=$(time_best "$n" $cold "$HUBFS" du "$TREE")
    printf '%-6s %-10s %10s\n' "$mode" "du -sb" "$t_du"
    printf '%-6s %-10s %10s %10s\n' "$mode" "hubfs du" "$t_hubfs" "$(ratio "$t_du" "$t_hubfs")"
    if [ -n "$DUA" ]; then
        t_dua=$(time_best "$n" $cold "$DUA" aggregate --apparent-size "$TREE")
        printf '%-6s %-10s %10s %10s   (dua/hubfs %s)\n' "$mode" "dua" "$t_dua" "" "$(ratio "$t_dua" "$t_hubfs")"
    fi
    echo "RATIO $mode du_sb/hubfs_du=$(ratio "$t_du" "$t_hubfs") ($files files)"
done
[ -n "$DUA" ] || echo "(dua not installed: HUBFS_INSTALL_DUA=1 .ci/install-home.sh)"
