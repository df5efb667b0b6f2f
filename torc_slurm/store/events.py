"""The workflow's event log (what happened, for people and scripts): one row per event.

An event has a category (the ``kind`` column), a one-line message, optional structured data (any
JSON value, stored as text) and a source: who posted it ('runner 3', 'job 12', 'user', 'torc').
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any


def add_event(conn: sqlite3.Connection, workflow_id: int, kind: str, message: str, *,
              data: Any = None, source: str | None = None) -> None:
    """Inside the caller's transaction."""
    conn.execute("INSERT INTO events (workflow_id, at, kind, message, data, source) VALUES (?,?,?,?,?,?)",
                 (workflow_id, time.time(), kind, message,
                  None if data is None else json.dumps(data, separators=(",", ":"), default=str), source))
