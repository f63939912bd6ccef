"""Lints migrations/*/*.sql with squawk (run by scripts/check-deploy; tested by
test_migrations.py).

    python3 deploy-tests/lint_migrations.py        # exit 1 on any problem

Config: migrations/squawk.toml (PostgreSQL 16, each migration in a transaction
as the runner applies it, unless its first line is `-- kai:no-transaction`,
shared/src/db/migrate.rs). Released migrations
(migrations/squawk-released.yaml) are pinned by sha256 (refinery checksums
applied migrations: they never change) and may keep the findings listed there
with a reason; every other file must have none.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
MIGRATIONS = REPO / "migrations"
CONFIG = MIGRATIONS / "squawk.toml"
RELEASED = MIGRATIONS / "squawk-released.yaml"
# The first line of a migration the runner applies outside a transaction
# (shared/src/db/migrate.rs, NO_TRANSACTION): CREATE INDEX CONCURRENTLY.
NO_TRANSACTION = "-- kai:no-transaction"


def outside_transaction(sql: Path) -> bool:
    """As the runner decides it: the text, leading whitespace aside, starts
    with the marker."""
    return sql.read_text().lstrip().startswith(NO_TRANSACTION)


def squawk() -> str:
    path = shutil.which("squawk")
    if path is None:
        raise FileNotFoundError("squawk not found (scripts/check-deploy installs squawk-cli from PyPI)")
    return path


def findings(sql: Path, in_transaction: bool = True) -> list[dict]:
    """squawk's findings for one file: [{rule_name, line, message, ...}]."""
    config = CONFIG
    tmp = None
    if not in_transaction:
        tmp = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
        tmp.write(CONFIG.read_text().replace("assume_in_transaction = true", "assume_in_transaction = false"))
        tmp.close()
        config = Path(tmp.name)
    try:
        proc = subprocess.run([squawk(), "--config", str(config), "--reporter", "json", str(sql)],
                              capture_output=True, text=True, timeout=60)
    finally:
        if tmp:
            Path(tmp.name).unlink()
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise RuntimeError(f"squawk failed on {sql}: {proc.stderr or proc.stdout}")
    return json.loads(proc.stdout)


def released() -> dict:
    return yaml.safe_load(RELEASED.read_text())


def problems(files: list[Path] | None = None) -> tuple[list[str], list[str]]:
    """(problems, report lines) for every migration (or `files`)."""
    pinned = released()["released"]
    out, report = [], []
    for sql in files if files is not None else sorted(MIGRATIONS.glob("*/*.sql")):
        rel = sql.relative_to(MIGRATIONS).as_posix() if sql.is_relative_to(MIGRATIONS) else sql.name
        outside = outside_transaction(sql)
        found = findings(sql, in_transaction=not outside)
        code = re.sub(r"--[^\n]*", "", sql.read_text())
        if not outside and re.search(r"\bCONCURRENTLY\b", code, re.I):
            # squawk misses a lone CONCURRENTLY statement; PostgreSQL refuses
            # it inside the runner's transaction
            found.append({"rule_name": "concurrently-needs-no-transaction", "line": 1,
                          "message": f"CONCURRENTLY cannot run in the runner's transaction: "
                                     f"make `{NO_TRANSACTION}` the first line", "help": ""})
        rules = sorted({f["rule_name"] for f in found})
        entry = pinned.get(rel)
        if entry is None:
            for f in found:
                out.append(f"{rel}:{f['line']}: {f['rule_name']}: {f['message']} ({f.get('help', '')})")
            report.append(f"{rel}: {'clean' if not found else ', '.join(rules)} (new: every rule applies)")
            continue
        digest = hashlib.sha256(sql.read_bytes()).hexdigest()
        if digest != entry["sha256"]:
            out.append(f"{rel}: changed since it was released (sha256 {digest}, pinned {entry['sha256']}): "
                       "refinery would refuse every database that applied it. Add a new migration instead "
                       "(if this one was never released, update its sha256 and findings in "
                       "migrations/squawk-released.yaml)")
        accepted = set(entry.get("accepted") or {})
        for f in found:
            if f["rule_name"] not in accepted:
                out.append(f"{rel}:{f['line']}: {f['rule_name']}: {f['message']} (not accepted for this released file)")
        report.append(f"{rel}: released, {len(found)} accepted finding(s) ({', '.join(rules) or 'none'})")
    missing = set(pinned) - {p.relative_to(MIGRATIONS).as_posix() for p in MIGRATIONS.glob("*/*.sql")}
    if files is None and missing:
        out.append(f"migrations/squawk-released.yaml names files that do not exist: {sorted(missing)}")
    return out, report


def main() -> int:
    out, report = problems()
    for line in report:
        print(f"  {line}")
    if out:
        print("squawk: problems in migrations/:", *out, sep="\n  ")
        return 1
    print(f"squawk: {len(report)} migrations checked, no problem")
    return 0


if __name__ == "__main__":
    sys.exit(main())
