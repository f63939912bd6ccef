"""kustomize renders, and every rendered object is valid Kubernetes."""

from __future__ import annotations

import json
from importlib.metadata import version

import pytest

from conftest import MIN_K8S_VERSION, crd_schema_errors, render, schema_versions
from contract import CRD_KINDS, K8S, MONITORED_OVERLAYS, OVERLAYS


def test_renders(target):
    objs = render(target)
    assert objs, f"k8s/{target} rendered nothing"
    for o in objs:
        assert {"apiVersion", "kind", "metadata"} <= o.keys(), o
        assert o["metadata"].get("name"), o


def test_names_unique(target):
    seen = set()
    for o in render(target):
        key = (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
        assert key not in seen, f"duplicate object {key}"
        seen.add(key)


def test_overlays_set_namespace(overlay):
    namespaces = {o["metadata"].get("namespace") for o in render(overlay) if o["kind"] != "Namespace"}
    assert len(namespaces) == 1 and None not in namespaces, namespaces
    (ns,) = namespaces
    ns_objs = [o for o in render(overlay) if o["kind"] == "Namespace"]
    assert [o["metadata"]["name"] for o in ns_objs] == [ns]
    # Pod Security Admission: everything in the namespace runs "restricted".
    assert ns_objs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_schema_versions_available():
    # Reported in the pytest header by scripts/check-deploy as well.
    versions = schema_versions()
    print(f"kubernetes-validate {version('kubernetes-validate')}: schemas for Kubernetes {versions}")
    assert versions[0].startswith(MIN_K8S_VERSION + ".")


@pytest.mark.parametrize("k8s_version", schema_versions())
def test_schema_valid(target, k8s_version):
    """Strict offline validation (unknown fields rejected) of every built-in
    kind, against the oldest supported Kubernetes and the newest bundled."""
    from kubernetes_validate.utils import ValidationError, validate

    checked = 0
    errors = []
    for o in render(target):
        if o["kind"] in CRD_KINDS:
            continue
        try:
            validate(o, k8s_version, strict=True)
            checked += 1
        except ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            errors.append(f"{o['kind']}/{o['metadata']['name']}: {path}: {e.message}")
    assert not errors, "\n".join(errors)
    assert checked > 0


def test_minimum_version_is_documented():
    readme = (K8S / "README.md").read_text()
    assert f"Kubernetes {MIN_K8S_VERSION}" in readme


def test_base_and_unmonitored_overlays_need_no_operator_crds():
    """The base applies to a cluster without the Prometheus operator; its
    objects come only with k8s/components/monitoring."""
    for target in ["base"] + [f"overlays/{o}" for o in OVERLAYS if o not in MONITORED_OVERLAYS]:
        kinds = {o["kind"] for o in render(target)} & CRD_KINDS
        assert not kinds, f"k8s/{target} needs CRDs for {kinds}"
        assert all(not o["apiVersion"].startswith("monitoring.coreos.com/") for o in render(target))


@pytest.mark.parametrize("overlay_name", MONITORED_OVERLAYS)
@pytest.mark.parametrize("kind", sorted(CRD_KINDS - {"PodMonitor"}))
def test_crds_present_with_expected_api(overlay_name, kind):
    target = f"overlays/{overlay_name}"
    objs = [o for o in render(target) if o["kind"] == kind]
    assert objs, f"no {kind} in k8s/{target}"
    for o in objs:
        assert o["apiVersion"] == "monitoring.coreos.com/v1"
        assert isinstance(o.get("spec"), dict) and o["spec"], f"{kind}/{o['metadata']['name']} has no spec"


@pytest.mark.parametrize("overlay_name", MONITORED_OVERLAYS)
def test_crds_schema_valid(overlay_name):
    """ServiceMonitors and the PrometheusRule against the Prometheus operator's
    schemas (npm @kubernetes-models/prometheus-operator, installed by
    scripts/check-deploy)."""
    objs = [o for o in render(f"overlays/{overlay_name}") if o["kind"] in CRD_KINDS]
    errors = crd_schema_errors(objs)
    if errors is None:
        pytest.skip("CRD schemas not installed (scripts/check-deploy installs them)")
    assert not errors, "\n".join(errors)


def test_crd_schemas_reject_what_they_should():
    """The validator is not a no-op: a bad relabel action and a bad path match
    type are refused."""
    sm = next(o for o in render("overlays/prod") if o["kind"] == "ServiceMonitor")
    bad_sm = json.loads(json.dumps(sm))
    bad_sm["spec"]["endpoints"][0]["relabelings"][0]["action"] = "rename-everything"
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "x"},
             "spec": {"rules": [{"matches": [{"path": {"type": "Prefix", "value": "/api"}}]}]}}
    errors = crd_schema_errors([bad_sm, route])
    if errors is None:
        pytest.skip("CRD schemas not installed (scripts/check-deploy installs them)")
    assert len(errors) == 2, errors
