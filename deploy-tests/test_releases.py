"""The operator's ordinary changes apply over the running release (SPEC §8
"Releases" and the weekly changes).

`kubectl apply` fails ("field is immutable") when an object keeps its kind and
name while changing a field the API server refuses to change: a Job's spec
(its pod template above all), a workload's selector, a Service's clusterIP, a
RoleBinding's roleRef, an immutable ConfigMap's data, ... . Each test copies
k8s/, renders an overlay as committed (the running release), makes ONE change
to the copy exactly as an operator makes it, renders again, and checks every
object the two renders share:

  - a new image tag (`kustomize edit set image`, one service or all three)
  - a configuration value (DB_POOL_SIZE in the overlay's kai-config, and a
    value in the base's config/common.env)
  - a key rotation's first step (a public key appended to the verifying keys,
    k8s/README.md "Configuration and secrets")
  - a CA bundle replaced (prod's tls/postgres-ca.pem)

The migration Jobs carry a hash of their own content in their name
(k8s/base/migrations/kustomization.yaml): a new image is a new Job, anything
else leaves the Jobs exactly as they were (no migration re-runs for a config
change). `kustomize edit set image` is run when a `kustomize` binary is on
PATH; otherwise the same edit (the `images:` entry's newName/newTag) is made
to the YAML here, which is what that command writes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from conftest import kubectl, objects, render
from contract import BINARIES, K8S, OVERLAYS

NEXT_TAG = "9.8.7"
# A second Ed25519 public key (its private half was thrown away): what an
# operator appends to the verifying keys before switching the signing key.
NEW_PUBLIC_KEY = """-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAcz80MHnJKugETRhD/2lBo6qMFVXlEOcw2IPqTY3q27w=
-----END PUBLIC KEY-----
"""
# Secrets prod expects to exist already (created out of band, k8s/README.md).
OUT_OF_BAND_SECRETS = {
    "kai-secrets",
    "kai-migrate-secrets",
    "kai-signing-key",
    "kai-llm-secrets",
    "kai-journal-credentials",
    "kai-conversation-credentials",
    "kai-profile-credentials",
}


def container(o: dict) -> dict:
    return o["spec"]["template"]["spec"]["containers"][0]


def render_dir(path: Path) -> list[dict]:
    proc = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def key(o: dict) -> tuple:
    return (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])


def immutable_part(o: dict) -> object:
    """The fields of `o` that the API server refuses to change on apply."""
    spec = o.get("spec", {})
    kind = o["kind"]
    if kind == "Job":
        # template, selector, completions, completionMode, ...: a Job is in
        # effect immutable (the few mutable fields are not worth the risk)
        return spec
    if kind in ("Deployment", "ReplicaSet", "DaemonSet"):
        return spec.get("selector")
    if kind == "StatefulSet":
        return (spec.get("selector"), spec.get("serviceName"), spec.get("volumeClaimTemplates"),
                spec.get("podManagementPolicy"))
    if kind == "Service":
        return (spec.get("clusterIP"), spec.get("clusterIPs"))
    if kind in ("RoleBinding", "ClusterRoleBinding"):
        return o.get("roleRef")
    if kind in ("ConfigMap", "Secret") and o.get("immutable"):
        return (o.get("data"), o.get("stringData"), o.get("binaryData"))
    if kind == "PersistentVolumeClaim":
        return {k: v for k, v in spec.items() if k != "resources"}
    return None


# --- the operator's changes --------------------------------------------------------


def set_image(overlay_dir: Path, image: str, tag: str) -> None:
    """`kustomize edit set image <image>=<newName>:<tag>` in the overlay."""
    kust = overlay_dir / "kustomization.yaml"
    doc = yaml.safe_load(kust.read_text())
    entry = next(i for i in doc["images"] if i["name"] == image)
    new_name = entry.get("newName", image)
    binary = shutil.which("kustomize")
    if binary:
        subprocess.run([binary, "edit", "set", "image", f"{image}={new_name}:{tag}"],
                       cwd=overlay_dir, check=True, capture_output=True, timeout=60)
        return
    entry["newTag"] = tag
    kust.write_text(yaml.safe_dump(doc, sort_keys=False))


def set_config_literal(overlay_dir: Path, name: str, value: str) -> None:
    """Edit `NAME=value` in the overlay's kai-config generator."""
    kust = overlay_dir / "kustomization.yaml"
    text = kust.read_text()
    new, n = re.subn(rf"(- {name}=)\S+", rf"\g<1>{value}", text)
    assert n == 1, f"{kust}: no single {name}= literal"
    kust.write_text(new)


def verifying_keys_file(root: Path, overlay: str) -> Path:
    """The file the overlay's kai-verifying-keys is generated from."""
    doc = yaml.safe_load((root / overlay / "kustomization.yaml").read_text())
    for gen in doc.get("configMapGenerator", []):
        if gen["name"] == "kai-verifying-keys" and gen.get("behavior") == "replace":
            (spec,) = gen["files"]
            return root / overlay / spec.split("=", 1)[1]
    return root / "base" / "config" / "verifying-keys.pem"


@dataclass(frozen=True)
class Change:
    name: str
    apply: Callable[[Path, str], None]
    applies_to: Callable[[str], bool] = lambda overlay: True
    # services whose image (and so migration Job) changes
    images: tuple[str, ...] = ()


def _image_all(root: Path, overlay: str) -> None:
    for b in BINARIES:
        set_image(root / overlay, f"kai/{b}", NEXT_TAG)


def _image_journal(root: Path, overlay: str) -> None:
    set_image(root / overlay, "kai/journal-service", NEXT_TAG)


def _pool_size(root: Path, overlay: str) -> None:
    set_config_literal(root / overlay, "DB_POOL_SIZE", "7")


def _base_config(root: Path, overlay: str) -> None:
    env = root / "base" / "config" / "common.env"
    text = env.read_text()
    assert "\nSLOW_QUERY_THRESHOLD_MS=" in text
    env.write_text(re.sub(r"\nSLOW_QUERY_THRESHOLD_MS=\d+", "\nSLOW_QUERY_THRESHOLD_MS=250", text))


def _add_key(root: Path, overlay: str) -> None:
    f = verifying_keys_file(root, overlay)
    f.write_text(f.read_text().rstrip("\n") + "\n" + NEW_PUBLIC_KEY)


def _replace_ca(root: Path, overlay: str) -> None:
    tls = root / overlay / "tls"
    # another CA certificate in place of the PostgreSQL one
    (tls / "postgres-ca.pem").write_text((tls / "redis-ca.pem").read_text())


def _has_ca_bundles(overlay: str) -> bool:
    return (K8S / overlay / "tls" / "postgres-ca.pem").is_file()


CHANGES = [
    Change("image tag, all services", _image_all, images=tuple(BINARIES)),
    Change("image tag, one service", _image_journal, images=("journal-service",)),
    Change("DB_POOL_SIZE", _pool_size),
    Change("base config value", _base_config),
    Change("public key added", _add_key),
    Change("CA bundle replaced", _replace_ca, applies_to=_has_ca_bundles),
]
CASES = [(f"overlays/{o}", c) for o in OVERLAYS for c in CHANGES if c.applies_to(f"overlays/{o}")]


def test_prod_covers_every_change():
    assert {c.name for o, c in CASES if o == "overlays/prod"} == {c.name for c in CHANGES}


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    """(overlay, change name) -> (before, after), rendered from fresh copies."""
    cache: dict[tuple[str, str], tuple[list[dict], list[dict]]] = {}

    def get(overlay: str, change: Change) -> tuple[list[dict], list[dict]]:
        k = (overlay, change.name)
        if k not in cache:
            root = tmp_path_factory.mktemp("k8s") / "k8s"
            shutil.copytree(K8S, root)
            before = render_dir(root / overlay)
            change.apply(root, overlay)
            cache[k] = (before, render_dir(root / overlay))
        return cache[k]

    return get


@pytest.mark.parametrize("overlay,change", CASES, ids=[f"{o.split('/')[1]}: {c.name}" for o, c in CASES])
def test_change_applies_over_the_running_release(renders, overlay, change):
    before, after = renders(overlay, change)
    assert before != after, f"{change.name}: the edit changed nothing in k8s/{overlay}"
    b = {key(o): o for o in before}
    a = {key(o): o for o in after}
    for k in b.keys() & a.keys():
        assert immutable_part(b[k]) == immutable_part(a[k]), (
            f"{overlay}, {change.name}: {k} keeps its name but changes an immutable field: "
            "`kubectl apply -k` would fail"
        )
    # What disappears is only superseded: hash-named ConfigMaps and Jobs (apply
    # leaves the old ones; the Jobs' TTL removes theirs).
    for k in b.keys() - a.keys():
        assert k[0] in ("ConfigMap", "Job"), f"{overlay}, {change.name}: {k} vanished"


def _jobs(objs: list[dict]) -> dict[str, dict]:
    """binary -> its migration Job."""
    out = {}
    for o in objs:
        if o["kind"] == "Job":
            out[container(o)["command"][0]] = o
    assert set(out) == set(BINARIES)
    return out


def _deployments(objs: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] in BINARIES}


@pytest.mark.parametrize("overlay,change", CASES, ids=[f"{o.split('/')[1]}: {c.name}" for o, c in CASES])
def test_change_does_what_it_should(renders, overlay, change):
    """A new image: that service's pods roll and its migration Job is a new
    one with the new image. Anything else: the pods roll (hash-named
    ConfigMaps), the migration Jobs stay exactly as they were."""
    before, after = renders(overlay, change)
    jb, ja = _jobs(before), _jobs(after)
    db, da = _deployments(before), _deployments(after)
    for binary in BINARIES:
        if binary in change.images:
            assert container(da[binary])["image"].endswith(f":{NEXT_TAG}")
            assert container(ja[binary])["image"] == container(da[binary])["image"]
            assert ja[binary]["metadata"]["name"] != jb[binary]["metadata"]["name"], (
                f"{binary}: a new image must be a new migration Job"
            )
        else:
            assert ja[binary] == jb[binary], f"{binary}: {change.name} must leave its migration Job alone"
        if binary in change.images or not change.images:
            assert da[binary]["spec"]["template"] != db[binary]["spec"]["template"], (
                f"{binary}: {change.name} must roll its pods"
            )
        else:
            assert da[binary] == db[binary]


def test_migration_jobs_are_named_after_their_content(overlay):
    for binary, job in _jobs(list(render(overlay))).items():
        name = job["metadata"]["name"]
        assert re.fullmatch(rf"{binary}-migrate-[a-z0-9]{{10}}", name), name
        assert len(name) <= 63, "a Job's name becomes a label value (63 characters at most)"


def test_rendering_is_deterministic(overlay, tmp_path):
    """The same commit always gives the same Job names (re-applying is a no-op)."""
    root = tmp_path / "k8s"
    shutil.copytree(K8S, root)
    assert render_dir(root / overlay) == list(render(overlay))


def _references(pod_spec: dict) -> set[tuple[str, str]]:
    refs = set()
    for c in pod_spec.get("initContainers", []) + pod_spec["containers"]:
        for src in c.get("envFrom", []):
            for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if field in src and not src[field].get("optional"):
                    refs.add((kind, src[field]["name"]))
        for e in c.get("env", []):
            vf = e.get("valueFrom", {})
            for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if field in vf and not vf[field].get("optional"):
                    refs.add((kind, vf[field]["name"]))
    for v in pod_spec.get("volumes", []):
        if "configMap" in v and not v["configMap"].get("optional"):
            refs.add(("ConfigMap", v["configMap"]["name"]))
        if "secret" in v and not v["secret"].get("optional"):
            refs.add(("Secret", v["secret"]["secretName"]))
    if pod_spec.get("serviceAccountName"):
        refs.add(("ServiceAccount", pod_spec["serviceAccountName"]))
    return refs


def test_every_pod_reference_resolves(overlay):
    """kustomize rewrites references to hash-named ConfigMaps only in objects it
    does not hash itself: a migration Job that named one would point at a
    ConfigMap that does not exist. Every ConfigMap, Secret and ServiceAccount a
    pod refers to is rendered (or, in prod, is a Secret created out of band)."""
    objs = list(render(overlay))
    present = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for o in objs:
        if o["kind"] not in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            continue
        for ref in _references(o["spec"]["template"]["spec"]):
            if ref in present or (overlay == "overlays/prod" and ref[0] == "Secret" and ref[1] in OUT_OF_BAND_SECRETS):
                continue
            raise AssertionError(f"{o['kind']}/{o['metadata']['name']} refers to {ref}, which is not rendered")


def test_migration_copies_hold_what_the_pods_hold(overlay):
    """The fixed-name ConfigMaps of the migration Jobs are generated from the
    same files as the pods' hash-named ones."""
    cms = {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] == "ConfigMap"}

    def hashed(prefix: str) -> dict:
        (cm,) = [c for n, c in cms.items() if re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", n)]
        return cm["data"]

    assert cms["kai-migrate-verifying-keys"]["data"] == hashed("kai-verifying-keys")
    if "kai-migrate-datastore-ca" in cms:
        assert cms["kai-migrate-datastore-ca"]["data"]["postgres-ca.pem"] == hashed("kai-datastore-ca")["postgres-ca.pem"]
