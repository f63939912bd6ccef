"""The SPEC §8 facts about the Kubernetes workloads, on the rendered YAML."""

from __future__ import annotations

import re

import pytest

from conftest import by_name, objects, render
from contract import (
    BINARIES,
    CREDENTIAL_PARTS_ENV,
    K8S,
    MONITORED_OVERLAYS,
    MONITORING_COMPONENT,
    LIVENESS_PATH,
    LLM_ENV,
    READINESS_PATH,
    SECRET_ENV,
    SERVICE_ENV,
)

DRAIN_SECONDS = 30  # SPEC: a service drains in-flight requests for up to 30 s


@pytest.fixture(scope="module", params=sorted(BINARIES))
def binary(request) -> str:
    return request.param


def deployment(target: str, binary: str) -> dict:
    deps = by_name(target, "Deployment")
    assert binary in deps, f"no Deployment {binary} in k8s/{target}"
    return deps[binary]


def container(obj: dict) -> dict:
    containers = obj["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def configmaps(target: str) -> dict[str, dict]:
    return by_name(target, "ConfigMap")


def secrets(target: str) -> dict[str, dict]:
    return by_name(target, "Secret")


def env_names(target: str, pod_template: dict) -> set[str]:
    """All env var names a container gets, resolving envFrom ConfigMaps/Secrets
    that are part of the rendered output."""
    c = pod_template["spec"]["containers"][0]
    names = {e["name"] for e in c.get("env", [])}
    cms, secs = configmaps(target), secrets(target)
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            ref = src["configMapRef"]
            if ref["name"] in cms:
                names |= set(cms[ref["name"]].get("data", {}))
            else:
                assert ref.get("optional"), f"ConfigMap {ref['name']} is not rendered and not optional"
        if "secretRef" in src:
            ref = src["secretRef"]
            if ref["name"] in secs:
                s = secs[ref["name"]]
                names |= set(s.get("data", {})) | set(s.get("stringData", {}))
    return names


# --- Deployments ---------------------------------------------------------------


def test_one_deployment_per_service(target):
    assert set(by_name(target, "Deployment")) >= set(BINARIES)


def test_rolling_update(target, binary):
    strategy = deployment(target, binary)["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] == 1


def test_prometheus_annotations(target, binary):
    """SPEC §8's scrape annotations on the pods of every overlay, with or
    without the monitoring component (its ServiceMonitors are for the
    Prometheus operator, which does not read them; k8s/README.md says how a
    Prometheus that runs both avoids scraping twice)."""
    ann = deployment(target, binary)["spec"]["template"]["metadata"].get("annotations", {})
    assert ann.get("prometheus.io/scrape") == "true"
    assert ann.get("prometheus.io/port") == str(BINARIES[binary])
    assert ann.get("prometheus.io/path") == "/metrics"
    assert (binary in by_name(target, "ServiceMonitor")) == (target.removeprefix("overlays/") in MONITORED_OVERLAYS)


def test_monitoring_component_keeps_the_annotations():
    text = (MONITORING_COMPONENT / "kustomization.yaml").read_text()
    assert "prometheus.io" not in "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))


def test_serving_pods_never_migrate(target, binary):
    env = {e["name"]: e.get("value") for e in container(deployment(target, binary)).get("env", [])}
    assert env.get("RUN_MIGRATIONS") == "false", "the release's migration Job migrates, not the serving pods"
    refs = {src.get("secretRef", {}).get("name") for src in container(deployment(target, binary))["envFrom"]}
    assert not {r for r in refs if r and r.endswith("-migrate-credentials")}, \
        "serving pods must not hold a migration role's credentials"


def test_one_service_account_per_service(target, binary):
    spec = deployment(target, binary)["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == binary
    sa = by_name(target, "ServiceAccount")[binary]
    assert sa["automountServiceAccountToken"] is False
    others = {deployment(target, b)["spec"]["template"]["spec"]["serviceAccountName"] for b in BINARIES if b != binary}
    assert binary not in others


def test_container_port_and_env_port(target, binary):
    c = container(deployment(target, binary))
    assert [p["containerPort"] for p in c["ports"]] == [BINARIES[binary]]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env.get("PORT") == str(BINARIES[binary])


def test_runs_the_binary(target, binary):
    c = container(deployment(target, binary))
    assert c["command"] == [binary]
    assert c.get("args", ["serve"]) == ["serve"]


def test_probes(target, binary):
    c = container(deployment(target, binary))
    port = c["ports"][0]["name"]
    # The startup probe checks the process, not its dependencies: PostgreSQL down
    # during a node drain must not put new pods into CrashLoopBackOff.
    for probe, path in (("startupProbe", LIVENESS_PATH), ("readinessProbe", READINESS_PATH), ("livenessProbe", LIVENESS_PATH)):
        get = c[probe]["httpGet"]
        assert get["path"] == path, f"{probe} of {binary} must probe {path}"
        assert get["port"] in (port, BINARIES[binary])
    # A startup probe that covers a first start with migrations (>= 2 min).
    sp = c["startupProbe"]
    assert sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3) >= 120


def test_resources(target, binary):
    res = container(deployment(target, binary))["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= res[kind].keys(), f"{binary}: {kind} must set cpu and memory"


def test_security_context(target, binary):
    spec = deployment(target, binary)["spec"]["template"]["spec"]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert isinstance(pod["runAsUser"], int) and pod["runAsUser"] > 0
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container(deployment(target, binary))["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert not sc.get("capabilities", {}).get("add")
    assert spec.get("automountServiceAccountToken") is False


def test_graceful_termination(target, binary):
    spec = deployment(target, binary)["spec"]["template"]["spec"]
    grace = spec["terminationGracePeriodSeconds"]
    assert grace == 45
    pre_stop = container(deployment(target, binary))["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        sleep = int(pre_stop["sleep"]["seconds"])
    else:
        cmd = pre_stop["exec"]["command"]
        assert cmd[0] in ("sleep", "/bin/sleep"), cmd
        sleep = int(cmd[1])
    assert sleep > 0
    assert sleep + DRAIN_SECONDS < grace, "preStop sleep + drain must fit in the grace period"


def test_env_from_config_and_secret(target, binary):
    c = container(deployment(target, binary))
    kinds = {next(iter(k for k in src if k in ("configMapRef", "secretRef"))) for src in c["envFrom"]}
    assert kinds == {"configMapRef", "secretRef"}


def test_env_names_are_the_contract(target, binary):
    tmpl = deployment(target, binary)["spec"]["template"]
    names = env_names(target, tmpl)
    unknown = names - SERVICE_ENV - CREDENTIAL_PARTS_ENV
    assert not unknown, f"{binary} gets env vars outside SPEC §2: {sorted(unknown)}"
    if binary != "conversation-service":
        assert not names & LLM_ENV, f"LLM_* are for conversation-service only ({binary})"


def test_no_secret_in_configmaps(target):
    for name, cm in configmaps(target).items():
        leaked = set(cm.get("data", {})) & SECRET_ENV
        assert not leaked, f"ConfigMap {name} carries secrets {leaked}"


def test_no_plain_env_secrets(target):
    """A secret is never written into a manifest: it comes from a Secret, or — a
    URL composed in the pod spec (prod) — its credentials are `$(VAR)`s that
    come from a Secret."""
    for kind in ("Deployment", "Job"):
        for o in objects(target, kind):
            env = container(o).get("env", [])
            from_secrets = {e["name"] for e in env if "secretKeyRef" in e.get("valueFrom", {})}
            for e in env:
                where = f"{kind}/{o['metadata']['name']}: {e['name']}"
                if e["name"] in CREDENTIAL_PARTS_ENV:
                    assert "secretKeyRef" in e.get("valueFrom", {}), f"{where} inline"
                if e["name"] not in SECRET_ENV or "valueFrom" in e:
                    continue
                userinfo = re.fullmatch(r"[a-z]+://\$\((\w+)\):\$\((\w+)\)@[^@]+", e.get("value", ""))
                assert userinfo, f"{where} inline"
                assert set(userinfo.groups()) <= from_secrets, f"{where}: credentials not from a Secret"


def test_secrets_are_examples_only(target):
    """Secrets committed to the repository hold example values, never real ones."""
    for name, s in secrets(target).items():
        if name.startswith("kai-postgres"):
            continue
        values = " ".join(str(v) for v in s.get("stringData", {}).values()).lower()
        if "AUTH_SECRET" in s.get("stringData", {}):
            raise AssertionError(f"Secret {name}: AUTH_SECRET is gone (EdDSA keys, SPEC §2)")


def secrets_referenced(pod_spec: dict) -> set[str]:
    """Every Secret a pod names: envFrom, env valueFrom and volumes."""
    names = set()
    for c in pod_spec.get("initContainers", []) + pod_spec["containers"]:
        names |= {src["secretRef"]["name"] for src in c.get("envFrom", []) if "secretRef" in src}
        names |= {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
    names |= {v["secret"]["secretName"] for v in pod_spec.get("volumes", []) if "secret" in v}
    names |= {
        s["secret"]["name"]
        for v in pod_spec.get("volumes", [])
        for s in v.get("projected", {}).get("sources", [])
        if "secret" in s
    }
    return names


# What each service's pods may hold (SPEC §7 "Least privilege", issue 29): its
# own credentials (its PostgreSQL serving role and Redis ACL user); profile the
# signing key, conversation the LLM key. Nothing of another service.
OWN_SECRETS = {
    "journal-service": {"kai-journal-credentials"},
    "conversation-service": {"kai-conversation-credentials", "kai-llm-secrets"},
    "profile-service": {"kai-profile-credentials", "kai-signing-key"},
}


def test_each_deployment_names_only_its_own_secrets(target, binary):
    spec = deployment(target, binary)["spec"]["template"]["spec"]
    service = binary.removesuffix("-service")
    names = secrets_referenced(spec)
    assert f"kai-{service}-credentials" in names, f"{binary}: its own credentials"
    assert names <= OWN_SECRETS[binary], f"{binary} names {sorted(names - OWN_SECRETS[binary])}"
    others = set().union(*(v for k, v in OWN_SECRETS.items() if k != binary))
    assert not names & others, f"{binary} names another service's Secret"
    assert "kai-secrets" not in names and "kai-migrate-secrets" not in names


def test_no_workload_shares_a_secret_with_another(target):
    """Every Secret is named by the pods of one workload only (the credentials
    of one Deployment, or of one migration Job)."""
    owners: dict[str, set[str]] = {}
    for kind in ("Deployment", "Job"):
        for o in objects(target, kind):
            for name in secrets_referenced(o["spec"]["template"]["spec"]):
                owners.setdefault(name, set()).add(f"{kind}/{o['metadata']['name']}")
    shared = {n: sorted(w) for n, w in owners.items() if len(w) > 1}
    assert not shared, f"Secrets named by more than one workload: {shared}"


def test_only_profile_mounts_the_signing_key(target):
    for name, d in by_name(target, "Deployment").items():
        if name not in BINARIES:
            continue
        spec = d["spec"]["template"]["spec"]
        secrets_mounted = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        assert ("kai-signing-key" in secrets_mounted) == (name == "profile-service"), name
        maps = {v["configMap"]["name"].rsplit("-", 1)[0] for v in spec.get("volumes", []) if "configMap" in v}
        assert "kai-verifying-keys" in maps, f"{name}: verifying keys not mounted"


def test_prod_ships_no_secrets():
    assert not objects("overlays/prod", "Secret"), "prod must take its Secrets from outside the repository"


# --- replicas, images ----------------------------------------------------------


def hpa_for(target: str, binary: str) -> dict:
    return {h["spec"]["scaleTargetRef"]["name"]: h for h in objects(target, "HorizontalPodAutoscaler")}[binary]


def test_no_replicas_where_an_hpa_owns_the_count(target, binary):
    """`replicas` in a Deployment an HPA scales would reset the count on every apply."""
    assert "replicas" not in deployment(target, binary)["spec"]


def test_dev_single_replica(binary):
    assert hpa_for("overlays/dev", binary)["spec"]["minReplicas"] == 1


def test_prod_more_replicas_than_dev(binary):
    dev = hpa_for("overlays/dev", binary)["spec"]["minReplicas"]
    prod = hpa_for("overlays/prod", binary)["spec"]["minReplicas"]
    assert prod > dev
    assert prod >= 2, "prod needs at least two replicas to survive a pod loss"


def test_prod_bigger_limits(binary):
    def mem(v: str) -> int:
        units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
        for u, f in units.items():
            if v.endswith(u):
                return int(v[: -len(u)]) * f
        return int(v)

    dev = container(deployment("overlays/dev", binary))["resources"]["limits"]
    prod = container(deployment("overlays/prod", binary))["resources"]["limits"]
    assert mem(prod["memory"]) > mem(dev["memory"])


def _image_tag(image: str) -> str | None:
    if "@sha256:" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def test_prod_images_pinned():
    imgs = [container(o)["image"] for kind in ("Deployment", "Job") for o in objects("overlays/prod", kind)]
    assert imgs
    for image in imgs:
        tag = _image_tag(image)
        assert tag and tag != "latest", f"prod image {image} is not pinned"


def _image_repo(image: str) -> str:
    image = image.split("@", 1)[0]
    head, _, last = image.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def test_images_match_service(target):
    for kind in ("Deployment", "Job"):
        for o in objects(target, kind):
            name = o["metadata"]["labels"]["app.kubernetes.io/name"]
            if name not in BINARIES:
                continue
            repo = _image_repo(container(o)["image"])
            assert repo.endswith("/" + name), f"{kind}/{o['metadata']['name']} runs {repo}"


# --- Service, HPA, PDB, Jobs ---------------------------------------------------


def test_services(target, binary):
    svc = by_name(target, "Service")[binary]
    assert [p["port"] for p in svc["spec"]["ports"]] == [BINARIES[binary]]
    assert svc["spec"]["ports"][0]["name"] == "http"
    sel = svc["spec"]["selector"]
    labels = deployment(target, binary)["spec"]["template"]["metadata"]["labels"]
    assert sel.items() <= labels.items(), "Service selector must match the pods"
    # and only the API pods, not the migration Job
    assert sel.get("app.kubernetes.io/component") == "api"


def test_hpa(target, binary):
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in objects(target, "HorizontalPodAutoscaler")}
    hpa = hpas[binary]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"] == ["cpu"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_pdb(target, binary):
    pdbs = [p for p in objects(target, "PodDisruptionBudget")
            if p["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/name") == binary]
    assert len(pdbs) == 1
    pdb = pdbs[0]
    assert pdb["apiVersion"] == "policy/v1"
    labels = deployment(target, binary)["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert ("maxUnavailable" in pdb["spec"]) != ("minAvailable" in pdb["spec"])


def test_base_has_no_migration_job():
    """The base is the services; each overlay adds the Jobs (k8s/base/migrations)."""
    assert not objects("base", "Job")


def test_migration_job(overlay, binary):
    target = overlay
    jobs = [j for j in objects(target, "Job") if container(j)["command"][:1] == [binary]]
    assert len(jobs) == 1, f"expected one migration Job for {binary}"
    job = jobs[0]
    c = container(job)
    assert c["command"] + c.get("args", []) == [binary, "migrate"]
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] in ("OnFailure", "Never")
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    names = env_names(target, job["spec"]["template"])
    assert not names - SERVICE_ENV - CREDENTIAL_PARTS_ENV
    assert {"DATABASE_URL", "AUTH_VERIFYING_KEYS_FILE"} <= names or target == "overlays/prod"
    # the migration role, not the serving one
    service = binary.removesuffix("-service")
    assert secrets_referenced(spec) == {f"kai-{service}-migrate-credentials"}, \
        "a migration Job holds its own migration role's credentials and nothing else"
    assert spec["serviceAccountName"] == "kai-migrate"
    assert spec.get("automountServiceAccountToken") is False
    # same image as the service it migrates
    assert c["image"] == container(deployment(target, binary))["image"]


def test_all_pods_restricted(target):
    """Every pod in the rendered output (also dev PostgreSQL/Redis) passes the
    core of the 'restricted' Pod Security Standard, which the namespaces enforce."""
    for o in render(target):
        if o["kind"] not in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            continue
        spec = o["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, o["metadata"]["name"]
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", o["metadata"]["name"]
        for c in spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, o["metadata"]["name"]
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], o["metadata"]["name"]


def test_dev_postgresql_runs_the_shipped_roles_sql():
    """The dev overlay's PostgreSQL is initialised with k8s/postgres/ as it is
    (the same files compose, the tests and check-observability run)."""
    (cm,) = [c for n, c in configmaps("overlays/dev").items() if n.startswith("kai-postgres-init")]
    for sql in ("01-roles.sql", "02-database.sql"):
        assert cm["data"][sql] == (K8S / "postgres" / sql).read_text()
