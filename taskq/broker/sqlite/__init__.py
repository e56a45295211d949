"""The embedded broker: queues in a local SQLite file, no server needed."""

from taskq.broker.sqlite.broker import SqliteBroker, SqliteFile, sqlite_path

__all__ = ["SqliteBroker", "SqliteFile", "sqlite_path"]
