"""Multi-node jobs in the queue: the launching runner books the other nodes in its claim's own
transaction, members acknowledge (or refuse) at their next cycle, two gangs cannot each hold half
of their nodes, and a member's death ends the job's attempt."""

from __future__ import annotations

from pathlib import Path

from tests.store.test_queue import db, ids, job, job_row, make_queue, take_all  # noqa: F401
from torc_slurm.store.db import Database
from torc_slurm.store.gangs import Free
from torc_slurm.store.leases import SweepRequest
from torc_slurm.store.queue import Limits, Queue

GIB = 2**30
NODE = Free(8, 2, 16 * GIB)


def gang_queue(db: Database, tmp_path: Path, *names: str) -> Queue:  # noqa: F811
    return make_queue(db, tmp_path, [job(n, resource_requirements="two_nodes") for n in names],
                      resource_requirements=[{"name": "two_nodes", "num_nodes": 2, "num_cpus": 8, "num_gpus": 1,
                                              "memory": "4g", "runtime": "PT10M"}])


def runners(queue: Queue, count: int = 2, allocation: str = "77") -> list[int]:
    return [queue.register_runner(hostname=f"n{i + 1}", pid=100 + i, slurm_job_id=allocation) for i in range(count)]


def accept_all(gpu: str = "1"):  # noqa: ANN201
    return lambda shares: {s.job_id: [gpu] for s in shares}


def test_a_gang_is_booked_acknowledged_and_then_startable(db: Database, tmp_path: Path) -> None:  # noqa: F811
    queue = gang_queue(db, tmp_path, "mpi")
    launcher, member = runners(queue)
    queue.cycle(member, free=NODE, accept=accept_all())          # publishes what it can give
    claimed = queue.cycle(launcher, free=NODE, accept=accept_all(), choose=take_all,
                          limits=Limits(nodes=2)).claimed
    assert [(j.name, j.num_nodes) for j in claimed] == [("mpi", 2)]
    first = queue.cycle(launcher, free=NODE, accept=accept_all(), held={claimed[0].id: claimed[0].lease_token})
    [pending] = first.gangs[claimed[0].id]
    assert (pending.runner_id, pending.node, pending.acked) == (member, "n2", False)
    answered = queue.cycle(member, free=NODE, accept=accept_all("1"))
    assert [(s.job_id, s.gpu_ids) for s in answered.shares] == [(claimed[0].id, ("1",))]
    ready = queue.cycle(launcher, free=NODE, accept=accept_all(), held={claimed[0].id: claimed[0].lease_token})
    [acked] = ready.gangs[claimed[0].id]
    assert acked.acked and acked.gpu_ids == ("1",)


def test_too_few_free_nodes_books_nothing(db: Database, tmp_path: Path) -> None:  # noqa: F811
    queue = gang_queue(db, tmp_path, "mpi")
    launcher, member = runners(queue)
    queue.cycle(member, free=Free(4, 2, 16 * GIB), accept=accept_all())  # too few CPUs for a share of 8
    claimed = queue.cycle(launcher, free=NODE, accept=accept_all(), choose=take_all, limits=Limits(nodes=2)).claimed
    assert claimed == []
    row = job_row(db, ids(db)["mpi"])
    assert (row["status"], row["attempt"]) == ("ready", 0)
    assert db.read("SELECT COUNT(*) FROM gang_shares")[0][0] == 0


def test_a_refused_share_hands_the_job_back(db: Database, tmp_path: Path) -> None:  # noqa: F811
    queue = gang_queue(db, tmp_path, "mpi")
    launcher, member = runners(queue)
    queue.cycle(member, free=NODE, accept=accept_all())
    [claimed] = queue.cycle(launcher, free=NODE, accept=accept_all(), choose=take_all, limits=Limits(nodes=2)).claimed
    queue.cycle(member, free=NODE, accept=lambda shares: {s.job_id: None for s in shares})
    row = job_row(db, claimed.id)
    assert (row["status"], row["attempt"], row["runner_id"]) == ("ready", 0, None)
    assert queue.cycle(launcher, held={claimed.id: claimed.lease_token}).revoked == [claimed.id]


def test_two_gangs_on_two_nodes_never_hold_half_each(db: Database, tmp_path: Path) -> None:  # noqa: F811
    """Both runners try to claim a 2-node job at once (their cycles interleave): the second finds
    the first's node booked and claims nothing, so one gang runs whole, then the other."""
    queue = gang_queue(db, tmp_path, "a", "b")
    r1, r2 = runners(queue)
    queue.cycle(r1, free=NODE, accept=accept_all())
    queue.cycle(r2, free=NODE, accept=accept_all())
    first = queue.cycle(r1, free=NODE, accept=accept_all(), choose=take_all, limits=Limits(nodes=2)).claimed
    # r2 answers the share on it first (it is now full) and can book nothing on r1, full too
    second = queue.cycle(r2, free=NODE, accept=accept_all(), choose=take_all, limits=Limits(nodes=2))
    assert len(first) == 1 and second.claimed == []
    assert [s.job_id for s in second.shares] == [first[0].id]
    other = "b" if first[0].name == "a" else "a"
    assert job_row(db, ids(db)[other])["status"] == "ready"


def test_a_dead_member_ends_the_jobs_attempt(db: Database, tmp_path: Path) -> None:  # noqa: F811
    queue = gang_queue(db, tmp_path, "mpi")
    launcher, member = runners(queue)
    queue.cycle(member, free=NODE, accept=accept_all())
    [claimed] = queue.cycle(launcher, free=NODE, accept=accept_all(), choose=take_all, limits=Limits(nodes=2)).claimed
    queue.cycle(member, free=NODE, accept=accept_all())
    seq = db.read("SELECT lease_seq FROM runners WHERE id = ?", (member,))[0][0]
    queue.sweep([SweepRequest(member, seq, "its node died")], by="test")
    row = job_row(db, claimed.id)
    assert (row["status"], row["interrupted"]) == ("ready", 1)
    lost = db.read("SELECT status, message FROM results WHERE job_id = ?", (claimed.id,))
    assert [r["status"] for r in lost] == ["lost"] and "a node of this job or of its group was lost" in lost[0]["message"]
    assert queue.cycle(launcher, held={claimed.id: claimed.lease_token}).revoked == [claimed.id]


def test_runners_of_another_allocation_are_never_booked(db: Database, tmp_path: Path) -> None:  # noqa: F811
    queue = gang_queue(db, tmp_path, "mpi")
    [launcher] = runners(queue, 1, allocation="77")
    [stranger] = runners(queue, 1, allocation="78")
    queue.cycle(stranger, free=NODE, accept=accept_all())
    assert queue.cycle(launcher, free=NODE, accept=accept_all(), choose=take_all, limits=Limits(nodes=2)).claimed == []


def test_four_runners_two_gangs_interleaved_both_complete(db: Database, tmp_path: Path) -> None:  # noqa: F811
    """Four runners of one 4-node allocation, two 2-node jobs, cycles interleaved every way a
    round-robin gives: each gang books two whole nodes in its claim, both start, neither waits on
    the other."""
    from tests.store.test_queue import done, started

    queue = gang_queue(db, tmp_path, "a", "b")
    rs = runners(queue, 4)
    held: dict[int, dict[int, int]] = {r: {} for r in rs}
    for r in rs:
        queue.cycle(r, free=NODE, accept=accept_all())
    launched: dict[int, int] = {}
    busy = {r: False for r in rs}
    for _ in range(3):  # three rounds: claim, acknowledge, start
        for r in rs:
            # the node fits one 8-CPU share: a runner packs at most one job, its own or a share it
            # acknowledged (in this very cycle, too: the queue answers shares before claiming)
            def accept(shares, r=r):  # noqa: ANN001, ANN202
                answers = {s.job_id: ["1"] if not busy[r] else None for s in shares[:1]}
                answers.update({s.job_id: None for s in shares[1:]})
                busy[r] = busy[r] or any(v is not None for v in answers.values())
                return answers

            def choose(ready, r=r):  # noqa: ANN001, ANN202
                if busy[r] or not ready:
                    return []
                busy[r] = True
                return [ready[0].job_id]

            result = queue.cycle(r, free=Free(0, 0, 0) if busy[r] else NODE, accept=accept, choose=choose,
                                 limits=Limits(nodes=4), held=held[r])
            for job in result.claimed:
                held[r][job.id] = job.lease_token
            for job_id, members in result.gangs.items():
                if job_id in held[r] and len(members) == 1 and all(m.acked for m in members):
                    launched[job_id] = r
    assert len(launched) == 2 and len(set(launched.values())) == 2
    booked = db.read("SELECT job_id, runner_id FROM gang_shares WHERE acked = 1")
    nodes = {launched[row[0]] for row in booked} | {row[1] for row in booked}
    assert len(nodes) == 4  # four distinct runners: no node holds shares of both
    for job_id, r in launched.items():
        queue.cycle(r, started=started(db, job_id), held=held[r])
        queue.cycle(r, outcomes=[done(db, job_id)])
    assert {job_row(db, j)["status"] for j in launched} == {"completed"}


def test_a_member_that_ends_before_answering_hands_the_job_back(db: Database, tmp_path: Path) -> None:  # noqa: F811
    queue = gang_queue(db, tmp_path, "mpi")
    launcher, member = runners(queue)
    queue.cycle(member, free=NODE, accept=accept_all())
    [claimed] = queue.cycle(launcher, free=NODE, accept=accept_all(), choose=take_all, limits=Limits(nodes=2)).claimed
    queue.finish_runner(member)  # it exits (idle, walltime) without another cycle
    row = job_row(db, claimed.id)
    assert (row["status"], row["attempt"], row["interrupted"]) == ("ready", 0, 0)
    assert queue.cycle(launcher, held={claimed.id: claimed.lease_token}).revoked == [claimed.id]


def test_explain_names_the_allocation_a_multi_node_job_waits_for(db: Database, tmp_path: Path) -> None:  # noqa: F811
    from torc_slurm.reports.jobs import explain_job

    one = make_queue(db, tmp_path, [job("mpi", resource_requirements="two_nodes")],
                     resource_requirements=[{"name": "two_nodes", "num_nodes": 2}],
                     slurm_schedulers=[{"name": "small", "nodes": 1}])
    assert "needs 2 nodes and no slurm_schedulers entry gives more than 1" in explain_job(db, one.workflow_id,
                                                                                            "mpi")["reason"]
    two = make_queue(db, tmp_path, [job("mpi2", resource_requirements="two_nodes")],
                     resource_requirements=[{"name": "two_nodes", "num_nodes": 2}],
                     slurm_schedulers=[{"name": "small", "nodes": 1}, {"name": "pair", "nodes": 2}])
    assert "waiting for an allocation of 2 nodes (scheduler pair)" in explain_job(db, two.workflow_id, "mpi2")["reason"]
