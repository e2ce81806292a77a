#!/usr/bin/env bash
# What one FUSE request costs, by transport, in one run: the round trip of a
# getxattr(2) of an unset name (which the kernel never caches) timed by the
# same Rust loop (bench/fuse-rtt) on
#   native       - a tmpfs directory (the system call alone),
#   hubfs        - `hubfs mount home` over that tmpfs (read/writev on
#                  /dev/fuse, 4 loops; the daemon looks the inode up and
#                  asks the backing file),
#   read/writev  - a minimal server answering ENODATA at once, 4 threads
#                  reading /dev/fuse (what fuser and libfuse do),
#   io_uring     - the same minimal server over FUSE-over-io_uring (Linux >=
#                  6.14; one ring per CPU, the module's enable_uring switched
#                  on for the run and restored after).
# Medians of ROUNDS rounds (each itself the median of 5 x 20,000 calls),
# the transports taking turns; ratios to hubfs printed. Then HANDOVERS runs
# of the question a live takeover asks of io_uring: a second set of rings
# registers on the connection while a client calls getxattr without pause,
# the first set answers what it holds and closes; is any request lost (the
# client waits forever; the run aborts its connection to end)? Once as is,
# once with FUSE_NOTIFY_RESEND sent after the first set closed. The answer to "what
# would a cheaper transport give the home layer" (docs/home.md, issue 14):
# every small-file step there is round trips.
#
#   ROUNDS=3 HANDOVERS=5 bench/transport.sh    HUBFS_BIN=path skips the release build
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}
HANDOVERS=${HANDOVERS:-5}
[ "$(id -u)" = 0 ] || { echo "run as root (mounts)" >&2; exit 1; }
URING=/sys/module/fuse/parameters/enable_uring
[ -w "$URING" ] || { echo "this kernel has no FUSE over io_uring ($URING)" >&2; exit 1; }

BASE=/var/tmp/hubfs-transport
TMPFS=1
. "$ROOT/bench/lib/homes.sh"
build_hubfs
echo "building bench/fuse-rtt (release)..." >&2
(cd "$ROOT/bench/fuse-rtt" && cargo build --release -q)
RTT=$ROOT/bench/fuse-rtt/target/release/fuse-rtt

WAS=$(cat "$URING")
finish() { echo "$WAS" > "$URING"; umount -l "$BASE/mini" 2>/dev/null || true; cleanup; }
trap finish EXIT
cleanup
mkdir -p "$BASE"
mount -t tmpfs -o size=64m hubfs-transport "$BASE"
mkdir -p "$BASE"/{native,hsrc,hubfs,mini}
"$HUBFS" mount home --user bench --quota 1GiB "$BASE/hsrc" "$BASE/hubfs" 2>/dev/null
echo Y > "$URING"
# Aborting a connection that lost a request needs the FUSE control filesystem.
mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections

# us LINE: the figure in fuse-rtt's output line.
us() { sed -E 's/.*: ([0-9.]+) us per.*/\1/'; }
declare -A R
for round in $(seq "$ROUNDS"); do
    R[native]+="$("$RTT" "$BASE/native" client | us) "
    R[hubfs]+="$("$RTT" "$BASE/hubfs" client | us) "
    out=$("$RTT" "$BASE/mini" read --threads 4)
    R[read]+="$(echo "$out" | us) "
    out=$("$RTT" "$BASE/mini" uring)
    case $out in *"by ring 0"*) echo "io_uring round $round served nothing by the ring: $out" >&2; exit 1 ;; esac
    R[uring]+="$(echo "$out" | us) "
done

# Each R entry is its rounds' figures, space-separated: split into arguments.
# shellcheck disable=SC2086
h=$(median ${R[hubfs]})
printf 'round trip of a no-op getxattr, median of %s rounds (us):\n' "$ROUNDS"
for k in native hubfs read uring; do
    # shellcheck disable=SC2086
    m=$(median ${R[$k]})
    case $k in
        native) label="native tmpfs (no FUSE)" ;;
        hubfs) label="hubfs home (read/writev)" ;;
        read) label="minimal server, read/writev" ;;
        uring) label="minimal server, io_uring" ;;
    esac
    printf '  %-30s %8.2f   %5.2fx hubfs   (rounds: %s)\n' "$label" "$m" "$(echo "$m / $h" | bc -l)" "${R[$k]% }"
done

# handovers [--resend]: runs the handover HANDOVERS times; prints how many lost a request.
handovers() {
    local lost=0 i rc c w
    for i in $(seq "$HANDOVERS"); do
        set +e
        timeout -s KILL 20 "$RTT" "$BASE/mini" handover "$@" > "$BASE/handover.out" 2>/dev/null < /dev/null
        rc=$?
        set -e
        [ "$rc" = 0 ] || lost=$((lost + 1))
        sed 's/^/  /' "$BASE/handover.out"
        # A run killed before it could abort its own connection leaves it waiting.
        for c in /sys/fs/fuse/connections/*/; do
            w=$(cat "$c/waiting" 2>/dev/null || echo 0)
            [ "$w" = 0 ] || echo 1 > "$c/abort"
        done
        umount -l "$BASE/mini" 2>/dev/null || true
    done
    printf 'io_uring ring handover under load%s: a request lost in %d of %d runs\n' "${1:+ ($1 after)}" "$lost" "$HANDOVERS"
}
handovers
handovers --resend
