#!/usr/bin/env bash
# What a bucket server's seccomp allow-list costs per FUSE request: one
# `hubfs mount s3` with its filter (the default) and one with --no-seccomp,
# same binary, same Garage, mounted together and taking turns. Each turn is
# N statvfs() calls on the mount: one STATFS request each, answered by the
# server from memory (no S3 request: Garage's counter is checked), so the
# time per call is a FUSE round trip plus the server's syscalls for it.
# Prints the median time per request of each and the ratio; the machine may
# be shared, so take the ratio, not the absolute figures.
#
# Needs: garage (.ci/install-s3.sh). Run as root.
# Usage: bench/seccomp.sh   (HUBFS_BIN=path to skip the release build;
#                           N=20000 calls per turn, ROUNDS=7)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
ROUNDS=${ROUNDS:-7}
GARAGE=$(command -v garage || echo "$HOME/.cargo/bin/garage")
if [ -n "${HUBFS_BIN:-}" ]; then
    HUBFS=$HUBFS_BIN
else
    echo "== building hubfs (release)"
    cargo build --release -q -p hubfs
    HUBFS=$PWD/target/release/hubfs
fi
. bench/lib/workdir.sh
bench_workdir hubfs-seccomp-bench
. bench/lib/garage.sh
start_garage 100
requests() {
    curl -sf -H "Authorization: Bearer $MT" "http://127.0.0.1:$ADMP/metrics" |
        awk '/^api_s3_request_counter/ {s += $NF} END {printf "%d\n", s}'
}
for kind in seccomp off; do
    m=$W/mnt-$kind
    mkdir -p "$m"
    flags=()
    [ "$kind" = off ] && flags=(--no-seccomp)
    AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK HUBFS_LOG=warn "$HUBFS" mount s3 --foreground \
        --endpoint-url "$EP" --region garage --force-path-style "${flags[@]}" bench "$m" &
    PIDS+=($!)
    for _ in $(seq 200); do mountpoint -q "$m" && ls "$m" >/dev/null 2>&1 && break; sleep 0.05; done
    mountpoint -q "$m" || { echo "$kind did not mount" >&2; exit 1; }
    grep -E '^Seccomp:' "/proc/${PIDS[-1]}/status" | sed "s/^/  $kind: /"
done
turn() { # mountpoint -> microseconds per statvfs
    python3 - "$1" "$N" <<'PY'
import os, sys, time
m, n = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
for _ in range(n):
    os.statvfs(m)
print((time.perf_counter() - t) / n * 1e6)
PY
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
declare -A T
r0=$(requests)
for _ in $(seq "$ROUNDS"); do
    for kind in seccomp off; do T[$kind]+="$(turn "$W/mnt-$kind") "; done
done
r1=$(requests)
ON=$(echo "${T[seccomp]}" | median); OFF=$(echo "${T[off]}" | median)
echo "== statvfs on the mount, $N calls x $ROUNDS rounds each, taking turns (S3 requests meanwhile: $((r1 - r0)))"
printf '  with the seccomp allow-list: %.2f us per request (runs: %s)\n' "$ON" "${T[seccomp]}"
printf '  without (--no-seccomp):      %.2f us per request (runs: %s)\n' "$OFF" "${T[off]}"
printf '  seccomp costs %.3f us per request (ratio %.3fx)\n' "$(echo "$ON - $OFF" | bc -l)" "$(echo "$ON / $OFF" | bc -l)"
