"""Ingress routes and NetworkPolicies."""

from __future__ import annotations

import pytest

from conftest import by_name, objects
from contract import BINARIES, INGRESS_ROUTES, INTERNAL_PATHS, SERVICES

INGRESS_NAMESPACE = "ingress-nginx"
MONITORING_NAMESPACE = "monitoring"
DATASTORE_PORTS = {5432, 6379}


def ingress_paths(target: str) -> list[tuple[str, str, str, object]]:
    """(path, pathType, backend service, backend port) for every rule."""
    out = []
    ingresses = objects(target, "Ingress")
    assert ingresses, f"no Ingress in k8s/{target}"
    for ing in ingresses:
        assert ing["apiVersion"] == "networking.k8s.io/v1"
        assert "defaultBackend" not in ing["spec"], "a default backend would expose every route"
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                svc = p["backend"]["service"]
                port = svc["port"].get("name", svc["port"].get("number"))
                out.append((p["path"], p["pathType"], svc["name"], port))
    return out


def test_ingress_routes(target):
    routes = {path: svc for path, _, svc, _ in ingress_paths(target)}
    assert routes == INGRESS_ROUTES


def test_ingress_path_types(target):
    for path, path_type, _, _ in ingress_paths(target):
        # Prefix matches whole segments; ImplementationSpecific could turn
        # into a regex or a plain string prefix depending on the controller.
        assert path_type in ("Prefix", "Exact"), path


def test_ingress_backends_exist(target):
    services = by_name(target, "Service")
    for path, _, svc, port in ingress_paths(target):
        assert svc in services, f"{path} -> unknown Service {svc}"
        ports = {p.get("name") for p in services[svc]["spec"]["ports"]} | {p["port"] for p in services[svc]["spec"]["ports"]}
        assert port in ports


def test_ingress_never_exposes_internal_routes(target):
    for path, _, _, _ in ingress_paths(target):
        assert path.startswith("/api/"), f"{path}: only /api/** is public"
        assert path.rstrip("/") not in ("", "/api"), "a catch-all prefix would expose internal routes"
        for internal in INTERNAL_PATHS:
            assert not path.startswith(internal) and not internal.startswith(path.rstrip("/") + "/"), (
                f"ingress path {path} exposes {internal}"
            )
        for word in ("metrics", "health", "docs", "openapi"):
            assert word not in path, path


def test_prod_ingress_tls():
    (ing,) = objects("overlays/prod", "Ingress")
    hosts = {h for rule in ing["spec"]["rules"] for h in [rule["host"]]}
    tls_hosts = {h for t in ing["spec"].get("tls", []) for h in t["hosts"]}
    assert hosts <= tls_hosts


# --- NetworkPolicies ---------------------------------------------------------


def policies(target: str) -> list[dict]:
    pols = objects(target, "NetworkPolicy")
    assert pols, f"no NetworkPolicy in k8s/{target}"
    return pols


def selects(policy: dict, labels: dict) -> bool:
    sel = policy["spec"]["podSelector"]
    if any(labels.get(k) != v for k, v in sel.get("matchLabels", {}).items()):
        return False
    for expr in sel.get("matchExpressions", []):
        value = labels.get(expr["key"])
        op = expr["operator"]
        if op == "In" and value not in expr["values"]:
            return False
        if op == "NotIn" and value in expr["values"]:
            return False
        if op == "Exists" and value is None:
            return False
        if op == "DoesNotExist" and value is not None:
            return False
    return True


def pod_labels(target: str, binary: str, kind: str = "Deployment") -> dict:
    for o in objects(target, kind):
        if o["metadata"]["labels"].get("app.kubernetes.io/name") == binary:
            return o["spec"]["template"]["metadata"]["labels"]
    raise AssertionError(f"no {kind} for {binary}")


@pytest.fixture(scope="module", params=sorted(BINARIES))
def binary(request) -> str:
    return request.param


def test_default_deny_both_directions(target):
    deny = [p for p in policies(target)
            if p["spec"]["podSelector"] == {} and sorted(p["spec"]["policyTypes"]) == ["Egress", "Ingress"]
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert deny, "a namespace-wide default-deny policy for ingress and egress is required"


INGRESS_CONTROLLER_PODS = {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"}
PROMETHEUS_PODS = {"app.kubernetes.io/name": "prometheus"}


def test_ingress_only_from_controller_pods_and_prometheus_pods(target, binary):
    labels = pod_labels(target, binary)
    rules = [r for p in policies(target) if selects(p, labels) and "Ingress" in p["spec"]["policyTypes"]
             for r in p["spec"].get("ingress", [])]
    assert rules, f"nothing may reach {binary}"
    sources = set()
    for r in rules:
        assert [pt["port"] for pt in r["ports"]] == [BINARIES[binary]], "only the service port"
        for peer in r["from"]:
            # namespace AND pod selector in one peer: only those pods of that namespace
            assert set(peer) == {"namespaceSelector", "podSelector"}, f"unexpected peer {peer}"
            ns = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            pods = peer["podSelector"]["matchLabels"]
            sources.add((ns, tuple(sorted(pods.items()))))
    assert sources == {
        (INGRESS_NAMESPACE, tuple(sorted(INGRESS_CONTROLLER_PODS.items()))),
        (MONITORING_NAMESPACE, tuple(sorted(PROMETHEUS_PODS.items()))),
    }


def _egress_ports(target: str, labels: dict) -> dict[int, list]:
    """port -> list of `to` peers, over every egress policy selecting the pod."""
    out: dict[int, list] = {}
    egress_policies = [p for p in policies(target) if selects(p, labels) and "Egress" in p["spec"]["policyTypes"]]
    assert egress_policies, "egress must be restricted"
    for p in egress_policies:
        for rule in p["spec"].get("egress", []):
            assert rule.get("ports"), f"{p['metadata']['name']}: egress rule without ports allows everything"
            for pt in rule["ports"]:
                out.setdefault(pt["port"], []).append(rule.get("to", []))
    return out


def test_egress(target, binary):
    allowed = set(_egress_ports(target, pod_labels(target, binary)))
    expected = {53} | DATASTORE_PORTS | ({443} if binary == "conversation-service" else set())
    assert allowed == expected, f"{binary} egress {sorted(allowed)} != {sorted(expected)}"


def test_dns_only_to_kube_dns(target, binary):
    for kind in ("Deployment",) + (("Job",) if target != "base" else ()):
        for peers in _egress_ports(target, pod_labels(target, binary, kind))[53]:
            assert peers, "DNS to any address"
            for peer in peers:
                assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
                assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}


def test_llm_egress_blocks_private_and_metadata(target):
    ports = _egress_ports(target, pod_labels(target, "conversation-service"))
    for peers in ports[443]:
        assert peers, "HTTPS egress must be limited by ipBlock"
        for peer in peers:
            assert "169.254.0.0/16" in peer["ipBlock"]["except"], "cloud metadata endpoint must stay unreachable"


def test_migration_jobs_egress(overlay, binary):
    """DNS and PostgreSQL; migrations never touch Redis."""
    allowed = set(_egress_ports(overlay, pod_labels(overlay, binary, "Job")))
    assert allowed == {53, 5432}


def test_dev_datastores_reachable():
    """The dev overlay's PostgreSQL/Redis sit behind the default deny: the Kai
    pods must be allowed in."""
    labels_by_store = {}
    for kind in ("StatefulSet", "Deployment"):
        for o in objects("overlays/dev", kind):
            name = o["metadata"]["labels"].get("app.kubernetes.io/name")
            if name in ("postgres", "redis"):
                labels_by_store[name] = o["spec"]["template"]["metadata"]["labels"]
    assert set(labels_by_store) == {"postgres", "redis"}
    for store, labels in labels_by_store.items():
        rules = [r for p in policies("overlays/dev") if selects(p, labels) for r in p["spec"].get("ingress", [])]
        assert any({"app.kubernetes.io/part-of": "kai"}.items() <= peer.get("podSelector", {}).get("matchLabels", {}).items()
                   for r in rules for peer in r.get("from", [])), store


def test_services_are_the_expected_set():
    assert {b for b, _ in SERVICES.values()} == set(BINARIES)
