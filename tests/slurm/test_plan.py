"""The plan (pure): the packer simulated node run by node run, stage by stage, with counts that can
be worked out by hand; and the stages read from a real queue's dependency sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from torc_slurm.compiler import compile_workflow
from torc_slurm.slurm.allocations import job_shapes, set_stages
from torc_slurm.slurm.fit import JobShape, Offer
from torc_slurm.slurm.plan import make_plan, plan_stage
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.store.db import Database
from torc_slurm.store.workflows import add_workflow, initialize_workflow

GIB = 2**30
NODE = {"cpus": 8, "gpus": 0, "memory_bytes": 8 * GIB}


def offer(name: str = "s", nodes: int = 1, walltime: int = 600, buffer: int = 60, **node: int) -> Offer:
    return Offer(name, nodes, walltime_s=walltime, buffer_s=buffer, **{**NODE, **node})


def shape(count: int, runtime: int = 60, cpus: int = 1, memory: int = 100 * 2**20, stage: int = 1,
          scheduler: str | None = None, gpus: int = 0, nodes: int = 1) -> JobShape:
    return JobShape(scheduler, nodes, gpus, memory, runtime, cpus, count, stage)


@pytest.mark.parametrize(("jobs", "runtime", "cpus", "walltime", "runs"), [
    (72, 60, 1, 600, 1),      # 8 at a time, 9 waves in 540 s usable
    (73, 60, 1, 600, 2),
    (100, 60, 1, 600, 2),
    (1000, 60, 1, 600, 14),   # ceil(1000 / 72)
    (10, 300, 4, 3600, 1),    # 2 at a time, 11 waves
    (30, 300, 4, 3600, 2),    # 22 per run
    (5, 600, 8, 3600, 1),
])
def test_node_runs_by_hand(jobs: int, runtime: int, cpus: int, walltime: int, runs: int) -> None:
    stage = plan_stage([shape(jobs, runtime, cpus)], offer(walltime=walltime))
    assert (stage.jobs, stage.node_runs, stage.allocations) == (jobs, runs, runs)


def test_memory_bounds_the_packing_too() -> None:
    # 1 GiB each on an 8 GiB node: still 8 at a time; at 1.5 GiB only 5 at a time -> 45 per run.
    assert plan_stage([shape(90, memory=GIB)], offer()).node_runs == 2
    assert plan_stage([shape(90, memory=3 * GIB // 2)], offer()).node_runs == 2
    assert plan_stage([shape(91, memory=3 * GIB // 2)], offer()).node_runs == 3


def test_allocations_are_node_runs_over_the_schedulers_nodes_and_times_are_sane() -> None:
    stage = plan_stage([shape(1000)], offer(nodes=4))
    assert (stage.node_runs, stage.allocations) == (14, 4)
    assert 60 <= stage.duration_s <= 540
    assert stage.node_hours == pytest.approx(1000 * 60 / 8 / 3600, rel=0.05)


def test_three_stages_and_the_makespan() -> None:
    shapes = [shape(100, stage=1), shape(1, stage=2), shape(16, runtime=120, cpus=2, stage=3)]
    plan = make_plan(shapes, [offer()])
    (sched,) = plan.schedulers
    assert [(s.stage, s.jobs, s.allocations) for s in sched.stages] == [(1, 100, 2), (2, 1, 1), (3, 16, 1)]
    # 390 s + 60 s fit the 540 usable seconds: stages 1 and 2 share their allocations; stage 3 does not fit after them
    assert sched.waves() == [sched.stages[:2], sched.stages[2:]]
    assert sched.allocations == 2 + 1 and plan.stages == 3 and plan.unplaceable == 0
    assert plan.makespan_s == pytest.approx(sum(s.duration_s for s in sched.stages))
    assert plan.to_dict()["schedulers"][0]["stages"][2] == {"stage": 3, "jobs": 16, "node_runs": 1, "allocations": 1,
                                                           "node_hours": pytest.approx(0.133, abs=0.01),
                                                           "duration_s": 480.0}


def test_small_stages_share_one_allocation_on_a_long_walltime() -> None:
    plan = make_plan([shape(10, stage=1), shape(10, stage=2), shape(10, stage=3)], [offer(walltime=4 * 3600)])
    (sched,) = plan.schedulers
    assert [s.allocations for s in sched.stages] == [1, 1, 1] and sched.allocations == 1
    assert plan.to_dict()["schedulers"][0]["waves"] == [[1, 2, 3]]


def test_jobs_go_to_their_scheduler_or_the_first_that_fits_and_misfits_are_counted() -> None:
    small, gpu = offer("small"), offer("gpu", gpus=4, cpus=16, memory_bytes=16 * GIB)
    shapes = [shape(10), shape(3, gpus=1), shape(2, scheduler="gpu"), shape(4, cpus=64), shape(1, runtime=10**5)]
    plan = make_plan(shapes, [small, gpu])
    by_name = {s.scheduler: s.jobs for s in plan.schedulers}
    assert by_name == {"small": 10, "gpu": 5} and plan.unplaceable == 5


def test_a_hundred_thousand_jobs_are_planned_quickly() -> None:
    import time

    shapes = [shape(50_000, stage=1), shape(49_000, runtime=300, cpus=2, stage=2), shape(1000, runtime=600, cpus=4,
                                                                                            stage=3)]
    start = time.perf_counter()
    plan = make_plan(shapes, [offer(nodes=2, walltime=3600)])
    assert time.perf_counter() - start < 1.0
    assert [s.node_runs for s in plan.schedulers[0].stages] == [106, 1114, 100]


@pytest.mark.parametrize(("links", "stages"), [
    ([], {}),
    ([(1, None)], {1: 2}),
    ([(1, None), (2, 1)], {1: 2, 2: 3}),
    ([(1, None), (2, 1), (3, None), (3, 2)], {1: 2, 2: 3, 3: 4}),
    ([(i + 1, i or None) for i in range(5000)], {i + 1: i + 2 for i in range(5000)}),   # a long chain
])
def test_set_stages(links: list, stages: dict) -> None:
    assert set_stages(links) == stages


def test_job_shapes_from_a_queue_barrier(tmp_path: Path) -> None:
    spec = WorkflowSpec.model_validate({
        "name": "b",
        "jobs": [{"name": "gen_{i}", "command": "true", "parameters": {"i": "1:10"}},
                 {"name": "barrier", "command": "true", "depends_on_regexes": ["^gen_"]},
                 {"name": "proc_{i}", "command": "true", "depends_on": ["barrier"], "parameters": {"i": "1:5"},
                  "resource_requirements": "two"}],
        "resource_requirements": [{"name": "two", "num_cpus": 2, "runtime": "PT5M"}]})
    with Database(tmp_path / "torc.db") as db:
        wf = add_workflow(db, compile_workflow(spec, "b"), working_dir=tmp_path)
        initialize_workflow(db, wf)
        shapes = job_shapes(db, wf)
    assert [(s.stage, s.count, s.num_cpus, s.runtime_s) for s in shapes] == [(1, 10, 1, 60), (2, 1, 1, 60),
                                                                           (3, 5, 2, 300)]
