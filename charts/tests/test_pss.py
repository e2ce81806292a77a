"""The rendered chart against the Kubernetes Pod Security Standards.

There is no API server here to run the PodSecurity admission plugin, so the
checks of the standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/,
`latest` as of Kubernetes 1.33) are implemented below on the rendered pod
templates: each workload gets the strictest level it passes, with the
controls it breaks. The test pins which pods need the `privileged` level
(and exactly why: mounting, nothing else), that every other container keeps
nothing, and that the namespace of the notebooks can enforce `restricted`:
a notebook pod using hubfs volumes (a home claim and a bucket, with the
HostToContainer propagation docs/upgrade.md asks for) needs nothing more.
docs/helm.md's privilege table must name every container rendered.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from conftest import REPO, render, workloads

BASELINE_CAPS = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", []), *spec.get("ephemeralContainers", [])]


def baseline(spec: dict[str, Any], annotations: dict[str, str]) -> set[str]:
    """The baseline controls a pod spec breaks, each as `control: detail`."""
    out: set[str] = set()
    psc = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.add(f"host namespaces: {key}")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.add("hostProcess")
    for v in spec.get("volumes", []):
        if "hostPath" in v:
            out.add("hostPath volumes")
    for name in ("seccompProfile", "appArmorProfile"):
        if (psc.get(name) or {}).get("type") == "Unconfined":
            out.add(f"{name}: Unconfined")
    if (psc.get("seLinuxOptions") or {}).get("type", "") not in SELINUX_TYPES:
        out.add("SELinux type")
    for s in psc.get("sysctls", []):
        if s["name"] not in SAFE_SYSCTLS:
            out.add(f"sysctl {s['name']}")
    for key, value in annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            out.add(f"AppArmor: {value}")
    for c in _containers(spec):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.add("privileged")
        for cap in (sc.get("capabilities") or {}).get("add", []):
            if cap not in BASELINE_CAPS:
                out.add(f"capabilities: {cap}")
        for p in c.get("ports", []):
            if p.get("hostPort"):
                out.add("hostPort")
        if sc.get("procMount", "Default") != "Default":
            out.add("procMount")
        for name in ("seccompProfile", "appArmorProfile"):
            if (sc.get(name) or {}).get("type") == "Unconfined":
                out.add(f"{name}: Unconfined")
        if (sc.get("seLinuxOptions") or {}).get("type", "") not in SELINUX_TYPES:
            out.add("SELinux type")
    return out


def restricted(spec: dict[str, Any], annotations: dict[str, str]) -> set[str]:
    """The restricted controls a pod spec breaks (baseline's included)."""
    out = baseline(spec, annotations)
    psc = spec.get("securityContext") or {}
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.add(f"volume types: {sorted(kinds - RESTRICTED_VOLUMES)}")
    for c in _containers(spec):
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            out.add(f"allowPrivilegeEscalation: {c['name']}")
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            out.add(f"runAsNonRoot: {c['name']}")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.add(f"runAsUser 0: {c['name']}")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.add(f"seccompProfile: {c['name']}")
        caps = sc.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []):
            out.add(f"capabilities drop ALL: {c['name']}")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.add(f"capabilities add: {c['name']}")
    return out


def level(spec: dict[str, Any], annotations: dict[str, str]) -> str:
    if not restricted(spec, annotations):
        return "restricted"
    if not baseline(spec, annotations):
        return "baseline"
    return "privileged"


def pod(workload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    t = workload["spec"]["template"]
    return t["spec"], (t.get("metadata") or {}).get("annotations") or {}


def component(workload: dict[str, Any]) -> str:
    return workload["metadata"]["name"].rsplit("-", 1)[-1]


# What each pod needs beyond baseline, and why (docs/helm.md says the same).
NEEDS = {
    # mount(2) with Bidirectional propagation (privileged only), the host's
    # network for NFS, kubelet's and the state dir (hostPath).
    "node": {"privileged", "host namespaces: hostNetwork", "hostPath volumes"},
    # The same for FUSE mounts, plus the host's PID namespace (FUSE names a
    # request's caller by its pid there) and /dev/fuse.
    "mounter": {"privileged", "host namespaces: hostNetwork", "host namespaces: hostPID", "hostPath volumes"},
    # CreateVolume mounts the NFS share privately: CAP_SYS_ADMIN, and an
    # AppArmor profile that lets mount(2) through; the quota controller's
    # walks read every home whatever its owner: CAP_DAC_READ_SEARCH.
    "controller": {"capabilities: SYS_ADMIN", "AppArmor: unconfined", "capabilities: DAC_READ_SEARCH"},
}


@pytest.mark.parametrize("values", [{}, {"storageClass": {"backend": "nfs", "server": "nfs.example.org"}, "node": {"localRoots": []}}])
def test_only_the_pods_that_mount_need_privileged_and_only_for_mounting(values):
    for w in workloads(render(values)):
        spec, ann = pod(w)
        name = component(w)
        broken = baseline(spec, ann)
        # A local backend's share reaches the controller as a hostPath.
        allowed = NEEDS[name] | ({"hostPath volumes"} if name == "controller" else set())
        assert broken and broken <= allowed, f"{name}: {broken - allowed or 'nothing'} beyond what mounting needs"
        assert NEEDS[name] - {"hostPath volumes"} <= broken, f"{name}: the table says more than it needs"
        assert level(spec, ann) == "privileged", name


def test_every_container_that_does_not_mount_keeps_nothing():
    for values in ({}, {"serviceMonitor": {"enabled": True}, "quotaController": {"hubUrl": "http://hub:8081", "hubTokenSecret": {"name": "t"}}}):
        for w in workloads(render(values)):
            spec, _ = pod(w)
            assert (spec.get("securityContext") or {}).get("seccompProfile", {}).get("type") == "RuntimeDefault", component(w)
            for c in spec["containers"]:
                sc = c.get("securityContext") or {}
                where = f"{component(w)}/{c['name']}"
                assert sc.get("readOnlyRootFilesystem") is True, where
                mounts = (component(w), c["name"]) in {("node", "hubfs"), ("mounter", "hubfs")}
                assert bool(sc.get("privileged")) == mounts, where
                if mounts:
                    continue
                assert sc.get("allowPrivilegeEscalation") is False, where
                caps = sc.get("capabilities") or {}
                assert caps.get("drop") == ["ALL"], where
                added = set(caps.get("add", []))
                if where == "controller/hubfs":
                    assert added == {"SYS_ADMIN", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"}, where
                elif where == "controller/quota":
                    assert added == {"DAC_READ_SEARCH", "DAC_OVERRIDE", "CHOWN", "FOWNER"}, where
                else:
                    assert not added, where


def test_the_node_plugin_has_no_fuse_device_the_mounter_does():
    docs = render({})
    for w in workloads(docs):
        spec, _ = pod(w)
        fuse = any((v.get("hostPath") or {}).get("path") == "/dev/fuse" for v in spec.get("volumes", []))
        assert fuse == (component(w) == "mounter"), component(w)


NOTEBOOK = {
    # A KubeSpawner notebook pod with a hubfs home claim and a bucket
    # (docs/jupyterhub.md, docs/upgrade.md), as z2jh renders it with the
    # restricted settings a cluster admin would add.
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 100,
        "fsGroup": 100,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "containers": [
        {
            "name": "notebook",
            "image": "quay.io/jupyter/base-notebook:2025-01-06",
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [
                {"name": "home", "mountPath": "/home/jovyan", "mountPropagation": "HostToContainer"},
                {"name": "s3-stpubdata", "mountPath": "/s3/stpubdata", "readOnly": True, "mountPropagation": "HostToContainer"},
            ],
        }
    ],
    "volumes": [
        {"name": "home", "persistentVolumeClaim": {"claimName": "claim-alice"}},
        {"name": "s3-stpubdata", "persistentVolumeClaim": {"claimName": "s3-stpubdata", "readOnly": True}},
    ],
}


def test_the_notebooks_namespace_can_enforce_restricted():
    assert restricted(NOTEBOOK, {}) == set()
    assert level(NOTEBOOK, {}) == "restricted"


def test_the_checks_catch_what_they_are_for():
    """Each control, broken on its own, moves the notebook out of its level."""
    import copy

    def broken(edit) -> tuple[str, set[str]]:
        p = copy.deepcopy(NOTEBOOK)
        edit(p)
        return level(p, {}), restricted(p, {})

    c = lambda p: p["containers"][0]["securityContext"]  # noqa: E731
    assert broken(lambda p: c(p).update(privileged=True))[0] == "privileged"
    assert broken(lambda p: c(p)["capabilities"].update(add=["SYS_ADMIN"]))[0] == "privileged"
    assert broken(lambda p: p.update(hostPID=True))[0] == "privileged"
    assert broken(lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}))[0] == "privileged"
    assert broken(lambda p: c(p)["capabilities"].update(add=["CHOWN"]))[0] == "baseline"
    assert broken(lambda p: c(p).update(allowPrivilegeEscalation=True))[0] == "baseline"
    assert broken(lambda p: p["securityContext"].update(runAsNonRoot=False))[0] == "baseline"
    assert broken(lambda p: p["securityContext"].pop("seccompProfile"))[0] == "baseline"
    assert broken(lambda p: c(p)["capabilities"].update(drop=[]))[0] == "baseline"
    assert level(NOTEBOOK, {"container.apparmor.security.beta.kubernetes.io/notebook": "unconfined"}) == "privileged"


def test_the_privilege_table_of_the_docs_names_every_container():
    text = (REPO / "docs" / "helm.md").read_text()
    section = text.split("## Privileges", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `(\w+)/([\w-]+)` \|", section, re.M))
    rendered = set()
    for values in ({}, {"serviceMonitor": {"enabled": True}}):
        for w in workloads(render(values)):
            for c in w["spec"]["template"]["spec"]["containers"]:
                rendered.add((component(w), c["name"]))
    assert rendered <= rows, f"not in docs/helm.md's privilege table: {sorted(rendered - rows)}"
    assert rows <= rendered, f"in the table but not rendered: {sorted(rows - rendered)}"
    for name in NEEDS:
        assert re.search(rf"`{name}` pod[^|]*\| privileged", section), name
    assert "restricted" in section
