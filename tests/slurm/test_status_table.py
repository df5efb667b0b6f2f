"""`torc slurm status` fits 80 columns without cutting a word: long scheduler names and node
lists fold or shorten as values, headers and states stay whole."""

from __future__ import annotations

import io
import time

from rich.console import Console

from torc_slurm.cli.slurm import _status_table


def rendered(width: int) -> list[str]:
    rows = [{"slurm_job_id": "1234567", "scheduler": "highmem_cluster", "state": "RUNNING", "time_left_s": 5400,
             "nodes": ["cpu1", "cpu2", "cpu3"],
             "runners": [{"status": "active", "heartbeat_at": time.time() - 3, "jobs": 4, "completed": 120},
                         {"status": "lost", "heartbeat_at": 0, "jobs": 0, "completed": 3}]},
            {"slurm_job_id": "1234568", "scheduler": "short", "state": "COMPLETING", "time_left_s": None,
             "nodes": [], "runners": []}]
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False).print(_status_table(rows))
    return out.getvalue().splitlines()


def test_fits_80_columns_with_every_word_whole() -> None:
    lines = rendered(80)
    assert max(len(line.rstrip()) for line in lines) <= 80
    text = "\n".join(lines)
    for word in ("scheduler", "highmem_cluster", "COMPLETING", "RUNNING", "1 up, 1 lost", "4/123", "90m"):
        assert word in text, word
