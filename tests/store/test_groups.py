"""Groups in the compiler and the queue: membership, leads and dependency rules are checked at
compile time; a group's members wait for what any of them waits for; the queue hands out a group
whole (every member in one claim) or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.store.test_queue import db, ids, job, job_row, make_queue, take_all  # noqa: F401
from torc_slurm.compiler import compile_workflow
from torc_slurm.errors import SpecError
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.store.db import Database
from torc_slurm.store.queue import Limits


def compiled(**spec: Any):
    return compile_workflow(WorkflowSpec.model_validate({"name": "g", **spec}), "spec.yaml")


def test_members_wait_for_everything_any_member_waits_for() -> None:
    c = compiled(groups=[{"name": "train", "lead": "a"}],
                 jobs=[job("prep"), job("a", group="train", depends_on=["prep"]), job("b", group="train"),
                       job("t_{i}", group="trial_{i}", parameters={"i": "1:2"}),
                       job("u_{i}", group="trial_{i}", parameters={"i": "1:2"})])
    names = [j.name for j in c.jobs]
    groups = {g.name: (g.lead, g.group_end, [names[m] for m in g.members]) for g in c.groups}
    assert groups == {"train": (names.index("a"), "lead", ["a", "b"]), "trial_1": (None, "all", ["t_1", "u_1"]),
                      "trial_2": (None, "all", ["t_2", "u_2"])}
    a, b = c.jobs[names.index("a")], c.jobs[names.index("b")]
    assert a.depset == b.depset is not None and c.dependency_sets[a.depset] == (names.index("prep"),)


@pytest.mark.parametrize(("spec", "message"), [
    ({"groups": [{"name": "x", "lead": "zz"}], "jobs": [job("a", group="x")]},
     "field 'groups[x].lead': the lead 'zz' of group 'x' is not one of its jobs"),
    ({"groups": [{"name": "x"}], "jobs": [job("a")]}, "group 'x' has no member jobs"),
    ({"jobs": [job("a", group="x"), job("b", group="x", depends_on=["a"])]},
     "job 'b', field 'depends_on': job 'b' waits for 'a' of its own group 'x'"),
    ({"groups": [{"name": "x", "group_end": "lead"}], "jobs": [job("a", group="x")]},
     "ends with its lead (group_end: lead) but names no lead"),
    ({"groups": [{"name": "x"}, {"name": "x"}], "jobs": [job("a", group="x")]}, "group 'x' is defined twice"),
    ({"jobs": [job("a", group="../x")]}, "job 'a', field 'group'"),
])
def test_bad_groups_are_refused_naming_the_field(spec: dict, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        compiled(**spec)
    assert message in str(caught.value) and "spec.yaml" in str(caught.value)


def group_queue(db: Database, tmp_path: Path):  # noqa: F811
    return make_queue(db, tmp_path, [job("solo"), job("a", group="g"), job("b", group="g"), job("c", group="g")],
                      groups=[{"name": "g", "lead": "a"}])


def test_a_group_is_claimed_whole_or_not_at_all(db: Database, tmp_path: Path) -> None:  # noqa: F811
    queue = group_queue(db, tmp_path)
    runner = queue.register_runner(hostname="n1", pid=1)
    jid = ids(db)
    partial = queue.cycle(runner, choose=lambda ready: [jid["solo"], jid["a"], jid["b"]]).claimed
    assert [j.name for j in partial] == ["solo"]
    assert {job_row(db, jid[n])["status"] for n in "abc"} == {"ready"}
    seen: list[list[int]] = []
    whole = queue.cycle(runner, choose=lambda ready: seen.append([r.job_id for r in ready]) or take_all(ready)).claimed
    assert seen == [[jid["a"], jid["b"], jid["c"]]]
    assert [(j.name, j.group.rank, j.group.size, j.group.lead_job_id) for j in whole] == [
        ("a", 0, 3, jid["a"]), ("b", 1, 3, jid["a"]), ("c", 2, 3, jid["a"])]
    assert len({j.lease_token for j in whole}) == 1  # one claim


def test_a_window_that_cuts_a_group_still_offers_it_whole(db: Database, tmp_path: Path) -> None:  # noqa: F811
    queue = group_queue(db, tmp_path)
    runner = queue.register_runner(hostname="n1", pid=1)
    seen: list[list[str]] = []
    names = {v: k for k, v in ids(db).items()}
    queue.cycle(runner, window=2, choose=lambda ready: seen.append([names[r.job_id] for r in ready]) or [])
    assert seen == [["solo", "a", "b", "c"]]


def test_a_group_with_a_member_that_does_not_fit_is_not_offered(db: Database, tmp_path: Path) -> None:  # noqa: F811
    queue = make_queue(db, tmp_path, [job("a", group="g"), job("b", group="g", resource_requirements="big")],
                       resource_requirements=[{"name": "big", "num_cpus": 8}])
    runner = queue.register_runner(hostname="n1", pid=1)
    seen: list[list[int]] = []
    queue.cycle(runner, limits=Limits(cpus=4), choose=lambda ready: seen.append(ready) or [])
    assert seen == []  # nothing to offer: the chooser is not even called


def test_multi_node_jobs_are_not_offered_to_a_one_node_runner(db: Database, tmp_path: Path) -> None:  # noqa: F811
    queue = make_queue(db, tmp_path, [job("mpi", resource_requirements="two_nodes"), job("one")],
                       resource_requirements=[{"name": "two_nodes", "num_nodes": 2}])
    runner = queue.register_runner(hostname="n1", pid=1)
    claimed = queue.cycle(runner, limits=Limits(nodes=1), choose=take_all).claimed
    assert [j.name for j in claimed] == ["one"]


def test_a_reset_of_one_member_resets_its_whole_group(db: Database, tmp_path: Path) -> None:  # noqa: F811
    from tests.store.test_queue import done, started
    from torc_slurm.store.restarts import plan_reset

    queue = group_queue(db, tmp_path)
    runner = queue.register_runner(hostname="n1", pid=1)
    claimed = queue.cycle(runner, choose=take_all).claimed
    queue.cycle(runner, started=started(db, *[j.id for j in claimed]))
    jid = ids(db)
    queue.cycle(runner, outcomes=[done(db, jid["solo"]), done(db, jid["a"]), done(db, jid["b"]),
                                  done(db, jid["c"], status="failed", code=2)])
    restart = plan_reset(db, queue.workflow_id, failed_only=True)
    assert {c.name: c.reason.split(" (")[0] for c in restart.changes} == {
        "c": "failed last time", "a": "its group runs again whole", "b": "its group runs again whole"}
    restart.apply(db)
    assert {n: job_row(db, jid[n])["status"] for n in ("a", "b", "c", "solo")} == {
        "a": "ready", "b": "ready", "c": "ready", "solo": "completed"}
