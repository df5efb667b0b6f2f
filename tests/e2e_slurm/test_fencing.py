"""Jobs die with their runner inside a Slurm allocation, and the next allocation takes them over
at once, never running one twice at the same time (the exactly-once issue, on the real cluster).

All emulated nodes are this host, so a test can see every process, and the runners' own checks
find a killed runner's pid gone."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psutil
import pytest

from . import E2E, wait_for
from .test_walltime_and_cancel import _assert_completed_exactly_once, _assert_no_concurrent_attempts

pytestmark = pytest.mark.slurm

# The first attempt starts a background grandchild and waits; later attempts finish at once.
# Every attempt checks that no process of an earlier attempt of its job is still running.
COMMAND = ('for p in $(cat "marks/$TORC_JOB_NAME.pids" 2>/dev/null); do'
           # a zombie (exited, its parent killed before reaping it) answers kill -0 but runs nothing
           ' state=$(cut -d")" -f2 /proc/$p/stat 2>/dev/null | cut -c2);'
           ' case "$state" in ""|Z*) ;; *) echo "$TORC_JOB_NAME: $p alive ($state)" >> marks/overlaps;; esac; done;'
           ' if [ "$TORC_ATTEMPT" = 1 ]; then sleep 300 & echo "$$ $!" >> "marks/$TORC_JOB_NAME.pids"; wait;'
           ' else echo $$ >> "marks/$TORC_JOB_NAME.pids"; sleep 1; fi')


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_kill_9_of_a_runner_in_an_allocation_kills_its_jobs_and_the_next_allocation_takes_over(e2e: E2E) -> None:
    scheduler = e2e.scheduler("k9")
    (e2e.path / "marks").mkdir()
    spec: dict[str, Any] = {
        "name": f"kill9_{e2e.tag}",
        "compute_node_wait_for_new_jobs_seconds": 5,
        "jobs": [{"name": "job_{i}", "command": COMMAND, "resource_requirements": "small",
                  "parameters": {"i": "1:2"}}],
        "resource_requirements": [{"name": "small", "num_cpus": 1, "memory": "100m", "runtime": "PT2M"}],
        "slurm_schedulers": [{"name": scheduler, "partition": "cpu", "walltime": "00:10:00"}],
    }
    workflow_id = e2e.create(spec)
    [first] = e2e.schedule(workflow_id, scheduler, 1)
    wait_for(lambda: len(list((e2e.path / "marks").glob("*.pids"))) == 2, timeout=300,
             what="both jobs running with their grandchildren", describe=lambda: e2e.describe(workflow_id))
    pids = [int(p) for f in (e2e.path / "marks").glob("*.pids") for p in f.read_text().split()]
    [runner] = e2e.runners(workflow_id)
    os.kill(runner["pid"], signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: not any(_alive(p) for p in pids), timeout=5, first=0.05, ceiling=0.2,
             what="the killed runner's jobs and their children to die")
    assert time.monotonic() - killed <= 5
    e2e.wait_allocations_ended([first], timeout=120)

    [second] = e2e.schedule(workflow_id, scheduler, 1)
    e2e.wait_workflow_done(workflow_id, timeout=300)
    rows = _assert_completed_exactly_once(e2e, workflow_id)
    _assert_no_concurrent_attempts(rows)
    assert not (e2e.path / "marks" / "overlaps").exists(), (e2e.path / "marks" / "overlaps").read_text()
    lost = [r for r in rows if r["status"] == "lost"]
    assert len(lost) == 2 and all("is gone" in r["message"] or "Slurm report" in r["message"] for r in lost), lost
    assert {r["slurm_job_id"] for r in rows if r["status"] == "completed"} == {second}
