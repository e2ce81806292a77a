# syntax=docker/dockerfile:1
# The single hubfs image: CSI driver (node and controller), the FUSE mounts it
# spawns (`hubfs mount s3`, `hubfs mount home`) and the quota controller.
#
#   docker build -t hubfs:0.1.0 .

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# Protos are compiled with protox (no protoc); fuser mounts without libfuse.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p hubfs \
 && install -D -m 0755 target/release/hubfs /out/hubfs

FROM debian:bookworm-slim
# fuse3: fusermount3 and /etc/fuse.conf; ca-certificates: TLS to S3 and the
# hub; util-linux: mount/umount/findmnt for debugging and unmount fallbacks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends fuse3 ca-certificates util-linux \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/hubfs /usr/local/bin/hubfs
# mount(8)'s helpers for `mount -o remount,ro` of hubfs mounts (fuse.hubfs-*).
RUN ln -s /usr/local/bin/hubfs /usr/sbin/mount.fuse.hubfs-s3 \
    && ln -s /usr/local/bin/hubfs /usr/sbin/mount.fuse.hubfs-home
ENTRYPOINT ["/usr/local/bin/hubfs"]
CMD ["--help"]
