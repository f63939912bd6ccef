"""Release N+1 applies over release N (SPEC §8 "Releases").

`kubectl apply` fails when an object of the same kind and name changes a
field the API server treats as immutable (a Job's pod template, a workload's
selector, ...). The test renders the prod overlay as it is (release N) and a
copy bumped to the next release exactly as a release does it (the image tag
and the migration Jobs' nameSuffix), then checks every object the two share:
its immutable fields are equal. The migration Jobs are new objects in N+1 (a
new name), so the new image's migrations run once, in a Job of their own.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import kubectl, objects
from contract import BINARIES, K8S

PROD = "overlays/prod"
NEXT_TAG = "9.8.7"


def _container(o: dict) -> dict:
    return o["spec"]["template"]["spec"]["containers"][0]


def _tag(image: str) -> str:
    return image.rsplit(":", 1)[1]


def prod_tag() -> str:
    tags = {_tag(_container(o)["image"]) for kind in ("Deployment", "Job") for o in objects(PROD, kind)}
    assert len(tags) == 1, f"one release tag for every prod image, got {tags}"
    return tags.pop()


def test_migration_jobs_are_named_after_the_release():
    suffix = "-" + prod_tag().replace(".", "-")
    jobs = objects(PROD, "Job")
    assert {j["metadata"]["name"] for j in jobs} == {f"{b}-migrate{suffix}" for b in BINARIES}, (
        "k8s/overlays/prod/migrations nameSuffix must be the image tag (dots as dashes)"
    )
    for j in jobs:
        assert len(j["metadata"]["name"]) <= 63, "a Job name becomes a label value (63 characters at most)"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", j["metadata"]["name"])


def bump_release(root: Path, old: str, new: str) -> None:
    """What a release does to the prod overlay: new image tag, new Job suffix."""
    kust = root / "overlays/prod/kustomization.yaml"
    text = kust.read_text()
    assert text.count(f'newTag: "{old}"') == len(BINARIES)
    kust.write_text(text.replace(f'newTag: "{old}"', f'newTag: "{new}"'))
    mig = root / "overlays/prod/migrations/kustomization.yaml"
    old_suffix, new_suffix = old.replace(".", "-"), new.replace(".", "-")
    text = mig.read_text()
    assert f"nameSuffix: -{old_suffix}\n" in text
    mig.write_text(text.replace(f"nameSuffix: -{old_suffix}\n", f"nameSuffix: -{new_suffix}\n"))


def render_dir(path: Path) -> list[dict]:
    proc = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> tuple[list[dict], list[dict]]:
    root = tmp_path_factory.mktemp("release") / "k8s"
    shutil.copytree(K8S, root)
    # the monitoring component links runbooks by path only; nothing outside k8s/ is read
    n = render_dir(root / "overlays/prod")
    bump_release(root, prod_tag(), NEXT_TAG)
    n1 = render_dir(root / "overlays/prod")
    return n, n1


def key(o: dict) -> tuple:
    return (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])


def immutable_part(o: dict) -> object:
    """The fields of `o` that the API server refuses to change on apply."""
    spec = o.get("spec", {})
    kind = o["kind"]
    if kind == "Job":
        # selector, template, completionMode, ...: a Job is in effect immutable
        return spec
    if kind in ("Deployment", "ReplicaSet", "DaemonSet"):
        return spec.get("selector")
    if kind == "StatefulSet":
        return (spec.get("selector"), spec.get("serviceName"), spec.get("volumeClaimTemplates"),
                spec.get("podManagementPolicy"))
    if kind == "Service":
        return (spec.get("clusterIP"), spec.get("clusterIPs"))
    if kind in ("ConfigMap", "Secret") and o.get("immutable"):
        return (o.get("data"), o.get("stringData"), o.get("binaryData"))
    if kind == "PersistentVolumeClaim":
        return spec
    return None


def test_release_n_plus_one_applies_over_release_n(releases):
    n, n1 = releases
    before = {key(o): o for o in n}
    after = {key(o): o for o in n1}
    for k in before.keys() & after.keys():
        assert immutable_part(before[k]) == immutable_part(after[k]), f"{k}: immutable field changed between releases"
    # the release really changed something: images, and new migration Jobs
    images = {_container(o)["image"] for o in n1 if o["kind"] == "Deployment"}
    assert all(i.endswith(f":{NEXT_TAG}") for i in images), images
    new_jobs = {k for k in after.keys() - before.keys() if k[0] == "Job"}
    assert len(new_jobs) == len(BINARIES), "each release brings its own migration Jobs"
    for k in new_jobs:
        assert _container(after[k])["image"].endswith(f":{NEXT_TAG}")
    # nothing else appears or disappears
    assert {k for k in after.keys() ^ before.keys() if k[0] != "Job"} == set()
