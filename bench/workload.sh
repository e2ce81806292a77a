#!/usr/bin/env bash
# A notebook user's day on three homes in one run, as uid 1000:
#   native  - a directory on the backing filesystem,
#   hubfs   - `hubfs mount home` over a directory on the same filesystem,
#   bindfs  - Debian's bindfs, the peer FUSE passthrough.
# Steps (each timed, median of ROUNDS rounds, ratios to native printed):
#   install  - a package install: the Python standard library copied into
#              ~/lib (~thousands of small files) and byte-compiled, as pip does;
#   import   - a fresh interpreter importing modules from that copy;
#   untar    - unpacking a many-small-files tarball;
#   clone    - `git clone` of a small local repository;
#   du       - `du -s` of the home;
#   rm       - `rm -rf` of all of it.
# After the times, the FUSE requests each step sent to the hubfs daemon
# (last round; read from the root's user.hubfs.requests attribute): counts
# are what the kernel's caches save, and do not vary with the machine.
# Last, the floor: the round trip of one request that does nothing (a
# GETXATTR of a name nobody set, which the kernel never caches) on each FUSE
# home against the same system call natively, and what each step's requests
# cost at that rate: how much of hubfs's extra time is the round trips
# themselves, and the least any FUSE layer on this kernel could take for
# the untar (three synchronous requests per new file: LOOKUP, CREATE, WRITE).
# Needs root, bindfs, python3 and git. Warm page cache on a fresh tmpfs (the
# layer's own cost; on NFS the share's latency dwarfs it).
#
#   ROUNDS=3 bench/workload.sh [BASE_DIR]   (default: tmpfs at /var/tmp/hubfs-workload)
#   HUBFS_BIN=path skips the release build; HUBFS_ARGS adds mount flags.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${1:-/var/tmp/hubfs-workload}
TMPFS=$([ -z "${1:-}" ] && echo 1 || echo 0)
ROUNDS=${ROUNDS:-3}
PY=${PY:-/usr/bin/python3}
USER_ID=1000

for tool in bindfs git setpriv "$PY"; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "run as root (mounts)" >&2; exit 1; }

. "$ROOT/bench/lib/homes.sh"
build_hubfs
trap cleanup EXIT
cleanup
rm -rf "$BASE"
mkdir -p "$BASE"
if [ "$TMPFS" = 1 ]; then mount -t tmpfs -o size=4g hubfs-workload "$BASE"; fi
mkdir -p "$BASE"/{native,hsrc,bsrc,hubfs,bindfs,input}
chown "$USER_ID:$USER_ID" "$BASE"/{native,hsrc,bsrc,input}

# Inputs, made once outside the homes: the "package" (the standard library,
# no compiled caches), a tarball of many small files, a small git repository.
STDLIB=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
tar -C "$STDLIB" --exclude=__pycache__ --exclude=site-packages --exclude=test -cf "$BASE/input/pkg.tar" .
"$PY" - "$BASE/input/small.tar" <<'PY'
import io, sys, tarfile
with tarfile.open(sys.argv[1], "w") as t:
    for i in range(5000):
        data = (b"x" * (i % 4000)) + b"\n"
        info = tarfile.TarInfo(f"d{i % 50}/f{i}.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
PY
git init -q "$BASE/input/repo"
for i in $(seq 200); do echo "line $i" > "$BASE/input/repo/file$i.txt"; done
git -C "$BASE/input/repo" add -A
git -C "$BASE/input/repo" -c user.name=b -c user.email=b@b commit -qm init
chown -R "$USER_ID:$USER_ID" "$BASE/input"

"$HUBFS" mount home --user bench --quota 1TiB ${HUBFS_ARGS:-} "$BASE/hsrc" "$BASE/hubfs" 2>/dev/null
bindfs "$BASE/bsrc" "$BASE/bindfs"

as_user() { setpriv --reuid=$USER_ID --regid=$USER_ID --clear-groups -- env HOME="$1" LC_ALL=C sh -c "$2"; }

# step NAME HOME: prints seconds
step() {
    local name=$1 home=$2 cmd
    case $name in
        install) cmd="mkdir -p lib && tar -C lib -xf $BASE/input/pkg.tar && $PY -m compileall -q lib >/dev/null" ;;
        import) cmd="PYTHONPATH=lib $PY -S -c 'import json, email.parser, http.client, xml.dom.minidom, asyncio, decimal, argparse, logging.handlers'" ;;
        untar) cmd="mkdir -p data && tar -C data -xf $BASE/input/small.tar" ;;
        clone) cmd="git clone -q $BASE/input/repo repo" ;;
        du) cmd="du -s . >/dev/null" ;;
        rm) cmd="rm -rf lib data repo" ;;
    esac
    local t0 t1
    t0=$(date +%s.%N)
    as_user "$home" "cd $home && $cmd"
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}

# requests: the hubfs daemon's request counts so far ("kind=n ... total=n").
requests() { "$PY" -c 'import os, sys; print(os.getxattr(sys.argv[1], "user.hubfs.requests").decode())' "$BASE/hubfs" 2>/dev/null || echo "total=0"; }
# count KIND TEXT
count() { printf '%s\n' "$2" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2; f=1} END {if (!f) print 0}'; }
REQ_KINDS="total lookup negative getattr readdirplus open create write unlink"

STEPS="install import untar clone du rm"
declare -A T R
for round in $(seq "$ROUNDS"); do
    for where in native hubfs bindfs; do
        for s in $STEPS; do
            [ "$where" = hubfs ] && before=$(requests)
            T[$where.$s.$round]=$(step "$s" "$BASE/$where")
            if [ "$where" = hubfs ]; then
                after=$(requests)
                for k in $REQ_KINDS; do
                    R[$s.$k]=$(( $(count "$k" "$after") - $(count "$k" "$before") ))
                done
            fi
        done
        sync
    done
done

printf '%-8s %10s %10s %10s %8s %8s\n' step native hubfs bindfs hubfs/n bindfs/n
declare -A TOTAL=([native]=0 [hubfs]=0 [bindfs]=0)
for s in $STEPS; do
    declare -A M
    for where in native hubfs bindfs; do
        vals=()
        for round in $(seq "$ROUNDS"); do vals+=("${T[$where.$s.$round]}"); done
        M[$where]=$(median "${vals[@]}")
        TOTAL[$where]=$(echo "${TOTAL[$where]} + ${M[$where]}" | bc -l)
    done
    printf '%-8s %10.3f %10.3f %10.3f %7.2fx %7.2fx\n' "$s" "${M[native]}" "${M[hubfs]}" "${M[bindfs]}" \
        "$(echo "${M[hubfs]} / ${M[native]}" | bc -l)" "$(echo "${M[bindfs]} / ${M[native]}" | bc -l)"
done
printf '%-8s %10.3f %10.3f %10.3f %7.2fx %7.2fx\n' total "${TOTAL[native]}" "${TOTAL[hubfs]}" "${TOTAL[bindfs]}" \
    "$(echo "${TOTAL[hubfs]} / ${TOTAL[native]}" | bc -l)" "$(echo "${TOTAL[bindfs]} / ${TOTAL[native]}" | bc -l)"

echo
printf 'hubfs requests per step (last round; total includes the GETXATTR that reads them):\n'
printf '%-8s' step; for k in $REQ_KINDS; do printf ' %11s' "$k"; done; echo
for s in $STEPS; do
    printf '%-8s' "$s"; for k in $REQ_KINDS; do printf ' %11s' "${R[$s.$k]}"; done; echo
done

# rtt HOME: microseconds per GETXATTR of an unset name (median of 5 x 20,000).
rtt() {
    as_user "$1" "$PY - '$1'" <<'PY'
import os, sys, time
def run(n=20000):
    t = time.perf_counter()
    for _ in range(n):
        try:
            os.getxattr(sys.argv[1], "user.hubfs-bench-unset")
        except OSError:
            pass
    return (time.perf_counter() - t) / n * 1e6
print(f"{sorted(run() for _ in range(5))[2]:.2f}")
PY
}
declare -A RTT
for where in native hubfs bindfs; do RTT[$where]=$(rtt "$BASE/$where"); done
trip=$(echo "${RTT[hubfs]} - ${RTT[native]}" | bc -l)
echo
printf 'request round trip (GETXATTR of an unset name, us): native %.2f  hubfs %.2f  bindfs %.2f  -> one FUSE round trip through hubfs %.2f us\n' \
    "${RTT[native]}" "${RTT[hubfs]}" "${RTT[bindfs]}" "$trip"
printf '%-8s %10s %14s %12s %14s\n' step requests "extra us/req" "round trips" "floor/native"
for s in $STEPS; do
    vals=(); for round in $(seq "$ROUNDS"); do vals+=("${T[native.$s.$round]}"); done; n=$(median "${vals[@]}")
    vals=(); for round in $(seq "$ROUNDS"); do vals+=("${T[hubfs.$s.$round]}"); done; h=$(median "${vals[@]}")
    req=${R[$s.total]}
    # extra us/req: hubfs's time beyond native per request; round trips: the
    # requests at the measured round trip (s); floor: native plus those.
    printf '%-8s %10d %14.1f %12.3f %13.2fx\n' "$s" "$req" \
        "$(echo "($h - $n) * 1000000 / $req" | bc -l)" \
        "$(echo "$req * $trip / 1000000" | bc -l)" \
        "$(echo "($n + $req * $trip / 1000000) / $n" | bc -l)"
done
vals=(); for round in $(seq "$ROUNDS"); do vals+=("${T[native.untar.$round]}"); done; n=$(median "${vals[@]}")
printf 'untar floor for any FUSE layer (3 synchronous requests per new file): %.2fx native\n' \
    "$(echo "($n + 3 * 5000 * $trip / 1000000) / $n" | bc -l)"
