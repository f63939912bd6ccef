"""squawk over migrations/*/*.sql (deploy-tests/lint_migrations.py): released
files pinned and their findings accepted with a reason, every rule strict for a
new file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

import lint_migrations as lint

pytestmark = pytest.mark.skipif(shutil.which("squawk") is None,
                                reason="squawk not installed (scripts/check-deploy installs squawk-cli)")


def test_migrations_pass_the_lint():
    problems, report = lint.problems()
    assert not problems, "\n".join(problems)
    assert len(report) == len(list(lint.MIGRATIONS.glob("*/*.sql")))


def test_every_accepted_finding_has_a_reason():
    spec = lint.released()
    assert spec["released"], "no released migration listed"
    for name, entry in spec["released"].items():
        assert len(entry["sha256"]) == 64, name
        for rule, reason in (entry.get("accepted") or {}).items():
            assert isinstance(reason, str) and len(reason.split()) >= 5, f"{name}: {rule} needs a reason"


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    """A copy of migrations/ the lint works on."""
    root = tmp_path / "migrations"
    shutil.copytree(lint.MIGRATIONS, root)
    monkeypatch.setattr(lint, "MIGRATIONS", root)
    monkeypatch.setattr(lint, "CONFIG", root / "squawk.toml")
    monkeypatch.setattr(lint, "RELEASED", root / "squawk-released.yaml")
    return root


def test_a_new_migration_gets_every_rule(scratch):
    """A plain CREATE INDEX on an existing table in a new file: refused; an
    added nullable column passes (the runner sets lock_timeout and
    statement_timeout for every statement, so a file needs neither)."""
    bad = scratch / "journal" / "V90__mood_index.sql"
    bad.write_text("CREATE INDEX journal_entries_mood ON journal.journal_entries (mood);\n")
    problems, _ = lint.problems([bad])
    assert any(": require-concurrent-index-creation:" in p for p in problems), problems
    good = scratch / "journal" / "V91__note.sql"
    good.write_text("ALTER TABLE journal.journal_entries ADD COLUMN note text;\n")
    assert lint.problems([good])[0] == []


def test_concurrently_needs_a_migration_outside_a_transaction(scratch):
    """The runner wraps each migration in a transaction, where CONCURRENTLY
    fails, unless its first line is `-- kai:no-transaction`: linted as such
    (and then squawk wants it rerunnable: IF NOT EXISTS)."""
    index = "CREATE INDEX CONCURRENTLY IF NOT EXISTS journal_entries_mood ON journal.journal_entries (mood);\n"
    f = scratch / "journal" / "V92__mood_index.sql"
    f.write_text(index)
    problems, _ = lint.problems([f])
    assert any("concurrently-needs-no-transaction" in p for p in problems), problems
    f.write_text("ALTER TABLE journal.journal_entries ADD COLUMN note text;\n" + index)
    problems, _ = lint.problems([f])
    assert any("ban-concurrent-index-creation-in-transaction" in p for p in problems), problems
    f.write_text(lint.NO_TRANSACTION + "\n" + index)
    assert lint.problems([f])[0] == []
    f.write_text(lint.NO_TRANSACTION + "\n" + index.replace(" IF NOT EXISTS", ""))
    assert any("prefer-robust-stmts" in p for p in lint.problems([f])[0])


def test_the_marker_is_the_runners():
    """The marker the lint reads is the one the runner reads."""
    runner = (lint.REPO / "shared" / "src" / "db" / "migrate.rs").read_text()
    assert f'pub const NO_TRANSACTION: &str = "{lint.NO_TRANSACTION}";' in runner


def test_a_released_migration_never_changes(scratch):
    f = scratch / "journal" / "V3__purge_index.sql"
    f.write_text("-- squawk-ignore require-concurrent-index-creation\n" + f.read_text())
    problems, _ = lint.problems([f])
    assert any("changed since it was released" in p for p in problems), problems


def test_a_released_migration_keeps_only_its_accepted_findings(scratch):
    spec = yaml.safe_load(lint.RELEASED.read_text())
    spec["released"]["journal/V3__purge_index.sql"]["accepted"].pop("require-concurrent-index-creation")
    lint.RELEASED.write_text(yaml.safe_dump(spec))
    problems, _ = lint.problems([scratch / "journal" / "V3__purge_index.sql"])
    assert any("require-concurrent-index-creation" in p for p in problems), problems
