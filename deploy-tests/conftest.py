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

# Preferred Kubernetes version for offline schema validation. The newest
# schema set kubernetes-validate ships that is not newer than this is used
# (see test_kustomize.py::test_schema_version_available).
PREFERRED_K8S_VERSION = "1.32"
MIN_K8S_VERSION = "1.30"


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


@pytest.fixture(scope="session")
def k8s_schema_version() -> str:
    """Newest Kubernetes version (<= PREFERRED) with bundled schemas."""
    from kubernetes_validate.utils import all_versions

    available = [v for v in all_versions() if _version_key(v) >= _version_key(MIN_K8S_VERSION)]
    assert available, f"kubernetes-validate ships no schema >= {MIN_K8S_VERSION}: {all_versions()}"
    preferred = [v for v in available if _version_key(v) <= _version_key(PREFERRED_K8S_VERSION)]
    return (preferred or available)[-1]


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found (scripts/check-deploy installs the Debian 'prometheus' package)")
    return path
