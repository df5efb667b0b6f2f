"""Small helpers shared by the runner benchmarks (dispatch, contention, packing).

Benchmarks print figures; they assert nothing.
"""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Measure this checkout's torc_slurm, here and in the `torc` subprocesses, whatever `pip install -e`
# last pointed at; an explicit PYTHONPATH (say, an older tree for a before/after) wins.
if not os.environ.get("PYTHONPATH"):
    os.environ["PYTHONPATH"] = str(ROOT)
    sys.path.insert(0, str(ROOT))


def code_under_test() -> str:
    import torc_slurm

    return str(Path(torc_slurm.__file__).parent.parent)


def machine() -> str:
    """One line: where the figures come from."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs, {mem:.0f} GiB,"
            f" python {platform.python_version()}, sqlite {sqlite3.sqlite_version},"
            f" TORC_SQLITE_SYNCHRONOUS={os.environ.get('TORC_SQLITE_SYNCHRONOUS', 'FULL (default)')};"
            f" torc_slurm from {code_under_test()}")


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Timed:
    seconds: float
    returncode: int
    stdout: str
    stderr: str


def run_timed(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
              stdin: str | None = None) -> Timed:
    """Run ``argv`` to completion; wall time from just before the process is created to its exit."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, input=stdin, capture_output=True, text=True)
    return Timed(time.perf_counter() - t0, proc.returncode, proc.stdout, proc.stderr)


def torc_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def tail(text: str, lines: int = 5) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
