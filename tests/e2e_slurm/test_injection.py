"""Scheduler fields that try to inject sbatch directives or shell commands are refused before anything
reaches Slurm; odd but valid values are shell-quoted, and sbatch reads them back unquoted."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from . import E2E, my_slurm_jobs, squeue

pytestmark = pytest.mark.slurm

# (field, value template; {dir} is the test's working directory, so a successful injection would
# leave a file only this test looks for).
ATTEMPTS = [
    ("partition", "debug\n#SBATCH --wrap=touch {dir}/pwned"),
    ("account", "$(touch {dir}/pwned)"),
    ("gres", "gpu:1;touch {dir}/pwned"),
    ("qos", "normal`touch {dir}/pwned`"),
    ("extra", ["--comment=x\n#SBATCH --wrap=touch {dir}/pwned"]),
]


def _spec(env: E2E, scheduler: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": f"inject_{env.tag}",
        "compute_node_wait_for_new_jobs_seconds": 2,
        "jobs": [{"name": "victim", "command": "true", "resource_requirements": "small"}],
        "resource_requirements": [{"name": "small", "num_cpus": 1, "memory": "100m", "runtime": "PT1M"}],
        "slurm_schedulers": [{"name": scheduler, "partition": "cpu", "walltime": "00:05:00", **fields}],
    }


@pytest.mark.parametrize(("field", "template"), ATTEMPTS, ids=[a[0] for a in ATTEMPTS])
def test_injection_in_scheduler_fields_is_refused(e2e: E2E, field: str, template: Any) -> None:
    value = ([v.format(dir=e2e.path) for v in template] if isinstance(template, list)
             else template.format(dir=e2e.path))
    scheduler = e2e.scheduler("inj")
    path = e2e.write_spec(_spec(e2e, scheduler, **{field: value}))

    created = e2e.torc("workflows", "create", path.name, check=False)
    assert created.returncode == 2, created
    assert f"slurm_schedulers[{scheduler}].{field}" in created.stderr, created.stderr
    assert "Traceback" not in created.stderr
    assert not e2e.db.exists(), "a refused spec must not create the queue file"

    submitted = e2e.torc("submit", path.name, check=False)
    assert submitted.returncode == 2, submitted
    assert f"slurm_schedulers[{scheduler}].{field}" in submitted.stderr, submitted.stderr
    assert "Submitted" not in submitted.stdout

    assert not e2e.allocations(), "no allocation may be recorded"
    assert not my_slurm_jobs(e2e.tag), "nothing may reach Slurm"
    assert not (e2e.path / "pwned").exists()
    assert not list(e2e.path.rglob("*.sh")), "no batch script may be written"


def test_dry_run_quotes_odd_values_and_sbatch_reads_them_back(e2e: E2E) -> None:
    """`--dry-run` prints the script without submitting; a value with a space is shell-quoted in its
    #SBATCH line, the script is valid bash, and a real submission of the same spec shows Slurm got
    the value itself (quotes removed, nothing split off)."""
    scheduler = e2e.scheduler("odd")
    comment = f"a b {e2e.tag} $(touch {e2e.path}/pwned)"
    workflow_id = e2e.create(_spec(e2e, scheduler, extra=[f"--comment={comment}"]))

    proc = e2e.torc("slurm", "schedule-nodes", workflow_id, "--scheduler", scheduler, "--dry-run")
    script = proc.stdout
    assert script.startswith("#!/bin/bash\n"), script
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert f"#SBATCH --comment='{comment}'" in directives, directives
    assert f"#SBATCH --job-name=torc_wf{workflow_id}_{scheduler}" in directives
    assert "#SBATCH --partition=cpu" in directives and "#SBATCH --exclusive" in directives
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert not e2e.allocations(workflow_id), "a dry run submits nothing"
    assert not my_slurm_jobs(e2e.tag)
    assert e2e.workflow_status(workflow_id)["status"] == "uninitialized", "a dry run changes nothing"

    [allocation] = e2e.schedule(workflow_id, scheduler, 1)
    shown = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={allocation}", "--format=%k"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert shown == comment, f"Slurm's comment is {shown!r}"
    e2e.wait_workflow_done(workflow_id, timeout=300)
    e2e.wait_allocations_ended([allocation], timeout=120)
    assert squeue([allocation])[allocation]["state"] == "COMPLETED"
    assert not (e2e.path / "pwned").exists()
