"""The Gateway API component (k8s/components/gateway-api): an HTTPRoute beside
the Ingress, with the Ingress' routes and nothing else.

No overlay opts into it (the clusters they target run an ingress controller),
so each overlay is rendered here from a copy with the component added to its
`components:`, as an operator adds it. The HTTPRoute is
validated against the Gateway API v1 schema (npm @kubernetes-models/gateway-api,
installed by scripts/check-deploy; its schema checks types, enums, patterns and
limits) and by hand for what that schema leaves out: unknown fields, a port
on every Service backend (a CEL rule of the CRD), the routes themselves.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conftest import crd_schema_errors, schema_versions
from contract import BINARIES, INGRESS_ROUTES, INTERNAL_PATHS, K8S, OVERLAYS
from test_releases import render_dir

COMPONENT = K8S / "components" / "gateway-api"
# The HTTPRoute fields the component may use (Gateway API v1, standard channel).
ALLOWED = {
    "spec": {"parentRefs", "hostnames", "rules"},
    "parentRef": {"group", "kind", "name", "namespace", "sectionName", "port"},
    "rule": {"matches", "backendRefs", "filters", "name"},
    "match": {"path", "headers", "queryParams", "method"},
    "path": {"type", "value"},
    "backendRef": {"group", "kind", "name", "namespace", "port", "weight"},
}


@pytest.fixture(scope="module", params=OVERLAYS)
def with_gateway(request, tmp_path_factory) -> tuple[str, list[dict]]:
    root = tmp_path_factory.mktemp("gateway") / "k8s"
    shutil.copytree(K8S, root)
    kust = root / "overlays" / request.param / "kustomization.yaml"
    doc = yaml.safe_load(kust.read_text())
    doc.setdefault("components", []).append("../../components/gateway-api")
    kust.write_text(yaml.safe_dump(doc, sort_keys=False))
    return request.param, render_dir(kust.parent)


def route(objs: list[dict]) -> dict:
    (r,) = [o for o in objs if o["kind"] == "HTTPRoute"]
    return r


def test_component_is_a_component():
    k = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert k["kind"] == "Component" and k["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"


def test_the_ingress_stays_beside_it(with_gateway):
    _, objs = with_gateway
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "Ingress"] == ["kai"]


def test_routes_equal_the_ingress(with_gateway):
    _, objs = with_gateway
    r = route(objs)
    assert r["apiVersion"] == "gateway.networking.k8s.io/v1"
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    routes = {}
    for rule in r["spec"]["rules"]:
        assert not rule.get("filters"), "the Ingress rewrites nothing"
        (backend,) = rule["backendRefs"]
        assert backend.get("kind", "Service") == "Service" and backend.get("group", "") == ""
        assert backend["name"] in BINARIES and backend["name"] in services
        assert backend["port"] == BINARIES[backend["name"]], "a Service backend needs its port number"
        assert backend["port"] in {p["port"] for p in services[backend["name"]]["spec"]["ports"]}
        for m in rule["matches"]:
            assert set(m) == {"path"}, m
            assert m["path"]["type"] == "PathPrefix", "whole path segments, as the Ingress' Prefix"
            routes[m["path"]["value"]] = backend["name"]
    assert routes == INGRESS_ROUTES


def test_nothing_internal_is_routed(with_gateway):
    _, objs = with_gateway
    for rule in route(objs)["spec"]["rules"]:
        for m in rule["matches"]:
            path = m["path"]["value"]
            assert path.startswith("/api/") and path.rstrip("/") != "/api"
            for internal in INTERNAL_PATHS:
                assert not path.startswith(internal) and not internal.startswith(path.rstrip("/") + "/"), path


def test_only_known_fields(with_gateway):
    _, objs = with_gateway
    spec = route(objs)["spec"]
    assert set(spec) <= ALLOWED["spec"]
    for p in spec["parentRefs"]:
        assert set(p) <= ALLOWED["parentRef"] and p["name"]
        assert p.get("kind", "Gateway") == "Gateway"
    assert spec["hostnames"] and all("." in h and not h.startswith("*.") or h.startswith("*.") for h in spec["hostnames"])
    for rule in spec["rules"]:
        assert set(rule) <= ALLOWED["rule"]
        for m in rule["matches"]:
            assert set(m) <= ALLOWED["match"] and set(m["path"]) <= ALLOWED["path"]
        for b in rule["backendRefs"]:
            assert set(b) <= ALLOWED["backendRef"]


def test_route_lives_in_the_overlay_namespace(with_gateway):
    _, objs = with_gateway
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert route(objs)["metadata"].get("namespace") in namespaces and len(namespaces) == 1


def test_gateway_data_plane_may_reach_the_services_and_nothing_more(with_gateway):
    _, objs = with_gateway
    (np,) = [o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "kai-allow-gateway"]
    assert np["spec"]["policyTypes"] == ["Ingress"]
    exprs = {e["key"]: set(e["values"]) for e in np["spec"]["podSelector"]["matchExpressions"]}
    assert exprs == {"app.kubernetes.io/name": set(BINARIES), "app.kubernetes.io/component": {"api"}}
    (rule,) = np["spec"]["ingress"]
    assert {p["port"] for p in rule["ports"]} == set(BINARIES.values())
    for peer in rule["from"]:
        assert "ipBlock" not in peer and peer.get("namespaceSelector", {}).get("matchLabels"), peer


def test_schema_valid(with_gateway):
    _, objs = with_gateway
    errors = crd_schema_errors([route(objs)])
    if errors is None:
        pytest.skip("Gateway API schema not installed (scripts/check-deploy installs it)")
    assert not errors, "\n".join(errors)


def test_built_in_kinds_valid(with_gateway):
    """The component's NetworkPolicy against the Kubernetes schemas (the oldest
    supported and the newest bundled)."""
    from kubernetes_validate.utils import validate

    _, objs = with_gateway
    (np,) = [o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "kai-allow-gateway"]
    for v in schema_versions():
        validate(np, v, strict=True)
