"""The CLI backend: pure parsers (tables of real squeue/sbatch output), retries against fake Slurm
commands on PATH, the environment readers of env.py, and (marked slurm) the real cluster."""

from __future__ import annotations

import os
import stat
import sys
import textwrap
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from torc_slurm.errors import SlurmError
from torc_slurm.slurm import env
from torc_slurm.slurm.backend import JobInfo, SlurmState, get_backend
from torc_slurm.slurm.cli_backend import (
    CliBackend,
    RetryPolicy,
    check_job_ids,
    is_transient,
    parse_end_time,
    parse_sbatch_parsable,
    parse_scontrol_config,
    parse_slurm_version,
    parse_squeue,
    parse_time_left,
)

FAST = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.05)

# --- pure parsers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("UNLIMITED", None),
        ("NOT_SET", None),
        ("INVALID", None),
        ("1-02:03:04", 93784),
        ("2:03:04", 7384),
        ("59:56", 3596),
        ("5:00", 300),
        ("0:07", 7),
        ("10-00:00:00", 864000),
    ],
)
def test_time_left(text: str, seconds: int | None) -> None:
    assert parse_time_left(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1-02:03", "5", "-1:00", "1:2:3:4"])
def test_time_left_rejects_garbage(text: str) -> None:
    with pytest.raises(SlurmError, match="time left"):
        parse_time_left(text)


def test_end_time() -> None:
    parsed = parse_end_time("2026-11-21T18:16:04")
    assert parsed is not None and parsed.tzinfo is not None
    assert parsed.replace(tzinfo=None) == datetime(2026, 11, 21, 18, 16, 4)
    for empty in ("N/A", "Unknown", "NONE"):
        assert parse_end_time(empty) is None
    with pytest.raises(SlurmError):
        parse_end_time("tomorrow")


SQUEUE_OUTPUT = """\
29|RUNNING|1:58|2026-11-21T18:16:04
30|PENDING|1:00:00|N/A
13|COMPLETED|1:40|2026-11-21T18:12:56
12|FAILED|1:41|2026-11-21T18:12:55
77_3|TIMEOUT|0:00|2026-11-21T18:00:00
81|RUNNING|UNLIMITED|Unknown
82|COMPLETING|INVALID|2026-11-21T18:00:00
"""


def test_squeue_table() -> None:
    jobs = parse_squeue(SQUEUE_OUTPUT)
    assert {job_id: (info.state, info.time_left_seconds) for job_id, info in jobs.items()} == {
        "29": (SlurmState.RUNNING, 118),
        "30": (SlurmState.PENDING, 3600),
        "13": (SlurmState.COMPLETED, 100),
        "12": (SlurmState.FAILED, 101),
        "77_3": (SlurmState.TIMEOUT, 0),
        "81": (SlurmState.RUNNING, None),
        "82": (SlurmState.COMPLETING, None),
    }
    assert jobs["30"].end_time is None and jobs["81"].end_time is None
    assert [j for j, info in jobs.items() if info.state.is_finished] == ["13", "12", "77_3"]


@pytest.mark.parametrize("line", ["5|HIBERNATING|1:00|N/A", "5|running_fast|1:00|N/A"])
def test_unknown_state_is_unknown_not_a_guess(line: str) -> None:
    [info] = parse_squeue(line).values()
    assert info.state is SlurmState.UNKNOWN and not info.state.is_finished


def test_malformed_squeue_line() -> None:
    with pytest.raises(SlurmError, match="unexpected squeue line"):
        parse_squeue("29 RUNNING 1:58")


def test_every_documented_state_parses() -> None:
    for state in SlurmState:
        assert SlurmState.parse(state.value.lower()) is state


@pytest.mark.parametrize(("stdout", "job_id"), [("123\n", "123"), ("4567;torc\n", "4567"), ("\n88\n", "88")])
def test_sbatch_parsable(stdout: str, job_id: str) -> None:
    assert parse_sbatch_parsable(stdout) == job_id


@pytest.mark.parametrize("stdout", ["", "Submitted batch job 12", "abc"])
def test_sbatch_parsable_garbage(stdout: str) -> None:
    with pytest.raises(SlurmError, match="job id"):
        parse_sbatch_parsable(stdout)


def test_scontrol_config_and_version() -> None:
    config = parse_scontrol_config(
        "Configuration data as of 2026-11-21T18:00:00\nAccountingStorageType   = accounting_storage/none\n"
        "ClusterName             = torc\nSLURM_VERSION           = 22.05.8\n"
    )
    assert config["ClusterName"] == "torc" and config["SLURM_VERSION"] == "22.05.8"
    assert parse_slurm_version("slurm-wlm 22.05.8\n") == (22, 5, 8)
    assert parse_slurm_version("slurm 24.11.0-0rc1") == (24, 11, 0)
    with pytest.raises(SlurmError):
        parse_slurm_version("no version here")


@pytest.mark.parametrize(
    ("stderr", "transient"),
    [
        ("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation", True),
        ("squeue: error: Unable to contact slurm controller (connect failure)", True),
        ("sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying", True),
        ("slurm_load_jobs error: Zero Bytes were transmitted or received", True),
        ("error: Transient network failure", True),
        ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination", False),
        ("sbatch: error: invalid partition specified: nope", False),
    ],
)
def test_transient_errors(stderr: str, transient: bool) -> None:
    assert is_transient(stderr) is transient


def test_job_ids_are_checked() -> None:
    assert check_job_ids(["1", "22_3", "4+1"]) == ["1", "22_3", "4+1"]
    for bad in ("--me", "1;rm", "", "12.batch"):
        with pytest.raises(SlurmError, match="not a Slurm job id"):
            check_job_ids([bad])


def test_retry_delays_grow_and_are_bounded() -> None:
    assert list(RetryPolicy(attempts=5, first_delay=1, max_delay=3).delays()) == [1, 2, 3, 3]


# --- fake Slurm commands on PATH --------------------------------------------------------------


def fake_command(bin_dir: Path, name: str, body: str) -> Path:
    """An executable ``name`` in bin_dir running the Python ``body`` (argv in sys.argv)."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\nimport sys, time\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "job.sh"
    path.write_text("#!/bin/bash\ntrue\n")
    return path


def flaky_sbatch(bin_dir: Path, counter: Path, failures: int, message: str) -> None:
    fake_command(
        bin_dir,
        "sbatch",
        f"""
        from pathlib import Path
        counter = Path({str(counter)!r})
        attempt = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(attempt))
        if attempt <= {failures}:
            print({message!r}, file=sys.stderr)
            sys.exit(1)
        assert sys.argv[1] == "--parsable", sys.argv
        print("4242;torc")
        """,
    )


def test_transient_sbatch_failures_are_retried(fake_bin: Path, tmp_path: Path, script: Path) -> None:
    counter = tmp_path / "attempts"
    timed_out = "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"
    flaky_sbatch(fake_bin, counter, 2, timed_out)
    assert CliBackend(retry=FAST).submit(script) == "4242"
    assert counter.read_text() == "3"


def test_retries_are_bounded(fake_bin: Path, tmp_path: Path, script: Path) -> None:
    counter = tmp_path / "attempts"
    flaky_sbatch(fake_bin, counter, 99, "sbatch: error: Unable to contact slurm controller (connect failure)")
    with pytest.raises(SlurmError, match="gave up after 3 attempts"):
        CliBackend(retry=FAST).submit(script)
    assert counter.read_text() == "3"


def test_permanent_failures_are_not_retried(fake_bin: Path, tmp_path: Path, script: Path) -> None:
    counter = tmp_path / "attempts"
    flaky_sbatch(fake_bin, counter, 99, "sbatch: error: Batch job submission failed: Invalid account")
    with pytest.raises(SlurmError, match="Invalid account") as caught:
        CliBackend(retry=FAST).submit(script)
    assert "exit code 1" in str(caught.value)
    assert counter.read_text() == "1"


def test_a_hung_command_times_out(fake_bin: Path) -> None:
    fake_command(fake_bin, "squeue", "time.sleep(30)\n")
    started = time.monotonic()
    with pytest.raises(SlurmError, match="did not answer within 0.3 s"):
        CliBackend(retry=RetryPolicy(attempts=2, first_delay=0.01), timeout=0.3).status(["1"])
    assert time.monotonic() - started < 10


def test_absent_slurm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, script: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    backend = CliBackend(retry=FAST)
    for call in (lambda: backend.submit(script), lambda: backend.status(["1"]), backend.cluster_name):
        with pytest.raises(SlurmError, match="Slurm commands not found: is this a Slurm cluster"):
            call()


def test_status_reads_squeue(fake_bin: Path, tmp_path: Path) -> None:
    argv_file = tmp_path / "argv"
    fake_command(
        fake_bin,
        "squeue",
        f"""
        open({str(argv_file)!r}, "w").write(" ".join(sys.argv[1:]))
        print("7|RUNNING|4:00|2026-11-21T18:16:04")
        print("8|PENDING|1:00:00|N/A")
        print("9|RUNNING|1:00|N/A")
        """,
    )
    jobs = CliBackend(retry=FAST).status(["7", "8"])
    assert set(jobs) == {"7", "8"}  # squeue's unrequested job 9 is dropped
    assert jobs["7"].state is SlurmState.RUNNING and jobs["7"].time_left_seconds == 240
    assert "--states=all" in argv_file.read_text() and "--jobs=7,8" in argv_file.read_text()
    assert CliBackend(retry=FAST).end_time("7") == jobs["7"].end_time


def test_a_purged_job_is_absent_not_an_error(fake_bin: Path) -> None:
    fail = 'print({!r}, file=sys.stderr); sys.exit(1)\n'
    fake_command(fake_bin, "squeue", fail.format("slurm_load_jobs error: Invalid job id specified"))
    fake_command(fake_bin, "scancel", fail.format("scancel: error: Kill job error on job id 5: Invalid job id"
                                                  " specified"))
    backend = CliBackend(retry=FAST)
    assert backend.status(["5"]) == {}
    assert backend.end_time("5") is None
    backend.cancel(["5"])


def test_cluster_name_and_version(fake_bin: Path) -> None:
    fake_command(
        fake_bin,
        "scontrol",
        """
        if sys.argv[1:] == ["--version"]:
            print("slurm 23.02.7")
        else:
            print("ClusterName             = (null)")
        """,
    )
    backend = CliBackend(retry=FAST)
    assert backend.cluster_name() is None
    assert backend.slurm_version() == (23, 2, 7)


def test_backend_choice_can_be_forced() -> None:
    assert isinstance(get_backend({"TORC_SLURM_BACKEND": "cli"}), CliBackend)
    with pytest.raises(SlurmError, match="TORC_SLURM_BACKEND"):
        get_backend({"TORC_SLURM_BACKEND": "magic"})


# --- the Slurm environment of an allocation (env.py) ------------------------------------------

ALLOCATION_ENV = {
    "SLURM_JOB_ID": "31",
    "SLURMD_NODENAME": "gpu1",
    "SLURM_JOB_NUM_NODES": "1",
    "SLURM_JOB_NODELIST": "gpu1",
    "SLURM_CPUS_ON_NODE": "16",
    "SLURM_MEM_PER_NODE": "16000",
    "SLURM_JOB_GPUS": "2,3",
    "CUDA_VISIBLE_DEVICES": "0,1",
}


def test_environment_of_an_allocation() -> None:
    allocation = env.read_allocation(ALLOCATION_ENV)
    assert allocation == env.Allocation(
        job_id="31",
        node_name="gpu1",
        num_nodes=1,
        node_list="gpu1",
        cpus_on_node=16,
        mem_per_node_bytes=16000 * 1024 * 1024,
        gpu_ids=("0", "1"),
    )
    assert env.read_allocation({}) is None


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"SLURM_JOB_ID": "1", "SLURM_JOB_GPUS": "0-2,5"}, ("0", "1", "2", "5")),
        ({"SLURM_JOB_ID": "1", "CUDA_VISIBLE_DEVICES": "NoDevFiles"}, ()),
        ({"SLURM_JOB_ID": "1"}, ()),
        ({}, None),
        ({"SLURM_JOB_ID": "1", "CUDA_VISIBLE_DEVICES": "GPU-8f2a,MIG-1c3d"}, ("GPU-8f2a", "MIG-1c3d")),
    ],
)
def test_gpu_ids(variables: dict[str, str], expected: tuple[str, ...] | None) -> None:
    assert env.gpu_ids(variables) == expected


def test_site_gpu_variable_comes_first() -> None:
    variables = {"SLURM_JOB_ID": "1", "ROCR_VISIBLE_DEVICES": "4,5", "CUDA_VISIBLE_DEVICES": "0"}
    assert env.gpu_ids(variables, "ROCR_VISIBLE_DEVICES") == ("4", "5")


def test_memory_per_cpu_and_unlimited_memory() -> None:
    per_cpu = {"SLURM_MEM_PER_CPU": "2000", "SLURM_CPUS_ON_NODE": "4"}
    assert env.mem_per_node_bytes(per_cpu) == 8000 * 1024 * 1024
    assert env.mem_per_node_bytes({"SLURM_MEM_PER_NODE": "0"}) is None
    assert env.mem_per_node_bytes({}) is None
    assert env.num_nodes({"SLURM_NNODES": "3"}) == 3


def test_malformed_variables_name_the_variable() -> None:
    with pytest.raises(SlurmError, match="SLURM_CPUS_ON_NODE"):
        env.cpus_on_node({"SLURM_CPUS_ON_NODE": "8(x2)"})
    with pytest.raises(SlurmError, match="CUDA_VISIBLE_DEVICES"):
        env.gpu_ids({"CUDA_VISIBLE_DEVICES": "0;rm"})


# --- the real cluster -------------------------------------------------------------------------


def poll(backend: CliBackend, job_id: str, done, limit: float = 120.0) -> JobInfo | None:
    """Query ``job_id`` with growing intervals until ``done(info)``; fail after ``limit`` seconds."""
    deadline, delay = time.monotonic() + limit, 0.2
    while True:
        info = backend.status([job_id]).get(job_id)
        if done(info):
            return info
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} did not reach the expected state within {limit:g} s (last: {info})")
        time.sleep(delay)
        delay = min(delay * 1.5, 3.0)


def batch_script(tmp_path: Path, name: str, body: str, *options: str) -> Path:
    path = tmp_path / f"{name}.sh"
    options = ("--partition=cpu", f"--job-name=torc_test_{name}", *options)
    directives = "".join(f"#SBATCH {option}\n" for option in options)
    path.write_text(f"#!/bin/bash\n{directives}#SBATCH --output={tmp_path}/{name}-%j.out\n{body}\n")
    return path


@pytest.mark.slurm
def test_submit_and_follow_a_job_to_completion(tmp_path: Path) -> None:
    backend = CliBackend()
    script = batch_script(tmp_path, "hello", 'echo "hello from $SLURM_JOB_ID"', "--time=00:01:00")
    job_id = backend.submit(script)
    assert job_id.isdigit()
    final = poll(backend, job_id, lambda info: info is None or info.state.is_finished)
    assert final is None or final.state is SlurmState.COMPLETED
    assert (tmp_path / f"hello-{job_id}.out").read_text().strip() == f"hello from {job_id}"


WAITING_OR_RUNNING = (SlurmState.PENDING, SlurmState.RUNNING)


@pytest.mark.slurm
def test_cancel_a_sleeping_job(tmp_path: Path) -> None:
    backend = CliBackend()
    job_id = backend.submit(batch_script(tmp_path, "sleeper", "sleep 300", "--time=00:10:00"))
    try:
        poll(backend, job_id, lambda info: info is not None and info.state in WAITING_OR_RUNNING)
    finally:
        backend.cancel([job_id])
    final = poll(backend, job_id, lambda info: info is None or info.state not in WAITING_OR_RUNNING)
    assert final is None or final.state in (SlurmState.CANCELLED, SlurmState.COMPLETING)
    backend.cancel([job_id])  # cancelling again is harmless


@pytest.mark.slurm
def test_end_time_and_time_left_of_a_running_job(tmp_path: Path) -> None:
    backend = CliBackend()
    job_id = backend.submit(batch_script(tmp_path, "clock", "sleep 300", "--time=00:05:00"))
    try:
        info = poll(backend, job_id, lambda info: info is not None and info.state is SlurmState.RUNNING)
        assert info is not None and info.time_left_seconds is not None and info.end_time is not None
        assert 200 < info.time_left_seconds <= 300
        now = datetime.now().astimezone()
        assert abs((info.end_time - now) - timedelta(seconds=info.time_left_seconds)) < timedelta(seconds=60)
        assert backend.end_time(job_id) == info.end_time
    finally:
        backend.cancel([job_id])


@pytest.mark.slurm
def test_cluster_facts() -> None:
    backend = CliBackend()
    assert backend.slurm_version() >= (20, 11, 0)
    assert backend.cluster_name()


@pytest.mark.slurm
def test_env_readers_inside_a_gpu_allocation(tmp_path: Path) -> None:
    backend = CliBackend()
    dump = tmp_path / "env.txt"
    options = ("--time=00:01:00", "--gres=gpu:2", "--mem=1000M", "--cpus-per-task=3")
    script = batch_script(tmp_path, "envdump", f"env > {dump}", *options)
    script.write_text(script.read_text().replace("--partition=cpu", "--partition=gpu"))
    job_id = backend.submit(script)
    poll(backend, job_id, lambda info: info is None or info.state.is_finished)
    variables = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    allocation = env.read_allocation(variables)
    assert allocation is not None
    assert allocation.job_id == job_id and allocation.node_name == "gpu1" and allocation.num_nodes == 1
    assert allocation.cpus_on_node == 3
    assert allocation.mem_per_node_bytes == 1000 * 1024 * 1024
    assert len(allocation.gpu_ids) == 2
    assert os.environ.get("SLURM_JOB_ID") != job_id
