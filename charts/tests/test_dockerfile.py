"""The Dockerfile cannot be built on these machines (no Docker engine): check
that it is the conventional two-stage build the chart's pods expect."""

from __future__ import annotations

import re

from conftest import REPO, render

DOCKERFILE = (REPO / "Dockerfile").read_text()


def stages():
    return re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", DOCKERFILE, re.M | re.I)


def test_two_stages_on_the_pinned_bases():
    s = stages()
    assert s[0] == ("rust:1.95-bookworm", "builder")
    assert s[-1][0] == "debian:bookworm-slim"
    assert len(s) == 2


def test_builds_only_the_hubfs_binary_from_the_lock_file():
    assert "cargo build --release --locked -p hubfs" in DOCKERFILE
    assert re.search(r"COPY --from=builder \S+hubfs /usr/local/bin/hubfs", DOCKERFILE)


def test_runtime_has_fuse3_and_ca_certificates():
    install = re.search(r"apt-get install -y --no-install-recommends ([^\n&\\]+)", DOCKERFILE)
    assert install, "no apt-get install in the runtime stage"
    pkgs = set(install.group(1).split())
    assert {"fuse3", "ca-certificates", "util-linux"} <= pkgs
    assert "rm -rf /var/lib/apt/lists/*" in DOCKERFILE


def test_entrypoint_is_the_binary_the_chart_passes_subcommands_to():
    assert 'ENTRYPOINT ["/usr/local/bin/hubfs"]' in DOCKERFILE
    for doc in render({}):
        if doc["kind"] not in ("DaemonSet", "Deployment"):
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            if c["image"].startswith("hubfs:"):
                assert "command" not in c, "the image's entrypoint is hubfs"
                assert c["args"][0] in ("csi", "controller", "mounter")


def test_dockerignore_keeps_the_context_small():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "target/" in ignored and ".git/" in ignored
