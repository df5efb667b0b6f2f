"""End-to-end tests on the real local Slurm cluster (``scripts/start-local-slurm.sh``).

Every test drives the real ``torc`` CLI (a subprocess, ``cwd`` = the workflow directory) against the
real cluster, waits on real conditions (the queue file, ``torc … -f json``, ``squeue``) with growing
poll intervals and a bounded deadline, and scancels its own allocations at the end (``conftest.py``).

Isolation from other users of the cluster: every test gets a unique tag, used in its scheduler names,
so its allocations are named ``torc_wf<N>_e2e_<tag>_<scheduler>``; only those, and the ids its queue
file records, are looked at or cancelled.

This module holds the helpers the tests import (``from . import E2E``).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
_TORC = [shutil.which("torc")] if shutil.which("torc") else [sys.executable, "-m", "torc_slurm"]
LIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                         "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "REQUEUE_HOLD", "REQUEUE_FED"})
UNFINISHED = ("uninitialized", "blocked", "ready", "pending", "running")

T = TypeVar("T")


def wait_for(condition: Callable[[], T], *, timeout: float, what: str,
             describe: Callable[[], str] | None = None, first: float = 0.2, ceiling: float = 5.0) -> T:
    """Poll ``condition`` with growing intervals (``first`` x1.5 up to ``ceiling``) until it returns
    something truthy, and return that; after ``timeout`` seconds fail, with ``describe()`` appended."""
    start = time.monotonic()
    interval = first
    while True:
        value = condition()
        if value:
            return value
        elapsed = time.monotonic() - start
        if elapsed >= timeout:
            details = ""
            if describe is not None:
                try:
                    details = "\n" + describe()
                except Exception as exc:  # noqa: BLE001 - the timeout is the error to report
                    details = f"\n(could not describe the state: {exc})"
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{details}")
        time.sleep(min(interval, timeout - elapsed))
        interval = min(interval * 1.5, ceiling)


def squeue(job_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """Slurm's view of the given job ids: id -> {state, end, nodes, name}. Ids Slurm no longer knows
    are absent."""
    ids = sorted(set(job_ids), key=int)
    if not ids:
        return {}
    result = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={','.join(ids)}",
                             "--format=%i|%T|%e|%N|%j"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        if "invalid job id" in result.stderr.lower():
            return {}
        raise AssertionError(f"squeue failed: {result.stderr}")
    jobs = {}
    for line in result.stdout.splitlines():
        if line.strip():
            job_id, state, end, nodes, name = line.strip().split("|", 4)
            jobs[job_id] = {"state": state, "end": end, "nodes": nodes, "name": name}
    return {k: v for k, v in jobs.items() if k in ids}


def wait_idle_nodes(partition: str, count: int, timeout: float = 300.0) -> None:
    """Wait until ``count`` nodes of ``partition`` are idle. Other users' jobs come and go; a test
    that needs every node at once waits for them here rather than racing them."""
    def idle() -> bool:
        out = subprocess.run(["sinfo", "--noheader", "--Node", f"--partition={partition}", "--format=%N|%t"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        states = dict(line.split("|", 1) for line in out.split() if "|" in line)
        return sum(state.startswith("idle") for state in states.values()) >= count

    wait_for(idle, timeout=timeout, what=f"{count} idle nodes in partition {partition}",
             describe=lambda: subprocess.run(["squeue"], capture_output=True, text=True).stdout)


def my_slurm_jobs(tag: str) -> dict[str, dict[str, str]]:
    """This user's Slurm jobs whose name carries ``tag`` (only this test's allocations): id -> info."""
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    result = subprocess.run(["squeue", "--noheader", f"--user={user}", "--format=%i|%T|%j"],
                            capture_output=True, text=True, timeout=60, check=True)
    jobs = {}
    for line in result.stdout.splitlines():
        if "|" in line:
            job_id, state, name = line.strip().split("|", 2)
            if tag in name:
                jobs[job_id] = {"state": state, "name": name}
    return jobs


def slurm_end_epoch(text: str) -> float | None:
    """squeue ``%e`` (local time) -> epoch seconds."""
    import datetime

    if not text or text.upper() in ("N/A", "NONE", "UNKNOWN"):
        return None
    return datetime.datetime.fromisoformat(text).timestamp()


@dataclass
class E2E:
    """One test's working directory, queue file and Slurm allocations."""

    path: Path
    tag: str
    submitted: set[str] = field(default_factory=set)

    # -- names and files -------------------------------------------------------------------------
    @property
    def db(self) -> Path:
        return self.path / "torc.db"

    @property
    def output(self) -> Path:
        return self.path / "torc_output"

    def scheduler(self, suffix: str) -> str:
        """A scheduler name unique to this test (it ends up in the allocation's Slurm job name)."""
        return f"e2e_{self.tag}_{suffix}"

    def write_spec(self, spec: dict[str, Any], name: str = "spec.yaml") -> Path:
        path = self.path / name
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    # -- the CLI ---------------------------------------------------------------------------------
    def torc(self, *args: object, check: bool = True, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        argv = [*_TORC, "--db", str(self.db), *map(str, args)]
        # The emulated nodes declare more CPUs than this host has; sbatch passes this on to the runners.
        env = {**os.environ, "TORC_TRUST_SLURM_CPUS": "1"}
        proc = subprocess.run(argv, cwd=self.path, capture_output=True, text=True, timeout=timeout, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"`torc {' '.join(map(str, args))}` exited {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def torc_json(self, *args: object, ok: tuple[int, ...] = (0,)) -> Any:
        proc = self.torc(*args, "-f", "json", check=False)
        if proc.returncode not in ok:
            raise AssertionError(f"`torc {' '.join(map(str, args))} -f json` exited {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return json.loads(proc.stdout)

    def create(self, spec: dict[str, Any], name: str = "spec.yaml") -> int:
        path = self.write_spec(spec, name)
        return int(self.torc_json("workflows", "create", path.name)["workflow_id"])

    def schedule(self, workflow_id: int, scheduler: str, count: int = 1, *extra: object) -> list[str]:
        """``torc slurm schedule-nodes``; returns the new allocations' Slurm job ids (from the queue
        file, checked against what the command printed)."""
        before = {a["slurm_job_id"] for a in self.allocations(workflow_id)}
        proc = self.torc("slurm", "schedule-nodes", workflow_id, "--scheduler", scheduler,
                         "--num-hpc-jobs", count, *extra, check=False)
        new = sorted({a["slurm_job_id"] for a in self.allocations(workflow_id)} - before, key=int)
        self.submitted.update(new)
        assert proc.returncode == 0, f"schedule-nodes exited {proc.returncode}: {proc.stderr}"
        assert len(new) == count, f"expected {count} new allocation rows, got {new}; stdout: {proc.stdout}"
        for job_id in new:
            assert job_id in proc.stdout, f"schedule-nodes did not print {job_id}: {proc.stdout}"
        return new

    def workflow_status(self, workflow_id: int) -> dict[str, Any]:
        return self.torc_json("workflows", "status", workflow_id, ok=(0, 1))

    def slurm_status(self, workflow_id: int, *extra: object) -> list[dict[str, Any]]:
        return self.torc_json("slurm", "status", workflow_id, *extra)

    # -- the queue file, read directly (read-only) -------------------------------------------------
    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[dict[str, Any]]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(sql, params)]
        finally:
            conn.close()

    def allocations(self, workflow_id: int | None = None) -> list[dict[str, Any]]:
        if not self.db.exists():
            return []
        if workflow_id is None:
            return self.query("SELECT * FROM allocations ORDER BY id")
        return self.query("SELECT * FROM allocations WHERE workflow_id = ? ORDER BY id", (workflow_id,))

    def runners(self, workflow_id: int) -> list[dict[str, Any]]:
        rows = self.query("SELECT * FROM runners WHERE workflow_id = ? ORDER BY id", (workflow_id,))
        for row in rows:
            row["resources"] = json.loads(row["resources"]) if row["resources"] else {}
        return rows

    def results(self, workflow_id: int) -> list[dict[str, Any]]:
        """Result rows joined to their job's name, declared runtime and runner's host/allocation."""
        return self.query(
            "SELECT x.*, j.name AS job_name, j.runtime_s, r.hostname, r.slurm_job_id, r.resources"
            " FROM results x JOIN jobs j ON j.id = x.job_id LEFT JOIN runners r ON r.id = x.runner_id"
            " WHERE x.workflow_id = ? ORDER BY x.id", (workflow_id,))

    def jobs(self, workflow_id: int) -> dict[str, dict[str, Any]]:
        return {row["name"]: row for row in self.query(
            "SELECT * FROM jobs WHERE workflow_id = ? ORDER BY rank", (workflow_id,))}

    # -- waiting ---------------------------------------------------------------------------------
    def describe(self, workflow_id: int | None = None) -> str:
        """The state worth seeing when a wait times out."""
        parts = []
        if workflow_id is not None and self.db.exists():
            parts.append(f"workflow status: {json.dumps(self.workflow_status(workflow_id)['counts'])}")
            parts.append("runners: " + json.dumps([{k: r[k] for k in ("id", "hostname", "slurm_job_id", "status")}
                                                   for r in self.runners(workflow_id)]))
        ids = self.submitted | {a["slurm_job_id"] for a in self.allocations()}
        parts.append(f"squeue: {json.dumps(squeue(ids))}")
        return "\n".join(parts)

    def wait_workflow_done(self, workflow_id: int, timeout: float = 300.0) -> dict[str, Any]:
        """Wait until no job of the workflow is unfinished; return the status JSON."""
        def done() -> dict[str, Any] | None:
            status = self.workflow_status(workflow_id)
            return status if not any(status["counts"].get(s, 0) for s in UNFINISHED) else None

        return wait_for(done, timeout=timeout, what=f"workflow {workflow_id} to finish",
                        describe=lambda: self.describe(workflow_id))

    def wait_slurm_states(self, job_ids: Iterable[str], accept: Callable[[str | None], bool], *,
                          timeout: float, what: str) -> dict[str, dict[str, str]]:
        """Wait until ``accept(state)`` holds for every id (state None: Slurm forgot the job)."""
        ids = list(job_ids)

        def check() -> dict[str, dict[str, str]] | None:
            seen = squeue(ids)
            if all(accept(seen.get(i, {}).get("state")) for i in ids):
                return seen or {"": {}}  # truthy even when Slurm forgot every id
            return None

        seen = wait_for(check, timeout=timeout, what=what, describe=self.describe)
        return {k: v for k, v in seen.items() if k}

    def wait_allocations_ended(self, job_ids: Iterable[str], timeout: float = 300.0) -> dict[str, dict[str, str]]:
        return self.wait_slurm_states(job_ids, lambda s: s not in LIVE_STATES, timeout=timeout,
                                      what=f"allocations {sorted(job_ids)} to end")

    # -- debugging and cleanup -------------------------------------------------------------------
    def slurm_logs(self, limit: int = 20_000) -> str:
        """The Slurm output files of this test's allocations, each with a header."""
        chunks = []
        for path in sorted(self.path.rglob("slurm-*.out")) + sorted(self.path.rglob("slurm-*.err")):
            text = path.read_text(errors="replace")
            if len(text) > limit:
                text = f"… ({len(text) - limit} characters left off)\n" + text[-limit:]
            chunks.append(f"===== {path} =====\n{text}")
        return "\n".join(chunks) or f"(no Slurm output files under {self.path})"

    def own_job_ids(self) -> set[str]:
        ids = set(self.submitted)
        try:
            ids |= {a["slurm_job_id"] for a in self.allocations()}
        except sqlite3.Error:
            pass
        ids |= set(my_slurm_jobs(self.tag))
        return ids

    def cancel_ids(self, job_ids: Iterable[str]) -> None:
        """``scancel`` some of this test's own allocations."""
        ids = sorted(job_ids, key=int)
        foreign = set(ids) - self.own_job_ids()
        assert not foreign, f"refusing to scancel jobs this test did not submit: {sorted(foreign)}"
        subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=60, check=True)

    def cancel_all(self) -> None:
        """scancel this test's allocations (never anyone else's) and wait, bounded, until they end."""
        ids = sorted(self.own_job_ids(), key=int)
        live = [i for i, info in squeue(ids).items() if info["state"] in LIVE_STATES]
        if not live:
            return
        subprocess.run(["scancel", *live], capture_output=True, text=True, timeout=60)
        try:
            self.wait_allocations_ended(live, timeout=60)
        except AssertionError as exc:
            print(f"warning: {exc}", file=sys.stderr)



def barrier_spec(scheduler: str, **scheduler_fields: Any) -> dict[str, Any]:
    """``examples/barrier_demo.yaml`` with a Slurm scheduler added."""
    spec = yaml.safe_load((EXAMPLES / "barrier_demo.yaml").read_text())
    spec["slurm_schedulers"] = [{"name": scheduler, **scheduler_fields}]
    return spec
