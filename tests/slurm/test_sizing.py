"""`torc submit`'s sizing accounts for multi-node jobs: their CPUs count on every node, an unbound
one goes to a scheduler with enough nodes, and one that no scheduler can hold is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from torc_slurm.errors import SpecError
from torc_slurm.slurm.allocations import allocations_needed
from torc_slurm.slurm.sites import load_site
from torc_slurm.spec.models import WorkflowSpec

REPO = Path(__file__).resolve().parents[2]


def spec(*schedulers: dict) -> WorkflowSpec:
    return WorkflowSpec.model_validate({"name": "s", "jobs": [{"name": "a", "command": "true"}],
                                        "slurm_schedulers": list(schedulers)})


def job(name: str, nodes: int = 1, scheduler: str | None = None, cpus: int = 8, runtime: int = 3600) -> dict:
    return {"name": name, "num_nodes": nodes, "num_cpus": cpus, "runtime_s": runtime, "scheduler": scheduler}


@pytest.fixture
def site():  # noqa: ANN201
    return load_site(str(REPO / "site_configs" / "localhost.yaml"))


def test_a_multi_node_job_goes_to_a_scheduler_with_enough_nodes(site) -> None:  # noqa: ANN001
    schedulers = ({"name": "one", "partition": "cpu", "nodes": 1, "walltime": "01:00:00"},
                  {"name": "two", "partition": "cpu", "nodes": 2, "walltime": "01:00:00"})
    # 2 nodes x 8 CPUs x 1 h fills one 2-node 1 h allocation exactly; the 1-node job fills one of "one"
    assert allocations_needed(spec(*schedulers), [job("mpi", 2), job("solo")], site, 10) == {"one": 1, "two": 1}
    assert allocations_needed(spec(*schedulers), [job("mpi", 2), job("mpi2", 2)], site, 10) == {"two": 2}


def test_a_job_no_scheduler_can_hold_is_named(site) -> None:  # noqa: ANN001
    with pytest.raises(SpecError, match=r"job 'big' needs 3 nodes, but no slurm_schedulers entry gives more than 2"):
        allocations_needed(spec({"name": "two", "partition": "cpu", "nodes": 2, "walltime": "01:00:00"}),
                           [job("big", 3)], site, 10)
    with pytest.raises(SpecError, match=r"its scheduler 'one' gives 1"):
        allocations_needed(spec({"name": "one", "partition": "cpu", "nodes": 1, "walltime": "01:00:00"}),
                           [job("big", 2, scheduler="one")], site, 10)
