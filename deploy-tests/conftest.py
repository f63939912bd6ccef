"""Shared fixtures: rendered kustomize output, schema version, tool paths."""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contract import K8S, OVERLAYS  # noqa: E402

# The oldest Kubernetes the manifests support (k8s/README.md, "Cluster
# prerequisites"): 1.27, where the PDBs' unhealthyPodEvictionPolicy is on by
# default (beta; GA in 1.31). Every object is validated offline against this
# version's schemas and against the newest that kubernetes-validate ships.
MIN_K8S_VERSION = "1.27"

def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl (with built-in kustomize) is required: scripts/check-deploy installs nothing for it")
    return path


@lru_cache(maxsize=None)
def render(target: str) -> tuple[dict, ...]:
    """`kubectl kustomize k8s/<target>` as a tuple of objects (cached)."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(K8S / target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize k8s/{target} failed:\n{proc.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def objects(target: str, kind: str) -> list[dict]:
    return [o for o in render(target) if o["kind"] == kind]


def by_name(target: str, kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects(target, kind)}


@pytest.fixture(scope="session", params=("base",) + OVERLAYS)
def target(request) -> str:
    """Every renderable kustomization: base and each overlay."""
    return f"base" if request.param == "base" else f"overlays/{request.param}"


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request) -> str:
    return f"overlays/{request.param}"


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".")[:2])


def schema_versions() -> list[str]:
    """[the minimum version, the newest bundled]: both must accept every object."""
    from kubernetes_validate.utils import all_versions

    versions = sorted(set(all_versions()), key=_version_key)
    oldest = [v for v in versions if _version_key(v) == _version_key(MIN_K8S_VERSION)]
    assert oldest, f"kubernetes-validate ships no schema for Kubernetes {MIN_K8S_VERSION}: {versions}"
    return sorted({oldest[0], versions[-1]}, key=_version_key)


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found (scripts/check-deploy installs the Debian 'prometheus' package)")
    return path


def crd_schema_errors(objs: list[dict]) -> list[str] | None:
    """Validates custom resources with deploy-tests/crd_schemas.mjs (the JSON
    schemas of the @kubernetes-models npm packages that scripts/check-deploy
    installs and names in KAI_NODE_MODULES). None when they are not installed
    (pytest run alone); under scripts/check-deploy they always are."""
    import json
    import os

    modules = os.environ.get("KAI_NODE_MODULES")
    node = shutil.which("node")
    if not modules or node is None:
        return None
    proc = subprocess.run(
        [node, str(Path(__file__).resolve().parent / "crd_schemas.mjs"), modules],
        input=json.dumps(objs), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [f"{r['kind']}/{r['name']}: {r['error']}" for r in json.loads(proc.stdout) if r["error"]]
