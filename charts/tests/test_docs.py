"""Every snippet of docs/jupyterhub.md: YAML parsed and checked for the keys
z2jh expects, Kubernetes manifests validated, hubfs values rendered with the
chart, and the hub.extraConfig Python compiled and run against a stand-in
spawner (the spawn hook itself is tested inside a real hub by the quota
tests)."""

from __future__ import annotations

import asyncio
import re
import types

import kubernetes_validate
import pytest
import yaml

from conftest import REPO, one, render, strip

DOC = REPO / "docs" / "jupyterhub.md"
S3_EXAMPLE = REPO / "charts" / "hubfs" / "examples" / "s3-static-pv.yaml"


def blocks() -> list[tuple[str | None, str, str]]:
    """(check marker, language, body) of every fenced block."""
    text = DOC.read_text()
    out = []
    for m in re.finditer(r"(?:<!-- check: ([a-z0-9-]+) -->\n)?```([a-z]*)\n(.*?)```", text, re.S):
        out.append((m.group(1), m.group(2), m.group(3)))
    return out


def block(marker: str) -> str:
    found = [b for k, _, b in blocks() if k == marker]
    assert len(found) == 1, f"docs/jupyterhub.md: expected one block marked {marker}"
    return found[0]


def test_every_yaml_block_is_marked_and_parses():
    yamls = [(k, b) for k, lang, b in blocks() if lang == "yaml"]
    assert len(yamls) >= 3
    for marker, body in yamls:
        assert marker, f"unmarked YAML block (untested):\n{body[:200]}"
        docs = list(yaml.safe_load_all(body))
        assert docs and all(docs)


def z2jh() -> dict:
    return yaml.safe_load(block("z2jh-values"))


def test_z2jh_storage_is_a_dynamic_hubfs_home():
    su = z2jh()["singleuser"]
    st = su["storage"]
    assert st["type"] == "dynamic"
    assert st["dynamic"]["storageClass"] == one(render({}), "StorageClass")["metadata"]["name"] == "hubfs-home"
    # The claim capacity is the quota: the chart's default quota.
    assert st["capacity"] == one(render({}), "StorageClass")["parameters"]["quota"]
    # hubfs strips the StorageClass userPrefix from the claim name.
    assert st["dynamic"]["pvcNameTemplate"].startswith("claim-")
    # The owner hubfs gives new homes; no root, no CHOWN_HOME.
    assert su["uid"] == 1000 and su["fsGid"] == 100
    assert "extraEnv" not in su or "CHOWN_HOME" not in su["extraEnv"]


def test_z2jh_s3_and_quota_control_volumes_are_read_only():
    st = z2jh()["singleuser"]["storage"]
    vols = {v["name"]: v for v in st["extraVolumes"]}
    mounts = {m["mountPath"]: m for m in st["extraVolumeMounts"]}
    s3 = [m for p, m in mounts.items() if p.startswith("/s3/")]
    assert s3, "no bucket under /s3"
    qc = mounts["/quota-control"]
    for m in s3 + [qc]:
        assert m["readOnly"] is True
        claim = vols[m["name"]]["persistentVolumeClaim"]
        assert claim["readOnly"] is True
    assert qc["subPath"], "the notebook must see only its own record"
    # The bucket claim is the one the chart's example creates.
    example = {d["kind"]: d for d in yaml.safe_load_all(S3_EXAMPLE.read_text())}
    assert vols[s3[0]["name"]]["persistentVolumeClaim"]["claimName"] == example["PersistentVolumeClaim"]["metadata"]["name"]
    assert s3[0]["mountPath"] == "/s3/" + example["PersistentVolume"]["spec"]["csi"]["volumeAttributes"]["bucket"]
    # The record claim is the one in the manifests block.
    manifests = {d["kind"]: d for d in yaml.safe_load_all(block("manifests"))}
    assert vols["quota-control"]["persistentVolumeClaim"]["claimName"] == manifests["PersistentVolumeClaim"]["metadata"]["name"]


def test_z2jh_hub_service_and_minimal_role():
    hub = z2jh()["hub"]
    assert set(hub["services"]) == {"hubfs"}
    assert hub["services"]["hubfs"]["apiToken"]
    role = hub["loadRoles"]["hubfs"]
    assert sorted(role["scopes"]) == sorted(["list:users", "read:users:activity", "read:servers", "delete:servers"])
    assert role["services"] == ["hubfs"]
    assert "admin" not in hub["services"]["hubfs"], "JupyterHub 1.x admin services are not needed"


def test_z2jh_quota_url_points_at_the_chart_service():
    hub = z2jh()["hub"]
    values = yaml.safe_load(block("hubfs-values"))
    svc = one(render(values), "Service", "-quota")
    url = hub["extraEnv"]["HUBFS_QUOTA_URL"]
    http = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "http")
    assert url == f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:{http}"
    mount = hub["extraFiles"]["hubfs-spawn-hook"]["mountPath"]
    assert mount in hub["extraConfig"]["hubfs"]


def test_hubfs_values_render_and_point_at_the_token_secret():
    values = yaml.safe_load(block("hubfs-values"))
    docs = render(values)
    dep = one(docs, "Deployment", "-controller")
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["hub-token"]["secret"]["secretName"] == "hubfs-hub-token"
    sh = next(b for _, lang, b in blocks() if lang == "sh")
    assert "create secret generic hubfs-hub-token --from-literal=token=" in sh
    assert "-n hubfs-system" in sh


@pytest.mark.parametrize("kube", ["1.29.0", "1.31.0"])
def test_manifests_validate(kube):
    docs = list(yaml.safe_load_all(block("manifests"))) + list(yaml.safe_load_all(S3_EXAMPLE.read_text()))
    for d in docs:
        kubernetes_validate.validate(d, kube, strict=True)
    pv = next(d for d in docs if d["kind"] == "PersistentVolume" and "csi" in d["spec"])
    assert pv["spec"]["csi"]["driver"] == one(render({}), "CSIDriver")["metadata"]["name"]
    attrs = pv["spec"]["csi"]["volumeAttributes"]
    assert set(attrs) == {"type", "bucket", "prefix", "endpoint", "region", "anonymous", "readOnly", "uid", "gid"}
    assert pv["spec"]["csi"]["readOnly"] is (attrs["readOnly"] == "true")
    assert attrs["type"] == "s3" and attrs["anonymous"] in ("true", "false") and attrs["readOnly"] in ("true", "false")
    for d in docs:
        if d["kind"] == "PersistentVolumeClaim":
            target = next(p for p in docs if p["kind"] == "PersistentVolume" and p["metadata"]["name"] == d["spec"]["volumeName"])
            assert target["spec"]["claimRef"] == {"namespace": d["metadata"]["namespace"], "name": d["metadata"]["name"]}
            assert d["spec"]["storageClassName"] == "" == target["spec"]["storageClassName"]
            assert d["spec"]["accessModes"] == ["ReadOnlyMany"] == target["spec"]["accessModes"]


def test_s3_example_is_documented_line_by_line():
    lines = S3_EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z]+):\s*\S", line)
        if m and m.group(2) in {"bucket", "prefix", "endpoint", "region", "anonymous", "readOnly", "uid", "volumeHandle", "driver"}:
            prev = next(lines[j] for j in range(i - 1, -1, -1) if lines[j].strip())
            assert prev.strip().startswith("#"), f"line {i + 1} undocumented: {line}"


# ------------------------------------------------------- the extraConfig code


class FakeUser:
    def __init__(self, name):
        self.name = name


class FakeSpawner:
    def __init__(self, name, mounts):
        self.user = FakeUser(name)
        self.volume_mounts = mounts


def load_extra_config(hook_file=None):
    code = z2jh()["hub"]["extraConfig"]["hubfs"]
    if hook_file is not None:
        code = code.replace(z2jh()["hub"]["extraFiles"]["hubfs-spawn-hook"]["mountPath"], str(hook_file))
    c = types.SimpleNamespace(Spawner=types.SimpleNamespace())
    ns = {"c": c}
    exec(compile(code, "hub.extraConfig.hubfs", "exec"), ns)
    return c, ns


def test_user_key_matches_the_driver_encoding():
    _, ns = load_extra_config()
    key = ns["hubfs_user_key"]
    # The examples of README.md and quota/src/userkey.rs.
    assert key("jmiller@stsci.edu") == "jmiller_40stsci_2eedu"
    assert key("..") == "_2e_2e"
    assert key("alice") == "alice"
    assert key("jane-doe-42") == "jane-doe-42"
    assert key("zoë") == "zo_c3_ab"
    assert key("Bob") == "_42ob"
    # Every example in the Rust unit tests of UserKey.
    src = (REPO / "quota" / "src" / "userkey.rs").read_text()
    pairs = re.findall(r'UserKey::new\("([^"\\]*)"\)\.unwrap\(\)\.encoded\(\),\s*"([^"]*)"', src)
    assert len(pairs) >= 2, "no UserKey examples found in quota/src/userkey.rs"
    for name, encoded in pairs:
        assert key(name) == encoded, name


def test_hook_mounts_only_the_users_own_record(tmp_path):
    mounts = z2jh()["singleuser"]["storage"]["extraVolumeMounts"]
    c, _ = load_extra_config(tmp_path / "absent.py")
    sp = FakeSpawner("jmiller@stsci.edu", [dict(m) for m in mounts])
    before = [dict(m) for m in sp.volume_mounts]
    asyncio.run(c.Spawner.pre_spawn_hook(sp))
    qc = next(m for m in sp.volume_mounts if m["name"] == "quota-control")
    assert qc["subPath"] == "jmiller_40stsci_2eedu"
    assert qc["readOnly"] is True and qc["mountPath"] == "/quota-control"
    others = [m for m in sp.volume_mounts if m["name"] != "quota-control"]
    assert others == [m for m in before if m["name"] != "quota-control"]
    # The configured list itself is not modified (shared by all spawners).
    assert next(m for m in before if m["name"] == "quota-control")["subPath"] == "{username}"


def test_extra_config_chains_the_spawn_hook_file(tmp_path):
    hook = tmp_path / "hubfs_spawn_hook.py"
    hook.write_text(
        "calls = []\n"
        "async def pre_spawn_hook(spawner):\n"
        "    calls.append(spawner.user.name)\n"
        "    if spawner.user.name == 'locked':\n"
        "        raise RuntimeError('over quota: delete files to log in')\n"
    )
    c, ns = load_extra_config(hook)
    ok = FakeSpawner("alice", [{"name": "quota-control", "mountPath": "/quota-control", "subPath": "{username}"}])
    asyncio.run(c.Spawner.pre_spawn_hook(ok))
    assert ns["hubfs_hook"].calls == ["alice"]
    with pytest.raises(RuntimeError, match="over quota"):
        asyncio.run(c.Spawner.pre_spawn_hook(FakeSpawner("locked", [])))


# ------------------------------------------------- with the real spawn hook

HOOK = REPO / "quota" / "python" / "hubfs_spawn_hook.py"


class FakeController:
    """A stand-in for the quota controller's HTTP API on loopback."""

    def __init__(self, answers):
        import http.server
        import json
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                user = self.path.rsplit("/", 1)[-1]
                code, body = answers.get(user, (404, {"error": "unknown"}))
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_extra_config_loads_the_repositorys_spawn_hook(monkeypatch):
    """hub.extraConfig with the real quota/python/hubfs_spawn_hook.py mounted
    where hub.extraFiles puts it: a blocked user is refused with the
    controller's message, others start, and the record mount is rewritten."""
    assert HOOK.is_file(), f"{HOOK} is missing: docs/jupyterhub.md tells admins to pass it with --set-file"
    from tornado import web

    ctl = FakeController(
        {
            "locked": (200, {"spawn_allowed": False, "enforcement": "blocked", "message": "over quota (105%): delete files"}),
            "alice": (200, {"spawn_allowed": True, "enforcement": "none", "message": "ok"}),
        }
    )
    try:
        hub_env = z2jh()["hub"]["extraEnv"]
        assert "HUBFS_QUOTA_URL" in hub_env
        monkeypatch.setenv("HUBFS_QUOTA_URL", ctl.url)
        c, ns = load_extra_config(HOOK)
        assert ns["hubfs_hook"] is not None
        mounts = z2jh()["singleuser"]["storage"]["extraVolumeMounts"]
        alice = FakeSpawner("alice", [dict(m) for m in mounts])
        asyncio.run(c.Spawner.pre_spawn_hook(alice))
        assert next(m for m in alice.volume_mounts if m["name"] == "quota-control")["subPath"] == "alice"
        with pytest.raises(web.HTTPError) as e:
            asyncio.run(c.Spawner.pre_spawn_hook(FakeSpawner("locked", [dict(m) for m in mounts])))
        assert e.value.status_code == 403
        assert "over quota (105%): delete files" in getattr(e.value, "jupyterhub_message", str(e.value))
        # Never measured (404): the spawn goes ahead.
        asyncio.run(c.Spawner.pre_spawn_hook(FakeSpawner("newcomer", [])))
    finally:
        ctl.close()


S3_CREDENTIALS_EXAMPLE = REPO / "charts" / "hubfs" / "examples" / "s3-credentials-pv.yaml"


@pytest.mark.parametrize("kube", ["1.29.0", "1.31.0"])
def test_s3_credentials_example_validates_and_uses_the_documented_keys(kube):
    """The per-volume identity example: valid manifests, each PV names a
    Secret with exactly the keys the driver reads, two identities."""
    docs = list(yaml.safe_load_all(S3_CREDENTIALS_EXAMPLE.read_text()))
    for d in docs:
        kubernetes_validate.validate(d, kube, strict=True)
    secrets = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs if d["kind"] == "Secret"}
    pvs = [d for d in docs if d["kind"] == "PersistentVolume"]
    assert len(pvs) == 2 and len(secrets) == 2
    driver = one(render({}), "CSIDriver")["metadata"]["name"]
    for pv in pvs:
        csi = pv["spec"]["csi"]
        assert csi["driver"] == driver and csi["volumeAttributes"]["type"] == "s3"
        assert "anonymous" not in csi["volumeAttributes"], "a secret and anonymous exclude each other"
        ref = csi["nodePublishSecretRef"]
        keys = set(secrets[(ref["namespace"], ref["name"])]["stringData"])
        assert {"accessKeyID", "secretAccessKey"} <= keys <= {"accessKeyID", "secretAccessKey", "sessionToken"}
    rust = (REPO / "fuse-fs" / "src" / "s3" / "credentials.rs").read_text()
    for k in ("accessKeyID", "secretAccessKey", "sessionToken"):
        assert f'"{k}"' in rust
    lines = S3_CREDENTIALS_EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z]+):\s*\S", line)
        if m and m.group(2) in {"bucket", "prefix", "region", "accessKeyID", "secretAccessKey", "volumeHandle", "driver"}:
            prev = next(lines[j] for j in range(i - 1, -1, -1) if lines[j].strip())
            assert prev.strip().startswith("#"), f"line {i + 1} undocumented: {line}"
