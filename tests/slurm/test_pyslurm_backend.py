"""The pyslurm backend against a fake ``pyslurm`` module that offers the documented API it uses
(``Job.load``, ``Job(id).cancel()``, ``RPCError``, ``slurm_api_version``, ``__version__``)."""

from __future__ import annotations

import sys
import types
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from torc_slurm.errors import SlurmError
from torc_slurm.slurm.backend import SlurmState, get_backend
from torc_slurm.slurm.cli_backend import CliBackend
from torc_slurm.slurm.pyslurm_backend import PyslurmBackend, pyslurm_slurm_version

END = 1_800_000_000


class FakeRPCError(Exception):
    def __init__(self, errno: int = 1, msg: str = "RPC failed") -> None:
        super().__init__(msg)
        self.errno = errno


def make_pyslurm(version: str = "22.5.1", api: tuple[int, int, int] | None = (22, 5, 8)) -> types.ModuleType:
    module = types.ModuleType("pyslurm")
    module.__version__ = version  # type: ignore[attr-defined]
    if api is not None:
        module.slurm_api_version = lambda: api  # type: ignore[attr-defined]
    module.RPCError = FakeRPCError  # type: ignore[attr-defined]
    module.jobs = {  # type: ignore[attr-defined]
        7: types.SimpleNamespace(state="RUNNING", end_time=END, run_time_remaining=600),
        8: types.SimpleNamespace(state="PENDING", end_time=None, run_time_remaining=None),
        9: types.SimpleNamespace(state="HIBERNATING", end_time=0, run_time_remaining=0),
    }
    module.cancelled = []  # type: ignore[attr-defined]

    class Job:
        def __init__(self, job_id: int) -> None:
            self.id = job_id

        @staticmethod
        def load(job_id: int) -> types.SimpleNamespace:
            if job_id == 666:
                raise FakeRPCError(errno=1007, msg="Protocol version has changed")
            if job_id not in module.jobs:  # type: ignore[attr-defined]
                raise FakeRPCError(errno=2017, msg="Invalid job id specified")
            return module.jobs[job_id]  # type: ignore[attr-defined]

        def cancel(self) -> None:
            if self.id not in module.jobs:  # type: ignore[attr-defined]
                raise FakeRPCError(errno=2017, msg="Invalid job id specified")
            module.cancelled.append(self.id)  # type: ignore[attr-defined]

    module.Job = Job  # type: ignore[attr-defined]
    return module


class StubCli(CliBackend):
    """The CLI side of the pyslurm backend, without Slurm."""

    def __init__(self, version: tuple[int, int, int] = (22, 5, 8)) -> None:
        super().__init__()
        self.version = version
        self.submitted: list[Path] = []
        self.cancelled: list[str] = []

    def slurm_version(self) -> tuple[int, int, int]:
        return self.version

    def submit(self, script: Path) -> str:
        self.submitted.append(script)
        return "99"

    def status(self, job_ids):  # type: ignore[no-untyped-def]
        return {}

    def cancel(self, job_ids) -> None:  # type: ignore[no-untyped-def]
        self.cancelled.extend(job_ids)

    def cluster_name(self) -> str | None:
        return "torc"


@pytest.fixture
def fake_pyslurm(mocker: MockerFixture) -> types.ModuleType:
    module = make_pyslurm()
    mocker.patch.dict(sys.modules, {"pyslurm": module})
    return module


def use_cluster_version(mocker: MockerFixture, version: tuple[int, int, int]) -> None:
    mocker.patch.object(CliBackend, "slurm_version", return_value=version)


# --- choosing the backend ---------------------------------------------------------------------


def test_chosen_when_built_for_the_cluster_version(fake_pyslurm: object, mocker: MockerFixture) -> None:
    use_cluster_version(mocker, (22, 5, 8))
    assert isinstance(get_backend({}), PyslurmBackend)
    assert isinstance(get_backend({"TORC_SLURM_BACKEND": "pyslurm"}), PyslurmBackend)
    assert isinstance(get_backend({"TORC_SLURM_BACKEND": "cli"}), CliBackend)


def test_not_chosen_for_another_slurm_version(fake_pyslurm: object, mocker: MockerFixture) -> None:
    use_cluster_version(mocker, (23, 2, 7))
    backend = get_backend({})
    assert isinstance(backend, CliBackend) and not isinstance(backend, PyslurmBackend)
    with pytest.raises(SlurmError, match="built for Slurm 22.05 but the cluster runs 23.02"):
        get_backend({"TORC_SLURM_BACKEND": "pyslurm"})


def test_not_chosen_when_the_cluster_version_is_unknown(fake_pyslurm: object, mocker: MockerFixture) -> None:
    mocker.patch.object(CliBackend, "slurm_version", side_effect=SlurmError("Slurm commands not found"))
    assert not isinstance(get_backend({}), PyslurmBackend)


def test_not_chosen_when_pyslurm_is_missing(mocker: MockerFixture) -> None:
    mocker.patch.dict(sys.modules, {"pyslurm": None})  # makes `import pyslurm` raise ImportError
    use_cluster_version(mocker, (22, 5, 8))
    assert not isinstance(get_backend({}), PyslurmBackend)
    with pytest.raises(SlurmError, match="not installed"):
        get_backend({"TORC_SLURM_BACKEND": "pyslurm"})


def test_not_chosen_when_its_slurm_version_cannot_be_told(mocker: MockerFixture) -> None:
    mocker.patch.dict(sys.modules, {"pyslurm": make_pyslurm(version="unknown", api=None)})
    use_cluster_version(mocker, (22, 5, 8))
    assert not isinstance(get_backend({}), PyslurmBackend)


@pytest.mark.parametrize(
    ("version", "api", "expected"),
    [
        ("22.5.1", (22, 5, 8), (22, 5)),
        ("23.11.0", None, (23, 11)),
        ("24.5.0", None, (24, 5)),
        ("dev", None, None),
    ],
)
def test_pyslurm_slurm_version(
    version: str, api: tuple[int, int, int] | None, expected: tuple[int, int] | None
) -> None:
    assert pyslurm_slurm_version(make_pyslurm(version, api)) == expected


# --- using it ---------------------------------------------------------------------------------


def test_status_maps_pyslurm_jobs(fake_pyslurm: types.ModuleType) -> None:
    backend = PyslurmBackend(fake_pyslurm, StubCli())
    jobs = backend.status(["7", "8", "12345"])
    assert set(jobs) == {"7", "8"}  # 12345 is unknown to Slurm: absent, not an error
    assert jobs["7"].state is SlurmState.RUNNING and jobs["7"].time_left_seconds == 600
    assert jobs["7"].end_time == datetime.fromtimestamp(END, tz=timezone.utc)
    assert jobs["8"].state is SlurmState.PENDING and jobs["8"].end_time is None
    assert backend.end_time("7") == jobs["7"].end_time
    assert backend.end_time("12345") is None


def test_unknown_state_is_unknown_and_rpc_failures_are_errors(fake_pyslurm: types.ModuleType) -> None:
    backend = PyslurmBackend(fake_pyslurm, StubCli())
    assert backend.status(["9"])["9"].state is SlurmState.UNKNOWN
    with pytest.raises(SlurmError, match="Protocol version has changed"):
        backend.status(["666"])


def test_cancel(fake_pyslurm: types.ModuleType) -> None:
    cli = StubCli()
    backend = PyslurmBackend(fake_pyslurm, cli)
    backend.cancel(["7", "12345", "40_2"])
    assert fake_pyslurm.cancelled == [7]  # type: ignore[attr-defined]
    assert cli.cancelled == ["40_2"]  # array task ids go through scancel


def test_submission_and_cluster_name_go_through_the_cli(fake_pyslurm: types.ModuleType, tmp_path: Path) -> None:
    cli = StubCli()
    backend = PyslurmBackend(fake_pyslurm, cli)
    script = tmp_path / "job.sh"
    assert backend.submit(script) == "99" and cli.submitted == [script]
    assert backend.cluster_name() == "torc"
