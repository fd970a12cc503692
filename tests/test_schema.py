"""The schema: migrations match the models, list queries use indexes, stubs match proto/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import apsw
import pytest
from playhouse.apsw_ext import APSWDatabase

from conftest import ROOT
from jarvis_memory_server.store import migrations, models
from jarvis_memory_server.store.memories import MemoryStore
from jarvis_memory_server.store.sqlite import Database


def describe(conn: apsw.Connection) -> dict[str, object]:
    """Tables with their columns and CHECKs, and indexes with their columns."""
    shape: dict[str, object] = {}
    # Virtual tables (full-text and vector indexes) and their shadow tables are not models.
    virtual = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_schema WHERE sql LIKE 'CREATE VIRTUAL TABLE%'")]
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%'")
        if not any(r[0] == v or r[0].startswith(v + "_") for v in virtual)]
    for table in tables:
        columns = [tuple(r[1:6]) for r in conn.execute(f'PRAGMA table_info("{table}")')]
        sql = conn.execute("SELECT sql FROM sqlite_schema WHERE name=?", (table,)).fetchone()[0]
        checks = sorted(part.split("CHECK", 1)[1].strip() for part in sql.split(", ") if "CHECK" in part)
        autoincrement = "AUTOINCREMENT" in sql
        indexes = {}
        for _, name, unique, *_ in conn.execute(f'PRAGMA index_list("{table}")'):
            indexes[name] = (unique, [r[2] for r in conn.execute(f'PRAGMA index_info("{name}")')])
        shape[table] = (columns, checks, autoincrement, indexes)
    return shape


def test_migrations_produce_exactly_the_models_schema(tmp_path: Path) -> None:
    migrated = Database(tmp_path / "migrated.db")
    migrated.open()
    from_models = APSWDatabase(str(tmp_path / "models.db"))
    models.database_proxy.initialize(from_models)
    from_models.create_tables(models.ALL_MODELS)
    try:
        assert describe(migrated.conn) == describe(from_models.connection())
        assert migrations.schema_version(migrated.conn) == migrations.LATEST_VERSION
    finally:
        from_models.close()
        migrated.close()


def test_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in migrations.MIGRATIONS] == list(range(1, len(migrations.MIGRATIONS) + 1))


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    db = Database(tmp_path / "plans.db")
    db.open()
    yield MemoryStore(db)
    db.close()


LIST_SHAPES = [
    {},
    {"category": "fact"},
    {"source": "user_explicit"},
    {"subject": "music"},
    {"stale": True},
    {"stale": False},
    {"created_after": 0},
    {"created_before": 10**15},
    {"created_after": 0, "created_before": 10**15},
    {"category": "fact", "stale": False, "subject": "x"},
    {"cursor_at": 5, "cursor_id": 100},
    {"category": "fact", "cursor_at": 5, "cursor_id": 100},
    {"created_after": 0, "stale": True, "cursor_at": 5, "cursor_id": 100},
]


@pytest.mark.parametrize("filters", LIST_SHAPES, ids=[",".join(f) or "none" for f in LIST_SHAPES])
def test_every_list_query_is_served_by_an_index(store: MemoryStore, filters: dict[str, object]) -> None:
    plan = store.explain_list("default", filters, 51)
    assert plan, "no plan"
    for step in plan:
        assert not step.startswith("SCAN"), plan  # a full scan of the table or an index
    assert any(step.startswith("SEARCH") for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan


def test_generated_stubs_match_the_protos() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# What service code must not name: a database driver, Peewee, SQL it runs, or the models.
_STORAGE_IN_SERVICE = re.compile(r"apsw|peewee|execute\(|compile_sql|store\.models")
# Service modules that still import a model class, only for its vocabulary (ROLES, TYPES...):
# the list may shrink, never grow.


def test_service_code_has_no_sql_and_no_driver() -> None:
    """The backend is chosen in the store: service modules hold no SQL and no driver import."""
    service = ROOT / "server" / "jarvis_memory_server" / "service"
    files = sorted(service.glob("*.py"))
    assert files
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _STORAGE_IN_SERVICE.search(line)
    ]
    assert found == [], "\n".join(found)
