"""A non-editable install must find the sbatch templates and site configs: they ship in the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_carries_templates_and_site_configs(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(REPO)],
                   check=True, timeout=600)
    (wheel,) = tmp_path.glob("torc_slurm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"torc_slurm/_data/templates/{p.name}" for p in (REPO / "templates").iterdir()}
    shipped |= {f"torc_slurm/_data/site_configs/{p.name}" for p in (REPO / "site_configs").glob("*.yaml")}
    assert shipped and shipped <= names
    assert "torc_slurm/store/schema.sql" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "torc = torc_slurm.cli:main" in text and "torc-slurm-job-runner" in text
