#!/usr/bin/env bash
# Benchmark of `hubfs mount s3` against Mountpoint for Amazon S3, s3fs and
# rclone mount, in one run, against a local Garage server (started here on
# loopback ports).
#
# For each filesystem: `ls -l` of 1,000 (median of three cold prefixes) and
# 10,000 objects (seconds and S3 requests, counted server-side by Garage's
# metrics), the FUSE requests of a fourth cold `ls -l` of 1,000 by opcode
# (counted by the kernel's fuse:fuse_request_send tracepoint, with perf,
# untimed), `cat` of 1,000 files of 64 KiB (page cache dropped), time to
# first byte, sequential read of 1 GiB (MiB/s, median of $READS cold-cache
# reads) and peak RSS of the FUSE process. The ceiling is what Garage
# delivers to a minimal client in the same run: ranged GETs of 8 MiB, 8 in
# flight, with aws-sdk-s3 configured as hubfs configures it
# (fuse-fs/benches/sdk_get.rs; a single-stream GET and curl's are printed
# beside it); each filesystem's sequential read is printed as a fraction of
# it, and, taking turns with hubfs's read, the CPU-seconds per GiB of each
# path (Garage + FUSE server + reader, Garage + SDK client): the fraction of
# the ceiling a CPU-bound machine allows. Then a class (hubfs and Mountpoint, $CLASS readers of the 1 GiB
# object, page cache dropped first): all starting together, and staggered
# (reader i starts i x $STAGGER_S s / (readers / 8) after the first), with
# the wall time, the bytes Garage read from its disks to serve them
# (block_bytes_read) and its GetObject count. Then hubfs with its local-disk
# data cache: the 1 GiB read by one reader, the page cache dropped, read
# again by another, and read again after the server was killed (SIGKILL) and
# started with the same flags. Then two readers drifting apart through a
# mount with --max-memory $DRIFT_MEMORY_MIB MiB: the second starts when the
# first is half way (page cache dropped then), with the bytes from S3 and
# the server's peak RSS. Then hubfs and Mountpoint mounted together,
# taking turns at the 1 GiB read (fairer on a loaded machine), with the CPU
# seconds per GiB of each FUSE process. Prints hubfs/peer ratios.
#
# Mountpoint runs through bench/mountpoint-peer (its published crates with
# Mountpoint's defaults; see its doc comment), built here when missing
# (cmake, clang and libfuse3-dev are installed with apt-get if absent).
#
# Needs: garage, s3fs, rclone, curl (.ci/install-s3.sh) and perf (installed
# here with apt-get if absent). Run as root.
# Usage: bench/s3.sh   (HUBFS_BENCH_SIZE_MIB=1024 by default; HUBFS_BIN=path
#                      to use an already built binary instead of building;
#                      PEERS="mountpoint s3fs rclone" to choose the peers;
#                      CLASS="8 32" class sizes, STAGGER_S=2;
#                      DRIFT_MEMORY_MIB=64 the drifting readers' --max-memory;
#                      HUBFS_BASE_BIN=path and the peer "hubfs-base" measure
#                      another hubfs build beside this one, e.g. the commit
#                      before a change)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${HUBFS_BENCH_SIZE_MIB:-1024}
READS=${READS:-3}
CLASS=${CLASS:-8 32}
STAGGER_S=${STAGGER_S:-2}
DRIFT_MEMORY_MIB=${DRIFT_MEMORY_MIB:-64}
unset AWS_CA_BUNDLE # rclone refuses plain-HTTP endpoints with it set

GARAGE=$(command -v garage || echo "$HOME/.cargo/bin/garage")
for t in "$GARAGE" rclone curl $( [[ " ${PEERS:-s3fs} " == *" s3fs "* ]] && echo s3fs); do
    command -v "$t" >/dev/null 2>&1 || { echo "bench/s3.sh: $t missing (run .ci/install-s3.sh)" >&2; exit 1; }
done
command -v perf >/dev/null 2>&1 || apt-get install -y linux-perf >/dev/null
if [ -n "${HUBFS_BIN:-}" ]; then
    HUBFS=$HUBFS_BIN
else
    echo "== building hubfs (release)"
    cargo build --release -q -p hubfs
    HUBFS=$PWD/target/release/hubfs
fi
echo "== building the SDK GET ceiling (cargo bench target)"
cargo bench -q -p hubfs-fuse --bench sdk_get --no-run 2>/dev/null
PEERS=${PEERS:-mountpoint s3fs rclone}
MOUNTPOINT_PEER=$PWD/bench/mountpoint-peer/target/release/mountpoint-peer
if [[ " $PEERS " == *" mountpoint "* ]] && [ ! -x "$MOUNTPOINT_PEER" ]; then
    echo "== building the Mountpoint peer (bench/mountpoint-peer; several minutes)"
    for p in cmake clang libfuse3-dev; do
        dpkg -s "$p" >/dev/null 2>&1 || { apt-get install -y cmake clang libfuse3-dev >/dev/null; break; }
    done
    CARGO_TARGET_DIR=$PWD/bench/mountpoint-peer/target \
        cargo build -q --release --manifest-path bench/mountpoint-peer/Cargo.toml
fi
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

. bench/lib/workdir.sh
bench_workdir hubfs-s3-bench

. bench/lib/garage.sh
start_garage 100

garage_metric() { # awk pattern -> the sum of the matching samples
    curl -s -H "Authorization: Bearer $MT" "http://127.0.0.1:$ADMP/metrics" |
        awk "$1"' {s += $NF} END {printf "%.0f\n", s}' # (%d stops at 2^31 in mawk)
}
requests() { garage_metric '/^api_s3_request_counter/'; }
HUBFS_METRICS=127.0.0.1:$(port)
hubfs_get_bytes() { # what the hubfs mount counts as GetObject bytes, beside Garage's figure
    curl -s "http://$HUBFS_METRICS/metrics" | awk '/^hubfs_s3_bytes_total\{op="GetObject"\}/ {s += $NF} END {printf "%.0f\n", s}'
}
# Global page cache drops so far (any process's echo 3 >/proc/sys/vm/drop_caches):
# another job on the machine dropping it mid-run makes later readers fetch again.
drops() { awk '/^drop_pagecache/ {print $2}' /proc/vmstat; }
gets() { garage_metric '/^api_s3_request_counter\{api_endpoint="GetObject"\}/'; }
s3bytes() { garage_metric '/^block_bytes_read /'; } # bytes Garage read to serve GETs

export RCLONE_CONFIG_G_TYPE=s3 RCLONE_CONFIG_G_PROVIDER=Other RCLONE_CONFIG_G_ENDPOINT=$EP
export RCLONE_CONFIG_G_ACCESS_KEY_ID=$AK RCLONE_CONFIG_G_SECRET_ACCESS_KEY=$SK RCLONE_CONFIG_G_REGION=garage
export RCLONE_CONFIG_G_FORCE_PATH_STYLE=true

echo "== populating: 1,000 + 10,000 small objects, one ${SIZE_MIB} MiB object"
mkdir -p "$W/src/l10k"
for r in 1 2 3 4; do # 1,000-object prefixes: three timed cold listings per filesystem, one traced
    mkdir -p "$W/src/l1k-$r"
    for i in $(seq -w 0 999); do printf 'object %s\n' "$i" >"$W/src/l1k-$r/f$i"; done
done
for i in $(seq -w 0 9999); do printf 'object %s\n' "$i" >"$W/src/l10k/f$i"; done
mkdir -p "$W/src/k64"
for i in $(seq -w 0 999); do head -c 65536 /dev/urandom >"$W/src/k64/f$i"; done
head -c $((SIZE_MIB << 20)) /dev/urandom >"$W/src/big.bin"
rclone copy --transfers 32 --checkers 32 "$W/src" g:bench
BIGSHA=$(sha256sum "$W/src/big.bin" | cut -d' ' -f1)
rm -f "$W/src/big.bin"

mount_fs() { # name -> mountpoint, sets FSPID
    local name=$1 m=$W/mnt-$1
    mkdir -p "$m"
    case $name in
    hubfs)
        AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK HUBFS_LOG=warn "$HUBFS" mount s3 --foreground \
            --endpoint-url "$EP" --region garage --force-path-style --metrics-addr "$HUBFS_METRICS" bench "$m" &
        FSPID=$! ;;
    s3fs)
        echo "$AK:$SK" >"$W/passwd"; chmod 600 "$W/passwd"
        s3fs bench "$m" -f -o url="$EP" -o use_path_request_style -o passwd_file="$W/passwd" \
            -o endpoint=garage -o ro &
        FSPID=$! ;;
    rclone)
        rclone mount g:bench "$m" --read-only &
        FSPID=$! ;;
    mountpoint)
        AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK "$MOUNTPOINT_PEER" --endpoint-url "$EP" \
            --region garage bench "$m" &
        FSPID=$! ;;
    hubfs-base)
        AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK HUBFS_LOG=warn "$HUBFS_BASE_BIN" mount s3 --foreground \
            --endpoint-url "$EP" --region garage --force-path-style bench "$m" &
        FSPID=$! ;;
    hubfs-cache)
        AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK HUBFS_LOG=warn "$HUBFS" mount s3 --foreground \
            --endpoint-url "$EP" --region garage --force-path-style \
            --cache-dir "$W/cache" --cache-size 2G bench "$m" &
        FSPID=$! ;;
    hubfs-drift)
        AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK HUBFS_LOG=warn "$HUBFS" mount s3 --foreground \
            --endpoint-url "$EP" --region garage --force-path-style --metrics-addr "$HUBFS_METRICS" \
            --max-memory "${DRIFT_MEMORY_MIB}Mi" bench "$m" &
        FSPID=$! ;;
    esac
    PIDS+=("$FSPID")
    for _ in $(seq 200); do mountpoint -q "$m" && ls "$m" >/dev/null 2>&1 && break; sleep 0.05; done
    mountpoint -q "$m" || { echo "$name did not mount" >&2; exit 1; }
}

now() { date +%s.%N; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime of a process, in ticks
TICK=$(getconf CLK_TCK)
# The FUSE requests the kernel sends to the mount at $1 while "${@:2}" runs,
# by opcode ("LOOKUP=3 READDIRPLUS=40 ..."), from the fuse:fuse_request_send
# tracepoint filtered on the mount's connection (its device number).
fuse_ops() {
    local m=$1; shift
    local conn=$(( ($(stat -c %Hd "$m") << 20) | $(stat -c %Ld "$m") ))
    perf record -q -o "$W/perf.data" -e fuse:fuse_request_send --filter "connection == $conn" -a -- "$@" >/dev/null 2>&1
    perf script -i "$W/perf.data" -F trace 2>/dev/null | grep -o 'FUSE_[A-Z_]*' | sed 's/^FUSE_//' |
        sort | uniq -c | awk '{printf "%s=%d ", $2, $1}'
}
# A class: $2 readers of the 1 GiB object on filesystem $1, the page cache
# dropped first; reader i starts (i - 1) x $3 s after the first. Sets
# CLASS_T (wall seconds, first start to last end), CLASS_B (bytes Garage
# read to serve them) and CLASS_G (GetObject requests).
class() {
    local m=$W/mnt-$1 n=$2 stagger=$3 i b0 g0 t0
    local pids=()
    sync; echo 3 >/proc/sys/vm/drop_caches
    b0=$(s3bytes); g0=$(gets); t0=$(now); d0=$(drops); [ "$1" = hubfs ] && h0=$(hubfs_get_bytes)
    for i in $(seq "$n"); do
        (sleep "$(echo "($i - 1) * $stagger" | bc -l)"; cat "$m/big.bin" | wc -c >"$W/class.$i") &
        pids+=($!)
    done
    wait "${pids[@]}"
    CLASS_T=$(echo "$(now) - $t0" | bc -l); CLASS_B=$(( $(s3bytes) - b0 )); CLASS_G=$(( $(gets) - g0 ))
    CLASS_H=""; [ "$1" = hubfs ] && CLASS_H=" (hubfs counted $(echo "($(hubfs_get_bytes) - $h0) / 1073741824" | bc -l | cut -c1-4) GiB)"
    [ "$(drops)" = "$d0" ] || CLASS_H+=" [the page cache was dropped $(( $(drops) - d0 )) times by another process meanwhile]"
    for i in $(seq "$n"); do
        [ "$(cat "$W/class.$i")" -eq $((SIZE_MIB << 20)) ] || echo "  ERROR: $1 reader $i read $(cat "$W/class.$i") bytes"
    done
}
declare -A LS1 LS1R LS10 LS10R READ TTFB RSS CAT CATR CPU OPS CT CB CG
for fs in hubfs $PEERS; do
    echo "== $fs"
    mount_fs "$fs"; m=$W/mnt-$fs
    runs=""
    for r in 1 2 3; do
        r0=$(requests); t0=$(now); n=$(ls -l "$m/l1k-$r" | wc -l); t1=$(now); r1=$(requests)
        runs+="$(echo "$t1 - $t0" | bc -l) "; LS1R[$fs]=$((r1 - r0))
        [ "$n" -eq 1001 ] || echo "  warning: ls -l l1k-$r printed $n lines"
    done
    LS1[$fs]=$(echo "$runs" | median)
    OPS[$fs]=$(fuse_ops "$m" ls -l "$m/l1k-4")
    r0=$(requests); t0=$(now); n=$(ls -l "$m/l10k" | wc -l); t1=$(now); r1=$(requests)
    LS10[$fs]=$(echo "$t1 - $t0" | bc -l); LS10R[$fs]=$((r1 - r0))
    sync; echo 3 >/proc/sys/vm/drop_caches
    r0=$(requests); t0=$(now); cat "$m"/k64/* | wc -c >"$W/catbytes"; t1=$(now); r1=$(requests)
    CAT[$fs]=$(echo "$t1 - $t0" | bc -l); CATR[$fs]=$((r1 - r0))
    [ "$(cat "$W/catbytes")" -eq $((1000 * 65536)) ] || echo "  warning: cat read $(cat "$W/catbytes") bytes"
    t0=$(now); head -c1 "$m/big.bin" >/dev/null; t1=$(now)
    TTFB[$fs]=$(echo "$t1 - $t0" | bc -l)
    runs=""; cpus=""
    for _ in $(seq "$READS"); do
        sync; echo 3 >/proc/sys/vm/drop_caches
        c0=$(cpu "$FSPID"); t0=$(now); dd if="$m/big.bin" of=/dev/null bs=1M status=none; t1=$(now); c1=$(cpu "$FSPID")
        runs+="$(echo "$SIZE_MIB / ($t1 - $t0)" | bc -l) "
        # CPU seconds the FUSE process spent per GiB read: robust where MiB/s
        # is not (two shared cores, Garage itself CPU-bound).
        cpus+="$(echo "($c1 - $c0) / $TICK * 1024 / $SIZE_MIB" | bc -l) "
    done
    READ[$fs]=$(echo "$runs" | median)
    CPU[$fs]=$(echo "$cpus" | median)
    RSS[$fs]=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$FSPID/status")
    if [ "$fs" = hubfs ]; then # correctness, untimed (the tests check it too)
        sync; echo 3 >/proc/sys/vm/drop_caches
        [ "$(sha256sum "$m/big.bin" | cut -d' ' -f1)" = "$BIGSHA" ] || echo "  ERROR: hubfs returned different bytes"
    fi
    printf '  ls -l 1k: %.3fs %d req | ls -l 10k: %.3fs %d req | cat 1k x 64K: %.3fs %d req | ttfb %.3fs | read %.0f MiB/s (runs: %s), %.2f CPU-s/GiB | peak RSS %d MiB\n' \
        "${LS1[$fs]}" "${LS1R[$fs]}" "${LS10[$fs]}" "${LS10R[$fs]}" "${CAT[$fs]}" "${CATR[$fs]}" \
        "${TTFB[$fs]}" "${READ[$fs]}" "$runs" "${CPU[$fs]}" "${RSS[$fs]}"
    echo "  FUSE requests of a cold ls -l of 1,000: ${OPS[$fs]}"
    if [ "$fs" = hubfs ] || [ "$fs" = mountpoint ]; then
        for n in $CLASS; do
            for how in together staggered; do
                stagger=0; [ "$how" = staggered ] && stagger=$(echo "$STAGGER_S * 8 / $n" | bc -l)
                class "$fs" "$n" "$stagger"
                CT[$fs.$n.$how]=$CLASS_T; CB[$fs.$n.$how]=$CLASS_B; CG[$fs.$n.$how]=$CLASS_G
                printf '  class of %d, %s: %.1f s, %.2f GiB from S3 in %d GETs%s\n' "$n" "$how" "$CLASS_T" \
                    "$(echo "$CLASS_B / 1073741824" | bc -l)" "$CLASS_G" "$CLASS_H"
            done
        done
    fi
    umount "$m" 2>/dev/null || umount -l "$m"
    kill "$FSPID" 2>/dev/null || true; wait "$FSPID" 2>/dev/null || true
done

echo "== hubfs with its data cache (--cache-dir): a reader; page cache dropped, another; the server killed and started again, another"
mount_fs hubfs-cache; m=$W/mnt-hubfs-cache
sync; echo 3 >/proc/sys/vm/drop_caches
r0=$(requests); t0=$(now); dd if="$m/big.bin" of=/dev/null bs=1M status=none; t1=$(now); r1=$(requests)
C1=$(echo "$SIZE_MIB / ($t1 - $t0)" | bc -l); C1R=$((r1 - r0))
# Blocks (1 MiB each) are written off the reader's path: wait until all are there.
for _ in $(seq 300); do [ "$(find "$W/cache" -type f ! -name '.*' | wc -l)" -ge "$SIZE_MIB" ] && break; sleep 0.1; done
sync; echo 3 >/proc/sys/vm/drop_caches
r0=$(requests); t0=$(now); dd if="$m/big.bin" of=/dev/null bs=1M status=none; t1=$(now); r1=$(requests)
C2=$(echo "$SIZE_MIB / ($t1 - $t0)" | bc -l); C2R=$((r1 - r0))
# A crash: SIGKILL, the dead mount detached, the same command again.
# (its unmount guardian may have detached it already, or may still be detaching it)
kill -9 "$FSPID"; wait "$FSPID" 2>/dev/null || true
for _ in $(seq 100); do mountpoint -q "$m" || break; umount -l "$m" 2>/dev/null || true; sleep 0.1; done
mount_fs hubfs-cache
sync; echo 3 >/proc/sys/vm/drop_caches
r0=$(gets); t0=$(now); dd if="$m/big.bin" of=/dev/null bs=1M status=none; t1=$(now); r1=$(gets)
C3=$(echo "$SIZE_MIB / ($t1 - $t0)" | bc -l); C3R=$((r1 - r0))
sync; echo 3 >/proc/sys/vm/drop_caches
[ "$(sha256sum "$m/big.bin" | cut -d' ' -f1)" = "$BIGSHA" ] || echo "  ERROR: the cache returned different bytes"
printf '  first reader %.0f MiB/s (%d requests); another reader, page cache dropped: %.0f MiB/s (%d requests), %.2fx; after a restart: %.0f MiB/s (%d GETs)\n' \
    "$C1" "$C1R" "$C2" "$C2R" "$(echo "$C2 / $C1" | bc -l)" "$C3" "$C3R"
umount "$m" 2>/dev/null || umount -l "$m"
kill "$FSPID" 2>/dev/null || true; wait "$FSPID" 2>/dev/null || true

echo "== readers drifting apart (hubfs --max-memory ${DRIFT_MEMORY_MIB} MiB): the second starts when the first is half way, the page cache dropped then"
mount_fs hubfs-drift; m=$W/mnt-hubfs-drift
buffers() { # the mount's read buffers now (bytes held against --max-memory)
    curl -s "http://$HUBFS_METRICS/metrics" | awk '/^hubfs_s3_prefetch_memory_bytes / {printf "%.0f\n", $NF}'
}
sync; echo 3 >/proc/sys/vm/drop_caches
b0=$(s3bytes); h0=$(hubfs_get_bytes)
dd if="$m/big.bin" of=/dev/null bs=1M status=none & A=$!
while [ "$(awk '/^rchar/ {print $2}' "/proc/$A/io" 2>/dev/null || echo $((SIZE_MIB << 20)))" -lt $((SIZE_MIB << 19)) ]; do sleep 0.02; done
sync; echo 3 >/proc/sys/vm/drop_caches
dd if="$m/big.bin" of=/dev/null bs=1M status=none & B=$!
peak=0
while kill -0 "$A" 2>/dev/null || kill -0 "$B" 2>/dev/null; do
    b=$(buffers); [ "${b:-0}" -gt "$peak" ] && peak=$b; sleep 0.05
done
wait "$A" "$B"
printf '  %.2f GiB from S3 for two readers of %d MiB (hubfs counted %.2f GiB); read buffers at most %d MiB (sampled every 50 ms), peak RSS %d MiB\n' \
    "$(echo "($(s3bytes) - $b0) / 1073741824" | bc -l)" "$SIZE_MIB" "$(echo "($(hubfs_get_bytes) - $h0) / 1073741824" | bc -l)" \
    "$((peak >> 20))" "$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$FSPID/status")"
umount "$m" 2>/dev/null || umount -l "$m"
kill "$FSPID" 2>/dev/null || true; wait "$FSPID" 2>/dev/null || true

for TP in mountpoint hubfs-base s3fs; do
if [[ " $PEERS " == *" $TP "* ]]; then
    # Reads of one filesystem after another drift with the machine's load
    # (two shared cores): here both are mounted and take turns, round by round.
    echo "== sequential read, hubfs and $TP taking turns ($READS rounds)"
    mount_fs hubfs; HPID=$FSPID; mount_fs "$TP"; PPID2=$FSPID
    declare -A TURNS=() TCPU=()
    for _ in $(seq "$READS"); do
        for fs in hubfs "$TP"; do
            p=$HPID; [ "$fs" = "$TP" ] && p=$PPID2
            sync; echo 3 >/proc/sys/vm/drop_caches
            c0=$(cpu "$p"); t0=$(now); dd if="$W/mnt-$fs/big.bin" of=/dev/null bs=1M status=none; t1=$(now); c1=$(cpu "$p")
            TURNS[$fs]+="$(echo "$SIZE_MIB / ($t1 - $t0)" | bc -l) "
            TCPU[$fs]+="$(echo "($c1 - $c0) / $TICK * 1024 / $SIZE_MIB" | bc -l) "
        done
    done
    for fs in hubfs "$TP"; do umount "$W/mnt-$fs" 2>/dev/null || umount -l "$W/mnt-$fs"; done
    kill "$HPID" "$PPID2" 2>/dev/null || true; wait "$HPID" "$PPID2" 2>/dev/null || true
    TH=$(echo "${TURNS[hubfs]}" | median); TM=$(echo "${TURNS[$TP]}" | median)
    printf '  hubfs %.0f MiB/s (%.2f CPU-s/GiB), %s %.0f MiB/s (%.2f CPU-s/GiB): %.2fx\n' \
        "$TH" "$(echo "${TCPU[hubfs]}" | median)" "$TP" "$TM" "$(echo "${TCPU[$TP]}" | median)" "$(echo "$TH / $TM" | bc -l)"
fi
done

sdk_get() { # sdk_get.rs arguments -> the median MiB/s of $READS runs
    AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK cargo bench -q -p hubfs-fuse --bench sdk_get -- \
        --endpoint-url "$EP" --runs "$READS" "$@" bench big.bin | median
}
echo "== the ceiling: ranged GETs of 8 MiB, 8 in flight (aws-sdk-s3, as hubfs configures it; $READS runs)"
CEIL=$(sdk_get --parallel 8 --part-size $((8 << 20)))
printf '  %.0f MiB/s (median)\n' "$CEIL"
echo "== direct single-stream GET (aws-sdk-s3; $READS runs)"
DIRECT=$(sdk_get)
printf '  %.0f MiB/s (median)\n' "$DIRECT"
echo "== direct single-stream GET (curl, SigV4; for reference)"
runs=""
for _ in $(seq "$READS"); do
    t0=$(now)
    curl -sf -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" --aws-sigv4 "aws:amz:garage:s3" --user "$AK:$SK" -o /dev/null "$EP/bench/big.bin"
    t1=$(now)
    runs+="$(echo "$SIZE_MIB / ($t1 - $t0)" | bc -l) "
done
CURL=$(echo "$runs" | median)
printf '  %.0f MiB/s (median)\n' "$CURL"
echo "== sequential read as a fraction of the ceiling (${CEIL%.*} MiB/s)"
for fs in hubfs $PEERS; do
    printf '  %s %.2fx\n' "$fs" "$(echo "${READ[$fs]} / $CEIL" | bc -l)"
done

# Where the CPU goes: on a machine whose cores are all busy (Garage serving,
# the reader, the FUSE server, anyone else), the read that needs fewer
# CPU-seconds per GiB end to end goes faster. hubfs's read and the ceiling's
# GETs take turns; each one's CPU is counted for Garage, the FUSE server and
# the reader (dd), or the SDK client. The ratio of the two totals is the
# fraction of the ceiling a CPU-bound machine allows the FUSE path.
echo "== CPU per GiB, hubfs's read and the ceiling's GETs taking turns ($READS rounds)"
SDK_BIN=$(ls -t target/release/deps/sdk_get-* | grep -v '\.d$' | head -1)
GPID=${PIDS[0]}
mount_fs hubfs; HPID=$FSPID
TIMEFORMAT='%U %S'
declare -A FLOOR=()
for _ in $(seq "$READS"); do
    sync; echo 3 >/proc/sys/vm/drop_caches
    g0=$(cpu "$GPID"); h0=$(cpu "$HPID"); t0=$(now)
    d=$({ time dd if="$W/mnt-hubfs/big.bin" of=/dev/null bs=1M status=none; } 2>&1 | awk '{print $1 + $2}')
    t1=$(now); g1=$(cpu "$GPID"); h1=$(cpu "$HPID")
    FLOOR[hread]+="$(echo "$SIZE_MIB / ($t1 - $t0)" | bc -l) "
    FLOOR[hgarage]+="$(echo "($g1 - $g0) / $TICK * 1024 / $SIZE_MIB" | bc -l) "
    FLOOR[hfuse]+="$(echo "($h1 - $h0) / $TICK * 1024 / $SIZE_MIB" | bc -l) "
    FLOOR[hdd]+="$(echo "$d * 1024 / $SIZE_MIB" | bc -l) "
    g0=$(cpu "$GPID")
    out=$({ time AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK "$SDK_BIN" --endpoint-url "$EP" --runs 1 \
        --parallel 8 --part-size $((8 << 20)) bench big.bin; } 2>&1)
    g1=$(cpu "$GPID")
    FLOOR[cread]+="$(echo "$out" | head -1) "
    FLOOR[cgarage]+="$(echo "($g1 - $g0) / $TICK * 1024 / $SIZE_MIB" | bc -l) "
    FLOOR[csdk]+="$(echo "$out" | tail -1 | awk -v s="$SIZE_MIB" '{print ($1 + $2) * 1024 / s}') "
done
umount "$W/mnt-hubfs" 2>/dev/null || umount -l "$W/mnt-hubfs"
kill "$HPID" 2>/dev/null || true; wait "$HPID" 2>/dev/null || true
for k in hread hgarage hfuse hdd cread cgarage csdk; do FLOOR[$k]=$(echo "${FLOOR[$k]}" | median); done
HCPU=$(echo "${FLOOR[hgarage]} + ${FLOOR[hfuse]} + ${FLOOR[hdd]}" | bc -l)
CCPU=$(echo "${FLOOR[cgarage]} + ${FLOOR[csdk]}" | bc -l)
printf '  hubfs read %.0f MiB/s: Garage %.2f + hubfs %.2f + dd %.2f = %.2f CPU-s/GiB\n' \
    "${FLOOR[hread]}" "${FLOOR[hgarage]}" "${FLOOR[hfuse]}" "${FLOOR[hdd]}" "$HCPU"
printf '  ceiling  %.0f MiB/s: Garage %.2f + SDK client %.2f = %.2f CPU-s/GiB\n' \
    "${FLOOR[cread]}" "${FLOOR[cgarage]}" "${FLOOR[csdk]}" "$CCPU"
printf '  hubfs / ceiling: %.2fx measured; %.2fx the CPU allows when the cores are the limit\n' \
    "$(echo "${FLOOR[hread]} / ${FLOOR[cread]}" | bc -l)" "$(echo "$CCPU / $HCPU" | bc -l)"

min() { echo "if ($1 < $2) $1 else $2" | bc -l; }
max() { echo "if ($1 > $2) $1 else $2" | bc -l; }
if [[ " $PEERS " == *" hubfs-base "* ]]; then
    echo "== hubfs vs hubfs-base ($HUBFS_BASE_BIN; > 1 means this build is better)"
    printf '  ls -l 1,000: %.2fx | ls -l 10,000: %.2fx | cat 1,000 x 64 KiB: %.2fx | sequential read: %.2fx (CPU per GiB %.2fx) | ttfb: %.2fx | peak RSS %d vs %d MiB\n' \
        "$(echo "${LS1[hubfs-base]} / ${LS1[hubfs]}" | bc -l)" "$(echo "${LS10[hubfs-base]} / ${LS10[hubfs]}" | bc -l)" \
        "$(echo "${CAT[hubfs-base]} / ${CAT[hubfs]}" | bc -l)" "$(echo "${READ[hubfs]} / ${READ[hubfs-base]}" | bc -l)" \
        "$(echo "${CPU[hubfs-base]} / ${CPU[hubfs]}" | bc -l)" "$(echo "${TTFB[hubfs-base]} / ${TTFB[hubfs]}" | bc -l)" \
        "${RSS[hubfs]}" "${RSS[hubfs-base]}"
fi
if [[ " $PEERS " == *" mountpoint "* ]]; then
    echo "== hubfs vs Mountpoint (> 1 means hubfs is better)"
    printf '  ls -l 1,000: %.2fx (hubfs %d requests, Mountpoint %d) | ls -l 10,000: %.2fx (%d, %d)\n' \
        "$(echo "${LS1[mountpoint]} / ${LS1[hubfs]}" | bc -l)" "${LS1R[hubfs]}" "${LS1R[mountpoint]}" \
        "$(echo "${LS10[mountpoint]} / ${LS10[hubfs]}" | bc -l)" "${LS10R[hubfs]}" "${LS10R[mountpoint]}"
    printf '  cat 1,000 x 64 KiB: %.2fx (%d, %d requests) | sequential read: %.2fx (CPU per GiB %.2fx) | ttfb: %.2fx | peak RSS %d vs %d MiB\n' \
        "$(echo "${CAT[mountpoint]} / ${CAT[hubfs]}" | bc -l)" "${CATR[hubfs]}" "${CATR[mountpoint]}" \
        "$(echo "${READ[hubfs]} / ${READ[mountpoint]}" | bc -l)" "$(echo "${CPU[mountpoint]} / ${CPU[hubfs]}" | bc -l)" \
        "$(echo "${TTFB[mountpoint]} / ${TTFB[hubfs]}" | bc -l)" "${RSS[hubfs]}" "${RSS[mountpoint]}"
    echo "  class (wall time, GiB from S3, GETs; time ratio > 1 means hubfs is faster):"
    for n in $CLASS; do
        for how in together staggered; do
            k=$n.$how
            printf '    %2d %-9s hubfs %5.1f s %5.2f GiB %5d GETs | Mountpoint %5.1f s %5.2f GiB %5d GETs | %.2fx time, %.2fx bytes\n' \
                "$n" "$how" "${CT[hubfs.$k]}" "$(echo "${CB[hubfs.$k]} / 1073741824" | bc -l)" "${CG[hubfs.$k]}" \
                "${CT[mountpoint.$k]}" "$(echo "${CB[mountpoint.$k]} / 1073741824" | bc -l)" "${CG[mountpoint.$k]}" \
                "$(echo "${CT[mountpoint.$k]} / ${CT[hubfs.$k]}" | bc -l)" "$(echo "${CB[mountpoint.$k]} / ${CB[hubfs.$k]}" | bc -l)"
        done
    done
    printf '  class of %s together vs one cold reader: hubfs %.2fx its single-read time, Mountpoint %.2fx\n' \
        "${CLASS%% *}" "$(echo "${CT[hubfs.${CLASS%% *}.together]} * ${READ[hubfs]} / $SIZE_MIB" | bc -l)" \
        "$(echo "${CT[mountpoint.${CLASS%% *}.together]} * ${READ[mountpoint]} / $SIZE_MIB" | bc -l)"
fi
if [[ " $PEERS " == *" s3fs "* && " $PEERS " == *" rclone "* ]]; then
best_ls1=$(min "${LS1[s3fs]}" "${LS1[rclone]}")
best_ls10=$(min "${LS10[s3fs]}" "${LS10[rclone]}")
best_read=$(max "${READ[s3fs]}" "${READ[rclone]}")
echo "== ratios (hubfs vs the better of s3fs and rclone; > 1 means hubfs is better)"
printf '  ls -l 1,000:   %.1fx faster (hubfs %d requests, s3fs %d, rclone %d; target ceil(N/1000) = 1)\n' \
    "$(echo "$best_ls1 / ${LS1[hubfs]}" | bc -l)" "${LS1R[hubfs]}" "${LS1R[s3fs]}" "${LS1R[rclone]}"
printf '  ls -l 10,000:  %.1fx faster (hubfs %d requests, s3fs %d, rclone %d; target 10)\n' \
    "$(echo "$best_ls10 / ${LS10[hubfs]}" | bc -l)" "${LS10R[hubfs]}" "${LS10R[s3fs]}" "${LS10R[rclone]}"
printf '  sequential read: %.2fx the better peer, %.2fx the ceiling, %.2fx the SDK single-stream GET (%.2fx curl)\n' \
    "$(echo "${READ[hubfs]} / $best_read" | bc -l)" "$(echo "${READ[hubfs]} / $CEIL" | bc -l)" \
    "$(echo "${READ[hubfs]} / $DIRECT" | bc -l)" "$(echo "${READ[hubfs]} / $CURL" | bc -l)"
printf '  time to first byte: %.2fx (peer / hubfs)\n' \
    "$(echo "$(min "${TTFB[s3fs]}" "${TTFB[rclone]}") / ${TTFB[hubfs]}" | bc -l)"
printf '  peak RSS: hubfs %d MiB (target < 300), s3fs %d MiB, rclone %d MiB\n' "${RSS[hubfs]}" "${RSS[s3fs]}" "${RSS[rclone]}"
fi
