#!/usr/bin/env bash
# Benchmark of the home layer: the same fio jobs and metadata loop on
#   native  - the backing directory itself,
#   hubfs   - `hubfs mount home` over a directory on the same filesystem,
#   bindfs  - Debian's bindfs, the peer FUSE passthrough,
# in one run (warm page cache: the layer's overhead, not the disk), with ratios hubfs/native and hubfs/bindfs (above 1: hubfs is
# better). Sequential writes are timed twice: into the page cache (the
# layer's whole cost shows) and with a final fsync (what reaches the disk).
# Needs root, fio and bindfs (.ci/install-home.sh).
#
# HUBFS_ARGS adds flags to `hubfs mount home` (e.g. --no-passthrough).
#
#   bench/home.sh [BASE_DIR]     (default: a fresh tmpfs at /var/tmp/hubfs-home-bench)
#
# The default tmpfs keeps the disk out: on a VM disk, background writeback of
# one job's gigabyte swings the next job's figure by 5x, while on tmpfs
# "native" is the page cache alone and the ratios show the layer's own cost
# (the harshest comparison: on NFS the share's latency dwarfs it). Give a
# BASE_DIR on a real filesystem to measure there instead.
#   SIZE=1G RUNTIME=10 FILES=10000 ROUNDS=3 bench/home.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${1:-/var/tmp/hubfs-home-bench}
TMPFS=$([ -z "${1:-}" ] && echo 1 || echo 0)
SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-10}
FILES=${FILES:-10000}

for tool in fio bindfs python3; do
    command -v $tool >/dev/null || { echo "missing $tool: run .ci/install-home.sh" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "run as root (mounts)" >&2; exit 1; }

. "$ROOT/bench/lib/homes.sh"
build_hubfs
trap cleanup EXIT
cleanup
rm -rf "$BASE"
mkdir -p "$BASE"
if [ "$TMPFS" = 1 ]; then mount -t tmpfs -o size=6g hubfs-bench "$BASE"; fi
mkdir -p "$BASE"/{native,hsrc,bsrc,hubfs,bindfs}

"$HUBFS" mount home --user bench --quota 1TiB --fuse-threads "${FUSE_THREADS:-4}" ${HUBFS_ARGS:-} "$BASE/hsrc" "$BASE/hubfs" 2>/dev/null
bindfs "$BASE/bsrc" "$BASE/bindfs"
sleep 0.5
mountpoint -q "$BASE/hubfs" && mountpoint -q "$BASE/bindfs"

# fio_one DIR NAME RW BS -> prints "bw_bytes iops" of the job
fio_one() {
    local dir=$1 name=$2 rw=$3 bs=$4; shift 4
    fio --name="$name" --directory="$dir" --filename=bench.dat --rw="$rw" --bs="$bs" \
        --size="$SIZE" --ioengine=psync --numjobs=1 --invalidate=0 --output-format=json "$@" 2>/dev/null |
        python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
side = j["write"] if j["write"]["io_bytes"] else j["read"]
print(side["bw_bytes"], side["iops"])'
}

# meta DIR -> files per second for create+stat+delete of $FILES small files
meta() {
    python3 - "$1" "$FILES" <<'PY'
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
sub = os.path.join(d, "meta")
os.makedirs(sub, exist_ok=True)
data = b"x" * 100
t0 = time.perf_counter()
for i in range(n):
    fd = os.open(f"{sub}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, data)
    os.close(fd)
for i in range(n):
    os.stat(f"{sub}/f{i}")
for i in range(n):
    os.unlink(f"{sub}/f{i}")
print(n / (time.perf_counter() - t0))
PY
}

# Rounds interleave the three contenders so a burst of background
# writeback hits them alike; each figure is the median of the rounds. `sync`
# before each write job keeps the previous job's dirty pages out of it.
ROUNDS=${ROUNDS:-3}
declare -A R
for ((round = 1; round <= ROUNDS; round++)); do
    for t in native hubfs bindfs; do
        d="$BASE/$t"
        echo "round $round/$ROUNDS on $t..." >&2
        sync
        read -r bw _ < <(fio_one "$d" seqwrite write 1M)
        R[$t,seqwrite]+="$bw "
        rm -f "$d/bench.dat"; sync
        read -r bw _ < <(fio_one "$d" seqwrite write 1M --end_fsync=1)
        R[$t,seqwrite_fsync]+="$bw "
        read -r bw _ < <(fio_one "$d" seqread read 1M)
        R[$t,seqread]+="$bw "
        read -r _ iops < <(fio_one "$d" randread randread 4k --time_based --runtime="$RUNTIME")
        R[$t,randread]+="$iops "
        R[$t,meta]+="$(meta "$d") "
        rm -f "$d/bench.dat"
    done
done

python3 - <<PY
import statistics
r = {
$(for t in native hubfs bindfs; do for k in seqwrite seqwrite_fsync seqread randread meta; do echo "    ('$t','$k'): statistics.median([float(x) for x in '${R[$t,$k]}'.split()]),"; done; done)
}
rows = [("seqwrite", "seq write 1M (MiB/s)", 1 / 2**20),
        ("seqwrite_fsync", "seq write 1M+fsync (MiB/s)", 1 / 2**20),
        ("seqread", "seq read 1M (MiB/s)", 1 / 2**20),
        ("randread", "rand read 4k (IOPS)", 1), ("meta", "create+stat+delete (files/s)", 1)]
print(f"median of $ROUNDS rounds")
print(f"{'':32} {'native':>10} {'hubfs':>10} {'bindfs':>10} {'hubfs/native':>13} {'hubfs/bindfs':>13}")
for k, label, scale in rows:
    n, h, b = (r[(t, k)] for t in ("native", "hubfs", "bindfs"))
    print(f"{label:32} {n*scale:10.0f} {h*scale:10.0f} {b*scale:10.0f} {h/n:12.2f}x {h/b:12.2f}x")
    print(f"RATIO {k} hubfs/native={h/n:.2f} hubfs/bindfs={h/b:.2f}")
PY
