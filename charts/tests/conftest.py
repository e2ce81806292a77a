"""Shared fixtures for the chart tests: render charts/hubfs with Helm's own Go
code (helm-python-sdk, no helm binary) and look inside the manifests.

Run from the repository root: ``python3 -m pytest -q charts/tests``
(``.ci/install-chart.sh`` installs what is needed).
"""

from __future__ import annotations

import copy
import os
import pathlib
import shutil
from typing import Any

import pytest
import yaml

try:
    import helm_python as helm
except ImportError as e:  # pragma: no cover - the message is the point
    raise SystemExit(f"helm-python-sdk is missing ({e}); run .ci/install-chart.sh") from e

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "hubfs"
RELEASE = "hubfs"
NAMESPACE = "hubfs-system"

# Value variants every structural test runs against. Each one is a real way
# to install the chart.
NFS = {
    "storageClass": {
        "backend": "nfs",
        "server": "fs-0123456789abcdef0.efs.us-east-1.amazonaws.com",
        "share": "/",
        "mountOptions": "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2",
    },
    "node": {"localRoots": []},
}
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "nfs": NFS,
    "local": {
        "storageClass": {"backend": "local", "root": "/data/hubfs/share", "accounting": "fuse"},
        "node": {"localRoots": ["/data/hubfs"]},
    },
    "servicemonitor": {
        **NFS,
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "grafanaDashboard": {"enabled": True},
        "quotaController": {
            "hubUrl": "http://hub.jhub.svc:8081",
            "hubTokenSecret": {"name": "hubfs-hub-token", "key": "token"},
            "config": {"defaults": {"warnFraction": 0.8}, "schedule": {"walkTimeoutSeconds": 3600}},
        },
    },
    "replicas2": {**NFS, "controller": {"replicas": 2}},
    "custom-driver": {
        "driverName": "homes.hubfs.example.org",
        "kubeletDir": "/var/snap/microk8s/common/var/lib/kubelet",
        "stateDir": "/var/snap/microk8s/common/var/lib/hubfs",
    },
    "no-quota": {"quotaController": {"enabled": False}, "rbac": {"create": True}},
    "s3cache": {"node": {"s3Cache": {"enabled": True, "size": "20Gi", "hostPath": "/mnt/nvme/hubfs-s3"}}},
}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Renders the chart and returns every manifest (NOTES.txt excluded)."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values or {})
        out = chart.render(values=values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})
                doc["_template"] = path
                docs.append(doc)
    return docs


def notes(values: dict[str, Any] | None = None) -> str:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values=values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(v for k, v in out.items() if k.endswith("NOTES.txt"))


def merged(values: dict[str, Any]) -> dict[str, Any]:
    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(values)


def strip(doc: dict[str, Any]) -> dict[str, Any]:
    """The manifest as the API server would receive it."""
    d = copy.deepcopy(doc)
    d.pop("_template", None)
    return d


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The DaemonSets and Deployments: every pod the chart runs."""
    return [d for d in docs if d["kind"] in ("DaemonSet", "Deployment")]


def one(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"].get("name", "").endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, found {[d['metadata'].get('name') for d in found]}"
    return found[0]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    cs = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert len(cs) == 1, f"{workload['metadata']['name']}: no single container {name}"
    return cs[0]


def flag(c: dict[str, Any], name: str) -> list[str]:
    """Values of --name=value (or --name value) in a container's args."""
    args = c.get("args", [])
    vals = []
    for i, a in enumerate(args):
        if a.startswith(f"--{name}="):
            vals.append(a.split("=", 1)[1])
        elif a == f"--{name}" and i + 1 < len(args) and not args[i + 1].startswith("--"):
            vals.append(args[i + 1])
    return vals


def expand_env(c: dict[str, Any], value: str) -> str:
    """Resolves $(VAR) references to plain env values, as kubelet does."""
    for e in c.get("env", []):
        if "value" in e:
            value = value.replace(f"$({e['name']})", e["value"])
    return value


def host_path(workload: dict[str, Any], c: dict[str, Any], path: str) -> str | None:
    """Maps a path inside container c to the host path behind it (through a
    hostPath volume), or None when it is not on a hostPath."""
    vols = {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}
    best = None
    for m in c.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/") or "/"
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best[0]):
                best = (mp, m)
    if best is None:
        return None
    mp, m = best
    v = vols[m["name"]]
    if "hostPath" not in v:
        return None
    return v["hostPath"]["path"].rstrip("/") + path[len(mp):]


@pytest.fixture(scope="session", params=sorted(VARIANTS))
def variant(request) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    values = VARIANTS[request.param]
    return request.param, merged(values), render(values)


@pytest.fixture(scope="session")
def hubfs_bin() -> pathlib.Path:
    """The hubfs binary, to check the chart's flags against its real CLI."""
    env = os.environ.get("HUBFS_BIN")
    candidates = [pathlib.Path(env)] if env else []
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    candidates += [target / "debug" / "hubfs", target / "release" / "hubfs"]
    if shutil.which("hubfs"):
        candidates.append(pathlib.Path(shutil.which("hubfs")))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    pytest.fail(
        "the hubfs binary is needed to check the chart's flags against its CLI: "
        "build it with `cargo build -p hubfs` or set HUBFS_BIN (looked in "
        + ", ".join(str(c) for c in candidates) + ")"
    )
