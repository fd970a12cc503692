"""Storage: Peewee models (the schema), migrations, and the SQL the services run.

Everything SQLite-specific (pragmas, APSW connection handling, checkpoints) lives in
``sqlite.py``; the other modules speak Peewee and plain SQL.
"""
