"""Multi-node jobs on the real local cluster (partition ``cpu``: 2 nodes of 8 CPUs): a 2-node job
on a 2-node allocation runs once, one task per node through srun (each rank records its node and
SLURM_PROCID), while 1-node jobs fill the rest; with ``launcher: none`` it runs once on the first
node with the node list and a host file."""

from __future__ import annotations

from collections import Counter

import pytest

from . import E2E, wait_idle_nodes

pytestmark = pytest.mark.slurm


def two_node_spec(e2e: E2E, scheduler: str, **mpi: object) -> dict:
    ranks = e2e.path / "ranks"
    ranks.mkdir()
    return {
        "name": f"multinode_{e2e.tag}",
        "compute_node_wait_for_new_jobs_seconds": 5,
        "resource_requirements": [
            {"name": "two_nodes", "num_nodes": 2, "num_cpus": 4, "memory": "100m", "runtime": "PT2M"},
            {"name": "small", "num_cpus": 1, "memory": "50m", "runtime": "PT1M"}],
        "slurm_schedulers": [{"name": scheduler, "partition": "cpu", "nodes": 2, "walltime": "00:10:00"}],
        "jobs": [
            {"name": "mpi", "resource_requirements": "two_nodes", "priority": 10, **mpi},
            {"name": "fill_{i:02d}", "command": "sleep 1", "resource_requirements": "small",
             "parameters": {"i": "1:12"}},
        ],
    }


def test_a_two_node_job_runs_once_across_both_nodes(e2e: E2E) -> None:
    scheduler = e2e.scheduler("2n")
    ranks = e2e.path / "ranks"
    command = (f'echo "$SLURMD_NODENAME $SLURM_PROCID $TORC_NODELIST $TORC_CPU_IDS" > {ranks}/"$SLURM_PROCID"'
               " && sleep 2")
    spec = two_node_spec(e2e, scheduler, command=command)
    workflow_id = e2e.create(spec)
    wait_idle_nodes("cpu", 2)
    [allocation] = e2e.schedule(workflow_id, scheduler, 1)
    e2e.wait_workflow_done(workflow_id, timeout=300)
    e2e.wait_allocations_ended([allocation], timeout=120)

    status = e2e.workflow_status(workflow_id)
    assert status["counts"]["completed"] == status["total"] == 13, e2e.describe(workflow_id)
    mpi = [r for r in e2e.results(workflow_id) if r["job_name"] == "mpi"]
    assert [r["status"] for r in mpi] == ["completed"], mpi  # ran once
    lines = sorted((ranks / name).read_text().split() for name in ("0", "1"))
    assert sorted(line[0] for line in lines) == ["cpu1", "cpu2"] and [line[1] for line in lines] == ["0", "1"]
    assert all(sorted(line[2].split(",")) == ["cpu1", "cpu2"] for line in lines)
    fill_hosts = Counter(r["hostname"] for r in e2e.results(workflow_id) if r["job_name"].startswith("fill_"))
    assert sum(fill_hosts.values()) == 12
    shares = e2e.query("SELECT COUNT(*) AS n FROM gang_shares")
    assert shares[0]["n"] == 0, "the job's shares went with its attempt"


def test_launcher_none_runs_once_with_the_node_list(e2e: E2E) -> None:
    scheduler = e2e.scheduler("2n")
    out = e2e.path / "ranks" / "once"
    command = f'echo "$TORC_NODELIST $TORC_NUM_NODES $(cat "$TORC_HOSTFILE" | tr "\\n" " ")" >> {out}'
    spec = two_node_spec(e2e, scheduler, command=command, launcher="none")
    workflow_id = e2e.create(spec)
    wait_idle_nodes("cpu", 2)
    [allocation] = e2e.schedule(workflow_id, scheduler, 1)
    e2e.wait_workflow_done(workflow_id, timeout=300)
    e2e.wait_allocations_ended([allocation], timeout=120)
    [line] = out.read_text().splitlines()  # once, not once per node
    nodelist, count, *hosts = line.split()
    assert sorted(nodelist.split(",")) == ["cpu1", "cpu2"] and count == "2" and sorted(hosts) == ["cpu1", "cpu2"]


def test_killing_a_member_runner_requeues_the_whole_job(e2e: E2E) -> None:
    """kill -9 of the runner on the node that only holds a share: the job's attempt is lost, its
    tasks on both nodes are killed, and it runs again, whole, in the next allocation."""
    import os
    import signal

    from . import wait_for

    scheduler = e2e.scheduler("2n")
    ranks = e2e.path / "ranks"
    command = (f'echo $$ > {ranks}/pid_"$TORC_ATTEMPT"_"$SLURM_PROCID"; '
               f'if [ "$TORC_ATTEMPT" = 1 ]; then sleep 120; fi; echo "$SLURMD_NODENAME" > {ranks}/done_"$SLURM_PROCID"')
    spec = two_node_spec(e2e, scheduler, command=command)
    spec["jobs"] = spec["jobs"][:1]
    spec["heartbeat_timeout_seconds"] = 10
    workflow_id = e2e.create(spec)
    wait_idle_nodes("cpu", 2)
    [first] = e2e.schedule(workflow_id, scheduler, 1)
    wait_for(lambda: len(list(ranks.glob("pid_1_*"))) == 2, timeout=120, what="both ranks of attempt 1 running",
             describe=lambda: e2e.describe(workflow_id))
    launcher = e2e.jobs(workflow_id)["mpi"]["runner_id"]
    [member] = [r for r in e2e.runners(workflow_id) if r["id"] != launcher]
    os.kill(member["pid"], signal.SIGKILL)  # every emulated node is this host

    def lost() -> list[dict]:
        return [r for r in e2e.results(workflow_id) if r["job_name"] == "mpi" and r["status"] == "lost"]
    [record] = wait_for(lost, timeout=120, what="the attempt lost", describe=lambda: e2e.describe(workflow_id))
    assert "a node of this job or of its group was lost" in record["message"]
    pids = [int((ranks / f"pid_1_{rank}").read_text()) for rank in (0, 1)]
    wait_for(lambda: not any(_alive(pid) for pid in pids), timeout=60, what="attempt 1's tasks killed on both nodes")
    e2e.wait_allocations_ended([first], timeout=180)

    wait_idle_nodes("cpu", 2)
    e2e.schedule(workflow_id, scheduler, 1)
    e2e.wait_workflow_done(workflow_id, timeout=300)
    attempts = [r["status"] for r in e2e.results(workflow_id) if r["job_name"] == "mpi" and not r.get("late")]
    assert attempts.count("completed") == 1 and "lost" in attempts, attempts
    assert sorted((ranks / f"done_{rank}").read_text().strip() for rank in (0, 1)) == ["cpu1", "cpu2"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_group_larger_than_a_node_spreads_over_the_allocation(e2e: E2E) -> None:
    """Three 4-CPU members on 8-CPU nodes: two start on the claiming node, one on the other node
    (its share booked there), all at once; each sees the real host of every rank; the lead's exit
    ends the remote member through srun, recorded terminated_by_lead."""
    scheduler = e2e.scheduler("2n")
    ranks = e2e.path / "ranks"
    ranks.mkdir()
    record = f'echo "$SLURMD_NODENAME $TORC_GROUP_RANK $TORC_GROUP_HOSTS" > {ranks}/"$TORC_GROUP_RANK"'
    spec = {
        "name": f"spread_{e2e.tag}",
        "compute_node_wait_for_new_jobs_seconds": 5,
        "resource_requirements": [{"name": "four", "num_cpus": 4, "memory": "100m", "runtime": "PT2M"}],
        "slurm_schedulers": [{"name": scheduler, "partition": "cpu", "nodes": 2, "walltime": "00:10:00"}],
        "groups": [{"name": "trio", "lead": "lead"}],
        "jobs": [
            {"name": "lead", "group": "trio", "resource_requirements": "four",
             "command": f"{record}; until [ -e {ranks}/1 ] && [ -e {ranks}/2 ]; do sleep 0.1; done"},
            {"name": "second", "group": "trio", "resource_requirements": "four",
             "command": f"{record}; while :; do sleep 0.2; done"},
            {"name": "third", "group": "trio", "resource_requirements": "four",
             "command": f"{record}; while :; do sleep 0.2; done"},
        ],
    }
    workflow_id = e2e.create(spec)
    wait_idle_nodes("cpu", 2)
    [allocation] = e2e.schedule(workflow_id, scheduler, 1)
    e2e.wait_workflow_done(workflow_id, timeout=300)
    e2e.wait_allocations_ended([allocation], timeout=120)
    rows = {r["job_name"]: r for r in e2e.results(workflow_id)}
    assert rows["lead"]["status"] == "completed", e2e.describe(workflow_id)
    assert {(rows[n]["status"], rows[n]["reason"]) for n in ("second", "third")} == {("completed", "terminated_by_lead")}
    seen = [(ranks / str(rank)).read_text().split() for rank in range(3)]
    hosts = seen[0][2].split(",")
    assert all(line[2].split(",") == hosts for line in seen)          # every member sees the same map
    assert [line[0] for line in seen] == hosts                       # … and it is where each one ran
    assert sorted(set(hosts)) == ["cpu1", "cpu2"]                    # spread over both nodes
    assert e2e.query("SELECT COUNT(*) AS n FROM gang_shares")[0]["n"] == 0
