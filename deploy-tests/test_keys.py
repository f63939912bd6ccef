"""No committed private key is trusted in production (issue 29, item 6).

The repository holds example key pairs on purpose (the dev overlay's and docker
compose's token-signing key, test fixtures): anyone can sign with them. So a
public key the prod overlay renders — a verifying key in any ConfigMap or
Secret — must not be the public half of a private key committed anywhere in the
repository. This scans every committed file for private keys (PEM, PKCS#8 or
traditional, also indented inside YAML; JWKs with a "d"), derives their public
keys with `cryptography` and compares them with every public key the prod
render holds. A second test proves the check catches the dev example key when
an operator appends it to prod's verifying keys, as the rotation procedure
(k8s/README.md, "Signing keys") appends a key.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import yaml

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from conftest import kubectl, render
from contract import K8S, REPO

PROD = "overlays/prod"
PEM_BLOCK = re.compile(
    r"-----BEGIN ((?:[A-Z]+ )*PRIVATE KEY|PUBLIC KEY)-----\s+(.*?)-----END \1-----", re.S
)
# The dev example key (k8s/overlays/dev/signing-key.example.yaml, kid 5b3d31da55860ed7).
DEV_EXAMPLE_PUBLIC = K8S / "overlays" / "dev" / "keys" / "verifying.example.pem"


def _spki(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _pem_blocks(text: str) -> list[tuple[str, str]]:
    """(label, PEM text) of every block, indentation (YAML block scalars) and
    quoting stripped."""
    found = []
    for m in PEM_BLOCK.finditer(text):
        body = "".join(line.strip().strip("\"'") for line in m.group(2).splitlines())
        body = body.replace("\\n", "")
        lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        found.append((m.group(1), f"-----BEGIN {m.group(1)}-----\n{lines}\n-----END {m.group(1)}-----\n"))
    return found


def _b64url(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _jwk_private(obj) -> list:
    """Private keys among the JWKs in a parsed JSON value (any nesting)."""
    keys = []
    if isinstance(obj, dict):
        if obj.get("kty") == "OKP" and obj.get("crv") == "Ed25519" and "d" in obj:
            keys.append(ed25519.Ed25519PrivateKey.from_private_bytes(_b64url(obj["d"])))
        elif obj.get("kty") == "EC" and "d" in obj:
            curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}[obj["crv"]]
            keys.append(ec.derive_private_key(int.from_bytes(_b64url(obj["d"]), "big"), curve))
        elif obj.get("kty") == "RSA" and "d" in obj:
            n, e = (int.from_bytes(_b64url(obj[k]), "big") for k in ("n", "e"))
            keys.append(rsa.RSAPublicNumbers(e, n).public_key())
        for v in obj.values():
            keys += _jwk_private(v)
    elif isinstance(obj, list):
        for v in obj:
            keys += _jwk_private(v)
    return keys


def private_keys_in(text: str) -> list:
    """The private keys (or, for a JWK RSA key, its public half) in `text`."""
    keys = []
    for label, pem in _pem_blocks(text):
        if label == "PUBLIC KEY":
            continue
        try:
            keys.append(serialization.load_pem_private_key(pem.encode(), password=None))
        except (ValueError, TypeError):
            # encrypted or not a key cryptography reads: not usable as committed
            continue
    if '"d"' in text:
        try:
            keys += _jwk_private(json.loads(text))
        except ValueError:
            pass
    return keys


def committed_files(root: Path) -> list[Path]:
    # Tracked files and new ones not ignored: what is, or is about to be, committed.
    proc = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          cwd=root, capture_output=True, timeout=60)
    if proc.returncode == 0:
        return [root / p for p in proc.stdout.decode().split("\0") if p]
    return [p for p in root.rglob("*") if p.is_file() and ".git" not in p.parts and "target" not in p.parts]


@lru_cache(maxsize=None)
def committed_public_halves() -> dict[bytes, str]:
    """SPKI DER of the public half of every private key committed -> its files."""
    out: dict[bytes, str] = {}
    for f in committed_files(REPO):
        try:
            text = f.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        if "PRIVATE KEY" not in text and '"d"' not in text:
            continue
        for key in private_keys_in(text):
            public = key if not hasattr(key, "public_key") else key.public_key()
            der = _spki(public)
            out[der] = ", ".join(filter(None, [out.get(der), str(f.relative_to(REPO))]))
    return out


def rendered_public_keys(objs) -> list[tuple[str, bytes]]:
    """(where, SPKI DER) of every public key in the rendered ConfigMaps and Secrets."""
    found = []
    for o in objs:
        if o["kind"] not in ("ConfigMap", "Secret"):
            continue
        data = {**o.get("data", {}), **o.get("stringData", {})}
        if o["kind"] == "Secret":
            data = {**{k: base64.b64decode(v).decode(errors="replace") for k, v in o.get("data", {}).items()},
                    **o.get("stringData", {})}
        for key, value in data.items():
            for label, pem in _pem_blocks(str(value)):
                if label == "PUBLIC KEY":
                    public = serialization.load_pem_public_key(pem.encode())
                    found.append((f"{o['kind']}/{o['metadata']['name']}[{key}]", _spki(public)))
    return found


def trusted_committed_keys(objs) -> list[str]:
    """Rendered public keys whose private half is committed: the check's answer."""
    committed = committed_public_halves()
    return [f"{where}: private half in {committed[der]}" for where, der in rendered_public_keys(objs) if der in committed]


def test_the_scan_finds_the_committed_example_keys():
    """The scan is not vacuous: the dev example key (YAML-indented and in
    docker/keys) is found, and the dev overlay does render it."""
    files = ", ".join(committed_public_halves().values())
    assert "k8s/overlays/dev/signing-key.example.yaml" in files
    assert "docker/keys/signing.example.pem" in files
    assert trusted_committed_keys(render("overlays/dev")), "dev trusts its example key"


def test_prod_trusts_no_key_whose_private_half_is_committed():
    assert rendered_public_keys(render(PROD)), "prod renders its verifying keys"
    assert not trusted_committed_keys(render(PROD))


def test_the_base_trusts_no_committed_key_and_holds_no_private_key():
    assert not trusted_committed_keys(render("base"))
    for o in render("base"):
        assert "PRIVATE KEY" not in json.dumps(o), f"{o['kind']}/{o['metadata']['name']} holds a private key"


def test_the_check_fails_when_prod_appends_the_dev_example_key(tmp_path):
    """The operator's real action, done wrong: the example public key appended
    to prod's verifying keys (as a rotation appends a key) is caught."""
    root = tmp_path / "k8s"
    shutil.copytree(K8S, root)
    prod_keys = root / "overlays" / "prod" / "verifying-keys.pem"
    prod_keys.write_text(prod_keys.read_text().rstrip("\n") + "\n" + DEV_EXAMPLE_PUBLIC.read_text())
    proc = subprocess.run([kubectl(), "kustomize", str(root / PROD)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = trusted_committed_keys([d for d in yaml.safe_load_all(proc.stdout) if d])
    assert found and all("kai-verifying-keys" in f or "kai-migrate-verifying-keys" in f for f in found), found
    assert any("signing-key.example.yaml" in f or "signing.example.pem" in f for f in found), found


def test_the_check_fails_on_a_committed_pkcs8_key_in_any_form(tmp_path):
    """A private key pasted elsewhere (indented in YAML, as JSON Web Key) is
    still recognised: the scan parses, it does not pattern-match one file."""
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    indented = "stringData:\n  k: |\n" + "".join(f"    {l}\n" for l in pem.splitlines())
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    jwk = json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "",
                                "d": base64.urlsafe_b64encode(raw).decode().rstrip("=")}]})
    want = _spki(key.public_key())
    for text in (pem, indented, jwk):
        assert [_spki(k.public_key()) for k in private_keys_in(text)] == [want], text


def test_the_check_passes_when_prod_appends_a_key_of_its_own(tmp_path):
    """The rotation's first step done right (a key whose private half is not in
    the repository) passes, and the render still holds it."""
    from test_releases import NEW_PUBLIC_KEY

    root = tmp_path / "k8s"
    shutil.copytree(K8S, root)
    prod_keys = root / "overlays" / "prod" / "verifying-keys.pem"
    prod_keys.write_text(prod_keys.read_text().rstrip("\n") + "\n" + NEW_PUBLIC_KEY)
    proc = subprocess.run([kubectl(), "kustomize", str(root / PROD)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    objs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    new = _spki(serialization.load_pem_public_key(NEW_PUBLIC_KEY.encode()))
    assert new in {der for _, der in rendered_public_keys(objs)}
    assert not trusted_committed_keys(objs)
