"""The PostgreSQL connection budget (k8s/README.md, "Connection budget").

Every pod of a service can hold DB_POOL_SIZE connections. At the worst moment
of an ordinary week a service runs its HPA's maxReplicas plus the rolling
update's maxSurge, and the release's migration Jobs run beside them (one
connection each: `migrate` holds one). Summed over the services, that must fit
the limit the overlay's Namespace states in the annotation
`kai/postgresql-connection-limit`, read here from the rendered manifests. In
dev, whose PostgreSQL is rendered too, the limit must also leave that server's
superuser_reserved_connections free.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest

from conftest import render
from contract import BINARIES, K8S
from test_releases import render_dir, set_config_literal

ANNOTATION = "kai/postgresql-connection-limit"
SUPERUSER_RESERVED = 3  # PostgreSQL's default superuser_reserved_connections


def _env(objs: list[dict], pod_template: dict) -> dict[str, str]:
    """The literal environment of the template's first container (envFrom
    ConfigMaps first, its own `env` wins)."""
    cms = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
    c = pod_template["spec"]["containers"][0]
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src and src["configMapRef"]["name"] in cms:
            env |= cms[src["configMapRef"]["name"]].get("data", {})
    env |= {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    return env


def _surge(deployment: dict, replicas: int) -> int:
    strategy = deployment["spec"].get("strategy", {})
    if strategy.get("type") == "Recreate":
        return 0
    surge = strategy.get("rollingUpdate", {}).get("maxSurge", "25%")
    if isinstance(surge, str) and surge.endswith("%"):
        return math.ceil(replicas * int(surge[:-1]) / 100)
    return int(surge)


def budget(objs: list[dict]) -> tuple[int, int, list[str]]:
    """(connections at the worst moment, the stated limit, the breakdown)."""
    (ns,) = [o for o in objs if o["kind"] == "Namespace"]
    limit = int(ns["metadata"]["annotations"][ANNOTATION])
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in objs if h["kind"] == "HorizontalPodAutoscaler"}
    total, lines = 0, []
    for d in (o for o in objs if o["kind"] == "Deployment"):
        name = d["metadata"]["name"]
        if name not in BINARIES:
            continue
        replicas = hpas[name]["spec"]["maxReplicas"] if name in hpas else d["spec"].get("replicas", 1)
        surge = _surge(d, replicas)
        pool = int(_env(objs, d["spec"]["template"])["DB_POOL_SIZE"])
        total += (replicas + surge) * pool
        lines.append(f"{name}: ({replicas} max + {surge} surge) x DB_POOL_SIZE {pool} = {(replicas + surge) * pool}")
    jobs = [o for o in objs if o["kind"] == "Job"]
    per_job = [max(1, int(j["spec"].get("parallelism", 1))) for j in jobs]
    total += sum(per_job)
    lines.append(f"{len(jobs)} migration Jobs x 1 = {sum(per_job)}")
    return total, limit, lines


def test_connections_fit_the_documented_limit(overlay):
    total, limit, lines = budget(list(render(overlay)))
    assert total <= limit, (
        f"k8s/{overlay}: up to {total} PostgreSQL connections, above the limit of {limit} "
        f"({ANNOTATION} on the Namespace):\n  " + "\n  ".join(lines)
        + "\nLower DB_POOL_SIZE or the HPA maximum, or raise the limit with the server's max_connections."
    )


def test_the_limit_is_documented(overlay):
    (ns,) = [o for o in render(overlay) if o["kind"] == "Namespace"]
    limit = ns["metadata"]["annotations"][ANNOTATION]
    name = overlay.split("/")[1]
    readme = (K8S / "README.md").read_text()
    assert re.search(rf"\|\s*`?{name}`?\s*\|[^\n]*\|\s*{limit}\s*\|", readme), (
        f"k8s/README.md's connection budget table must state {name}'s limit {limit}"
    )


def test_dev_limit_leaves_the_reserved_connections():
    objs = list(render("overlays/dev"))
    (ns,) = [o for o in objs if o["kind"] == "Namespace"]
    limit = int(ns["metadata"]["annotations"][ANNOTATION])
    (pg,) = [o for o in objs if o["kind"] in ("StatefulSet", "Deployment") and "postgres" in o["metadata"]["name"]]
    args = " ".join(pg["spec"]["template"]["spec"]["containers"][0].get("args", []))
    server_max = int(re.search(r"max_connections=(\d+)", args).group(1))
    assert limit <= server_max - SUPERUSER_RESERVED


@pytest.mark.parametrize("pool", ["20"])
def test_the_check_fails_past_the_limit(tmp_path, pool):
    """The operator raising prod's DB_POOL_SIZE back to 20 would need 783."""
    root = tmp_path / "k8s"
    shutil.copytree(K8S, root)
    set_config_literal(root / "overlays/prod", "DB_POOL_SIZE", pool)
    total, limit, _ = budget(render_dir(root / "overlays/prod"))
    assert total > limit
