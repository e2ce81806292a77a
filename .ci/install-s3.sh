#!/usr/bin/env bash
# Installs what the S3 filesystem's tests and benchmark need:
#  - garage, the S3 server the integration tests start on loopback (built with
#    cargo, ~10 minutes on 2 cores, so only when `garage` is not found);
#  - s3fs, rclone and fuse3 (Debian), the peers of bench/s3.sh.
# Idempotent: skips what is already installed.
set -euo pipefail

if ! command -v garage >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/garage" ]; then
    echo "install-s3: building garage (cargo install, takes a while)"
    # Only what the tests use: the sqlite metadata engine (bundled) and the
    # admin /metrics endpoint; no LMDB, no K2V. A cheaper release profile
    # (opt-level 1, no debug info) for Garage itself, with the hashing and
    # crypto crates on its data path kept at opt-level 3 so that loopback
    # reads stay fast enough to be a fair server for bench/s3.sh.
    cargo install --locked garage --no-default-features \
        --features bundled-libs,metrics,sqlite \
        --config 'profile.release.opt-level=1' \
        --config 'profile.release.debug=0' \
        --config 'profile.release.incremental=false' \
        --config 'profile.release.package.blake2.opt-level=3' \
        --config 'profile.release.package.sha2.opt-level=3' \
        --config 'profile.release.package.md-5.opt-level=3' \
        --config 'profile.release.package.crc32fast.opt-level=3' \
        --config 'profile.release.package.crc32c.opt-level=3' \
        --config 'profile.release.package.ring.opt-level=3' \
        --config 'profile.release.package.zstd-sys.opt-level=3'
fi

need=()
command -v s3fs >/dev/null 2>&1 || need+=(s3fs)
command -v rclone >/dev/null 2>&1 || need+=(rclone)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
if [ "${#need[@]}" -gt 0 ]; then
    echo "install-s3: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
echo "install-s3: ok"
