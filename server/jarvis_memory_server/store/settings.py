"""The settings table: values the database keeps about itself (such as the page-token key)."""

from __future__ import annotations

from typing import Any

import peewee as pw

from jarvis_memory_server.store.backend import Database, compile_sql
from jarvis_memory_server.store.failures import storage_errors
from jarvis_memory_server.store.models import Setting

_READ = compile_sql(Setting.select(Setting.value).where(Setting.key == pw.SQL(":key")))


def read_setting(db: Database, key: str) -> Any:
    """Return the committed value of a setting, or None when there is none."""
    with storage_errors():
        row = db.reader.execute(_READ, {"key": key}).fetchone()
    return None if row is None else row[0]
