# A bench's work dir and the processes it starts, removed on exit: sets W
# (mode 755: bucket servers run as 65534 and reach their --cache-dir below
# it) and PIDS (append each server's pid); unmounts every $W/mnt-*.
#   . bench/lib/workdir.sh; bench_workdir hubfs-s3-bench
bench_workdir() {
    W=$(mktemp -d "/tmp/$1.XXXXXX")
    chmod 755 "$W"
    PIDS=()
    trap bench_cleanup EXIT
}
bench_cleanup() {
    for m in "$W"/mnt-*; do umount -l "$m" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$W"
}
