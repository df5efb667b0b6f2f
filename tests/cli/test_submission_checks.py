"""`torc slurm schedule-nodes`, `torc slurm plan` and `torc submit` refuse what cannot run, with
counts, before anything is submitted; --force overrides; --dry-run prints sbatch --test-only's
answer. Slurm here is a fake backend that answers with output captured on the local cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torc_slurm.errors import SlurmError
from torc_slurm.slurm.backend import SlurmBackend
from torc_slurm.slurm.partitions import parse_cluster

from . import create, invoke, write_spec

DATA = Path(__file__).resolve().parents[1] / "slurm" / "data"


class FakeSlurm(SlurmBackend):
    name = "fake"

    def __init__(self, partitions: bool = True) -> None:
        self.submitted: list[str] = []
        self.tested: list[str] = []
        self.partitions = partitions
        self.asked = 0

    def submit(self, script: Path) -> str:
        self.submitted.append(Path(script).read_text())
        return str(1000 + len(self.submitted))

    def status(self, job_ids):
        return {}

    def cancel(self, job_ids) -> None:
        pass

    def cluster_name(self) -> str | None:
        return "torc"

    def cluster_info(self):
        self.asked += 1
        if not self.partitions:
            raise SlurmError("scontrol: cannot reach the controller")
        return parse_cluster((DATA / "scontrol_show_partition.txt").read_text(),
                             (DATA / "scontrol_show_node.txt").read_text())

    def test_only(self, script: Path) -> str:
        self.tested.append(Path(script).read_text())
        return "Job 318 to start at 2026-11-28T12:32:40 using 1 processors on nodes cpu1 in partition cpu"


@pytest.fixture
def slurm(monkeypatch: pytest.MonkeyPatch) -> FakeSlurm:
    fake = FakeSlurm()
    monkeypatch.setattr("torc_slurm.slurm.backend.get_backend", lambda *a, **k: fake)
    return fake


def barrier(folder: Path, walltime: str = "00:10:00", partition: str = "cpu", runtime: str | None = None,
            extra_job: str = "") -> Path:
    resources = f"resource_requirements: [{{name: default, runtime: {runtime}}}]" if runtime else ""
    return write_spec(folder, f"""
        name: barrier
        jobs:
          - {{name: "gen_{{i}}", command: "true", parameters: {{i: "1:200"}}}}
          - {{name: barrier, command: "true", depends_on_regexes: ["^gen_"]}}
          - {{name: final, command: "true", depends_on: [barrier]}}
          {extra_job}
        {resources}
        slurm_schedulers:
          - {{name: short, partition: {partition}, walltime: "{walltime}"}}
        """)


def test_no_declared_runtime_fits_a_ten_minute_allocation(tmp_path: Path, slurm: FakeSlurm) -> None:
    wf = create(tmp_path / "torc.db", barrier(tmp_path))
    result = invoke(tmp_path / "torc.db", "slurm", "schedule-nodes", wf, "--site", "localhost")
    assert result.exit_code == 0, result.output
    assert len(slurm.submitted) == 1 and "Submitted 1 allocation(s)" in result.output


def test_jobs_that_need_an_hour_are_refused_with_counts_and_force_overrides(tmp_path: Path, slurm: FakeSlurm) -> None:
    db = tmp_path / "torc.db"
    wf = create(db, barrier(tmp_path, runtime="PT1H"))
    result = invoke(db, "slurm", "schedule-nodes", wf, "--site", "localhost")
    assert result.exit_code != 0 and not slurm.submitted
    assert "202 jobs need 1 h; scheduler `short` gives 10 min less a 1 min end buffer" in result.output
    assert "Traceback" not in result.output and "spec.yaml" in result.output
    forced = invoke(db, "slurm", "schedule-nodes", wf, "--site", "localhost", "--force")
    assert forced.exit_code == 0, forced.output
    assert len(slurm.submitted) == 1 and "warning (--force)" in forced.output


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"walltime": "08:00:00"}, "walltime 08:00:00 is over partition cpu's MaxTime 1 h (field `walltime`)"),
    ({"partition": "nope"}, "partition 'nope' does not exist (slurm lists: cpu, gpu)"),
    ({"extra_job": '- {name: huge, command: "true", resource_requirements: huge}\n'
                   '        resource_requirements: [{name: huge, num_cpus: 64}]'},
     "1 job needs 64 CPUs; scheduler `short`'s nodes have 8"),
])
def test_refusals_before_anything_is_submitted(tmp_path: Path, slurm: FakeSlurm, kwargs: dict, needle: str) -> None:
    db = tmp_path / "torc.db"
    wf = create(db, barrier(tmp_path, **kwargs))
    result = invoke(db, "slurm", "schedule-nodes", wf, "--site", "localhost")
    assert result.exit_code != 0 and not slurm.submitted
    assert needle in result.output and "refusing to submit (partitions from slurm)" in result.output


def test_partitions_are_cached_for_the_workflow_and_the_site_table_is_the_fallback(
        tmp_path: Path, slurm: FakeSlurm) -> None:
    db = tmp_path / "torc.db"
    wf = create(db, barrier(tmp_path, walltime="08:00:00"))
    for _ in range(2):
        invoke(db, "slurm", "schedule-nodes", wf, "--site", "localhost")
    assert slurm.asked == 1
    slurm.partitions = False
    wf2 = create(db, barrier(tmp_path, walltime="08:00:00"))
    result = invoke(db, "slurm", "schedule-nodes", wf2, "--site", "localhost")
    assert result.exit_code != 0 and "partitions from site config localhost" in result.output
    assert "MaxTime 1 h" in result.output


def test_dry_run_prints_the_script_and_sbatch_test_only(tmp_path: Path, slurm: FakeSlurm) -> None:
    db = tmp_path / "torc.db"
    wf = create(db, barrier(tmp_path))
    result = invoke(db, "slurm", "schedule-nodes", wf, "--site", "localhost", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "#SBATCH" in result.output and "sbatch --test-only (short): Job 318 to start at" in result.output
    assert not slurm.submitted and len(slurm.tested) == 1
    refused = invoke(db, "slurm", "schedule-nodes", create(db, barrier(tmp_path, walltime="08:00:00")),
                     "--site", "localhost", "--dry-run")
    assert refused.exit_code == 1 and "would refuse to submit" in refused.output and not slurm.submitted


def test_plan_table_and_json(tmp_path: Path, slurm: FakeSlurm) -> None:
    db = tmp_path / "torc.db"
    wf = create(db, barrier(tmp_path))
    data = json.loads(invoke(db, "slurm", "plan", wf, "--site", "localhost", "-f", "json").stdout)
    (sched,) = data["schedulers"]
    # 200 one-minute 1-GiB jobs: 7 at a time on an 8 GB node, 9 waves in 9 usable minutes -> 63 per run
    assert [(s["stage"], s["jobs"], s["allocations"]) for s in sched["stages"]] == [(1, 200, 4), (2, 1, 1), (3, 1, 1)]
    assert data["partitions_from"] == "slurm" and data["makespan_s"] > 0
    table = invoke(db, "slurm", "plan", wf, "--site", "localhost")
    assert table.exit_code == 0 and "expected makespan" in table.output and "4 x 1 node(s)" in table.output


def test_submit_uses_the_plan_and_says_when_max_allocations_cuts_it(tmp_path: Path, slurm: FakeSlurm,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = barrier(tmp_path)
    dry = invoke(tmp_path / "torc.db", "submit", spec, "--site", "localhost", "--dry-run")
    assert dry.exit_code == 0, dry.output
    # stage 1 needs 4 allocations and the barrier fits after it in their walltime; the final job does not
    assert "would submit 5 allocation(s) of scheduler short" in dry.output and "sbatch --test-only" in dry.output
    assert "waves: stages 1-2, 3" in dry.output
    assert not slurm.submitted and not (tmp_path / "torc.db").exists()
    result = invoke(tmp_path / "torc.db", "submit", spec, "--site", "localhost", "--max-allocations", "2")
    assert result.exit_code == 0, result.output
    assert "the plan wants 5 allocation(s) of scheduler short; --max-allocations cuts it to 2" in result.output
    assert len(slurm.submitted) == 2


def test_submit_refuses_before_submitting(tmp_path: Path, slurm: FakeSlurm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(tmp_path / "torc.db", "submit", barrier(tmp_path, runtime="PT1H"), "--site", "localhost")
    assert result.exit_code != 0 and not slurm.submitted
    assert "need 1 h; scheduler `short` gives 10 min" in result.output


def test_a_misfit_bound_to_another_scheduler_does_not_block_this_one(tmp_path: Path, slurm: FakeSlurm) -> None:
    db = tmp_path / "torc.db"
    spec = write_spec(tmp_path, """
        name: two
        jobs:
          - {name: small, command: "true"}
          - {name: huge, command: "true", resource_requirements: huge, scheduler: gpus}
        resource_requirements: [{name: huge, num_cpus: 64}]
        slurm_schedulers:
          - {name: short, partition: cpu, walltime: "00:10:00"}
          - {name: gpus, partition: gpu, walltime: "00:10:00", gres: "gpu:4"}
        """)
    wf = create(db, spec)
    assert invoke(db, "slurm", "schedule-nodes", wf, "-s", "short", "--site", "localhost").exit_code == 0
    refused = invoke(db, "slurm", "schedule-nodes", wf, "-s", "gpus", "--site", "localhost")
    assert refused.exit_code != 0 and "1 job needs 64 CPUs; scheduler `gpus`'s nodes have 16" in refused.output
    assert len(slurm.submitted) == 1


def test_plan_without_schedulers_is_a_clean_error(tmp_path: Path, slurm: FakeSlurm) -> None:
    db = tmp_path / "torc.db"
    wf = create(db, write_spec(tmp_path, """
        name: none
        jobs: [{name: a, command: "true"}]
        """))
    result = invoke(db, "slurm", "plan", wf, "--site", "localhost")
    assert result.exit_code != 0 and "defines no slurm_schedulers" in result.output and "Traceback" not in result.output


def test_a_partition_cached_as_down_is_asked_about_again(tmp_path: Path, slurm: FakeSlurm,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "torc.db"
    wf = create(db, barrier(tmp_path))
    down = (DATA / "scontrol_show_partition.txt").read_text().replace("State=UP", "State=DOWN", 1)
    nodes = (DATA / "scontrol_show_node.txt").read_text()
    monkeypatch.setattr(FakeSlurm, "cluster_info", lambda self: (setattr(self, "asked", self.asked + 1),
                                                                  parse_cluster(down, nodes))[1])
    result = invoke(db, "slurm", "schedule-nodes", wf, "--site", "localhost")
    assert result.exit_code != 0 and "partition cpu is DOWN, not UP" in result.output and not slurm.submitted
    monkeypatch.undo()
    monkeypatch.setattr("torc_slurm.slurm.backend.get_backend", lambda *a, **k: slurm)
    assert invoke(db, "slurm", "schedule-nodes", wf, "--site", "localhost").exit_code == 0
    assert slurm.asked == 2 and len(slurm.submitted) == 1
