"""`torc recover` on the command line: caps from Slurm schedulers and site partitions, the allocations a
rerun needs (and --submit, through a fake Slurm backend), --retry-unknown, JSON output, and errors
without tracebacks. Jobs are driven to their ends through the runner's queue cycle (no processes
needed here; tests/cli/test_seed_scenarios.py runs real ones)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from . import create, invoke, write_spec

SPEC = """
name: recovering
jobs:
  - {name: slow, command: "sleep 1", resource_requirements: nine_minutes, scheduler: short}
  - {name: hungry, command: "true", resource_requirements: big, scheduler: short}
  - {name: broken, command: "exit 3", scheduler: short}
  - {name: after, command: "true", depends_on: [slow, hungry, broken], scheduler: short}
resource_requirements:
  - {name: nine_minutes, runtime: PT9M, memory: 1g}
  - {name: big, runtime: PT1M, memory: 6g}
slurm_schedulers:
  - {name: short, partition: cpu, walltime: "00:10:00"}
"""


def end(db_path: Path, workflow_id: int, outcomes: dict[str, tuple[str, str | None, int]]) -> None:
    """Claim the named ready jobs as a fake runner and report (status, reason, return code) for each."""
    from torc_slurm.store.db import Database
    from torc_slurm.store.queue import Outcome, Queue

    with Database(db_path, create=False) as db:
        queue = Queue(db, workflow_id)
        runner = queue.register_runner(hostname="node-1", pid=4242, resources={"memory_bytes": 2**30})
        claimed = {c.name: c for c in queue.cycle(runner, choose=lambda ready: [r.job_id for r in ready]).claimed}
        now = time.time()
        queue.cycle(runner, outcomes=[
            Outcome(claimed[n].id, claimed[n].attempt, s, claimed[n].lease_token, return_code=rc,  # type: ignore[arg-type]
                    started_at=now - 1, ended_at=now, reason=reason) for n, (s, reason, rc) in outcomes.items()])
        queue.finish_runner(runner)


@pytest.fixture
def failed(tmp_path: Path) -> tuple[Path, int]:
    db = tmp_path / "torc.db"
    wf = create(db, write_spec(tmp_path, SPEC))
    assert invoke(db, "workflows", "init", wf).exit_code == 0
    end(db, wf, {"slow": ("failed", "timeout", 137), "hungry": ("failed", "oom", 137),
                 "broken": ("failed", "exit code 3", 3)})
    return db, wf


def test_caps_come_from_the_schedulers_partition_and_walltime(failed: tuple[Path, int]) -> None:
    db, wf = failed
    dry = invoke(db, "recover", wf, "--site", "localhost", "--dry-run")
    real = invoke(db, "recover", wf, "--site", "localhost")
    assert dry.exit_code == real.exit_code == 1  # slow cannot grow
    assert dry.stdout == real.stdout
    lines = real.stdout.splitlines()
    # memory: 6 GiB x 1.5 capped at the cpu partition's 8000M; runtime: 10 min walltime - 60 s buffer = 9 min
    assert "  hungry  failed -> ready      oom: memory 6 GiB -> 8000 MiB (capped: the largest node)" in lines
    assert "  after   canceled -> blocked  downstream of hungry" in lines
    assert "Cannot grow (left failed; the largest node: schedulers short):" in lines
    assert "  slow  timeout: cannot grow, runtime 9m00s is already the most any node offers" in lines
    assert "  broken  exit code 3" in lines
    assert any(line.startswith("Allocations the rerun needs: 1 x short") for line in lines)
    assert "Dry run: nothing was changed." in dry.stderr and "2 jobs reset" in real.stderr
    rows = {r["name"]: r for r in json.loads(invoke(db, "jobs", "list", wf, "-f", "json").stdout)}
    assert rows["hungry"]["memory_bytes"] == 8000 * 2**20 and rows["hungry"]["status"] == "ready"
    assert rows["slow"]["status"] == "failed" and rows["slow"]["runtime_s"] == 540
    assert rows["after"]["status"] == "blocked"  # slow and broken still failed: it waits for them


def test_retry_unknown_reruns_other_failures_unchanged_and_json_matches(failed: tuple[Path, int]) -> None:
    db, wf = failed
    dry = invoke(db, "recover", wf, "--site", "localhost", "--retry-unknown", "--runtime-factor", "1",
                 "--dry-run", "-f", "json")
    real = invoke(db, "recover", wf, "--site", "localhost", "--retry-unknown", "--runtime-factor", "1", "-f", "json")
    plan, done = json.loads(dry.stdout), json.loads(real.stdout)
    assert plan["dry_run"] and not done["dry_run"]
    plan.pop("dry_run"), done.pop("dry_run")
    assert plan == done
    assert {c["job"]: c["why"] for c in done["rerun"]} == {
        "hungry": "oom: memory 6 GiB -> 8000 MiB (capped: the largest node)",
        "broken": "exit code 3: rerun unchanged (--retry-unknown)",
        # the first seed in rank order: hungry (6g) before broken (1g), both 1 minute
        "after": "downstream of hungry"}
    # CPU-seconds, as `torc submit` sizes them: 1 + 1 minute fit one 10-minute allocation
    assert done["allocations"] == {"short": 1}
    assert [c["job"] for c in done["cannot_grow"]] == ["slow"]


def test_submit_submits_the_allocations_the_rerun_needs(failed: tuple[Path, int], monkeypatch) -> None:  # noqa: ANN001
    db, wf = failed
    submitted = []

    class FakeSlurm:
        def submit(self, path: Path) -> str:
            submitted.append(Path(path).read_text())
            return str(5000 + len(submitted))

        def cluster_info(self):  # noqa: ANN202 - no scontrol here: the site's table is used
            from torc_slurm.errors import SlurmError

            raise SlurmError("scontrol is not available")

    monkeypatch.setattr("torc_slurm.slurm.backend.get_backend", lambda *a, **k: FakeSlurm())
    result = invoke(db, "recover", wf, "--site", "localhost", "--submit")
    assert result.exit_code == 1  # slow still cannot grow
    assert "Submitted 1 allocation(s) of scheduler short: 5001" in result.stdout
    assert len(submitted) == 1 and "slurm run-jobs" in submitted[0]


def test_submit_without_schedulers_and_unknown_workflows_are_errors(tmp_path: Path) -> None:
    db = tmp_path / "torc.db"
    wf = create(db, write_spec(tmp_path, "name: x\njobs: [{name: a, command: 'true'}]\n"))
    invoke(db, "workflows", "init", wf)
    end(db, wf, {"a": ("failed", "oom", 137)})
    result = invoke(db, "recover", wf, "--submit")
    assert result.exit_code == 2 and "nothing to submit" in result.stderr
    # without schedulers the cap is the largest node a runner of the workflow had (1 GiB here)
    result = invoke(db, "recover", wf, "--dry-run")
    assert "  a  oom: cannot grow, memory 1 GiB is already the most any node offers" in result.stdout
    missing = invoke(db, "recover", 99)
    assert missing.exit_code == 1 and "no workflow 99" in missing.stderr and "Traceback" not in missing.output
    bad = invoke(db, "recover", wf, "--memory-factor", "0.5")
    assert bad.exit_code == 2


# -- on the local Slurm cluster ------------------------------------------------------------------
@pytest.fixture
def slurm_e2e(request: pytest.FixtureRequest, slurm_cluster):  # noqa: ANN001, ANN201
    """The e2e tests' working directory and cleanup (tests/e2e_slurm/conftest.py), for this module."""
    import os
    import secrets
    import shutil

    from tests.e2e_slurm import E2E

    tag = f"{os.getpid() % 100000}{secrets.token_hex(3)}"
    path = Path(os.path.realpath(Path(os.environ.get("TORC_E2E_DIR", "/var/tmp")) / f"torc_e2e_recover_{tag}"))
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    env = E2E(path=path, tag=tag)
    try:
        yield env
    finally:
        env.cancel_all()
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slurm
def test_recover_submit_on_slurm_reruns_only_the_timed_out_job(slurm_e2e) -> None:  # noqa: ANN001
    """A job that overran its enforced runtime times out inside an allocation; `torc recover --submit`
    grows its runtime, submits the allocation the rerun needs, and only that job runs again."""
    e2e = slurm_e2e
    scheduler = e2e.scheduler("rcv")
    workflow_id = e2e.create({
        "name": f"recover_{e2e.tag}",
        "compute_node_wait_for_new_jobs_seconds": 3,
        "jobs": [
            {"name": "first", "command": "echo first > first.txt", "resource_requirements": "small"},
            {"name": "slow", "command": "sleep 4", "depends_on": ["first"], "resource_requirements": "tight",
             "enforce_runtime": True},
        ],
        "resource_requirements": [{"name": "small", "memory": "100m", "runtime": "PT1M"},
                                  {"name": "tight", "memory": "100m", "runtime": "PT2S"}],
        "slurm_schedulers": [{"name": scheduler, "partition": "cpu", "walltime": "00:05:00"}],
    })
    e2e.schedule(workflow_id, scheduler)
    e2e.wait_workflow_done(workflow_id)
    jobs = e2e.jobs(workflow_id)
    assert (jobs["slow"]["status"], jobs["slow"]["reason"]) == ("failed", "timeout")
    first = [r for r in e2e.results(workflow_id) if r["job_name"] == "first"]

    dry = e2e.torc("recover", workflow_id, "--site", "localhost", "--dry-run")
    real = e2e.torc("recover", workflow_id, "--site", "localhost", "--submit")
    assert "  slow  failed -> ready  timeout: runtime 2 s -> 3 s" in dry.stdout
    assert f"Allocations the rerun needs: 1 x {scheduler}" in dry.stdout
    assert real.stdout.startswith(dry.stdout)
    submitted = [a["slurm_job_id"] for a in e2e.allocations(workflow_id)][1:]
    e2e.submitted.update(submitted)
    assert len(submitted) == 1 and f"Submitted 1 allocation(s) of scheduler {scheduler}: {submitted[0]}" in real.stdout
    e2e.wait_workflow_done(workflow_id)
    jobs = e2e.jobs(workflow_id)
    assert {n: r["status"] for n, r in jobs.items()} == {"first": "completed", "slow": "completed"}
    assert jobs["slow"]["runtime_s"] == 3 and jobs["slow"]["attempt"] == 2
    assert [r for r in e2e.results(workflow_id) if r["job_name"] == "first"] == first
