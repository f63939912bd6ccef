"""SPEC §8 "Production connections", on the rendered prod overlay: every pod that
talks to PostgreSQL does so with sslmode=verify-full against a mounted CA bundle,
every pod that talks to Redis uses rediss:// as an ACL user against a mounted CA
bundle, and the credentials come from Secrets. The dev overlay and compose stay
plaintext on purpose (in-cluster / loopback servers without certificates)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import by_name, objects
from contract import BINARIES, K8S

PROD = "overlays/prod"


def container(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]["containers"][0]


def env_of(obj: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container(obj).get("env", [])}


def config(obj: dict) -> dict[str, str]:
    """The plain settings a workload gets: ConfigMap data through envFrom
    (kai-config), then its own literal `env` values (which win)."""
    cms = by_name(PROD, "ConfigMap")
    data: dict[str, str] = {}
    for src in container(obj).get("envFrom", []):
        ref = src.get("configMapRef")
        if ref and ref["name"] in cms:
            data |= cms[ref["name"]].get("data", {})
    data |= {e["name"]: e["value"] for e in container(obj).get("env", []) if "value" in e}
    return data


def mounted_file(obj: dict, path: str) -> str:
    """The content of the ConfigMap key mounted at `path` in `obj`'s container."""
    spec = obj["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    cms = by_name(PROD, "ConfigMap")
    for m in container(obj).get("volumeMounts", []):
        prefix = m["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        vol = volumes[m["name"]]
        assert "configMap" in vol, f"{path}: mounted from {vol}"
        data = cms[vol["configMap"]["name"]]["data"]
        key = path[len(prefix):]
        assert key in data, f"{path}: no key {key} in ConfigMap {vol['configMap']['name']}"
        return data[key]
    raise AssertionError(f"{obj['metadata']['name']}: nothing mounted at {path}")


def composed(obj: dict, name: str, secret: str) -> str:
    """The URL in env `name`, checking its credentials are `$(VAR)`s defined
    before it from Secret `secret`."""
    env = container(obj)["env"]
    names = [e["name"] for e in env]
    assert name in names, f"{obj['metadata']['name']}: no {name}"
    value = env[names.index(name)]["value"]
    m = re.fullmatch(r"([a-z]+)://\$\((\w+)\):\$\((\w+)\)@(.+)", value)
    assert m, f"{name} = {value!r}: credentials must be $(USER):$(PASSWORD)"
    for var in m.group(2, 3):
        assert var in names[: names.index(name)], f"$({var}) must be defined before {name}"
        ref = env[names.index(var)]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret, f"{var} from {ref['name']}, expected {secret}"
    return value


def own_secret(obj: dict) -> str:
    """The one Secret a workload's credentials come from: its service's
    (kai-journal-credentials), or a migration Job's own
    (kai-journal-migrate-credentials)."""
    service = obj["metadata"]["labels"]["app.kubernetes.io/name"].removesuffix("-service")
    migrate = obj["kind"] == "Job"
    return f"kai-{service}-migrate-credentials" if migrate else f"kai-{service}-credentials"


def api_deployments() -> list[dict]:
    return [d for n, d in by_name(PROD, "Deployment").items() if n in BINARIES]


def migration_jobs() -> list[dict]:
    return objects(PROD, "Job")


def test_prod_has_the_workloads():
    assert len(api_deployments()) == 3 and len(migration_jobs()) == 3


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_prod_postgresql_is_verify_full_against_a_mounted_ca(kind):
    workloads = api_deployments() if kind == "Deployment" else migration_jobs()
    for w in workloads:
        url = urlsplit(composed(w, "DATABASE_URL", own_secret(w)))
        assert url.scheme in ("postgres", "postgresql")
        assert parse_qs(url.query).get("sslmode") == ["verify-full"], url.geturl()
        assert url.hostname and not re.fullmatch(r"[\d.]+", url.hostname), "verify-full needs a host name"
        ca = config(w).get("DATABASE_CA_FILE")
        assert ca, f"{w['metadata']['name']}: DATABASE_CA_FILE unset"
        assert "-----BEGIN CERTIFICATE-----" in mounted_file(w, ca)


def test_prod_redis_is_tls_as_an_acl_user_against_a_mounted_ca():
    for d in api_deployments():
        env = env_of(d)
        assert "REDIS_CLUSTER_NODES" not in env or "REDIS_URL" not in env
        url = urlsplit(composed(d, "REDIS_URL", own_secret(d)))
        assert url.scheme == "rediss", url.geturl()
        ca = config(d).get("REDIS_CA_FILE")
        assert ca, f"{d['metadata']['name']}: REDIS_CA_FILE unset"
        assert "-----BEGIN CERTIFICATE-----" in mounted_file(d, ca)


def test_migration_jobs_can_read_every_ca_file_their_configuration_names():
    """`migrate` parses the whole configuration: every CA file it names is
    mounted (the Jobs set DATABASE_CA_FILE themselves; they never use Redis)."""
    for j in migration_jobs():
        cfg = config(j)
        assert "DATABASE_CA_FILE" in cfg
        for var in ("DATABASE_CA_FILE", "REDIS_CA_FILE"):
            if var in cfg:
                mounted_file(j, cfg[var])
        assert "REDIS_URL" not in env_of(j), "migrations never touch Redis"


def test_prod_never_names_a_plaintext_or_unverified_connection():
    text = " ".join(
        str(e.get("value", ""))
        for w in api_deployments() + migration_jobs()
        for e in container(w).get("env", [])
    ) + " ".join(str(v) for cm in by_name(PROD, "ConfigMap").values() for v in cm.get("data", {}).values())
    assert "redis://" not in text
    for weak in ("disable", "allow", "prefer", "require", "verify-ca"):
        assert f"sslmode={weak}" not in text


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
@pytest.mark.parametrize("name", ["postgres-ca.pem", "redis-ca.pem"])
def test_prod_ca_bundles_are_ca_certificates(name):
    path = K8S / PROD / "tls" / name
    out = subprocess.run(
        ["openssl", "x509", "-in", str(path), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "CA:TRUE" in out, f"{name} is not a CA certificate"


def test_dev_shows_the_tls_settings_it_does_not_use():
    """Dev talks plaintext to its in-cluster servers, and says how TLS looks."""
    text = (K8S / "overlays/dev/secret.yaml").read_text()
    assert "sslmode=verify-full" in text and "rediss://" in text
    assert "DATABASE_CA_FILE" in text and "REDIS_CA_FILE" in text


def test_compose_shows_the_tls_settings():
    text = (Path(K8S).parent / "docker" / "docker-compose.yml").read_text()
    assert "sslmode=verify-full" in text and "rediss://" in text
