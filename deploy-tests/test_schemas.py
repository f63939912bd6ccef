"""Each service's SQL stays in its own schema (SPEC §7 "Least privilege"): its
serving role has no USAGE on another schema (k8s/postgres/02-database.sql), so
a query that named one would fail in production. The e2e suite runs every route
with those roles; this catches a reference on a path no test takes."""

from __future__ import annotations

import re

import pytest

from contract import REPO, SERVICES


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_services_code_and_migrations_name_no_other_schema(service):
    others = sorted(set(SERVICES) - {service})
    pattern = re.compile(rf"\b({'|'.join(others)})\.[a-z_]+\b")
    files = list((REPO / "services" / service / "src").rglob("*.rs"))
    files += list((REPO / "migrations" / service).glob("*.sql"))
    assert files
    found = [
        f"{f.relative_to(REPO)}:{n}: {m.group(0)}"
        for f in files
        for n, line in enumerate(f.read_text().splitlines(), 1)
        for m in pattern.finditer(line)
    ]
    assert not found, found
