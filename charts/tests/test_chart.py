"""The Helm chart: lint, schema validation for several Kubernetes versions, and
the settings that break mounts when they are wrong (mount propagation,
/dev/fuse, podInfoOnMount, socket paths agreeing between kubelet, the
registrar and the driver's flags), plus least-privilege RBAC."""

from __future__ import annotations

import re
import subprocess

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest

from conftest import (
    CHART,
    NAMESPACE,
    REPO,
    VARIANTS,
    container,
    expand_env,
    flag,
    host_path,
    notes,
    one,
    render,
    strip,
    workloads,
)

# At least two supported Kubernetes versions (Chart.yaml: kubeVersion >=1.29).
KUBE_VERSIONS = ["1.29.0", "1.31.0", "1.33.0"]

# CRDs are not in kubernetes-validate: the fields the Prometheus Operator needs.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"]},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "object", "required": ["port"], "properties": {"port": {"type": "string"}}},
                },
            },
        },
    },
}


POD_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"]},
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "object", "required": ["port"], "properties": {"port": {"type": "string"}}},
                },
            },
        },
    },
}


def all_containers(docs):
    for w in workloads(docs):
        for c in w["spec"]["template"]["spec"]["containers"]:
            yield w, c


# ---------------------------------------------------------------- lint, schema


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_strict_lint_is_clean(name):
    for kube in ("v1.29.0", "v1.31.0"):
        report = helm.lint(CHART, VARIANTS[name], strict=True, namespace=NAMESPACE, kube_version=kube)
        assert report["total_charts_linted"] == 1
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not problems, f"{name} on {kube}: {problems}"


def test_lint_reports_a_broken_chart(tmp_path):
    """The lint call is not a no-op: a chart with a bad template fails it."""
    broken = tmp_path / "hubfs"
    import shutil

    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("kind: {{ .Values.nope.missing }\n")
    report = helm.lint(broken, strict=True)
    assert report["errors"] or any(m["severity"] >= 2 for m in report["messages"])


def test_every_manifest_validates_against_kubernetes_schemas(variant):
    name, _, docs = variant
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            schema = POD_MONITOR_SCHEMA if doc["kind"] == "PodMonitor" else SERVICE_MONITOR_SCHEMA
            jsonschema.validate(strip(doc), schema)
            continue
        for kube in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(strip(doc), kube, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{name}: {doc['kind']} {doc['metadata'].get('name')} invalid for {kube}: {e.message} at {list(e.path)}")
    assert {"CSIDriver", "DaemonSet", "Deployment", "ClusterRole", "ServiceAccount"} <= kinds


def test_validation_catches_a_bad_manifest():
    """kubernetes-validate is not vacuous: an unknown field fails strict mode."""
    ds = strip(one(render({}), "DaemonSet", "-node"))
    ds["spec"]["template"]["spec"]["containers"][0]["mountPropogation"] = "Bidirectional"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, KUBE_VERSIONS[0], strict=True)


def test_all_objects_are_namespaced_in_the_release_namespace(variant):
    cluster_scoped = {"CSIDriver", "StorageClass", "ClusterRole", "ClusterRoleBinding"}
    for doc in variant[2]:
        if doc["kind"] in cluster_scoped:
            assert "namespace" not in doc["metadata"]
        else:
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"storageClass": {"onDelete": "shred"}}, "onDelete"),
        ({"storageClass": {"accounting": "quota"}}, "accounting"),
        ({"logFormat": "xml"}, "logFormat"),
        ({"driverName": "-bad name"}, "driverName"),
        ({"controller": {"replicas": 0}}, "replicas"),
        ({"storageClass": {"typo": 1}}, "typo"),
    ],
)
def test_schema_rejects_bad_values(values, message):
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError) as e:
            chart.validate_schema(values)
    assert message in str(e.value)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"storageClass": {"backend": "nfs", "server": ""}}, "storageClass.server is required"),
        (
            {"storageClass": {"backend": "local", "root": "/elsewhere/homes"}, "node": {"localRoots": ["/srv/hubfs"]}},
            "must lie inside one of node.localRoots",
        ),
        (
            {"storageClass": {"backend": "local", "root": "/srv/hubfs-other"}, "node": {"localRoots": ["/srv/hubfs"]}},
            "must lie inside one of node.localRoots",
        ),
        ({"quotaController": {"hubUrl": "http://hub:8081"}}, "hubTokenSecret.name is required"),
    ],
)
def test_inconsistent_values_fail_with_a_clear_message(values, message):
    with pytest.raises(helm.HelmError) as e:
        render(values)
    assert message in str(e.value)


# ---------------------------------------------------------------- CSIDriver


def test_csidriver(variant):
    _, v, docs = variant
    d = one(docs, "CSIDriver")
    assert d["metadata"]["name"] == v["driverName"]
    assert d["spec"]["attachRequired"] is False
    assert d["spec"]["podInfoOnMount"] is True
    # Homes are chowned at provisioning; a recursive fsGroup chown on every
    # mount would walk whole homes.
    assert d["spec"]["fsGroupPolicy"] == "None"
    assert d["spec"]["volumeLifecycleModes"] == ["Persistent"]


# ---------------------------------------------------------------- node plugin


def test_node_plugin_mounts(variant):
    _, v, docs = variant
    ds = one(docs, "DaemonSet", "-node")
    spec = ds["spec"]["template"]["spec"]
    c = container(ds, "hubfs")
    kubelet = v["kubeletDir"].rstrip("/")
    state = v["stateDir"].rstrip("/")
    assert c["args"][0] == "csi"
    assert flag(c, "mode") == ["node"]
    assert flag(c, "driver-name") == [v["driverName"]]

    # kubelet hands the driver host paths: they must mean the same inside.
    assert flag(c, "kubelet-dir") == [kubelet]
    assert flag(c, "state-dir") == [state]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts[kubelet].get("mountPropagation") == "Bidirectional"
    assert mounts[state].get("mountPropagation") == "Bidirectional"
    assert host_path(ds, c, kubelet) == kubelet
    assert host_path(ds, c, state) == state

    # FUSE servers run in the mounter: the plugin has no /dev/fuse.
    assert host_path(ds, c, "/dev/fuse") is None

    # Local roots: same path inside and out, and each one allowed.
    for root in v["node"]["localRoots"]:
        assert root.rstrip("/") in flag(c, "allowed-root")
        assert host_path(ds, c, root.rstrip("/")) == root.rstrip("/")

    assert c["securityContext"]["privileged"] is True
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert c["resources"]["requests"] and c["resources"]["limits"]


def test_registrar_socket_paths_agree_with_the_driver(variant):
    _, v, docs = variant
    ds = one(docs, "DaemonSet", "-node")
    driver = container(ds, "hubfs")
    registrar = container(ds, "node-driver-registrar")
    probe = container(ds, "liveness-probe")
    expected = f"{v['kubeletDir'].rstrip('/')}/plugins/{v['driverName']}/csi.sock"

    endpoint = expand_env(driver, flag(driver, "endpoint")[0])
    assert endpoint.startswith("unix://")
    driver_sock = endpoint[len("unix://"):]
    # Where the driver's socket really is on the host...
    assert host_path(ds, driver, driver_sock) == expected
    # ...is what the registrar tells kubelet...
    assert flag(registrar, "kubelet-registration-path") == [expected]
    # ...and what the registrar and livenessprobe dial.
    assert host_path(ds, registrar, flag(registrar, "csi-address")[0]) == expected
    assert host_path(ds, probe, flag(probe, "csi-address")[0]) == expected
    # The registrar's own probe checks the same path.
    cmd = registrar["livenessProbe"]["exec"]["command"]
    assert f"--kubelet-registration-path={expected}" in cmd
    # kubelet's plugin registry.
    assert host_path(ds, registrar, "/registration") == f"{v['kubeletDir'].rstrip('/')}/plugins_registry"


def test_node_liveness_port_agrees(variant):
    _, v, docs = variant
    ds = one(docs, "DaemonSet", "-node")
    probe = container(ds, "liveness-probe")
    port = v["node"]["healthPort"]
    assert flag(probe, "http-endpoint") == [f":{port}"]
    driver = container(ds, "hubfs")
    named = {p["name"]: p["containerPort"] for p in driver["ports"]}
    assert named[driver["livenessProbe"]["httpGet"]["port"]] == port


def test_node_runs_on_z2jh_user_nodes():
    ds = one(render({}), "DaemonSet", "-node")
    tol = ds["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"} in tol
    sel = one(render({"node": {"nodeSelector": {"hub.jupyter.org/node-purpose": "user"}}}), "DaemonSet", "-node")
    assert sel["spec"]["template"]["spec"]["nodeSelector"] == {"hub.jupyter.org/node-purpose": "user"}


def test_s3_credentials_come_from_a_secret():
    ds = one(render({"node": {"s3CredentialsSecret": "s3-creds"}}), "DaemonSet", "-node")
    assert container(ds, "hubfs")["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]


def test_mounter_owns_the_fuse_servers_and_is_upgraded_by_a_takeover(variant):
    """The FUSE servers live in the mounter DaemonSet, which the node plugin
    finds through the same state dir; both run on the same nodes. An upgrade
    starts the new mounter beside the old one (maxSurge), which takes the
    servers over, and the old pod goes only once the new one is ready."""
    _, v, docs = variant
    node = one(docs, "DaemonSet", "-node")
    m = one(docs, "DaemonSet", "-mounter")
    assert m["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    c = container(m, "hubfs")
    # FUSE reports callers' pids only inside the server's PID namespace.
    assert m["spec"]["template"]["spec"]["hostPID"] is True
    assert "--take-over" in c["args"]
    ready = flag(c, "ready-file")
    assert len(ready) == 1 and not ready[0].startswith(v["stateDir"].rstrip("/") + "/")
    assert c["readinessProbe"]["exec"]["command"] == ["test", "-e", ready[0]]
    plugin = container(node, "hubfs")
    kubelet = v["kubeletDir"].rstrip("/")
    state = v["stateDir"].rstrip("/")
    assert c["args"][0] == "mounter"
    assert flag(c, "state-dir") == [state] == flag(plugin, "state-dir")
    assert flag(plugin, "servers") == ["mounter"]
    mounts = {mm["mountPath"]: mm for mm in c["volumeMounts"]}
    assert mounts[kubelet].get("mountPropagation") == "Bidirectional"
    assert mounts[state].get("mountPropagation") == "Bidirectional"
    assert host_path(m, c, kubelet) == kubelet
    assert host_path(m, c, state) == state
    assert host_path(m, c, "/dev/fuse") == "/dev/fuse"
    for root in v["node"]["localRoots"]:
        assert host_path(m, c, root.rstrip("/")) == root.rstrip("/")
    for key in ("nodeSelector", "tolerations", "affinity"):
        assert m["spec"]["template"]["spec"].get(key) == node["spec"]["template"]["spec"].get(key)
    assert c["resources"]["requests"] and c["resources"]["limits"]


def test_the_s3_cache_is_the_mounters_with_a_size_and_a_place():
    """node.s3Cache reaches `hubfs mounter` (the S3 servers run there), on a
    hostPath or an emptyDir without a size limit; off by default."""
    for sc, want in [
        ({"enabled": True, "size": "20Gi", "hostPath": "/mnt/nvme/hubfs-s3"},
         {"hostPath": {"path": "/mnt/nvme/hubfs-s3", "type": "DirectoryOrCreate"}}),
        ({"enabled": True, "size": "500M"}, {"emptyDir": {}}),
    ]:
        docs = render({"node": {"s3Cache": sc}})
        m = container(one(docs, "DaemonSet", "-mounter"), "hubfs")
        assert flag(m, "s3-cache-dir") == ["/var/cache/hubfs-s3"]
        assert flag(m, "s3-cache-size") == [sc["size"]]
        mounts = {mm["mountPath"]: mm["name"] for mm in m["volumeMounts"]}
        vols = {v["name"]: v for v in one(docs, "DaemonSet", "-mounter")["spec"]["template"]["spec"]["volumes"]}
        vol = dict(vols[mounts["/var/cache/hubfs-s3"]])
        vol.pop("name")
        assert vol == want
        plugin = container(one(docs, "DaemonSet", "-node"), "hubfs")
        assert not [a for a in plugin["args"] if "cache" in a], "the node plugin runs no server"
    off = container(one(render({}), "DaemonSet", "-mounter"), "hubfs")
    assert not [a for a in off["args"] if "cache" in a]
    assert "/var/cache/hubfs-s3" not in {mm["mountPath"] for mm in off["volumeMounts"]}
    for bad in ({"size": "lots"}, {"size": "0"}, {"hostPath": "relative/dir"}, {"hostPath": "/x/"}, {"sizeLimit": "1Gi"}):
        with pytest.raises(Exception):
            render({"node": {"s3Cache": {"enabled": True, **bad}}})


def test_mounter_gets_the_s3_credentials():
    m = one(render({"node": {"s3CredentialsSecret": "s3-creds"}}), "DaemonSet", "-mounter")
    assert container(m, "hubfs")["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]


# ---------------------------------------------------------------- privileges


def test_privileged_only_in_the_node_plugin(variant):
    _, _, docs = variant
    for w, c in all_containers(docs):
        sc = c.get("securityContext", {})
        is_node_plugin = w["kind"] == "DaemonSet" and c["name"] == "hubfs"
        assert bool(sc.get("privileged")) == is_node_plugin, f"{w['metadata']['name']}/{c['name']}"
        for m in c.get("volumeMounts", []):
            if m.get("mountPropagation") == "Bidirectional":
                assert is_node_plugin, f"{c['name']} has Bidirectional propagation"
        added = set(sc.get("capabilities", {}).get("add", []))
        if is_node_plugin:
            continue
        if w["kind"] == "Deployment" and c["name"] == "hubfs":
            # CreateVolume mounts the NFS share privately: mount(2) only,
            # which AppArmor's runtime default would still refuse.
            assert "SYS_ADMIN" in added and sc["capabilities"]["drop"] == ["ALL"]
            ann = w["spec"]["template"]["metadata"]["annotations"]
            assert ann["container.apparmor.security.beta.kubernetes.io/hubfs"] == "unconfined"
        elif c["name"] == "quota":
            assert "SYS_ADMIN" not in added and sc["capabilities"]["drop"] == ["ALL"]
            assert sc["allowPrivilegeEscalation"] is False
        else:
            assert not added, f"{c['name']} adds {added}"
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True


# ---------------------------------------------------------------- controller


def test_controller_sidecars(variant):
    _, v, docs = variant
    dep = one(docs, "Deployment", "-controller")
    assert dep["spec"]["replicas"] == v["controller"]["replicas"]
    driver = container(dep, "hubfs")
    assert flag(driver, "mode") == ["controller"]
    assert flag(driver, "driver-name") == [v["driverName"]]
    sock = expand_env(driver, flag(driver, "endpoint")[0])[len("unix://"):]
    socket_vol = next(m["name"] for m in driver["volumeMounts"] if sock.startswith(m["mountPath"] + "/"))
    for name in ("csi-provisioner", "csi-resizer", "liveness-probe"):
        side = container(dep, name)
        addr = flag(side, "csi-address")[0]
        mount = next(m for m in side["volumeMounts"] if addr.startswith(m["mountPath"] + "/"))
        assert mount["name"] == socket_vol and addr == sock, name
    prov = container(dep, "csi-provisioner")
    assert "--extra-create-metadata" in prov["args"]
    assert "registry.k8s.io/sig-storage/csi-provisioner:" in prov["image"]
    assert "registry.k8s.io/sig-storage/csi-resizer:" in container(dep, "csi-resizer")["image"]
    if v["controller"]["replicas"] > 1:
        for name in ("csi-provisioner", "csi-resizer"):
            assert flag(container(dep, name), "leader-election") == ["true"], name
        role = one(docs, "Role", "-leader-election")
        assert role["rules"][0]["resources"] == ["leases"]


def test_quota_controller_wiring(variant):
    name, v, docs = variant
    qc = v["quotaController"]
    dep = one(docs, "Deployment", "-controller")
    names = [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]]
    if not qc["enabled"]:
        assert "quota" not in names
        assert not [d for d in docs if d["kind"] == "Service"]
        return
    q = container(dep, "quota")
    assert q["args"][0] == "controller"
    ports = {p["name"]: p["containerPort"] for p in q["ports"]}
    assert flag(q, "grpc-listen") == [f"0.0.0.0:{ports['grpc']}"]
    assert flag(q, "http-listen") == [f"0.0.0.0:{ports['http']}"]
    assert q["livenessProbe"]["httpGet"]["path"] == "/healthz"
    share = next(m for m in q["volumeMounts"] if m["name"] == "share")["mountPath"]
    assert flag(q, "control-dir") == [share + qc["controlPath"]]
    assert flag(q, "users-dir") == [share + v["storageClass"]["basePath"]]
    svc = one(docs, "Service", "-quota")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": qc["grpcPort"], "http": qc["httpPort"]}
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == val for k, val in svc["spec"]["selector"].items())
    vols = {vol["name"]: vol for vol in dep["spec"]["template"]["spec"]["volumes"]}
    if v["storageClass"]["backend"] == "nfs":
        assert vols["share"]["nfs"] == {"server": v["storageClass"]["server"], "path": v["storageClass"]["share"]}
    else:
        assert vols["share"]["hostPath"]["path"] == v["storageClass"]["root"]
    if qc["hubUrl"]:
        token_file = flag(q, "hub-token-file")[0]
        mount = next(m for m in q["volumeMounts"] if token_file.startswith(m["mountPath"] + "/"))
        secret = vols[mount["name"]]["secret"]
        assert secret["secretName"] == qc["hubTokenSecret"]["name"]
        assert token_file.endswith("/" + qc["hubTokenSecret"]["key"])
        assert mount["readOnly"] is True
    else:
        assert not flag(q, "hub-url") and not flag(q, "hub-token-file")
    if qc["config"]:
        cm = one(docs, "ConfigMap", "-quota")
        import yaml

        assert yaml.safe_load(cm["data"]["quota.yaml"]) == qc["config"]
        assert flag(q, "config") == ["/etc/hubfs/quota.yaml"]
    if name == "servicemonitor":
        sm = one(docs, "ServiceMonitor")
        assert sm["spec"]["endpoints"][0]["port"] == "http"
        assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
        assert all(svc["metadata"]["labels"].get(k) == val for k, val in sm["spec"]["selector"]["matchLabels"].items())
        assert sm["metadata"]["labels"]["release"] == "prometheus"
        # Each node's mounter is scraped through a PodMonitor on its metrics port.
        pm = one(docs, "PodMonitor")
        m = one(docs, "DaemonSet", "-mounter")
        pod_labels = m["spec"]["template"]["metadata"]["labels"]
        assert all(pod_labels.get(k) == val for k, val in pm["spec"]["selector"]["matchLabels"].items())
        assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
        assert pm["metadata"]["labels"]["release"] == "prometheus"
    else:
        assert not [d for d in docs if d["kind"] in ("ServiceMonitor", "PodMonitor")]


def test_the_mounter_serves_metrics_on_its_port_unless_turned_off():
    """`hubfs mounter --metrics-addr` on mounter.metricsPort, declared as the
    container's `metrics` port (what the PodMonitor scrapes); 0 turns both off."""
    c = container(one(render({}), "DaemonSet", "-mounter"), "hubfs")
    assert flag(c, "metrics-addr") == ["0.0.0.0:9811"]
    assert {"name": "metrics", "containerPort": 9811} in c["ports"]
    off = render({"mounter": {"metricsPort": 0}, "serviceMonitor": {"enabled": True}})
    c = container(one(off, "DaemonSet", "-mounter"), "hubfs")
    assert not flag(c, "metrics-addr") and "ports" not in c
    assert not [d for d in off if d["kind"] == "PodMonitor"]


def test_hub_token_is_never_in_values_or_env():
    docs = render(VARIANTS["servicemonitor"])
    for _, c in all_containers(docs):
        for e in c.get("env", []):
            assert "TOKEN" not in e["name"], e
    assert not [d for d in docs if d["kind"] == "Secret"]


# ---------------------------------------------------------------- StorageClass


def driver_parameter_keys() -> set[str]:
    """The StorageClass keys the driver accepts: its KNOWN list in
    HomeParams::parse, resolved through the `keys` constants."""
    src = (REPO / "driver" / "src" / "volume.rs").read_text()
    consts = dict(re.findall(r'pub const (\w+): &str = "([^"]+)";', src))
    known = re.search(r"const KNOWN: &\[&str\] = &\[(.*?)\];", src, re.S)
    assert known, "HomeParams::parse's KNOWN list not found in driver/src/volume.rs"
    names = re.findall(r"keys::(\w+)", known.group(1))
    assert names
    return {consts[n] for n in names}


def test_storageclass(variant):
    _, v, docs = variant
    sc_values = v["storageClass"]
    sc = one(docs, "StorageClass")
    assert sc["metadata"]["name"] == sc_values["name"] == "hubfs-home"
    assert sc["provisioner"] == v["driverName"] == one(docs, "CSIDriver")["metadata"]["name"]
    assert sc["allowVolumeExpansion"] is True
    p = sc["parameters"]
    # The driver refuses unknown keys, so one typo here breaks every spawn.
    unknown = set(p) - driver_parameter_keys()
    assert not unknown, f"keys the driver does not know: {unknown}"
    assert all(isinstance(val, str) for val in p.values())
    assert p["type"] == "home"
    assert p["quota"] == "200Gi" and p["uid"] == "1000" and p["gid"] == "100" and p["mode"] == "0750"
    assert p["onDelete"] == "retain" and p["userPrefix"] == "claim-"
    assert p["backend"] == sc_values["backend"]
    if p["backend"] == "nfs":
        assert p["server"] == sc_values["server"] and "root" not in p
    else:
        root = p["root"]
        assert any(root == r or root.startswith(r.rstrip("/") + "/") for r in v["node"]["localRoots"])
        assert "server" not in p


# ---------------------------------------------------------------- RBAC


def test_rbac_is_least_privilege(variant):
    _, _, docs = variant
    roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role")]
    assert roles
    for r in roles:
        for rule in r["rules"]:
            for field in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule[field], f"{r['metadata']['name']}: {field} has *"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            assert "secrets" not in rule["resources"], "no role reads Secrets"
            assert "nodes" not in rule["resources"]
    node = one(docs, "ClusterRole", "-node")
    node_verbs = {v for rule in node["rules"] for v in rule["verbs"]}
    assert node_verbs <= {"get", "create", "patch"}, "the node plugin writes nothing but events"
    writes = [rule for rule in node["rules"] if set(rule["verbs"]) & {"create", "patch"}]
    assert all(rule["resources"] == ["events"] for rule in writes)
    leases = [r for r in roles if any("leases" in rule["resources"] for rule in r["rules"])]
    assert all(r["kind"] == "Role" for r in leases), "leases only in our namespace"

    # Bindings point at our ServiceAccounts and existing roles.
    sas = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    role_names = {(r["kind"], r["metadata"]["name"]) for r in roles}
    for b in (d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert (b["roleRef"]["kind"], b["roleRef"]["name"]) in role_names
        for s in b["subjects"]:
            assert s["name"] in sas and s["namespace"] == NAMESPACE
    for w in workloads(docs):
        assert w["spec"]["template"]["spec"]["serviceAccountName"] in sas


def test_provisioner_can_do_its_job():
    """Least privilege, but not less: what external-provisioner and
    external-resizer need for PVs, PVCs, StorageClasses and events."""
    ctrl = one(render({}), "ClusterRole", "-controller")

    def allowed(group, resource, verb):
        return any(
            group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in ctrl["rules"]
        )

    for verb in ("get", "list", "watch", "create", "delete", "patch"):
        assert allowed("", "persistentvolumes", verb)
    for verb in ("get", "list", "watch", "update"):
        assert allowed("", "persistentvolumeclaims", verb)
    assert allowed("", "persistentvolumeclaims/status", "patch")
    assert allowed("storage.k8s.io", "storageclasses", "watch")
    assert allowed("", "events", "create") and allowed("events.k8s.io", "events", "create")


# ---------------------------------------------------------------- driver CLI


def cli_flags(binary, *sub) -> set[str]:
    out = subprocess.run([str(binary), *sub, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"hubfs {' '.join(sub)} --help failed: {out.stderr}"
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", out.stdout))


def test_every_flag_the_chart_passes_exists_in_the_binary(hubfs_bin):
    """A flag the binary does not know makes clap exit: the pod would crash-loop."""
    csi = cli_flags(hubfs_bin, "csi")
    ctrl = cli_flags(hubfs_bin, "controller")
    mounter = cli_flags(hubfs_bin, "mounter")
    for name in sorted(VARIANTS):
        for w, c in all_containers(render(VARIANTS[name])):
            if not c["image"].startswith("hubfs:") and "/hubfs:" not in c["image"]:
                continue
            sub = c["args"][0]
            known = {"csi": csi, "controller": ctrl, "mounter": mounter}[sub]
            for a in c["args"][1:]:
                assert a.startswith("--"), f"{name}: positional {a!r}"
                assert a.split("=", 1)[0] in known, f"{name}: {w['metadata']['name']}/{c['name']}: hubfs {sub} has no {a}"


def test_default_driver_name_matches_the_binary():
    lib = (REPO / "driver" / "src" / "lib.rs").read_text()
    m = re.search(r'DEFAULT_DRIVER_NAME: &str = "([^"]+)"', lib)
    assert m, "DEFAULT_DRIVER_NAME not found in driver/src/lib.rs"
    assert one(render({}), "CSIDriver")["metadata"]["name"] == m.group(1)


# ---------------------------------------------------------------- NOTES


def test_notes_tell_the_admin_what_to_check():
    text = notes({})
    assert "kubectl get csinodes" in text
    assert "hubfs.csi.jupyter.org" in text
    assert "claim-hubfs-check" in text
    assert "docs/jupyterhub.md" in text
    assert "no server is ever stopped" in text  # no hubUrl by default
    with_hub = notes(VARIANTS["servicemonitor"])
    assert "no server is ever stopped" not in with_hub
    assert f"hubfs-quota.{NAMESPACE}.svc:9501" in with_hub


# Values that are Kubernetes data copied verbatim into manifests: documented
# as a whole by the comment above the key, not field by field.
VERBATIM = {"tolerations", "updateStrategy", "resources"}


def test_values_are_documented_line_by_line():
    """Every key in values.yaml has a comment on the line just above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(- )?([A-Za-z0-9]+):", line)
        if not m:
            continue
        indent = len(m.group(1)) + (2 if m.group(2) else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = m.group(3)
        inside_data = any(k in VERBATIM for _, k in stack)
        stack.append((indent, key))
        if inside_data:
            continue
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if not prev.strip().startswith("#"):
            undocumented.append(f"{i + 1}: {line.strip()}")
    assert not undocumented, "values without a comment:\n" + "\n".join(undocumented)


def test_rendered_quota_config_is_accepted_by_the_controller(hubfs_bin, tmp_path):
    """The ConfigMap the chart renders is loaded by the real `hubfs controller`
    (one pass, no hub); a misspelt key in it is refused."""
    cm = one(render(VARIANTS["servicemonitor"]), "ConfigMap", "-quota")
    good = tmp_path / "quota.yaml"
    good.write_text(cm["data"]["quota.yaml"])
    control = tmp_path / "control"
    control.mkdir()

    def run(config):
        return subprocess.run(
            [str(hubfs_bin), "controller", "--control-dir", str(control), "--config", str(config), "--once"],
            capture_output=True, text=True, timeout=120,
        )

    ok = run(good)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(cm["data"]["quota.yaml"].replace("warnFraction", "warn_fraction"))
    refused = run(bad)
    assert refused.returncode != 0 and "warn_fraction" in refused.stderr


@pytest.mark.parametrize("workload, suffix", [("DaemonSet", "-node"), ("Deployment", "-controller")])
def test_the_binary_starts_with_the_charts_csi_args(hubfs_bin, tmp_path, workload, suffix):
    """`hubfs csi` accepts the exact args the chart renders (values and all,
    not just flag names) and serves on the socket. Only the socket and the
    state dir are moved into a temporary directory; there is no kubelet or
    API server here, so no events are posted."""
    import os
    import signal
    import time

    w = one(render(VARIANTS["custom-driver"]), workload, suffix)
    c = container(w, "hubfs")
    sock = tmp_path / "csi.sock"
    args = []
    for a in c["args"]:
        if a.startswith("--endpoint="):
            a = f"--endpoint=unix://{sock}"
        elif a.startswith("--state-dir="):
            a = f"--state-dir={tmp_path / 'state'}"
        args.append(a)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update({"NODE_NAME": "node-1", "KUBECONFIG": str(tmp_path / "no-kubeconfig")})
    p = subprocess.Popen([str(hubfs_bin), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert p.poll() is None, f"hubfs csi exited {p.returncode}: {p.stderr.read()}"
        assert sock.exists(), "no socket after 60 s"
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
    assert p.returncode == 0, err
    assert "serving CSI" in err and "homes.hubfs.example.org" in err
