"""The two questions the runner's fencing asks of Slurm (``runner.fencing.SlurmProbe``), answered
by a `SlurmBackend`: which allocations still live, and scancel one. The command line wires it into
the runner, so the runner does not import the Slurm layer."""

from __future__ import annotations

from collections.abc import Sequence

from torc_slurm.slurm.backend import SlurmBackend


class BackendProbe:
    def __init__(self, backend: SlurmBackend) -> None:
        self.backend = backend

    def alive(self, job_ids: Sequence[str]) -> set[str]:
        """One squeue call; a job Slurm no longer lists, or lists as finished, has ended."""
        infos = self.backend.status(list(job_ids)) if job_ids else {}
        return {job_id for job_id, info in infos.items() if not info.state.is_finished}

    def cancel(self, job_id: str) -> None:
        self.backend.cancel([job_id])


def default_probe() -> BackendProbe | None:
    """A probe on the default backend, or None where Slurm's commands are not installed."""
    import shutil

    if shutil.which("squeue") is None:
        return None
    from torc_slurm.slurm.backend import get_backend

    return BackendProbe(get_backend())
