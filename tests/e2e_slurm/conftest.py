"""Fixtures of the end-to-end Slurm tests (helpers live in ``__init__.py``).

``e2e`` gives each test a fresh working directory under ``$TORC_E2E_DIR`` (default ``/var/tmp``),
mode 0755, and a unique tag for the test's Slurm names. The directory must be readable by every
node's slurmd and jobs: here all emulated nodes are this host, so ``/var/tmp`` is shared; on a real
cluster point ``TORC_E2E_DIR`` at a shared filesystem. (pytest's ``tmp_path`` would work on this
machine too, slurmd running as root, but it is a private per-user path and node-local elsewhere.)

Teardown scancels the test's own allocations and waits, bounded, for them to end; the directory is
removed when the test passed and kept (its path printed) when it failed or ``TORC_E2E_KEEP`` is set.
Failed reports get the test's Slurm output files (``slurm-*.out|err``) attached.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import E2E


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember each phase's report on the item, and attach the Slurm output files to failures."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"_e2e_report_{report.when}", report)
    env = getattr(item, "_torc_e2e", None)
    if report.failed and env is not None:
        report.sections.append((f"Slurm output files ({env.path})", env.slurm_logs()))


def _base_dir() -> Path:
    base = Path(os.environ.get("TORC_E2E_DIR", "/var/tmp"))
    if not base.is_dir() or not os.access(base, os.R_OK | os.W_OK | os.X_OK):
        pytest.fail(f"TORC_E2E_DIR={base} is not a writable directory", pytrace=False)
    return base


@pytest.fixture
def e2e(request: pytest.FixtureRequest, slurm_cluster: Any) -> Iterator[E2E]:
    """A fresh working directory every Slurm node can read, with a unique tag for this test's names.

    Teardown scancels the test's own allocations; the directory is removed when the test passed."""
    tag = f"{os.getpid() % 100000}{secrets.token_hex(3)}"
    path = Path(os.path.realpath(_base_dir() / f"torc_e2e_{request.node.name[:40]}_{tag}"))
    path.mkdir(mode=0o755)
    path.chmod(0o755)  # readable by slurmd and by the job's user whatever the umask
    env = E2E(path=path, tag=tag)
    request.node._torc_e2e = env
    try:
        yield env
    finally:
        env.cancel_all()
        report = getattr(request.node, "_e2e_report_call", None)
        if report is not None and report.passed and not os.environ.get("TORC_E2E_KEEP"):
            shutil.rmtree(path, ignore_errors=True)
        else:
            print(f"kept the working directory of {request.node.nodeid}: {path}", file=sys.stderr)
