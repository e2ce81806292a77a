"""The Grafana dashboard: valid JSON, the panels the issue asks for, and
every metric it queries exists in the code that exports it (so a renamed
metric breaks this test, not the admin's dashboard)."""

from __future__ import annotations

import json
import re

from conftest import CHART, REPO

DASH = json.loads((CHART / "dashboards" / "hubfs.json").read_text())

# Where the metrics are registered, and the prefix of each registry.
SOURCES = {
    "hubfs_quota_": REPO / "quota" / "src" / "metrics.rs",
    "hubfs_s3_": REPO / "fuse-fs" / "src" / "s3" / "metrics.rs",
}


def exported() -> set[str]:
    names = set()
    for prefix, path in SOURCES.items():
        src = path.read_text()
        for m in re.finditer(r'register\(\s*"([a-z0-9_]+)"', src):
            names.add(prefix + m.group(1))
    return names


def panels():
    return [p for p in DASH["panels"] if p["type"] != "row"]


def queried() -> set[str]:
    out = set()
    for p in panels():
        for t in p["targets"]:
            for name in re.findall(r"\b(hubfs_[a-z0-9_]+)", t["expr"]):
                out.add(re.sub(r"_(total|bucket|sum|count)$", "", name))
    return out


def test_every_queried_metric_is_exported():
    have = exported()
    assert len(have) >= 10, f"could not read the metric registrations: {have}"
    missing = queried() - have
    assert not missing, f"dashboard queries metrics nobody exports: {missing}"


def test_panels_cover_usage_states_s3_and_walks():
    q = queried()
    for m in (
        "hubfs_quota_used_bytes",
        "hubfs_quota_limit_bytes",
        "hubfs_quota_fraction_used",
        "hubfs_quota_state",
        "hubfs_quota_walk_seconds",
        "hubfs_s3_requests",
        "hubfs_s3_bytes",
    ):
        assert m in q, m


def test_dashboard_structure():
    assert DASH["uid"] and DASH["title"]
    ids = [p["id"] for p in DASH["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in DASH["templating"]["list"]}
    assert {"datasource", "user"} <= variables
    for p in panels():
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}"
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]


def test_dashboard_configmap_carries_the_file():
    from conftest import VARIANTS, one, render

    cm = one(render(VARIANTS["servicemonitor"]), "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["hubfs.json"]) == DASH
    assert not [d for d in render({}) if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]


def test_admin_table_has_every_users_usage_quota_state_and_grace():
    """Issue 21's admin page: one table, a line per user."""
    table = [p for p in panels() if p["type"] == "table" and p["title"] == "Every user"]
    assert len(table) == 1
    exprs = " ".join(t["expr"] for t in table[0]["targets"])
    for m in (
        "hubfs_quota_used_bytes",
        "hubfs_quota_limit_bytes",
        "hubfs_quota_fraction_used",
        "hubfs_quota_state",
        "hubfs_quota_enforcement",
        "hubfs_quota_grace_seconds",
    ):
        assert m in exprs, m
    assert all(t["format"] == "table" and t["instant"] for t in table[0]["targets"])
    names = table[0]["transformations"][1]["options"]["renameByName"].values()
    assert {"Used", "Quota", "State", "Enforced", "Grace left"} <= set(names)
