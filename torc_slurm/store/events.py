"""The workflow's event log (what happened, for people and scripts): one row per event.

An event has a category (the ``kind`` column), a one-line message, optional structured data (any
JSON value, stored as text) and a source: who posted it ('runner 3', 'job 12', 'user', 'torc').

Writing: ``add_event`` inside the caller's transaction (the runner, the sweep, allocations), or
``post_event`` as a transaction of its own (``torc events add``, ``torc_slurm.api.add_event``).
Reading: ``list_events`` and ``events_after``, each one short locked read that walks an index
(``events_by_workflow (workflow_id, id)`` or ``events_by_kind (workflow_id, kind, id)``) and stops
at a LIMIT. ``--since`` is turned into an id bound first (a binary search over the workflow's
event ids, a few dozen index probes), so it never scans old events either.
"""

from __future__ import annotations

import datetime
import json
import re
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from torc_slurm.errors import QueueError, TorcError

if TYPE_CHECKING:
    from torc_slurm.store.db import Database

CATEGORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
MAX_EVENT_DATA_BYTES = 1 << 20   # an event is a log line with details, not a data store
DEFAULT_LIMIT = 50
MAX_LIMIT = 100_000


class InvalidJSON(TorcError):
    """Data given as JSON text does not parse (the message gives the line and column)."""

    exit_code = 2


def add_event(conn: sqlite3.Connection, workflow_id: int, kind: str, message: str, *,
              data: Any = None, source: str | None = None) -> int:
    """Inside the caller's transaction. Returns the event's id."""
    cursor = conn.execute(
        "INSERT INTO events (workflow_id, at, kind, message, data, source) VALUES (?,?,?,?,?,?)",
        (workflow_id, time.time(), kind, message,
         None if data is None else json.dumps(data, separators=(",", ":"), default=str), source))
    return int(cursor.lastrowid or 0)


# -- JSON text from people and jobs ----------------------------------------------------------------
def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (use null or a string)")


def parse_json_text(text: str, *, what: str = "the data") -> Any:
    """JSON text -> its value. Invalid JSON (NaN and Infinity included: they are not JSON) raises
    ``InvalidJSON`` naming the line and column, with the offending line and a caret."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        lines = exc.doc.splitlines() or [""]
        line = lines[exc.lineno - 1] if 0 < exc.lineno <= len(lines) else ""
        start = max(0, exc.colno - 1 - 40)
        excerpt = line[start:start + 80]
        caret = " " * (exc.colno - 1 - start) + "^"
        raise InvalidJSON(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
                          f"\n  {excerpt}\n  {caret}") from None
    except ValueError as exc:  # NaN / Infinity
        raise InvalidJSON(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidJSON(f"{what} is not valid JSON: nested too deeply") from None


def dump_json(value: Any, *, what: str = "the data", max_bytes: int | None = None) -> str:
    """A Python value -> compact JSON text; refuses what JSON cannot hold (NaN, sets, objects)."""
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidJSON(f"{what} cannot be stored as JSON: {exc}") from None
    except RecursionError:
        raise InvalidJSON(f"{what} cannot be stored as JSON: nested too deeply") from None
    if max_bytes is not None and len(text.encode()) > max_bytes:
        raise InvalidJSON(f"{what} is {len(text.encode()):,} bytes of JSON, over the {max_bytes:,}-byte limit; "
                          "store large results in files and put their paths here")
    return text


# -- time bounds ----------------------------------------------------------------------------------
_RELATIVE = re.compile(r"(?:(\d+(?:\.\d+)?)\s*(w|d|h|m|min|s|sec)\s*)+", re.IGNORECASE)
_RELATIVE_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|min|m|sec|s)", re.IGNORECASE)
_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "min": 60, "s": 1, "sec": 1}


def parse_since(text: str, *, now: float | None = None) -> float:
    """A point in time -> epoch seconds. Accepts a relative duration back from now ('10m', '2h',
    '1d', '1h30m', '45s', ISO-8601 'PT10M'), or an ISO-8601 date or datetime ('2026-11-28',
    '2026-11-28T10:00', with an offset or 'Z'; without one it is local time)."""
    from torc_slurm.spec.units import parse_duration

    now = time.time() if now is None else now
    value = text.strip() if isinstance(text, str) else ""
    if _RELATIVE.fullmatch(value):
        seconds = sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in _RELATIVE_PART.findall(value))
        return now - seconds
    if value[:1].upper() == "P":
        try:
            return now - parse_duration(value)
        except ValueError:
            pass
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise QueueError(f"invalid time {text!r}: use a duration back from now ('10m', '2h', '1d', 'PT30M') "
                         "or an ISO-8601 date/time ('2026-11-28T10:00', '2026-11-28T10:00Z')") from None
    return moment.timestamp()  # naive: local time


# -- reading -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    id: int
    workflow_id: int
    at: float
    category: str
    message: str
    data: Any
    source: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Event":
        raw = row["data"]
        try:
            data = None if raw is None else json.loads(raw)
        except ValueError:  # written by something that did not validate: show the text as it is
            data = raw
        return cls(row["id"], row["workflow_id"], row["at"], row["kind"], row["message"], data, row["source"])

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["time"] = datetime.datetime.fromtimestamp(self.at).astimezone().isoformat(timespec="seconds")
        return record


@dataclass(frozen=True)
class EventPage:
    """Events oldest first; ``more`` when older matching events exist beyond the limit;
    ``last_id`` is the newest event id of the workflow at read time (where ``--follow`` starts)."""

    events: list[Event]
    more: bool
    last_id: int


_COLUMNS = "id, workflow_id, at, kind, message, data, source"


def require_workflow(conn: sqlite3.Connection, workflow_id: int, path: object) -> None:
    """Raise ``QueueError`` naming the nearest workflow ids when ``workflow_id`` is not in the queue."""
    if conn.execute("SELECT 1 FROM workflows WHERE id = ?", (workflow_id,)).fetchone():
        return
    ids = [r[0] for r in conn.execute(
        "SELECT id FROM (SELECT id FROM workflows WHERE id < ? ORDER BY id DESC LIMIT 3) UNION "
        "SELECT id FROM (SELECT id FROM workflows WHERE id > ? ORDER BY id LIMIT 3)", (workflow_id, workflow_id))]
    ids.sort(key=lambda i: (abs(i - workflow_id), i))
    hint = (f"; nearest workflow ids: {', '.join(map(str, sorted(ids[:3])))}" if ids
            else "; it holds no workflows")
    raise QueueError(f"no workflow {workflow_id} in {path}{hint} (see `torc workflows list`)")


def _check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise QueueError(f"limit must be between 1 and {MAX_LIMIT:,}, not {limit}")
    return limit


def _edge(conn: sqlite3.Connection, workflow_id: int, order: str) -> int | None:
    """The workflow's first (ASC) or last (DESC) event id: one step into the index."""
    found = conn.execute(f"SELECT id FROM events WHERE workflow_id = ? ORDER BY id {order} LIMIT 1",
                         (workflow_id,)).fetchone()
    return None if found is None else int(found[0])


def _first_id_at(conn: sqlite3.Connection, workflow_id: int, since: float) -> int | None:
    """The smallest event id of the workflow stamped at or after ``since``, by binary search over
    the id index (``at`` grows with ``id`` because every insert holds the queue's one lock; nodes'
    clocks may differ a little, which can only move the boundary by that much). Each step is one
    index probe. None: no event that late."""
    last = _edge(conn, workflow_id, "DESC")
    if last is None or conn.execute("SELECT at FROM events WHERE id = ?", (last,)).fetchone()[0] < since:
        return None
    low, high = _edge(conn, workflow_id, "ASC"), last
    probe = "SELECT id, at FROM events WHERE workflow_id = ? AND id >= ? ORDER BY id LIMIT 1"
    # Smallest key k in [low, high] whose first event at or after id k is stamped >= since.
    while low < high:
        middle = (low + high) // 2
        event_id, at = conn.execute(probe, (workflow_id, middle)).fetchone()
        if at >= since:
            high = middle
        else:
            low = min(event_id + 1, high)
    return int(conn.execute(probe, (workflow_id, low)).fetchone()[0])


def list_events(db: Database, workflow_id: int, *, category: str | None = None, since: float | None = None,
                limit: int = DEFAULT_LIMIT) -> EventPage:
    """The newest ``limit`` events of the workflow (of ``category``, stamped at or after ``since``),
    oldest first. One locked read."""
    limit = _check_limit(limit)
    with db.transaction(write=False) as conn:
        require_workflow(conn, workflow_id, db.path)
        last_id = _edge(conn, workflow_id, "DESC") or 0
        first = 0
        if since is not None:
            found = _first_id_at(conn, workflow_id, since)
            if found is None:
                return EventPage([], False, last_id)
            first = found
        where, params = "workflow_id = ? AND id >= ?", [workflow_id, first]
        if category is not None:
            where += " AND kind = ?"
            params.append(category)
        if since is not None:
            where += " AND at >= ?"
            params.append(since)
        rows = conn.execute(f"SELECT {_COLUMNS} FROM events WHERE {where} ORDER BY id DESC LIMIT ?",
                            (*params, limit + 1)).fetchall()
    events = [Event.from_row(r) for r in reversed(rows[:limit])]
    return EventPage(events, len(rows) > limit, last_id)


def events_after(db: Database, workflow_id: int, after_id: int, *, category: str | None = None,
                 limit: int = 1000) -> list[Event]:
    """Events with id > ``after_id`` (of ``category``), oldest first, at most ``limit``: what
    ``--follow`` polls for. One locked read."""
    limit = _check_limit(limit)
    where, params = "workflow_id = ? AND id > ?", [workflow_id, after_id]
    if category is not None:
        where += " AND kind = ?"
        params.append(category)
    with db.transaction(write=False) as conn:
        require_workflow(conn, workflow_id, db.path)
        rows = conn.execute(f"SELECT {_COLUMNS} FROM events WHERE {where} ORDER BY id LIMIT ?",
                            (*params, limit)).fetchall()
    return [Event.from_row(r) for r in rows]


# -- posting from people and jobs ------------------------------------------------------------------
def check_category(category: str) -> str:
    if not isinstance(category, str) or not CATEGORY.fullmatch(category):
        raise QueueError(f"invalid event category {category!r}: use 1-64 letters, digits, '_', '.', ':' "
                         "or '-', starting with a letter or digit (e.g. 'checkpoint_saved')")
    return category


def post_event(db: Database, workflow_id: int, category: str, *, data_json: str | None = None,
               message: str | None = None, source: str | None = None) -> Event:
    """Record one event in a transaction of its own. ``data_json`` is JSON text (validated here)."""
    check_category(category)
    data = None
    if data_json is not None:
        data = parse_json_text(data_json, what="the event data")
        dump_json(data, what="the event data", max_bytes=MAX_EVENT_DATA_BYTES)
    message = (message or "").strip()
    if len(message) > 4096:
        raise QueueError(f"the event message is {len(message):,} characters; keep it under 4096 "
                         "(put details in --data)")
    with db.transaction() as conn:
        require_workflow(conn, workflow_id, db.path)
        event_id = add_event(conn, workflow_id, category, message, data=data, source=source)
        row = conn.execute(f"SELECT {_COLUMNS} FROM events WHERE id = ?", (event_id,)).fetchone()
    return Event.from_row(row)
