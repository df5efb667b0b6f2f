"""The workflow's event log (what happened, for people): one row per event."""

from __future__ import annotations

import sqlite3
import time


def add_event(conn: sqlite3.Connection, workflow_id: int, kind: str, message: str) -> None:
    """Inside the caller's transaction."""
    conn.execute("INSERT INTO events (workflow_id, at, kind, message) VALUES (?,?,?,?)",
                 (workflow_id, time.time(), kind, message))
