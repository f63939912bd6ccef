"""docker/: Dockerfile, .dockerignore, docker-compose.yml and redis.conf.

There is no Docker engine where this runs, so everything is checked
statically; `docker compose config` is used additionally when available.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from contract import BINARIES, DOCKER, K8S, REPO, SERVICE_ENV, SERVICES, LLM_ENV

DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "docker-compose.yml"
REDIS_CONF = DOCKER / "redis" / "redis.conf"
DEV_REDIS_CONF = K8S / "overlays" / "dev" / "redis" / "redis.conf"
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|API_KEY|PRIVATE_KEY|CREDENTIAL|DATABASE_URL|REDIS_URL)", re.I)


# --- Dockerfile -----------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuations joined."""
    text = DOCKERFILE.read_text()
    lines, buf = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment inside a continued instruction
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        lines.append(buf)
        buf = ""
    out = []
    for line in lines:
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def stages() -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(image, stage name, instructions) for each FROM."""
    result = []
    for instr, args in dockerfile_instructions():
        if instr == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            result.append((m.group(1), m.group(2) or "", []))
        elif result:
            result[-1][2].append((instr, args))
    return result


def final_stage_chain() -> list[tuple[str, str, list]]:
    """The final stage and the stages it is built FROM (for SERVICE=journal)."""
    by_name = {name: (image, name, ins) for image, name, ins in stages()}
    chain = [stages()[-1]]
    while True:
        image = chain[-1][0].replace("${SERVICE}", "journal")
        if image not in by_name:
            return chain
        chain.append(by_name[image])


def test_dockerfile_multi_stage():
    st = stages()
    assert len(st) >= 2
    images = [img for img, _, _ in st]
    builder_images = {img for img in images if "rust" in img.lower()} | {
        a.split("=", 1)[1] for i, a in dockerfile_instructions() if i == "ARG" and a.startswith("RUST_IMAGE=")
    }
    assert "rust:1-bookworm" in builder_images
    runtime = {a.split("=", 1)[1] for i, a in dockerfile_instructions() if i == "ARG" and a.startswith("RUNTIME_IMAGE=")}
    assert runtime & {"debian:bookworm-slim"} or any("distroless" in r for r in runtime)


def test_dockerfile_service_arg():
    args = [a for i, a in dockerfile_instructions() if i == "ARG"]
    assert any(re.fullmatch(r"SERVICE(=\w+)?", a) for a in args)
    text = DOCKERFILE.read_text()
    assert '"${SERVICE}-service"' in text or "${SERVICE}-service" in text
    assert "cargo build --release" in text


def test_dockerfile_dependency_layer_cached_separately():
    text = DOCKERFILE.read_text()
    # cargo-chef: the dependency build comes before the sources are copied
    cook = text.index("cargo chef cook")
    copy_src = text.index("COPY . .", text.index("AS builder"))
    assert cook < copy_src


def test_dockerfile_runtime_stages_per_service():
    by_name = {name: ins for _, name, ins in stages()}
    for short, (binary, port) in SERVICES.items():
        ins = by_name[f"runtime-{short}"]
        assert ("EXPOSE", str(port)) in ins
        assert ("ENV", f"PORT={port}") in ins
        assert ("ENTRYPOINT", f'["/usr/local/bin/{binary}"]') in ins
    assert stages()[-1][0] == "runtime-${SERVICE}"


def test_dockerfile_non_root_and_healthcheck():
    chain = final_stage_chain()
    ins = [i for _, _, stage in chain for i in stage]
    users = [a for i, a in ins if i == "USER"]
    assert users, "the runtime image must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    hc = [a for i, a in ins if i == "HEALTHCHECK"]
    assert hc and "/health" in hc[-1] and "/health/" not in hc[-1]
    # the probe tool must exist in the runtime image
    assert "curl" in " ".join(a for i, a in ins if i == "RUN")
    assert any(i == "EXPOSE" for i, _ in ins)


def test_dockerfile_bakes_no_secrets():
    for instr, args in dockerfile_instructions():
        if instr in ("ENV", "ARG"):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split("=")[0]]:
                assert not SECRET_NAME.search(name), f"{instr} {name} would bake a secret into the image"
        if instr == "ENV":
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args):
                assert name in SERVICE_ENV, f"ENV {name} is not a SPEC §2 variable"
        if instr in ("COPY", "ADD"):
            assert ".env" not in args.split(), args


def test_dockerfile_pgo_is_optional_checked_and_shared_by_both_builds():
    """PGO=on builds with pgo/kai.profdata (scripts/pgo); off, the default, needs no profile."""
    ins = dockerfile_instructions()
    assert ("ARG", "PGO=off") in ins
    builder = {name: stage for _, name, stage in stages()}["builder"]
    runs = [a for i, a in builder if i == "RUN"]
    assert ("COPY", "pgo/ /pgo/") in builder
    check = next(a for a in runs if "/pgo/rustflags" in a and "case" in a)
    # the profile is refused unless this rustc made it, and the flags are written once
    assert "rustc -vV | cmp -s - /pgo/kai.profdata.rustc" in check
    assert '-Cprofile-use=/pgo/kai.profdata' in check
    # the dependency layer and the final build: the same RUSTFLAGS and an explicit
    # target (symbol names, hence the profile's matches, depend on both)
    builds = [a for a in runs if "cargo chef cook" in a or "cargo build" in a]
    assert len(builds) == 2
    for a in builds:
        assert 'RUSTFLAGS="$(cat /pgo/rustflags)"' in a, a
        assert '--target "$(cat /pgo/target)"' in a, a
    assert "target/$(cat /pgo/target)/release/${SERVICE}-service" in builds[1]
    # the profile's directory is in the build context, the profile itself not in git
    assert (REPO / "pgo" / "README.md").is_file()
    ignore = (REPO / ".dockerignore").read_text().split()
    assert "pgo/" not in ignore and "pgo" not in ignore
    gitignore = (REPO / ".gitignore").read_text().split()
    assert "/pgo/kai.profdata" in gitignore and "/pgo/kai.profdata.rustc" in gitignore


def test_dockerignore():
    ignore = (REPO / ".dockerignore").read_text().split()
    assert "target/" in ignore or "target" in ignore
    assert ".git/" in ignore or ".git" in ignore
    assert ".env" in ignore
    # the build needs these
    for needed in ("Cargo.toml", "Cargo.lock", "services", "shared", "migrations", "tests"):
        assert needed not in ignore and f"{needed}/" not in ignore


# --- docker-compose -----------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env_of(service: dict) -> dict:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return env


def kai_services() -> dict[str, dict]:
    """compose services that run a Kai binary (servers and migrations)."""
    out = {}
    for name, svc in compose()["services"].items():
        args = (svc.get("build") or {}).get("args", {})
        if args.get("SERVICE") in SERVICES:
            out[name] = svc
    return out


def test_compose_parses_and_has_the_stack():
    svcs = compose()["services"]
    assert {"postgres", "redis", "prometheus", "grafana", *SERVICES} <= svcs.keys()
    assert svcs["postgres"]["image"].startswith("postgres:16")
    assert svcs["redis"]["image"].startswith("redis:7")


def test_compose_postgres_healthcheck():
    hc = compose()["services"]["postgres"]["healthcheck"]["test"]
    assert "pg_isready" in " ".join(hc)


def test_compose_redis_uses_config():
    redis = compose()["services"]["redis"]
    assert any(v.startswith("./redis/redis.conf:") for v in redis["volumes"])
    assert redis["command"][-1] == "/usr/local/etc/redis/redis.conf"


def test_compose_env_names_are_the_contract():
    for name, svc in kai_services().items():
        env = env_of(svc)
        unknown = set(env) - SERVICE_ENV
        assert not unknown, f"{name}: env vars outside SPEC §2: {sorted(unknown)}"
        assert {"DATABASE_URL", "AUTH_VERIFYING_KEYS_FILE"} <= env.keys()
        if svc["build"]["args"]["SERVICE"] != "conversation":
            assert not set(env) & LLM_ENV, f"{name}: LLM_* are conversation-only"


def test_compose_each_service_uses_its_own_postgresql_role():
    """SPEC §7: a server connects as its serving role kai_<service>, its
    migration as kai_<service>_migrate; the roles come from the shipped SQL
    (k8s/postgres/), which the compose PostgreSQL runs on its first start."""
    for name, svc in kai_services().items():
        short = svc["build"]["args"]["SERVICE"]
        role = f"kai_{short}_migrate" if name.endswith("-migrate") else f"kai_{short}"
        url = env_of(svc)["DATABASE_URL"]
        assert url.startswith(f"postgres://{role}:"), f"{name}: {url}"
    mounts = [str(v) for v in compose()["services"]["postgres"]["volumes"]]
    for sql in ("01-roles.sql", "02-database.sql"):
        assert f"../k8s/postgres/{sql}:/docker-entrypoint-initdb.d/{sql}:ro" in mounts
        assert (K8S / "postgres" / sql).is_file()


def test_compose_signing_key_is_an_example_mounted_in_profile_only():
    for name, svc in kai_services().items():
        env = env_of(svc)
        mounts = " ".join(str(v) for v in svc.get("volumes", []))
        assert "verifying" in mounts, f"{name}: no verifying keys mounted"
        holds = "signing" in mounts or "AUTH_SIGNING_KEY_FILE" in env
        assert holds == (name == "profile"), f"{name}: only the profile server holds the signing key"
    for pem in (DOCKER / "keys").glob("*.pem"):
        assert ".example." in pem.name, f"{pem}: committed keys are examples only"


@pytest.mark.parametrize("short", sorted(SERVICES))
def test_compose_service(short):
    binary, port = SERVICES[short]
    svc = compose()["services"][short]
    assert svc["build"]["args"]["SERVICE"] == short
    assert svc["build"]["dockerfile"] == "docker/Dockerfile"
    assert str(env_of(svc)["PORT"]) == str(port)
    published = [str(p) for p in svc["ports"]]
    assert published == [f"127.0.0.1:{port}:{port}"]
    assert str(env_of(svc)["RUN_MIGRATIONS"]) == "false", "the *-migrate service migrates, not the server"
    deps = svc["depends_on"]
    assert deps["postgres"]["condition"] == "service_healthy"
    migrations = [d for d, c in deps.items() if c["condition"] == "service_completed_successfully"]
    assert len(migrations) == 1
    (mig,) = migrations
    mig_svc = compose()["services"][mig]
    assert mig_svc["command"] == ["migrate"]
    assert mig_svc["build"]["args"]["SERVICE"] == short
    assert mig_svc["image"] == svc["image"]
    assert mig_svc["restart"] == "no"
    assert mig_svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Redis is optional: never a health/completion dependency
    redis_dep = deps.get("redis", {"condition": "service_started"})
    assert redis_dep["condition"] == "service_started"
    # drain (30 s) fits in the stop grace period
    assert int(svc["stop_grace_period"].rstrip("s")) > 30


def test_compose_publishes_on_loopback_only():
    for name, svc in compose()["services"].items():
        for p in svc.get("ports", []):
            assert str(p).startswith("127.0.0.1:"), f"{name} publishes {p} on every interface"


def test_compose_prometheus_has_no_lifecycle_api():
    """--web.enable-lifecycle lets anyone who reaches :9090 stop or reload Prometheus."""
    cmd = compose()["services"]["prometheus"]["command"]
    assert not any("enable-lifecycle" in c for c in cmd)
    assert not any("enable-admin-api" in c for c in cmd)


def test_compose_prometheus_and_grafana_mounts():
    svcs = compose()["services"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in svcs["prometheus"]["volumes"]
    vols = svcs["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in vols
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in vols


def test_compose_config_if_docker_compose_available():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose plugin not installed; compose file checked statically above")
    proc = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- redis.conf -----------------------------------------------------------------


def redis_settings(path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition(" ")
            out[key.lower()] = value.strip()
    return out


@pytest.mark.parametrize("path", [REDIS_CONF, DEV_REDIS_CONF], ids=["docker", "k8s-dev"])
def test_redis_conf(path):
    s = redis_settings(path)
    assert s["appendonly"] == "yes"
    assert s["maxmemory"].lower() == "256mb"
    assert s["maxmemory-policy"] == "volatile-lru"


def test_dev_redis_conf_matches_docker():
    assert redis_settings(DEV_REDIS_CONF) == redis_settings(REDIS_CONF)


def test_binaries_cover_services():
    assert set(BINARIES) == {b for b, _ in SERVICES.values()}
