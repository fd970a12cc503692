"""Schema migrations, applied at start-up, each in its own transaction.

The schema version is SQLite's ``PRAGMA user_version``: transactional, and readable before any
table exists (PostgreSQL: the table jarvis_memory_schema, see postgres.py). Each migration is
frozen SQL; tests/test_migrations.py fails when a migrated database differs from what the
Peewee models in models.py describe, so a model change cannot land without its migration.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import apsw
import peewee as pw

from jarvis_memory_server.errors import StartupError

log = logging.getLogger("jarvis_memory.migrations")


@dataclass(frozen=True)
class Migration:
    """One step of the schema: version N is reached by running ``statements`` on version N-1.

    On PostgreSQL a new database gets the schema of the models at LATEST_VERSION at once
    (postgres.py); a database made at an older version runs the ``postgres`` statements of
    each newer migration (every migration after version 11 needs them).
    """

    version: int
    name: str
    statements: tuple[str, ...]
    postgres: tuple[str, ...] = ()


def _text_index(table: str, columns: tuple[str, ...]) -> tuple[str, ...]:
    """DDL of an FTS5 index over ``columns`` of ``table``, kept in step by triggers.

    Frozen like every migration: a different index needs a new migration, not a change here.
    The index is "external content": it stores only the inverted index, and reads the text
    from ``table`` (by rowid = id) for snippets and rebuilds. The triggers run in the
    transaction of each write, so the index can never disagree with a committed row.
    """
    fts = f"{table}_fts"
    names = ", ".join(columns)
    new = ", ".join(f"new.{c}" for c in columns)
    old = ", ".join(f"old.{c}" for c in columns)
    delete = (f"INSERT INTO {fts}({fts}, rowid, {names}) VALUES ('delete', old.id, {old});")
    insert = f"INSERT INTO {fts}(rowid, {names}) VALUES (new.id, {new});"
    return (
        f"CREATE VIRTUAL TABLE {fts} USING fts5({names}, content='{table}', "
        f"content_rowid='id', tokenize='porter unicode61 remove_diacritics 2')",
        # Per-term document counts, to bound the work of queries made of very common words.
        f"CREATE VIRTUAL TABLE {fts}_terms USING fts5vocab({fts}, 'row')",
        f"CREATE TRIGGER {fts}_insert AFTER INSERT ON {table} BEGIN {insert} END",
        f"CREATE TRIGGER {fts}_delete AFTER DELETE ON {table} BEGIN {delete} END",
        f"CREATE TRIGGER {fts}_update AFTER UPDATE OF {names} ON {table} "
        f"BEGIN {delete} {insert} END",
        f"INSERT INTO {fts}({fts}) VALUES ('rebuild')",  # index the rows already there
    )



def _namespaced_text_index(table: str, columns: tuple[str, ...]) -> tuple[str, ...]:
    """DDL replacing _text_index's index of ``table`` by one whose terms carry the namespace.

    Frozen like every migration. The tokenizer (store/fulltext.py) reads each value's
    namespace from its FTS5 locale: every value is wrapped in fts5_locale(), by the view that
    is the index's external content (for indexing, rebuilds and integrity checks) and by the
    triggers. New rows are only noted in ``<index>_pending``, and indexed at commit
    (store/fulltext.py); updates and deletes remove the old terms of rows already indexed.
    """
    fts, text, pending = f"{table}_fts", f"{table}_search_text", f"{table}_fts_pending"
    names = ", ".join(columns)
    old_values = ", ".join(f"fts5_locale(old.namespace, old.{c})" for c in columns)
    remove_indexed = (
        f"INSERT INTO {fts}({fts}, rowid, {names}) SELECT 'delete', old.id, {old_values} "
        f"WHERE NOT EXISTS (SELECT 1 FROM {pending} WHERE id = old.id);"
    )
    view_columns = ", ".join(f"fts5_locale(namespace, {c}) AS {c}" for c in columns)
    return (
        f"DROP TRIGGER {fts}_insert",
        f"DROP TRIGGER {fts}_delete",
        f"DROP TRIGGER {fts}_update",
        f"DROP TABLE {fts}_terms",
        f"DROP TABLE {fts}",
        f"CREATE VIEW {text} AS SELECT id, {view_columns} FROM {table}",
        f"CREATE VIRTUAL TABLE {fts} USING fts5({names}, content='{text}', content_rowid='id', "
        "locale=1, tokenize='namespaced porter unicode61 remove_diacritics 2')",
        f"CREATE VIRTUAL TABLE {fts}_terms USING fts5vocab({fts}, 'row')",
        f'CREATE TABLE "{pending}" ("id" INTEGER NOT NULL PRIMARY KEY)',
        f"CREATE TRIGGER {fts}_insert AFTER INSERT ON {table} "
        f"BEGIN INSERT INTO {pending}(id) VALUES (new.id); END",
        f"CREATE TRIGGER {fts}_delete AFTER DELETE ON {table} "
        f"BEGIN {remove_indexed} DELETE FROM {pending} WHERE id = old.id; END",
        f"CREATE TRIGGER {fts}_update AFTER UPDATE OF namespace, {names} ON {table} "
        f"BEGIN {remove_indexed} INSERT OR IGNORE INTO {pending}(id) VALUES (new.id); END",
        f"INSERT INTO {fts}({fts}) VALUES ('rebuild')",
    )


# Migration 12's partial indexes, the same on both backends.
_LIFECYCLE_INDEXES = (
    'CREATE INDEX "memories_expires_at" ON "memories" ("expires_at") '
    'WHERE ("expires_at" IS NOT NULL)',
    'CREATE INDEX "memories_dated_namespace" ON "memories" ("namespace") WHERE '
    '(((("superseded_by" IS NOT NULL) OR ("valid_from" IS NOT NULL)) OR '
    '("valid_to" IS NOT NULL)) OR ("expires_at" IS NOT NULL))',
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "memories and the change log",
        (
            'CREATE TABLE "changes" ("revision" INTEGER NOT NULL PRIMARY KEY, '
            '"namespace" TEXT NOT NULL, "kind" TEXT NOT NULL, "key" TEXT NOT NULL, '
            "\"operation\" TEXT NOT NULL CHECK (operation IN ('create', 'update', 'delete')), "
            '"created_at" INTEGER NOT NULL)',
            'CREATE TABLE "memories" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
            '"namespace" TEXT NOT NULL, "content" TEXT NOT NULL, "content_hash" BLOB NOT NULL, '
            "\"category\" TEXT NOT NULL CHECK (category IN ('preference', 'fact', 'pattern')), "
            "\"source\" TEXT NOT NULL CHECK (source IN ('user_explicit', 'agent_inferred')), "
            '"subject" TEXT NOT NULL, "attributes" TEXT, "stale" INTEGER NOT NULL, '
            '"created_at" INTEGER NOT NULL, "updated_at" INTEGER NOT NULL, '
            '"last_accessed_at" INTEGER, "restated_count" INTEGER NOT NULL, '
            '"revision" INTEGER NOT NULL)',
            'CREATE UNIQUE INDEX "memories_namespace_content_hash" '
            'ON "memories" ("namespace", "content_hash")',
            'CREATE INDEX "memories_namespace_created_at" '
            'ON "memories" ("namespace", "created_at")',
            'CREATE INDEX "memories_namespace_category_created_at" '
            'ON "memories" ("namespace", "category", "created_at")',
            'CREATE INDEX "memories_namespace_subject_created_at" '
            'ON "memories" ("namespace", "subject", "created_at")',
            'CREATE INDEX "memories_stale_namespace_created_at" '
            'ON "memories" ("namespace", "created_at") WHERE ("stale" = 1)',
        ),
    ),
    Migration(
        2,
        "sessions, messages and session events",
        (
            'CREATE TABLE "sessions" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
            '"namespace" TEXT NOT NULL, "session_id" TEXT NOT NULL, '
            '"state" TEXT NOT NULL CHECK (state IN (\'active\', \'ended\')), '
            '"started_at" INTEGER NOT NULL, "ended_at" INTEGER, '
            '"end_trigger" TEXT CHECK (end_trigger IN (\'timeout\', \'explicit\', '
            '\'client_closed\')), "summary" TEXT NOT NULL, '
            '"last_activity_at" INTEGER NOT NULL, "message_count" INTEGER NOT NULL, '
            '"metadata" TEXT, "revision" INTEGER NOT NULL)',
            'CREATE UNIQUE INDEX "sessions_namespace_session_id" ON "sessions" ("namespace", '
            '"session_id")',
            'CREATE INDEX "sessions_namespace_started_at" ON "sessions" ("namespace", '
            '"started_at")',
            'CREATE INDEX "sessions_namespace_last_activity_at" ON "sessions" ("namespace", '
            '"last_activity_at")',
            'CREATE INDEX "sessions_namespace_state_started_at" ON "sessions" ("namespace", '
            '"state", "started_at")',
            'CREATE INDEX "sessions_namespace_state_last_activity_at" ON "sessions" ("namespace", '
            '"state", "last_activity_at")',
            'CREATE INDEX "sessions_state_last_activity_at" ON "sessions" ("state", '
            '"last_activity_at")',
            'CREATE TABLE "messages" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
            '"namespace" TEXT NOT NULL, "session_ref" INTEGER NOT NULL, '
            '"sequence" INTEGER NOT NULL, "role" TEXT NOT NULL CHECK (role IN (\'user\', '
            '\'assistant\', \'system\', \'tool\')), "content" TEXT NOT NULL, '
            '"model" TEXT NOT NULL, "tokens_used" INTEGER NOT NULL, "tool_calls" TEXT, '
            '"created_at" INTEGER NOT NULL, "revision" INTEGER NOT NULL, '
            'FOREIGN KEY ("session_ref") REFERENCES "sessions" ("id") ON DELETE CASCADE)',
            'CREATE UNIQUE INDEX "messages_session_ref_sequence" ON "messages" ("session_ref", '
            '"sequence")',
            'CREATE TABLE "session_events" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
            '"namespace" TEXT NOT NULL, "session_ref" INTEGER NOT NULL, '
            '"event_type" TEXT NOT NULL, "data" TEXT, "logged_at" INTEGER NOT NULL, '
            '"revision" INTEGER NOT NULL, '
            'FOREIGN KEY ("session_ref") REFERENCES "sessions" ("id") ON DELETE CASCADE)',
            'CREATE INDEX "session_events_session_ref_id" ON "session_events" ("session_ref", '
            '"id")',
            'CREATE INDEX "session_events_namespace_logged_at" ON "session_events" ("namespace", '
            '"logged_at")',
        ),
    ),
    Migration(
        3,
        "API tokens",
        (
            'CREATE TABLE "api_tokens" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
            '"token_id" TEXT NOT NULL, "secret_sha256" BLOB NOT NULL, '
            '"role" TEXT NOT NULL CHECK (role IN (\'reader\', \'writer\', \'admin\')), '
            '"namespaces" TEXT NOT NULL, "label" TEXT NOT NULL, '
            '"created_at" INTEGER NOT NULL, "revoked_at" INTEGER)',
            'CREATE UNIQUE INDEX "api_tokens_token_id" ON "api_tokens" ("token_id")',
        ),
    ),
    Migration(
        4,
        "events, snapshots and preferences",
        (
            'CREATE TABLE "events" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
            '"namespace" TEXT NOT NULL, "occurred_at" INTEGER NOT NULL, '
            '"type" TEXT NOT NULL CHECK (type IN (\'alert\', \'action\', \'status\', \'metric\')), '
            '"severity" INTEGER NOT NULL CHECK (severity BETWEEN 1 AND 4), '
            '"source" TEXT NOT NULL CHECK (source IN (\'monitor\', \'user\', \'agent\', '
            '\'system\')), "node" TEXT NOT NULL, "summary" TEXT NOT NULL, "details" TEXT, '
            '"resolved" INTEGER NOT NULL, "resolved_at" INTEGER, '
            '"resolved_by" TEXT NOT NULL, "revision" INTEGER NOT NULL)',
            'CREATE INDEX "events_namespace_occurred_at" ON "events" ("namespace", '
            '"occurred_at")',
            'CREATE INDEX "events_namespace_node_occurred_at" ON "events" ("namespace", '
            '"node", "occurred_at")',
            'CREATE INDEX "events_unresolved_namespace_occurred_at" ON "events" ("namespace", '
            '"occurred_at") WHERE ("resolved" = 0)',
            'CREATE TABLE "snapshots" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
            '"namespace" TEXT NOT NULL, "kind" TEXT NOT NULL, "taken_at" INTEGER NOT NULL, '
            '"data" TEXT NOT NULL, "revision" INTEGER NOT NULL)',
            'CREATE INDEX "snapshots_namespace_kind_taken_at" ON "snapshots" ("namespace", '
            '"kind", "taken_at")',
            'CREATE INDEX "snapshots_taken_at" ON "snapshots" ("taken_at")',
            'CREATE TABLE "preferences" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
            '"namespace" TEXT NOT NULL, "key" TEXT NOT NULL, "value" TEXT NOT NULL, '
            '"created_at" INTEGER NOT NULL, "updated_at" INTEGER NOT NULL, '
            '"revision" INTEGER NOT NULL)',
            'CREATE UNIQUE INDEX "preferences_namespace_key" ON "preferences" ("namespace", '
            '"key")',
        ),
    ),
    Migration(
        5,
        "agent state",
        (
            'CREATE TABLE "state" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
            '"namespace" TEXT NOT NULL, "key" TEXT NOT NULL, "value" TEXT NOT NULL, '
            '"version" INTEGER NOT NULL, "updated_at" INTEGER NOT NULL, '
            '"expires_at" INTEGER, "revision" INTEGER NOT NULL)',
            'CREATE UNIQUE INDEX "state_namespace_key" ON "state" ("namespace", "key")',
            'CREATE INDEX "state_expires_at" ON "state" ("expires_at") '
            'WHERE ("expires_at" IS NOT NULL)',
        ),
    ),
    Migration(
        6,
        "the append-only audit trail: tool calls, planning cycles, decisions",
        (
            'CREATE TABLE "tool_calls" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
            '"namespace" TEXT NOT NULL, "parent_id" INTEGER, '
            '"status" TEXT NOT NULL CHECK (status IN (\'started\', \'succeeded\', \'failed\', '
            '\'cancelled\')), "tool" TEXT NOT NULL, "payload" TEXT, "error" TEXT NOT NULL, '
            '"duration_ms" INTEGER, "session_id" TEXT NOT NULL, "cycle_id" INTEGER, '
            '"created_at" INTEGER NOT NULL, "revision" INTEGER NOT NULL, '
            'FOREIGN KEY ("parent_id") REFERENCES "tool_calls" ("id"))',
            'CREATE UNIQUE INDEX "tool_calls_completion" ON "tool_calls" ("parent_id") '
            'WHERE ("parent_id" IS NOT NULL)',
            'CREATE INDEX "tool_calls_started_namespace_created_at" ON '
            '"tool_calls" ("namespace", "created_at") WHERE ("parent_id" IS NULL)',
            'CREATE INDEX "tool_calls_started_namespace_tool_created_at" ON '
            '"tool_calls" ("namespace", "tool", "created_at") WHERE ("parent_id" IS NULL)',
            'CREATE INDEX "tool_calls_started_namespace_cycle_created_at" ON '
            '"tool_calls" ("namespace", "cycle_id", "created_at") WHERE '
            '("parent_id" IS NULL)',
            'CREATE INDEX "tool_calls_started_namespace_session_created_at" ON '
            '"tool_calls" ("namespace", "session_id", "created_at") WHERE '
            '("parent_id" IS NULL)',
            'CREATE TABLE "planning_cycles" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
            '"namespace" TEXT NOT NULL, "parent_id" INTEGER, '
            '"status" TEXT NOT NULL CHECK (status IN (\'started\', \'succeeded\', \'failed\', '
            '\'cancelled\')), "payload" TEXT, "created_at" INTEGER NOT NULL, '
            '"revision" INTEGER NOT NULL, '
            'FOREIGN KEY ("parent_id") REFERENCES "planning_cycles" ("id"))',
            'CREATE UNIQUE INDEX "planning_cycles_completion" ON "planning_cycles" '
            '("parent_id") WHERE ("parent_id" IS NOT NULL)',
            'CREATE INDEX "planning_cycles_started_namespace_created_at" ON '
            '"planning_cycles" ("namespace", "created_at") WHERE ("parent_id" IS NULL)',
            'CREATE TABLE "decisions" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
            '"namespace" TEXT NOT NULL, "cycle_id" INTEGER, "reasoning" TEXT, '
            '"decision" TEXT NOT NULL, "created_at" INTEGER NOT NULL, '
            '"revision" INTEGER NOT NULL)',
            'CREATE INDEX "decisions_namespace" ON "decisions" ("namespace")',
            'CREATE INDEX "decisions_namespace_cycle_id" ON "decisions" ("namespace", '
            '"cycle_id")',
            'CREATE TRIGGER "tool_calls_no_update" BEFORE UPDATE ON "tool_calls" BEGIN '
            "SELECT RAISE(ABORT, 'tool_calls is append-only'); END",
            'CREATE TRIGGER "tool_calls_no_delete" BEFORE DELETE ON "tool_calls" BEGIN '
            "SELECT RAISE(ABORT, 'tool_calls is append-only'); END",
            'CREATE TRIGGER "planning_cycles_no_update" BEFORE UPDATE ON '
            '"planning_cycles" BEGIN SELECT RAISE(ABORT, '
            "'planning_cycles is append-only'); END",
            'CREATE TRIGGER "planning_cycles_no_delete" BEFORE DELETE ON '
            '"planning_cycles" BEGIN SELECT RAISE(ABORT, '
            "'planning_cycles is append-only'); END",
            'CREATE TRIGGER "decisions_no_update" BEFORE UPDATE ON "decisions" BEGIN '
            "SELECT RAISE(ABORT, 'decisions is append-only'); END",
            'CREATE TRIGGER "decisions_no_delete" BEFORE DELETE ON "decisions" BEGIN '
            "SELECT RAISE(ABORT, 'decisions is append-only'); END",
        ),
    ),
    Migration(
        7,
        "the catalog of runtime collections",
        (
            'CREATE TABLE "collections" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
            '"namespace" TEXT NOT NULL, "name" TEXT NOT NULL, "fields" TEXT NOT NULL, '
            '"created_at" INTEGER NOT NULL, "revision" INTEGER NOT NULL)',
            'CREATE UNIQUE INDEX "collections_namespace_name" ON "collections" ("namespace", '
            '"name")',
        ),
    ),
    Migration(
        8,
        "the new resource in each change, for watchers",
        ('ALTER TABLE "changes" ADD COLUMN "resource" TEXT',),
    ),
    Migration(
        9,
        "search: full-text indexes of memories, messages and events; embeddings",
        (
            *_text_index("memories", ("subject", "content", "attributes")),
            *_text_index("messages", ("content",)),
            *_text_index("events", ("summary", "details")),
            'CREATE TABLE "embedding_spaces" ("namespace" TEXT NOT NULL PRIMARY KEY, '
            '"dimension" INTEGER NOT NULL)',
            'CREATE TABLE "memory_embeddings" ("memory_id" INTEGER NOT NULL PRIMARY KEY, '
            '"vector" BLOB NOT NULL, FOREIGN KEY ("memory_id") REFERENCES "memories" ("id") '
            "ON DELETE CASCADE)",
            'CREATE TABLE "message_embeddings" ("message_id" INTEGER NOT NULL PRIMARY KEY, '
            '"vector" BLOB NOT NULL, FOREIGN KEY ("message_id") REFERENCES "messages" ("id") '
            "ON DELETE CASCADE)",
        ),
    ),
    Migration(
        10,
        "search: one set of full-text index terms per namespace",
        (
            *_namespaced_text_index("memories", ("subject", "content", "attributes")),
            *_namespaced_text_index("messages", ("content",)),
            *_namespaced_text_index("events", ("summary", "details")),
        ),
    ),
    Migration(
        11,
        "settings: the database's own secrets, such as the page-token key",
        (
            'CREATE TABLE "settings" ("key" TEXT NOT NULL PRIMARY KEY, "value" BLOB NOT NULL)',
            # 32 random bytes, made once with the database: page tokens carry an HMAC-SHA256
            # under this key (service/common.py), so that a client can neither forge nor edit
            # one. It goes with the file into backups; tokens stay valid after a restore.
            "INSERT INTO \"settings\" (\"key\", \"value\") "
            "VALUES ('page_token_key', randomblob(32))",
        ),
    ),
    Migration(
        12,
        "the memory lifecycle: supersession, validity, expiry, history; real erasure",
        (
            'ALTER TABLE "memories" ADD COLUMN "superseded_by" INTEGER',
            'ALTER TABLE "memories" ADD COLUMN "superseded_at" INTEGER',
            'ALTER TABLE "memories" ADD COLUMN "supersedes" TEXT',
            'ALTER TABLE "memories" ADD COLUMN "valid_from" INTEGER',
            'ALTER TABLE "memories" ADD COLUMN "valid_to" INTEGER',
            'ALTER TABLE "memories" ADD COLUMN "expires_at" INTEGER',
            'ALTER TABLE "memories" ADD COLUMN "created_by" TEXT',
            *_LIFECYCLE_INDEXES,
            'CREATE TABLE "memory_history" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
            '"namespace" TEXT NOT NULL, "memory_id" INTEGER NOT NULL, "version" TEXT NOT NULL, '
            '"operation" TEXT NOT NULL CHECK (operation IN (\'update\', \'restate\', '
            '\'supersede\', \'expire\')), "changed_fields" TEXT NOT NULL, "credential" TEXT, '
            '"revision" INTEGER NOT NULL, "changed_at" INTEGER NOT NULL)',
            'CREATE INDEX "memory_history_memory_id_id" ON "memory_history" ("memory_id", "id")',
            # Deleting a row removes its terms from the index's pages at once, instead of
            # adding a delete marker that leaves them readable until a merge (forgetting).
            *(f"INSERT INTO {fts}({fts}, rank) VALUES ('secure-delete', 1)"
              for fts in ("memories_fts", "messages_fts", "events_fts")),
        ),
        postgres=(
            'ALTER TABLE "memories" ADD COLUMN "superseded_by" BIGINT',
            'ALTER TABLE "memories" ADD COLUMN "superseded_at" BIGINT',
            'ALTER TABLE "memories" ADD COLUMN "supersedes" TEXT COLLATE \"C\"',
            'ALTER TABLE "memories" ADD COLUMN "valid_from" BIGINT',
            'ALTER TABLE "memories" ADD COLUMN "valid_to" BIGINT',
            'ALTER TABLE "memories" ADD COLUMN "expires_at" BIGINT',
            'ALTER TABLE "memories" ADD COLUMN "created_by" TEXT COLLATE \"C\"',
            *_LIFECYCLE_INDEXES,
            'CREATE TABLE "memory_history" ("id" BIGSERIAL NOT NULL PRIMARY KEY, '
            '"namespace" TEXT COLLATE "C" NOT NULL, "memory_id" BIGINT NOT NULL, '
            '"version" TEXT COLLATE "C" NOT NULL, "operation" TEXT COLLATE "C" NOT NULL CHECK '
            '(operation IN (\'update\', \'restate\', \'supersede\', \'expire\')), '
            '"changed_fields" TEXT COLLATE "C" NOT NULL, "credential" TEXT COLLATE "C", '
            '"revision" BIGINT NOT NULL, "changed_at" BIGINT NOT NULL)',
            'CREATE INDEX "memory_history_memory_id_id" ON "memory_history" ("memory_id", "id")',
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


def schema_version(conn: apsw.Connection) -> int:
    """Return the schema version recorded in the file (0 for a new file)."""
    return int(scalar(conn, "PRAGMA user_version"))


def scalar(conn: apsw.Connection, sql: str) -> Any:
    """Return the first column of the first row of a query (None when there is no row)."""
    row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def migrate(db: pw.Database, conn: apsw.Connection) -> None:
    """Bring the file to LATEST_VERSION, one transaction per migration.

    Raises StartupError when the file's schema is newer than this code, or when the file
    holds tables but no jarvis-memory schema version (somebody else's database).
    """
    del db  # migrations are frozen SQL; the Peewee database is not needed to run them
    while True:
        cursor = conn.cursor()
        cursor.execute("BEGIN IMMEDIATE")  # re-read the version under the write lock
        try:
            current = schema_version(conn)
            if current > LATEST_VERSION:
                raise StartupError(
                    f"the database schema is version {current}, newer than this daemon "
                    f"supports ({LATEST_VERSION}); upgrade jarvis-memory to open it"
                )
            if current == LATEST_VERSION:
                cursor.execute("COMMIT")
                return
            if current == 0 and scalar(
                conn, "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'"
            ):
                raise StartupError(
                    "the file holds tables but no jarvis-memory schema version; "
                    "it is not a jarvis-memory database"
                )
            step = MIGRATIONS[current]
            started = time.perf_counter()
            for statement in step.statements:
                cursor.execute(statement)
            cursor.execute(f"PRAGMA user_version = {step.version}")
            cursor.execute("COMMIT")
        except BaseException:
            if not conn.getautocommit():
                cursor.execute("ROLLBACK")
            raise
        log.info(
            "migration %d (%s) applied in %.1f ms",
            step.version, step.name, (time.perf_counter() - started) * 1000,
        )
