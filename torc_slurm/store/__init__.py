"""The shared-filesystem SQLite queue: the only state torc_slurm processes share."""

from torc_slurm.store.db import Database, open_database

__all__ = ["Database", "open_database"]
