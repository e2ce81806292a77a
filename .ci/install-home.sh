#!/usr/bin/env bash
# Installs what the home layer's tests and benchmarks need: fuse3 (fusermount3
# for unmounting as a non-root caller, and the kernel module helpers), fio and
# bindfs (the benchmark's peers), acl (setfacl, for the act-as-the-caller
# tests). Idempotent: skips what is already present.
set -euo pipefail

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v fio >/dev/null 2>&1 || need+=(fio)
command -v bindfs >/dev/null 2>&1 || need+=(bindfs)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v setfacl >/dev/null 2>&1 || need+=(acl)

if [ "${#need[@]}" -gt 0 ]; then
    echo "install-home: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# dua is an optional peer of `bench/du.sh`; only installed when asked for.
if [ "${HUBFS_INSTALL_DUA:-0}" = 1 ] && ! command -v dua >/dev/null 2>&1; then
    cargo install --locked dua-cli
fi
echo "install-home: ok"
