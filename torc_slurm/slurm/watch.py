"""`torc slurm watch ID`: keep a workflow supplied with Slurm allocations until it is done.

Two halves, kept apart:

* ``decide(state) -> actions`` is pure: given, per scheduler, how many jobs are ready now, soon
  ready or held by runners, what an allocation can take, the allocations by Slurm state, the limits
  and the failure history, it returns ``Submit``/``Cancel``/``Pause`` actions. The table tests drive
  it directly.
* ``Watcher`` is the I/O loop: once per interval it takes the queue's lock **once** (renew the
  lease and read everything ``decide`` needs in one transaction), asks Slurm about every allocation
  of the workflow with **one** ``squeue`` call (``sacct`` for the ones squeue purged), writes only
  when something changed (allocation states, submissions, cancellations, recover), and sleeps.

Rules (where the issue left the choice open):

* **Soon ready**: a blocked job whose dependency set has at most ``max(1, soon_fraction x size)``
  unfinished members (``soon_fraction`` 0.1), and at least one finished: the last tenth of a stage
  (a job waiting on one job is never "soon": it is ready as soon as that one ends). Later stages
  are submitted on readiness: their allocations are queued while the stage before is finishing,
  not up front.
* **Demand**: per scheduler, ``ready + soon + held`` jobs (held: pending/running in a runner). Jobs
  bound to no scheduler count for the first scheduler of the spec with enough nodes for them. One
  allocation is assumed to take ``capacity`` jobs: its CPU slots (nodes x CPUs per node, from the
  site's partition, divided by the jobs' mean CPUs) times how many of the jobs' mean runtime fit in
  its walltime. Allocations wanted = ``ceil(demand / capacity)``; live allocations (queued or
  running) count against it.
* **Limits**: at most ``max_queued`` allocations queued (submitted, PENDING, CONFIGURING, UNKNOWN …)
  and at most ``max_running`` live in all per scheduler (so the queued ones never push it over
  ``max_running`` when they start).
* **Cancel**: when a scheduler has no ready, soon-ready or held jobs, its allocations still queued
  (``submitted``/``PENDING``) are scancelled. Running ones end on their own when idle.
* **Failures**: a failed submission doubles the wait before the next try for that scheduler
  (``backoff_first`` 2 s, capped at ``backoff_max`` 300 s); after ``pause_after`` (5) consecutive
  failures the scheduler is paused for this watcher's life, with a log line and a ``watch_paused``
  event. A success resets the count.
* **Lease**: one row per workflow in ``watchers``. Absent: insert it. Held by another: the
  newcomer watches its ``lease_seq``; only if the value did not change for the holder's
  ``timeout_s`` on the newcomer's own monotonic clock does it take the row over (an UPDATE that
  checks holder and seq in the same transaction), or at once when the holder ran on this host and
  its pid is gone (hard evidence beats the timeout). If the seq moves, the holder is alive and the
  newcomer exits with a message. The holder renews every round (seq + 1); it submits only while its
  last renewal is younger than half the timeout (self-fencing), and if an sbatch returns after that
  (a slow controller) it scancels what it just submitted: a takeover needs a whole timeout after the
  renewal, so a submission kept is always one made by the only holder. A holder that finds the row
  taken stops submitting and exits. The row is deleted on exit.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torc_slurm.errors import SlurmError, TorcError
from torc_slurm.states import FAILED as FAILED_STATUSES
from torc_slurm.states import UNFINISHED

log = logging.getLogger(__name__)

SOON_FRACTION = 0.1
DEFAULT_INTERVAL = 30.0
DEFAULT_MAX_QUEUED = 2
DEFAULT_MAX_RUNNING = 10
PAUSE_AFTER = 5
BACKOFF_FIRST = 2.0
BACKOFF_MAX = 300.0
SUBMIT_GRACE = 60.0   # seconds a just-submitted job may be missing from squeue

# Allocation states (as the queue records them) in which the allocation waits for nodes.
QUEUED_STATES = frozenset({"submitted", "PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                           "UNKNOWN"})
# Those a watcher may scancel when nothing is left for them (UNKNOWN is never cancelled on a guess).
CANCELABLE_STATES = frozenset({"submitted", "PENDING"})
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
                            "RESIZING"})
# Final as the queue records them (store.allocations.FINAL_STATES plus a few Slurm spells).
ENDED_STATES = frozenset({"gone", "canceled", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                          "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"})


class WatchLeaseLost(TorcError):
    """Another watcher holds (or took over) the workflow's lease: this one must not submit."""

    exit_code = 3


# ---------------------------------------------------------------------------------------------------
# the pure decision core
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Demand:
    """One scheduler's work: jobs ready now, soon ready, held by runners, and how many jobs one
    allocation of it is assumed to take (``capacity``, at least 1)."""

    ready: int = 0
    soon: int = 0
    held: int = 0
    capacity: int = 1

    @property
    def jobs(self) -> int:
        return self.ready + self.soon + self.held


@dataclass(frozen=True)
class Allocation:
    slurm_job_id: str
    scheduler: str
    state: str          # as recorded: submitted | PENDING | RUNNING | UNKNOWN | … | gone | canceled
    submitted_at: float = 0.0   # wall clock, this host's (only compared with this host's clock)


@dataclass(frozen=True)
class Failures:
    """A scheduler's submission history: consecutive failures, when the next try may happen
    (monotonic seconds), and whether it is paused (with why)."""

    consecutive: int = 0
    next_try_at: float = float("-inf")  # monotonic clocks may start anywhere, even below 0
    paused: bool = False
    last_error: str = ""


@dataclass(frozen=True)
class Limits:
    max_queued: int = DEFAULT_MAX_QUEUED
    max_running: int = DEFAULT_MAX_RUNNING
    pause_after: int = PAUSE_AFTER


@dataclass(frozen=True)
class WatchState:
    now: float                                   # monotonic seconds
    demand: Mapping[str, Demand]                 # every scheduler of the spec, in spec order
    allocations: Sequence[Allocation] = ()
    limits: Limits = Limits()
    failures: Mapping[str, Failures] = field(default_factory=dict)
    may_submit: bool = True                      # False: the lease is not (freshly) ours


@dataclass(frozen=True)
class Submit:
    scheduler: str
    count: int
    reason: str


@dataclass(frozen=True)
class Cancel:
    scheduler: str
    slurm_job_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Pause:
    scheduler: str
    reason: str


Action = Submit | Cancel | Pause


def allocations_wanted(demand: Demand) -> int:
    return math.ceil(demand.jobs / max(1, demand.capacity)) if demand.jobs else 0


def decide(state: WatchState) -> list[Action]:
    """What to do this round, per scheduler in spec order (see the module's rules)."""
    actions: list[Action] = []
    for name, demand in state.demand.items():
        mine = [a for a in state.allocations if a.scheduler == name]
        queued = [a for a in mine if a.state in QUEUED_STATES]
        running = [a for a in mine if a.state in RUNNING_STATES]
        failures = state.failures.get(name, Failures())
        if demand.ready + demand.soon + demand.held == 0:
            cancelable = tuple(a.slurm_job_id for a in queued if a.state in CANCELABLE_STATES)
            if cancelable:
                actions.append(Cancel(name, cancelable, f"no ready or soon-ready jobs left for scheduler {name}"))
            continue
        if failures.consecutive >= state.limits.pause_after and not failures.paused:
            actions.append(Pause(name, f"scheduler {name} paused after {failures.consecutive} consecutive failed "
                                       f"submissions; last: {failures.last_error}"))
            continue
        if failures.paused or not state.may_submit or state.now < failures.next_try_at:
            continue
        if demand.ready + demand.soon == 0:
            continue  # all its work is held by runners already: nothing to queue for
        live = len(queued) + len(running)
        count = min(allocations_wanted(demand) - live,
                    state.limits.max_queued - len(queued),
                    state.limits.max_running - live)
        if count > 0:
            actions.append(Submit(name, count, f"{demand.ready} ready, {demand.soon} soon ready, {demand.held} held;"
                                               f" {len(queued)} queued, {len(running)} running"))
    return actions


def after_failure(failures: Failures, now: float, error: str, *, first: float = BACKOFF_FIRST,
                  cap: float = BACKOFF_MAX) -> Failures:
    """The history after one more failed submission: wait first, 2 x first, … (capped)."""
    consecutive = failures.consecutive + 1
    delay = min(cap, first * 2 ** (consecutive - 1))
    return replace(failures, consecutive=consecutive, next_try_at=now + delay, last_error=error)


def after_success(failures: Failures) -> Failures:
    return Failures(paused=failures.paused)


# ---------------------------------------------------------------------------------------------------
# what the queue says (one locked read per round, pure helpers to shape it)
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SchedulerShape:
    name: str
    nodes: int
    walltime_s: int
    cpus_per_node: int


def assign_scheduler(job_scheduler: str | None, job_nodes: int, shapes: Sequence[SchedulerShape]) -> str | None:
    """The scheduler a job's demand counts for: its own, else the first with enough nodes."""
    names = {s.name for s in shapes}
    if job_scheduler is not None:
        return job_scheduler if job_scheduler in names else None
    for shape in shapes:
        if shape.nodes >= job_nodes:
            return shape.name
    return shapes[0].name if shapes else None


def capacity(shape: SchedulerShape, mean_cpus: float, mean_runtime_s: float) -> int:
    """Jobs one allocation is assumed to take: CPU slots x runtimes that fit in the walltime."""
    slots = max(1, int(shape.nodes * shape.cpus_per_node // max(1.0, mean_cpus)))
    rounds = max(1, int(shape.walltime_s // max(1.0, mean_runtime_s)))
    return slots * rounds


def demand_from_rows(rows: Iterable[Mapping[str, Any]], shapes: Sequence[SchedulerShape]) -> dict[str, Demand]:
    """Rows of (scheduler, num_nodes, kind: ready|soon|held, n, cpus, runtime) -> Demand per scheduler."""
    counts: dict[str, dict[str, float]] = {s.name: {"ready": 0, "soon": 0, "held": 0, "cpus": 0.0, "runtime": 0.0}
                                           for s in shapes}
    for row in rows:
        name = assign_scheduler(row["scheduler"], row["num_nodes"], shapes)
        if name is None:
            continue
        c = counts[name]
        c[row["kind"]] += row["n"]
        c["cpus"] += row["cpus"] or 0
        c["runtime"] += row["runtime"] or 0
    out = {}
    for shape in shapes:
        c = counts[shape.name]
        n = c["ready"] + c["soon"] + c["held"]
        cap = capacity(shape, c["cpus"] / n, c["runtime"] / n) if n else 1
        out[shape.name] = Demand(int(c["ready"]), int(c["soon"]), int(c["held"]), cap)
    return out


DEMAND_SQL = """
SELECT scheduler, num_nodes, CASE WHEN status = 'ready' THEN 'ready' ELSE 'held' END AS kind,
       COUNT(*) AS n, SUM(num_cpus) AS cpus, SUM(runtime_s) AS runtime
  FROM jobs WHERE workflow_id = :wf AND status IN ('ready', 'pending', 'running')
 GROUP BY scheduler, num_nodes, kind
UNION ALL
SELECT j.scheduler, j.num_nodes, 'soon', COUNT(*), SUM(j.num_cpus), SUM(j.runtime_s)
  FROM jobs j JOIN dependency_sets d ON d.id = j.depset_id
 WHERE j.workflow_id = :wf AND j.status = 'blocked'
   AND d.remaining < d.size AND d.remaining <= MAX(1, CAST(d.size * :soon AS INTEGER))
 GROUP BY j.scheduler, j.num_nodes
"""


@dataclass
class QueueView:
    demand: dict[str, Demand]
    counts: dict[str, int]
    allocations: list[Allocation]

    @property
    def unfinished(self) -> int:
        return sum(self.counts.get(s, 0) for s in UNFINISHED)

    @property
    def failed(self) -> int:
        return sum(self.counts.get(s, 0) for s in FAILED_STATUSES)


# ---------------------------------------------------------------------------------------------------
# the lease
# ---------------------------------------------------------------------------------------------------
class Lease:
    """This watcher's view of the ``watchers`` row of one workflow. ``step(conn, now)`` runs inside
    the round's transaction and returns True when this watcher holds the lease after it."""

    def __init__(self, workflow_id: int, timeout_s: float, *, holder: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.workflow_id = workflow_id
        self.timeout_s = timeout_s
        self.hostname = socket.gethostname()
        self.holder = holder or f"{self.hostname}:{os.getpid()}:{random.getrandbits(32):08x}"
        self.clock = clock
        self.held = False
        self.renewed_at: float | None = None     # our clock, last successful renewal
        self.seen: tuple[str, int] | None = None  # another holder's (holder, seq) and when we first saw it
        self.seen_at = 0.0
        self.other: str | None = None

    def fresh(self, now: float | None = None) -> bool:
        """Held and renewed less than half a timeout ago: safe to submit."""
        now = self.clock() if now is None else now
        return self.held and self.renewed_at is not None and now - self.renewed_at < self.timeout_s / 2

    def step(self, conn: Any, state: Mapping[str, Any] | None = None) -> bool:
        now = self.clock()
        wall = time.time()
        data = json.dumps(state or {}, separators=(",", ":"), default=str)
        row = conn.execute("SELECT holder, lease_seq, timeout_s, hostname, pid FROM watchers WHERE workflow_id = ?",
                           (self.workflow_id,)).fetchone()
        if row is None:
            if self.held:  # our row vanished (deleted by hand): we lost it
                return self._lose("its lease row was removed")
            conn.execute("INSERT INTO watchers (workflow_id, holder, hostname, pid, lease_seq, timeout_s, started_at,"
                         " heartbeat_at, state) VALUES (?,?,?,?,0,?,?,?,?)",
                         (self.workflow_id, self.holder, self.hostname, os.getpid(), self.timeout_s, wall, wall, data))
            return self._gain(now)
        holder, seq, timeout_s = row[0], int(row[1]), float(row[2])
        if holder == self.holder:
            conn.execute("UPDATE watchers SET lease_seq = lease_seq + 1, heartbeat_at = ?, state = ?, timeout_s = ?"
                         " WHERE workflow_id = ? AND holder = ?", (wall, data, self.timeout_s, self.workflow_id,
                                                                   self.holder))
            return self._gain(now)
        self.other = holder
        if self.held:
            return self._lose(f"watcher {holder} took the lease over")
        dead = row[3] == self.hostname and not _pid_alive(int(row[4]))
        if dead:  # hard evidence beats the timeout: its process is gone from this host
            log.warning("watcher %s: its process %s is gone from this host; taking over", holder, row[4])
        else:
            if self.seen != (holder, seq):
                self.alive = self.seen is not None  # it moved while we watched: the holder is alive
                self.seen, self.seen_at = (holder, seq), now
                return False
            if now - self.seen_at < timeout_s:
                return False
            log.warning("watcher %s did not renew its lease for %.0f s (our clock): taking over", holder,
                        now - self.seen_at)
        cursor = conn.execute(
            "UPDATE watchers SET holder = ?, hostname = ?, pid = ?, lease_seq = lease_seq + 1, timeout_s = ?,"
            " started_at = ?, heartbeat_at = ?, state = ? WHERE workflow_id = ? AND holder = ? AND lease_seq = ?",
            (self.holder, self.hostname, os.getpid(), self.timeout_s, wall, wall, data, self.workflow_id, holder, seq))
        return self._gain(now) if cursor.rowcount == 1 else False

    def release(self, conn: Any) -> None:
        if self.held:
            conn.execute("DELETE FROM watchers WHERE workflow_id = ? AND holder = ?", (self.workflow_id, self.holder))
        self.held = False

    def _gain(self, now: float) -> bool:
        self.held, self.renewed_at, self.seen, self.other = True, now, None, None
        return True

    def _lose(self, why: str) -> bool:
        self.held = False
        self.lost_reason = why
        return False

    lost_reason: str = ""
    alive = False   # another holder renewed while we watched


def _pid_alive(pid: int) -> bool:
    """False only when this host has no process ``pid`` (a reused pid looks alive: the timeout decides)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


# ---------------------------------------------------------------------------------------------------
# Slurm: one squeue call for all the allocations, sacct for the purged ones
# ---------------------------------------------------------------------------------------------------
def query_states(backend: Any, job_ids: Sequence[str]) -> dict[str, str]:
    """slurm_job_id -> state for every id: Slurm's state name (UNKNOWN for a name torc does not
    know), or ``gone`` when neither squeue nor sacct knows it. One squeue call for all ids; one
    sacct call for the ids squeue no longer shows (skipped when accounting is not available)."""
    ids = [str(i) for i in job_ids]
    if not ids:
        return {}
    states = _squeue_states(backend, ids)
    missing = [i for i in ids if i not in states]
    if missing:
        states.update(_sacct_states(backend, missing))
    return {i: states.get(i, "gone") for i in ids}


def _known(state: str) -> str:
    from torc_slurm.slurm.backend import SlurmState

    word = state.strip().upper().split(" ")[0]  # sacct: "CANCELLED by 123"
    try:
        return SlurmState(word).value
    except ValueError:
        return "UNKNOWN"


def _squeue_states(backend: Any, ids: list[str]) -> dict[str, str]:
    run = getattr(backend, "_run", None)
    if run is None:  # another backend: its status(), which may refuse an unknown state
        try:
            return {k: v.state.value for k, v in backend.status(ids).items()}
        except SlurmError as exc:
            if "unknown Slurm job state" in str(exc):
                log.warning("%s; the watcher counts those allocations as UNKNOWN this round", exc)
                return {i: "UNKNOWN" for i in ids}
            raise
    result = run(["squeue", "--noheader", "--states=all", f"--jobs={','.join(ids)}", "--format=%i|%T"], gone_ok=True)
    out: dict[str, str] = {}
    for line in result.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id in ids:
            out[job_id] = _known(state)
    return out


def _sacct_states(backend: Any, ids: list[str]) -> dict[str, str]:
    run = getattr(backend, "_run", None)
    if run is None:
        return {}
    try:
        result = run(["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={','.join(ids)}",
                      "--format=JobID,State"])
    except SlurmError as exc:  # no accounting storage on this cluster: squeue's word is all there is
        log.debug("sacct unavailable: %s", exc)
        return {}
    out: dict[str, str] = {}
    for line in result.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id in ids and state:
            out[job_id] = _known(state)
    return out


# ---------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------
@dataclass
class WatchOptions:
    interval: float = DEFAULT_INTERVAL
    limits: Limits = Limits()
    recover: bool = False
    output_dir: Path | None = None
    once: bool = False
    lease_timeout: float | None = None   # default: max(4 x interval, 10 s)
    soon_fraction: float = SOON_FRACTION
    backoff_first: float = BACKOFF_FIRST
    backoff_max: float = BACKOFF_MAX


@dataclass
class Summary:
    workflow_id: int
    counts: dict[str, int]
    allocations_submitted: int
    allocations_canceled: int
    allocations_by_state: dict[str, int]
    rounds: int
    lock_acquisitions: int
    exit_code: int
    message: str

    def lines(self) -> list[str]:
        jobs = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()) if n) or "none"
        allocs = ", ".join(f"{n} {s}" for s, n in sorted(self.allocations_by_state.items())) or "none"
        return [self.message,
                f"  jobs: {jobs}",
                (f"  allocations: {self.allocations_submitted} submitted by this watcher, "
                 f"{self.allocations_canceled} cancelled; all of the workflow's by state: {allocs}"),
                f"  {self.rounds} rounds, {self.lock_acquisitions} lock acquisitions"]


class Watcher:
    """One watcher of one workflow. ``submit(scheduler, count) -> ids`` and ``cancel(ids)`` are
    injectable (tests use fakes); by default they go through ``slurm.allocations``."""

    def __init__(self, db: Any, workflow_id: int, backend: Any, *, site: Any = None,
                 options: WatchOptions | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, say: Callable[[str], None] | None = None,
                 submit: Callable[[str, int], list[str]] | None = None,
                 holder: str | None = None) -> None:
        from torc_slurm.store.workflows import workflow_settings

        self.db, self.workflow_id, self.backend, self.site = db, workflow_id, backend, site
        self.options = options or WatchOptions()
        self.clock, self.sleep = clock, sleep
        self.say = say or (lambda text: log.warning("%s", text))
        self.spec = workflow_settings(db, workflow_id).spec
        if not self.spec.slurm_schedulers:
            raise TorcError(f"workflow {workflow_id} defines no slurm_schedulers: `torc slurm watch` has nothing to "
                            "submit (add a slurm_schedulers entry, or run it with `torc run`)")
        self.shapes = [SchedulerShape(s.name, s.nodes, s.walltime_seconds, self._cpus(s)) for s in
                       self.spec.slurm_schedulers]
        timeout = self.options.lease_timeout or max(4 * self.options.interval, 10.0)
        self.lease = Lease(workflow_id, timeout, holder=holder, clock=clock)
        self.failures: dict[str, Failures] = {}
        self._submit = submit or self._schedule
        self.submitted: list[str] = []
        self.canceled: list[str] = []
        self.rounds = 0
        self._recovered_failed: int | None = None
        self.view: QueueView | None = None
        # A workflow that schedules with actions (schedule_nodes) is not also scheduled on demand:
        # the watcher performs its actions instead (see the README's Actions section).
        self._actions_open = False
        self._action_observer: Any = None
        self.scheduled_by_actions = bool(db.read(
            "SELECT 1 FROM actions WHERE workflow_id = ? AND type = 'schedule_nodes' LIMIT 1", (workflow_id,)))

    def _cpus(self, scheduler: Any) -> int:
        partition = self.site.partition(scheduler.partition) if self.site is not None else None
        return partition.cpus_per_node if partition else 1

    # -- one round ---------------------------------------------------------------------------------
    def read(self) -> QueueView:
        """The round's one lock acquisition: renew (or try for) the lease, read demand, counts
        and allocations."""
        state = {name: f.__dict__ for name, f in self.failures.items() if f.consecutive or f.paused}
        with self.db.transaction() as conn:
            self.lease.step(conn, {"failures": state})
            rows = [dict(r) for r in conn.execute(DEMAND_SQL, {"wf": self.workflow_id,
                                                                "soon": self.options.soon_fraction})]
            counts = {r[0]: r[1] for r in conn.execute(
                "SELECT status, n FROM status_counts WHERE workflow_id = ?", (self.workflow_id,))}
            self._actions_open = conn.execute("SELECT 1 FROM actions WHERE workflow_id = ? AND state IN ('due', 'claimed')"
                                              " LIMIT 1", (self.workflow_id,)).fetchone() is not None
            allocations = [Allocation(r[0], r[1], r[2], r[3]) for r in conn.execute(
                "SELECT slurm_job_id, scheduler, state, submitted_at FROM allocations WHERE workflow_id = ?"
                " ORDER BY id",
                (self.workflow_id,))]
        return QueueView(demand_from_rows(rows, self.shapes), counts, allocations)

    def refresh(self, view: QueueView) -> None:
        """One squeue (and maybe sacct) call for the live allocations; writes only the changes."""
        live = [a for a in view.allocations if a.state not in ENDED_STATES]
        if not live:
            return
        try:
            states = query_states(self.backend, [a.slurm_job_id for a in live])
        except SlurmError as exc:
            log.warning("could not ask Slurm about the allocations this round: %s", exc)
            return
        # A job sbatch just accepted that squeue does not list yet is not gone (a busy controller).
        young = {a.slurm_job_id for a in live if a.state == "submitted" and time.time() - a.submitted_at < SUBMIT_GRACE}
        changed = {a.slurm_job_id: states[a.slurm_job_id] for a in live if states[a.slurm_job_id] != a.state
                   and not (states[a.slurm_job_id] == "gone" and a.slurm_job_id in young)}
        if changed:
            from torc_slurm.store.allocations import update_allocation_states

            update_allocation_states(self.db, self.workflow_id, changed)
            view.allocations = [replace(a, state=changed.get(a.slurm_job_id, a.state)) for a in view.allocations]

    def round(self) -> QueueView:
        self.rounds += 1
        view = self.view = self.read()
        if not self.lease.held:
            if self.lease.lost_reason:
                raise WatchLeaseLost(f"workflow {self.workflow_id}: {self.lease.lost_reason}; this watcher stops "
                                     "submitting and exits")
            if self.lease.alive:
                raise WatchLeaseLost(f"workflow {self.workflow_id} is already watched by {self.lease.other} (its "
                                     "lease is being renewed); this watcher exits without submitting")
        self.refresh(view)
        if self.options.recover and view.failed and view.failed != self._recovered_failed and self.lease.held:
            self._recover()
            view = self.view = self.read()  # the reruns are ready now
        if self.lease.fresh() and self._actions_open:  # a second lock only when an action is due or claimed
            self._perform_actions()
        if view.unfinished == 0:
            return view
        actions = decide(WatchState(self.clock(), view.demand, view.allocations, self.options.limits,
                                    self.failures, may_submit=self.lease.fresh()))
        if self.scheduled_by_actions:
            actions = [a for a in actions if isinstance(a, Pause)]
        for action in actions:
            self._apply(action)
        return view

    def _apply(self, action: Action) -> None:
        if isinstance(action, Cancel):
            if not self.lease.held:
                return
            self._cancel(list(action.slurm_job_ids), action.reason)
        elif isinstance(action, Pause):
            self.failures[action.scheduler] = replace(self.failures.get(action.scheduler, Failures()), paused=True)
            self.say(action.reason)
            from torc_slurm.store.events import add_event

            with self.db.transaction() as conn:
                add_event(conn, self.workflow_id, "watch_paused", action.reason,
                          data={"scheduler": action.scheduler, "failures": self.failures[action.scheduler].consecutive,
                                "last_error": self.failures[action.scheduler].last_error}, source="watch")
        elif isinstance(action, Submit):
            for _ in range(action.count):
                if not self.lease.fresh():  # self-fencing: a stale lease submits nothing
                    return
                failures = self.failures.get(action.scheduler, Failures())
                try:
                    ids = self._submit(action.scheduler, 1)
                except TorcError as exc:
                    self.failures[action.scheduler] = after_failure(failures, self.clock(), str(exc),
                                                                    first=self.options.backoff_first,
                                                                    cap=self.options.backoff_max)
                    f = self.failures[action.scheduler]
                    log.warning("submitting an allocation of scheduler %s failed (%d in a row; next try in %.0f s): %s",
                                action.scheduler, f.consecutive, f.next_try_at - self.clock(), exc)
                    return
                self.failures[action.scheduler] = after_success(failures)
                if not self.lease.fresh():
                    # sbatch took so long that another watcher may have taken the lease over in the
                    # meantime: the late submission is withdrawn, never left to double the queue.
                    self._cancel(ids, "submitted after this watcher's lease went stale (a slow sbatch); withdrawn")
                    return
                self.submitted += ids
                self.say(f"submitted allocation {', '.join(ids)} of scheduler {action.scheduler} ({action.reason})")

    def _perform_actions(self) -> None:
        """The login-node observer of workflow actions (`slurm.actions.login_observe`): those due
        that no runner can perform (compute nodes that cannot submit) and those whose claimant died."""
        from torc_slurm.slurm.actions import login_observe, login_observer

        try:
            if self._action_observer is None:  # kept across rounds: it ages claim leases on this clock
                self._action_observer = login_observer("watch")
            for claim, ok, message in login_observe(self.db, self.workflow_id, "watch", site=self.site,
                                                    backend=self.backend, output_dir=self.options.output_dir,
                                                    observer=self._action_observer):
                self.say(f"{claim.label}: {message}" + ("" if ok else " (failed)"))
        except TorcError as exc:
            log.warning("workflow actions: %s (tried again next round)", exc)

    def _cancel(self, ids: list[str], reason: str) -> None:
        from torc_slurm.store.allocations import update_allocation_states

        try:
            self.backend.cancel(ids)
        except SlurmError as exc:
            log.warning("could not cancel %s: %s", ", ".join(ids), exc)
            return
        update_allocation_states(self.db, self.workflow_id, {i: "canceled" for i in ids})
        self.canceled += ids
        self.say(f"cancelled pending allocation(s) {', '.join(ids)}: {reason}")

    def _schedule(self, scheduler: str, count: int) -> list[str]:
        from torc_slurm.slurm.allocations import ScheduleRequest, schedule_nodes

        result = schedule_nodes(self.db, self.backend, self.site, ScheduleRequest(
            self.workflow_id, scheduler, count, output_dir=self.options.output_dir))
        return result.slurm_job_ids

    def _recover(self) -> None:
        from torc_slurm.cli.recover import node_caps
        from torc_slurm.store.recovery import apply_recovery, plan_recovery

        assert self.view is not None
        self._recovered_failed = self.view.failed
        caps = node_caps(self.db, self.workflow_id, self.spec, self.site)
        try:
            recovery = plan_recovery(self.db, self.workflow_id, caps)
            if recovery.rerun:
                apply_recovery(self.db, recovery)
                self.say(f"recover: {len(recovery.rerun)} job(s) that failed by OOM or timeout reset with more "
                         "resources: " + "; ".join(f"{g.name} {g.describe()}" for g in recovery.rerun))
            for g in recovery.stuck:
                self.say(f"recover: {g.name} left failed: {g.describe()}")
        except TorcError as exc:
            log.warning("recover: %s (tried again next round)", exc)
            self._recovered_failed = None

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> Summary:
        exit_code, message = 0, ""
        try:
            while True:
                start = self.clock()
                view = self.round()
                if view.unfinished == 0 and self.lease.held:
                    self._cancel_queued(view)
                    failed = view.failed
                    exit_code = 1 if failed else 0
                    message = (f"Workflow {self.workflow_id} is complete" +
                               (f" with {failed} failed job(s)" if failed else ""))
                    break
                if self._stuck(view):
                    exit_code = 1
                    message = (f"Workflow {self.workflow_id}: every scheduler with work is paused and no allocation "
                               "is live; fix the cause (see `torc events`) and start the watcher again")
                    break
                if self.options.once:
                    message = f"Workflow {self.workflow_id}: one round done ({view.unfinished} unfinished job(s))"
                    break
                self.sleep(max(0.0, self.options.interval - (self.clock() - start)))
        finally:
            self._release()
        return self.summary(exit_code, message)

    def _stuck(self, view: QueueView) -> bool:
        if not self.lease.held:
            return False
        working = [n for n, d in view.demand.items() if d.ready + d.soon]
        if not working or not all(self.failures.get(n, Failures()).paused for n in working):
            return False
        return not any(a.state not in ENDED_STATES for a in view.allocations)

    def _cancel_queued(self, view: QueueView) -> None:
        ids = [a.slurm_job_id for a in view.allocations if a.state in CANCELABLE_STATES]
        if ids:
            self._cancel(ids, "the workflow is complete")

    def _release(self) -> None:
        if not self.lease.held:
            return
        try:
            with self.db.transaction() as conn:
                self.lease.release(conn)
        except TorcError as exc:
            log.warning("could not release the watch lease: %s", exc)

    def summary(self, exit_code: int, message: str) -> Summary:
        view = self.view
        by_state: dict[str, int] = {}
        for a in (view.allocations if view else []):
            by_state[a.state] = by_state.get(a.state, 0) + 1
        return Summary(self.workflow_id, dict(view.counts) if view else {}, len(self.submitted), len(self.canceled),
                       by_state, self.rounds, self.db.lock.acquisitions, exit_code, message)
