"""Workflow actions in the queue: armed by triggers, claimed once, performed, recorded (schema 11).

The exactly-once rule, with no server:

* **Trigger.** SQL triggers on ``jobs`` keep, per job-triggered action, how many of its jobs are
  in the trigger's state (``reached`` of ``size``), in both directions, and set the action ``due``
  in the very transaction whose status change completed it (a runner's cycle, a sweep, a reset).
  ``on_workflow_start`` comes due in ``initialize`` (``rearm``); ``on_workflow_complete`` when the
  workflow's last unfinished job finishes. Checking costs one index probe per status change.
* **Claim.** An observer (a runner's cycle, ``workflows init``, ``slurm watch``) that can perform
  a due action claims it in its transaction: ``due -> claimed`` with a new claim token, the
  claimant's identity, ``attempts + 1`` and an ``action_claimed`` event. Only one transaction can
  make that change (the queue's lock), so only one observer performs the action.
* **Done.** The claimant performs it after its commit, then records the outcome under its token
  (``finish``): ``done``/``failed`` with the result (sbatch ids, exit codes) and an event. An
  outcome whose token is no longer current changes nothing and is recorded as late.
* **Takeover.** A claim is taken over only when its claimant is dead: a runner the liveness
  machinery declared lost (or that signed off without finishing it), a process gone on this host
  (hard evidence), or a non-runner claimant whose ``lease_at`` stood still for
  ``TORC_ACTION_LEASE_TIMEOUT`` (600 s) on the observer's own monotonic clock (``Observer.seen``). The new claim carries the dead
  claims' tokens (``result.previous``), so a ``schedule_nodes`` retry first asks Slurm for the
  allocations those claims named (see ``runner.actions``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torc_slurm.states import DONE, HELD, UNFINISHED, JobStatus, sql_list
from torc_slurm.store.events import add_event
from torc_slurm.store.leases import next_ids

if TYPE_CHECKING:
    from torc_slurm.compiler import CompiledWorkflow
    from torc_slurm.store.db import Database

READY_OR_LATER = (JobStatus.READY.value, *HELD, *DONE)
WORKER_TRIGGERS = ("on_worker_start", "on_worker_complete")
DEFAULT_LEASE_TIMEOUT_S = 600.0


DEFAULT_RETRY_BACKOFF_S = 30.0
DEFAULT_MAX_ATTEMPTS = 5


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


def retry_backoff(attempt: int) -> float:
    """Seconds a retryable failure waits before the next claim: ``TORC_ACTION_RETRY_BACKOFF`` (30)
    doubled per attempt, at most 600, measured by each observer on its own monotonic clock."""
    return min(600.0, _env_float("TORC_ACTION_RETRY_BACKOFF", DEFAULT_RETRY_BACKOFF_S) * 2 ** max(0, attempt - 1))


def max_attempts() -> int:
    return int(_env_float("TORC_ACTION_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS))


def lease_timeout() -> float:
    return _env_float("TORC_ACTION_LEASE_TIMEOUT", DEFAULT_LEASE_TIMEOUT_S)


@dataclass(frozen=True)
class Observer:
    """Who looks at the actions and what it can perform. ``runner_id``: a runner, whose own lease
    covers its claims; otherwise the claim's ``lease_at`` must be renewed (``renew``).
    ``alive(pid, started)``: whether a process of this host still runs (hard evidence)."""

    name: str
    host_key: str | None = None
    pid: int = field(default_factory=os.getpid)
    pid_started: float | None = None
    runner_id: int | None = None
    can_run_commands: bool = True
    can_schedule: bool = True
    # Under `torc run` there is no Slurm: schedule_nodes actions are recorded as not applicable.
    no_slurm_reason: str | None = None
    alive: Callable[[int, float | None], bool] | None = None
    # (action id, claim token, lease_at) -> when this observer first saw that lease, on its own
    # monotonic clock: a claim's lease is aged in queue time, never by another node's timestamps.
    seen: dict[tuple[int, int, float], float] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """One claimed action, handed to its performer after the claim committed."""

    id: int
    workflow_id: int
    index: int
    trigger: str
    type: str
    config: dict[str, Any]
    token: int
    attempt: int
    previous_tokens: tuple[int, ...] = ()   # earlier claims whose claimant died (schedule_nodes checks Slurm)
    since: float | None = None   # when the first of those claims was made (sacct -S, a day earlier)

    @property
    def label(self) -> str:
        return f"action #{self.index + 1} ({self.trigger} {self.type})"


# -- writing the workflow's actions ----------------------------------------------------------------
def add_actions(conn: sqlite3.Connection, workflow_id: int, compiled: CompiledWorkflow,
                job_ids: Sequence[int]) -> None:
    """The compiled actions and their job memberships (``job_ids[i]`` is the id of job i)."""
    if not compiled.actions:
        return
    base = next_ids(conn, "actions", len(compiled.actions))
    conn.executemany(
        "INSERT INTO actions (id, workflow_id, idx, trigger, type, config, size, state, updated_at)"
        " VALUES (?,?,?,?,?,?,?,?,?)",
        ((base + i, workflow_id, a.index, a.spec.trigger_type, a.spec.action_type, json.dumps(a.config()),
          len(a.jobs), "per_runner" if a.spec.trigger_type in WORKER_TRIGGERS else "waiting", time.time())
         for i, a in enumerate(compiled.actions)))
    conn.executemany("INSERT INTO action_members (job_id, action_id) VALUES (?,?)",
                     ((job_ids[j], base + i) for i, a in enumerate(compiled.actions) for j in a.jobs))
    recount(conn, workflow_id)


def delete_actions(conn: sqlite3.Connection, workflow_id: int) -> None:
    conn.execute("DELETE FROM action_members WHERE action_id IN (SELECT id FROM actions WHERE workflow_id = ?)",
                 (workflow_id,))
    conn.execute("DELETE FROM actions WHERE workflow_id = ?", (workflow_id,))


def recount(conn: sqlite3.Connection, workflow_id: int) -> None:
    """Recount ``size``/``reached`` of the workflow's job-triggered actions from the jobs (after a
    bulk rewrite the per-row trigger skipped, or jobs deleted), then set due what is complete and
    re-arm (waiting) what was performed but whose condition no longer holds, as the triggers do."""
    conn.execute("DELETE FROM action_members WHERE action_id IN (SELECT id FROM actions WHERE workflow_id = ?)"
                 " AND job_id NOT IN (SELECT id FROM jobs WHERE workflow_id = ?)", (workflow_id, workflow_id))
    for trigger, statuses in (("on_jobs_ready", READY_OR_LATER), ("on_jobs_complete", DONE)):
        conn.execute(
            f"UPDATE actions SET size = (SELECT COUNT(*) FROM action_members m WHERE m.action_id = actions.id),"
            f" reached = (SELECT COUNT(*) FROM action_members m JOIN jobs j ON j.id = m.job_id"
            f" WHERE m.action_id = actions.id AND j.status IN {sql_list(statuses)})"
            f" WHERE workflow_id = ? AND trigger = ?", (workflow_id, trigger))
    now = time.time()
    conn.execute("UPDATE actions SET state = 'due', updated_at = ? WHERE workflow_id = ? AND state = 'waiting'"
                 " AND trigger IN ('on_jobs_ready', 'on_jobs_complete') AND size > 0 AND reached >= size",
                 (now, workflow_id))
    conn.execute("UPDATE actions SET state = 'waiting', updated_at = ? WHERE workflow_id = ?"
                 " AND state IN ('due', 'done', 'failed', 'skipped')"
                 " AND trigger IN ('on_jobs_ready', 'on_jobs_complete') AND reached < size", (now, workflow_id))
    unfinished = conn.execute(f"SELECT 1 FROM jobs WHERE workflow_id = ? AND status IN {sql_list(UNFINISHED)}"
                              " LIMIT 1", (workflow_id,)).fetchone()
    conn.execute("UPDATE actions SET state = ?, updated_at = ? WHERE workflow_id = ? AND trigger = 'on_workflow_complete'"
                 + (" AND state IN ('due', 'done', 'failed', 'skipped')" if unfinished else " AND state = 'waiting'"),
                 ("waiting" if unfinished else "due", now, workflow_id))


def rearm(conn: sqlite3.Connection, workflow_id: int) -> int:
    """A new run of the workflow (``initialize``): every action may happen again (torc clears its
    executed flags), ``on_workflow_start`` is due now, and job triggers count the jobs' current
    states. A claim still out is superseded (its outcome will be late). Returns the actions armed."""
    now = time.time()
    armed = conn.execute(
        "UPDATE actions SET state = CASE WHEN trigger = 'on_workflow_start' THEN 'due' ELSE 'waiting' END,"
        " claimed_by = NULL, claim_runner = NULL, claim_host_key = NULL, claim_pid = NULL, claim_pid_started = NULL,"
        " claim_token = NULL, claimed_at = NULL, lease_at = NULL, attempts = 0, result = NULL, updated_at = ?"
        " WHERE workflow_id = ? AND state != 'per_runner'", (now, workflow_id)).rowcount
    recount(conn, workflow_id)
    return armed


# -- observing and claiming -------------------------------------------------------------------------
def observe(conn: sqlite3.Connection, workflow_id: int, observer: Observer, *,
            clock: float | None = None) -> list[Claim]:
    """Inside the observer's transaction: claim every due action it can perform, and every claim
    whose claimant is dead; record not-applicable ones as skipped. One probe of a partial index
    when nothing is due (the runner's hot path). ``clock``: the observer's monotonic time (tests
    inject it)."""
    rows = conn.execute("SELECT * FROM actions WHERE workflow_id = ? AND state IN ('due', 'claimed')",
                        (workflow_id,)).fetchall()
    if not rows:
        return []
    now = time.time()
    clock = time.monotonic() if clock is None else clock
    claims = []
    for row in rows:
        config = json.loads(row["config"])
        if row["type"] == "schedule_nodes" and (config.get("scheduler_type") == "local" or observer.no_slurm_reason):
            if row["state"] == "due":
                _skip(conn, row, observer, "scheduler_type local: torc_slurm starts no local workers (jobs run in"
                      " `torc run` or in Slurm allocations)" if config.get("scheduler_type") == "local"
                      else observer.no_slurm_reason or "")
            continue
        able = observer.can_schedule if row["type"] == "schedule_nodes" else observer.can_run_commands
        if not able:
            continue
        previous: tuple[int, ...] = ()
        since: float | None = None
        if row["state"] == "due" and row["result"]:
            retry = json.loads(row["result"])
            if "retry_in_s" in retry:  # a retryable failure: not before its backoff, on this observer's clock
                key = (row["id"], -1, float(row["attempts"]))
                for old in [k for k in observer.seen if k[0] == row["id"] and k != key]:
                    del observer.seen[old]
                if clock - observer.seen.setdefault(key, clock) < float(retry["retry_in_s"]):
                    continue
                previous = tuple(retry.get("previous_tokens", ()))
                since = retry.get("since")
        if row["state"] == "claimed":
            dead = _claimant_dead(conn, row, observer, clock)
            if dead is None:
                continue
            result = json.loads(row["result"]) if row["result"] else {}
            previous = (*result.get("previous_tokens", ()), row["claim_token"])
            since = min(float(result.get("since") or row["claimed_at"] or now), float(row["claimed_at"] or now))
            add_event(conn, workflow_id, "action_taken_over",
                      f"action #{row['idx'] + 1} ({row['trigger']} {row['type']}): {row['claimed_by']} {dead}; "
                      f"{observer.name} takes it over", data={"action": row["idx"], "action_id": row["id"],
                                                             "from": row["claimed_by"], "why": dead,
                                                             "token": row["claim_token"]},
                      source=observer.name)
        claims.append(_claim(conn, row, config, observer, now, previous, since))
    return claims


def _claim(conn: sqlite3.Connection, row: sqlite3.Row, config: dict[str, Any], observer: Observer, now: float,
           previous: tuple[int, ...], since: float | None = None) -> Claim:
    token = next_ids(conn, "action_token")
    changed = conn.execute(
        "UPDATE actions SET state = 'claimed', claimed_by = ?, claim_runner = ?, claim_host_key = ?, claim_pid = ?,"
        " claim_pid_started = ?, claim_token = ?, claimed_at = ?, lease_at = ?, attempts = attempts + 1,"
        " result = ?, updated_at = ? WHERE id = ? AND state = ? AND claim_token IS ?",
        (observer.name, observer.runner_id, observer.host_key, observer.pid, observer.pid_started, token, now, now,
         json.dumps({"previous_tokens": list(previous), "since": since}) if previous else None, now, row["id"],
         row["state"],
         row["claim_token"])).rowcount
    assert changed == 1, "the lock makes the claim exclusive"
    attempt = row["attempts"] + 1
    add_event(conn, row["workflow_id"], "action_claimed",
              f"action #{row['idx'] + 1} ({row['trigger']} {row['type']}) claimed by {observer.name}"
              + (f" (attempt {attempt})" if attempt > 1 else ""),
              data={"action": row["idx"], "action_id": row["id"], "token": token, "attempt": attempt,
                    "by": observer.name, "runner_id": observer.runner_id, "previous_tokens": list(previous)},
              source=observer.name)
    return Claim(row["id"], row["workflow_id"], row["idx"], row["trigger"], row["type"], config, token, attempt,
                 previous, since)


def _claimant_dead(conn: sqlite3.Connection, row: sqlite3.Row, observer: Observer, clock: float) -> str | None:
    """Why the claimant of a claimed action is dead, or None while it may be alive. A claimant
    that is not a runner is presumed dead when its lease (``lease_at``) did not move for the
    timeout on this observer's own clock; a one-shot observer (``init``) never waits that long."""
    if row["claim_runner"] is not None:
        status = conn.execute("SELECT status FROM runners WHERE id = ?", (row["claim_runner"],)).fetchone()
        if status is None or status[0] not in ("active", "fencing"):
            return f"ended ({status[0] if status else 'deleted'}) without recording the outcome"
    if (row["claim_host_key"] is not None and row["claim_host_key"] == observer.host_key
            and observer.alive is not None and not observer.alive(row["claim_pid"], row["claim_pid_started"])):
        pgid = (json.loads(row["result"]) if row["result"] else {}).get("pgid")
        if pgid is not None and _group_exists(int(pgid)):
            return None  # its command still runs (it was SIGKILLed mid-command): not twice at once
        return f"is gone (pid {row['claim_pid']} no longer runs on this host)"
    if row["claim_runner"] is None:
        key = (row["id"], row["claim_token"], row["lease_at"])
        for old in [k for k in observer.seen if k[0] == row["id"] and k != key]:
            del observer.seen[old]
        if clock - observer.seen.setdefault(key, clock) > lease_timeout():
            return f"did not renew its claim for {lease_timeout():.0f} s"
    return None


def _group_exists(pgid: int) -> bool:
    """A process of group ``pgid`` still runs on this host (zombies, which no one may reap after
    their observer died, do not count). Only on a takeover from a dead same-host claimant."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    import psutil

    for process in psutil.process_iter(["status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == pgid:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def queue_key(db: Database) -> str:
    """A random id of this queue file, made once (kept in ``sequences``): allocation names of
    schedule_nodes actions carry it, so a takeover never adopts another queue's allocations."""
    import secrets

    with db.transaction() as conn:
        conn.execute("INSERT OR IGNORE INTO sequences (name, next) VALUES ('queue_key', ?)",
                     (secrets.randbits(32),))
        (value,) = conn.execute("SELECT next FROM sequences WHERE name = 'queue_key'").fetchone()
    return f"{int(value):08x}"


def record_command_group(db: Database, claim: Claim, pgid: int) -> None:
    """A login observer's command started in process group ``pgid``: kept in the claim row
    (``result.pgid``), so an observer of the same host does not take the claim over while that
    group still has processes, even after the observer itself was SIGKILLed."""
    with db.transaction() as conn:
        conn.execute("UPDATE actions SET result = json_set(COALESCE(result, '{}'), '$.pgid', ?) WHERE id = ?"
                     " AND claim_token = ? AND state = 'claimed'", (pgid, claim.id, claim.token))


def _skip(conn: sqlite3.Connection, row: sqlite3.Row, observer: Observer, reason: str) -> None:
    conn.execute("UPDATE actions SET state = 'skipped', result = ?, updated_at = ? WHERE id = ?",
                 (json.dumps({"reason": reason}), time.time(), row["id"]))
    add_event(conn, row["workflow_id"], "action_skipped",
              f"action #{row['idx'] + 1} ({row['trigger']} {row['type']}) not applicable: {reason}",
              data={"action": row["idx"], "action_id": row["id"], "reason": reason}, source=observer.name)


# -- outcomes -----------------------------------------------------------------------------------------
def finish(db: Database, claim: Claim, ok: bool, message: str, result: dict[str, Any], *,
           source: str) -> bool:
    """Record the outcome under the claim's token: done/failed with an event. Returns False (and
    records an ``action_late`` event) when the claim is no longer current."""
    with db.transaction() as conn:
        return record_outcome(conn, claim, ok, message, result, source=source)


def record_outcome(conn: sqlite3.Connection, claim: Claim, ok: bool, message: str, result: dict[str, Any], *,
                   source: str) -> bool:
    """``finish`` inside the caller's transaction (a runner's cycle or sign-off writes the
    outcomes its threads could not)."""
    state = "done" if ok else "failed"
    retry = not ok and bool(result.get("retry"))
    if retry and claim.attempt < max_attempts():
        return _back_to_due(conn, claim, message, result, source)
    body = {**result, "previous_tokens": list(claim.previous_tokens), "token": claim.token, "message": message}
    if retry:
        message += f" (gave up after {claim.attempt} attempts; `torc workflows actions {claim.workflow_id} --retry" \
                   f" {claim.index + 1}` re-arms it)"
        body["message"] = message
    changed = conn.execute(
        "UPDATE actions SET state = ?, result = ?, updated_at = ? WHERE id = ? AND claim_token = ?"
        " AND state = 'claimed'", (state, json.dumps(body), time.time(), claim.id, claim.token)).rowcount
    data = {"action": claim.index, "action_id": claim.id, "token": claim.token, "attempt": claim.attempt, **result}
    if not changed:
        add_event(conn, claim.workflow_id, "action_late", f"{claim.label}: {message}; late, not recorded "
                  "(the claim was taken over or the workflow reinitialized)", data=data, source=source)
        return False
    add_event(conn, claim.workflow_id, f"action_{state}", f"{claim.label}: {message}", data=data, source=source)
    return True


def _back_to_due(conn: sqlite3.Connection, claim: Claim, message: str, result: dict[str, Any],
                 source: str) -> bool:
    """A retryable failure (Slurm unavailable for a moment): the action is due again after a
    backoff; the next claim carries this claim's token too (it may have submitted some
    allocations before the failure: the retry adopts them)."""
    wait = retry_backoff(claim.attempt)
    body = {"retry_in_s": wait, "previous_tokens": [*claim.previous_tokens, claim.token], "message": message,
            "token": claim.token, "since": claim.since or time.time()}
    changed = conn.execute(
        "UPDATE actions SET state = 'due', result = ?, claimed_by = NULL, claim_runner = NULL, claim_host_key = NULL,"
        " claim_pid = NULL, claim_pid_started = NULL, lease_at = NULL, updated_at = ?"
        " WHERE id = ? AND claim_token = ? AND state = 'claimed'",
        (json.dumps(body), time.time(), claim.id, claim.token)).rowcount
    data = {"action": claim.index, "action_id": claim.id, "token": claim.token, "attempt": claim.attempt,
            "retry_in_s": wait}
    if not changed:
        add_event(conn, claim.workflow_id, "action_late", f"{claim.label}: {message}; late, not recorded "
                  "(the claim was taken over or the workflow reinitialized)", data=data, source=source)
        return False
    add_event(conn, claim.workflow_id, "action_retry", f"{claim.label}: {message}; due again in {wait:g} s "
              f"(attempt {claim.attempt} of {max_attempts()})", data=data, source=source)
    return True


def retry_failed(db: Database, workflow_id: int, number: int) -> None:
    """``torc workflows actions ID --retry N``: a failed action (N as listed, from 1) is due again,
    with its attempts counted afresh; its earlier claims' tokens are kept (schedule_nodes adopts
    what they submitted)."""
    from torc_slurm.errors import QueueError

    with db.transaction() as conn:
        row = conn.execute("SELECT * FROM actions WHERE workflow_id = ? AND idx = ?", (workflow_id, number - 1)
                           ).fetchone()
        if row is None:
            raise QueueError(f"workflow {workflow_id} has no action #{number}")
        if row["state"] != "failed":
            raise QueueError(f"action #{number} is {row['state']}, not failed: only a failed action is re-armed")
        old = json.loads(row["result"]) if row["result"] else {}
        previous = [*old.get("previous_tokens", ()), *([old["token"]] if old.get("token") is not None else [])]
        conn.execute("UPDATE actions SET state = 'due', attempts = 0, result = ?, updated_at = ? WHERE id = ?",
                     (json.dumps({"previous_tokens": previous, "retry_in_s": 0,
                                  "since": old.get("since") or row["claimed_at"] or row["updated_at"]}),
                      time.time(), row["id"]))
        add_event(conn, workflow_id, "action_rearmed", f"action #{number} ({row['trigger']} {row['type']}) re-armed "
                  "by hand: due again", data={"action": row["idx"], "action_id": row["id"]}, source="cli")


def renew(db: Database, claims: Sequence[Claim]) -> None:
    """A non-runner claimant's lease on its claims (every timeout / 4 while it performs them)."""
    if not claims:
        return
    with db.transaction() as conn:
        conn.executemany("UPDATE actions SET lease_at = ? WHERE id = ? AND claim_token = ? AND state = 'claimed'",
                         [(time.time(), c.id, c.token) for c in claims])


def record_per_runner(db: Database, workflow_id: int, index: int, trigger: str, ok: bool, message: str,
                      result: dict[str, Any], *, source: str) -> None:
    """An on_worker_start / on_worker_complete action a runner performed for itself: an event
    (the row stays ``per_runner``; every runner runs it once)."""
    with db.transaction() as conn:
        add_event(conn, workflow_id, "action_done" if ok else "action_failed",
                  f"action #{index + 1} ({trigger} run_commands) for {source}: {message}",
                  data={"action": index, "per_runner": True, **result}, source=source)


def per_runner_actions(db: Database, workflow_id: int, trigger: str) -> list[tuple[int, dict[str, Any]]]:
    return [(row["idx"], json.loads(row["config"])) for row in db.read(
        "SELECT idx, config FROM actions WHERE workflow_id = ? AND trigger = ? ORDER BY idx", (workflow_id, trigger))]


def list_actions(db: Database, workflow_id: int) -> list[dict[str, Any]]:
    """Every action of the workflow, one dict each (for ``torc workflows actions``)."""
    rows = db.read("SELECT idx, trigger, type, config, size, reached, state, claimed_by, attempts, result,"
                   " updated_at FROM actions WHERE workflow_id = ? ORDER BY idx", (workflow_id,))
    out = []
    for row in rows:
        item = dict(row)
        item["config"] = json.loads(item["config"])
        item["result"] = json.loads(item["result"]) if item["result"] else None
        out.append(item)
    return out


def on_cancel(conn: sqlite3.Connection, workflow_id: int) -> None:
    """``workflows cancel``: the actions not yet performed will not be (a later init re-arms them);
    counts follow the jobs the bulk cancel rewrote."""
    conn.execute("UPDATE actions SET state = 'skipped', result = ?, updated_at = ? WHERE workflow_id = ?"
                 " AND state IN ('waiting', 'due')", (json.dumps({"reason": "workflow canceled"}), time.time(),
                                                       workflow_id))
    recount(conn, workflow_id)


def update_actions(conn: sqlite3.Connection, workflow_id: int, compiled: CompiledWorkflow,
                   job_ids: Sequence[int]) -> None:
    """``workflows update``: the spec's actions replace the stored ones. An action whose entry is
    unchanged (same place, same fields) keeps its state (done stays done); its jobs are resolved
    again against the new jobs. Changed or new entries start waiting; entries gone are dropped.
    Counts are then recounted (an action whose jobs are all there already comes due)."""
    old = {row["idx"]: (row["id"], json.loads(row["config"])) for row in conn.execute(
        "SELECT id, idx, config FROM actions WHERE workflow_id = ?", (workflow_id,))}
    conn.execute("DELETE FROM action_members WHERE action_id IN (SELECT id FROM actions WHERE workflow_id = ?)",
                 (workflow_id,))
    kept: dict[int, int] = {}
    for action in compiled.actions:
        found = old.get(action.index)
        if found is not None and found[1] == action.config():
            kept[action.index] = found[0]
    conn.execute("DELETE FROM actions WHERE workflow_id = ? AND id NOT IN (SELECT value FROM json_each(?))",
                 (workflow_id, json.dumps(sorted(kept.values()))))
    fresh = [a for a in compiled.actions if a.index not in kept]
    base = next_ids(conn, "actions", len(fresh)) if fresh else 0
    conn.executemany(
        "INSERT INTO actions (id, workflow_id, idx, trigger, type, config, size, state, updated_at)"
        " VALUES (?,?,?,?,?,?,?,?,?)",
        ((base + i, workflow_id, a.index, a.spec.trigger_type, a.spec.action_type, json.dumps(a.config()),
          len(a.jobs), "per_runner" if a.spec.trigger_type in WORKER_TRIGGERS else "waiting", time.time())
         for i, a in enumerate(fresh)))
    ids = {**kept, **{a.index: base + i for i, a in enumerate(fresh)}}
    conn.executemany("INSERT INTO action_members (job_id, action_id) VALUES (?,?)",
                     ((job_ids[j], ids[a.index]) for a in compiled.actions for j in a.jobs))
    recount(conn, workflow_id)
