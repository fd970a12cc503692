"""jarvis-memory daemon: gRPC transport -> service rules -> Peewee/APSW storage."""

__version__ = "0.1.0"
