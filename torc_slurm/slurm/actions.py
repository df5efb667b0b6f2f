"""schedule_nodes for workflow actions, with the Slurm backend: what a runner, `workflows init`
or `slurm watch` injects into ``runner.actions`` (the runner layer never imports Slurm).

"Never doubled": each claim's allocations carry a Slurm job name that names the action and the
claim token and the queue file's random key (``torc_wf<ID>_<scheduler>_a<N>t<token>q<key>``). A retry after a
dead claimant first asks squeue (--me) for
the names of the dead claims; the allocations found are adopted (recorded as this action's) and
only the rest are submitted. An allocation of a dead claimant that already left squeue (it ran
and ended; sacct is asked too where Slurm keeps accounting) cannot be seen: that is the one way a
retry can submit again (at-least-once).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from torc_slurm.errors import SlurmError, TorcError
from torc_slurm.store.actions import Claim

log = logging.getLogger(__name__)
FAULT_SUBMITTED = "TORC_FAULT_ACTION_SUBMITTED"  # tests: SIGKILL the performer right after its sbatch


def job_name(claim: Claim, token: int | None = None, queue: str = "") -> str:
    """``torc_wf<ID>_<scheduler>_a<N>t<token>q<queue key>``: the queue key (random, per queue file)
    keeps two queues' (or two users') names apart."""
    return (f"torc_wf{claim.workflow_id}_{claim.config.get('scheduler')}_a{claim.index + 1}"
            f"t{claim.token if token is None else token}" + (f"q{queue}" if queue else ""))


# Allocations a takeover adopts: alive or ended well. One cancelled, failed, timed out (…) before
# its runner could run is not this claim's work done: the rest are submitted again.
ADOPTED_STATES = ("PENDING", "RUNNING", "COMPLETING", "COMPLETED")


def find_submitted(names: list[str], since: float | None = None) -> list[str]:
    """Slurm job ids of this user's allocations named ``names`` in an adoptable state (squeue
    --me, then sacct -u $USER -S <the first claim's day, less one> when it has data)."""
    if not names:
        return []
    import getpass
    import time as _time

    day = _time.strftime("%Y-%m-%d", _time.localtime((since or _time.time()) - 86400))
    found: list[str] = []
    for argv in (["squeue", "--me", "-h", "--states=all", f"--name={','.join(names)}", "-o", "%i|%T"],
                 ["sacct", "-u", getpass.getuser(), "-S", day, "-n", "-X", "-P", f"--name={','.join(names)}",
                  "-o", "JobID,State"]):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            if argv[0] == "squeue":
                raise SlurmError(f"cannot ask squeue for the allocations of a dead claimant: {exc}") from exc
            continue
        if out.returncode != 0:
            if argv[0] == "squeue":
                raise SlurmError(f"squeue failed: {out.stderr.strip()}")
            continue
        for line in out.stdout.splitlines():
            job_id, _, state = line.strip().partition("|")
            state = (state.split() or [""])[0].upper()
            if job_id and state in ADOPTED_STATES and job_id not in found:
                found.append(job_id)
    return found


# sbatch refusing the request itself: trying again cannot help.
_REFUSALS = ("invalid", "not available", "exceed", "denied", "policy", "not permitted", "unrecognized",
             "refusing to submit", "no partition", "not found", "unknown")


def retryable(exc: Exception) -> bool:
    """A Slurm failure that may pass: a timeout, the controller unavailable (the backend's own
    retries gave up), or a non-zero exit that is not a refusal of the request."""
    from torc_slurm.slurm.cli_backend import is_transient

    if not isinstance(exc, SlurmError):
        return False
    text = str(exc).lower()
    if "gave up after" in text or "did not answer" in text or is_transient(text):
        return True
    return "failed with exit code" in text and not any(word in text for word in _REFUSALS)


def make_schedule(db_path: Path, site: Any, backend: Any, output_dir: Path | None = None):
    """A ``runner.actions.Schedule`` that submits with ``slurm.allocations.schedule_nodes``."""

    def schedule(claim: Claim) -> tuple[bool, str, dict[str, Any]]:
        from torc_slurm.slurm.allocations import ScheduleRequest, schedule_nodes
        from torc_slurm.store.actions import queue_key
        from torc_slurm.store.db import Database

        config = claim.config
        wanted = int(config.get("num_allocations") or 1)
        result: dict[str, Any] = {"scheduler": config["scheduler"], "adopted": [], "slurm_job_ids": []}
        with Database(db_path, create=False) as own:
            key = queue_key(own)
        try:
            adopted = (find_submitted([job_name(claim, t, key) for t in claim.previous_tokens], claim.since)
                       if claim.previous_tokens else [])
        except SlurmError as exc:  # squeue unavailable: try again later (submitting blind could double)
            return False, f"asking Slurm for earlier claims' allocations failed: {exc}", {**result, "retry": True}
        result["adopted"] = adopted
        if len(adopted) >= wanted:
            result["slurm_job_ids"] = adopted
            return True, (f"{len(adopted)} allocation(s) of {config['scheduler']} were already submitted by the "
                          f"dead claimant: {', '.join(adopted)} (adopted, none submitted)"), result
        with Database(db_path, create=False) as db:
            try:
                done = schedule_nodes(db, backend, site, ScheduleRequest(
                    claim.workflow_id, config["scheduler"], wanted - len(adopted),
                    max_parallel_jobs=config.get("max_parallel_jobs"), output_dir=output_dir,
                    job_name=job_name(claim, queue=key), force=True))
            except TorcError as exc:
                return False, f"submitting {config['scheduler']} failed: {exc}", \
                    {**result, **({"retry": True} if retryable(exc) else {})}
        result["slurm_job_ids"] = adopted + done.slurm_job_ids
        if os.environ.get(FAULT_SUBMITTED) in ("any", claim.trigger):  # tests: die between sbatch and "done"
            log.error("fault injection (%s): killing this process after submitting %s", FAULT_SUBMITTED,
                      done.slurm_job_ids)
            os.kill(os.getpid(), signal.SIGKILL)
        return True, (f"submitted {len(done.slurm_job_ids)} allocation(s) of {config['scheduler']}: "
                      f"{', '.join(done.slurm_job_ids)}" + (f" (adopted {', '.join(adopted)})" if adopted else "")), \
            result

    return schedule


def site_allows_compute_submit(site: Any) -> bool:
    return bool(getattr(site, "compute_nodes_can_submit", True))


def login_observer(source: str) -> Any:
    """The identity of a login-node observer (`workflows init`, `submit`, `slurm watch`). Keep it
    across rounds: it remembers when it first saw each claim's lease (queue-time ageing)."""
    import shutil

    from torc_slurm.runner.fencing import host_key, process_started, runner_alive
    from torc_slurm.store.actions import Observer

    return Observer(name=source, host_key=host_key(), pid=os.getpid(), pid_started=process_started(os.getpid()),
                    can_schedule=shutil.which("sbatch") is not None, alive=runner_alive)


def login_observe(db: Any, workflow_id: int, source: str, *, site: Any = None, backend: Any = None,
                  output_dir: Path | None = None, observer: Any = None) -> list[tuple[Claim, bool, str]]:
    """A login-node observer: claim the due actions it can perform (schedule_nodes only where
    sbatch exists) and those of dead claimants, in one transaction, then perform them here.
    Returns (claim, ok, message) per action performed."""
    from torc_slurm.runner.actions import Context, perform_claims
    from torc_slurm.store import actions as store_actions
    from torc_slurm.store.workflows import workflow_settings

    observer = observer or login_observer(source)
    with db.transaction() as conn:
        claims = store_actions.observe(conn, workflow_id, observer)
    if not claims:
        return []
    settings = workflow_settings(db, workflow_id)
    output = (output_dir or settings.working_dir / "torc_output").absolute()
    schedule = None
    if observer.can_schedule:
        if backend is None:
            from torc_slurm.slurm.backend import get_backend

            backend = get_backend()
        if site is None:
            from torc_slurm.slurm.sites import detect_current_site

            site = detect_current_site(backend)
        schedule = make_schedule(db.path, site, backend, output)
    ctx = Context(db.path, workflow_id, settings.working_dir, output, observer.name, schedule)
    return perform_claims(claims, ctx, db)
