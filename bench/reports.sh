#!/usr/bin/env bash
# The quota controller's load and freshness with 1,000 homes writing
# steadily (issue 21): each home's real reporter (counters, GrpcSink) against
# the real `hubfs controller` on loopback. Prints reports per second, the
# controller's CPU and the delay from a crossing write to the controller's
# answer, for hubfs (5 s batches + crossings at once) and a peer in the same
# run (1 s batches), medians of ROUNDS interleaved rounds and their ratios.
# Env: HOMES (1000), SECONDS (20), ROUNDS (3), PROFILE (release|debug,
# default release; debug reuses the test build and is what docs/quota.md's
# figures were measured with).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PROFILE="${PROFILE:-release}"
if [ "$PROFILE" = debug ]; then
    cargo build --locked -p hubfs --bin hubfs >&2
    bench_profile=(--profile dev)
    bin="$ROOT/target/debug/hubfs"
else
    cargo build --release --locked -p hubfs --bin hubfs >&2
    bench_profile=()
    bin="$ROOT/target/release/hubfs"
fi
HUBFS_BIN="$bin" exec \
    cargo bench --locked "${bench_profile[@]}" -p hubfs-e2e --bench report_load
