"""container_command: the text a runner starts for a job with an image, run through a real bash with
a stand-in runtime (a script that records its argv, then runs what follows the image as
`bash -c` would inside the container)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from torc_slurm.runner.containers import container_command, image_reference

STAND_IN = """#!/usr/bin/env python3
import json, os, subprocess, sys
with open(os.environ["ARGV_LOG"], "w") as f:
    json.dump(sys.argv[1:], f)
# argv: exec [options] IMAGE bash -c COMMAND
words = sys.argv[1:]
image_at = words.index("bash") - 1
sys.exit(subprocess.call(words[image_at + 1:]))
"""

# Quotes of both kinds, $, backticks, a newline, a glob, a backslash and a {{...}} look-alike:
# all must reach the inner bash unchanged and be interpreted only there.
TRICKY = """printf '%s\\n' "it's \\"quoted\\"" '$HOME stays' `echo ticks` *.none
echo "$TORC_TEST_VALUE" {a,b} 'back\\slash'"""


@pytest.fixture()
def runtime(tmp_path: Path) -> Path:
    path = tmp_path / "fake-apptainer"
    path.write_text(STAND_IN, encoding="utf-8")
    path.chmod(0o755)
    return path


def run(text: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    log = tmp_path / "argv.json"
    env = {**os.environ, "ARGV_LOG": str(log), "TORC_TEST_VALUE": "from the host"}
    done = subprocess.run(["bash", "-c", text], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    return done, json.loads(log.read_text())


def test_the_runtime_gets_exec_image_and_the_command_as_one_argument(runtime: Path, tmp_path: Path) -> None:
    done, argv = run(container_command(str(runtime), "ubuntu:24.04", TRICKY), tmp_path)
    assert argv == ["exec", "docker://ubuntu:24.04", "bash", "-c", TRICKY]
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ['it\'s "quoted"', "$HOME stays", "ticks", "*.none",
                                        "from the host a b back\\slash"]


def test_exit_status_and_options(runtime: Path, tmp_path: Path) -> None:
    folder = tmp_path / "out dir"
    text = container_command(str(runtime), "/images/my image.sif", "exit 7", binds=[str(folder)], gpus=True)
    done, argv = run(text, tmp_path)
    assert argv == ["exec", "--nv", "--bind", str(folder), "/images/my image.sif", "bash", "-c", "exit 7"]
    assert done.returncode == 7


def test_an_osmo_command_runs_unchanged_inside(runtime: Path, tmp_path: Path) -> None:
    """The translated OSMO command, with its ${TORC_OUTPUT_DIR} insertions, expands inside the container's
    bash (the runtime passes the environment through, as Apptainer does)."""
    from torc_slurm.spec.osmo import translate

    spec = translate({"workflow": {"name": "w", "tasks": [
        {"name": "t", "image": "ubuntu:24.04", "command": ["bash", "-c"],
         "args": ["mkdir -p {{output}}/x && echo hi > {{output}}/x/f.txt"]}]}})
    out = tmp_path / "out"
    text = container_command(str(runtime), spec["jobs"][0]["image"], spec["jobs"][0]["command"])
    done, argv = run(f"export TORC_OUTPUT_DIR={out}; {text}", tmp_path)
    assert done.returncode == 0, done.stderr
    assert argv[:4] == ["exec", "docker://ubuntu:24.04", "bash", "-c"]
    assert (out / "tasks" / "t" / "x" / "f.txt").read_text() == "hi\n"


@pytest.mark.parametrize(("image", "expected"), [
    ("ubuntu:24.04", "docker://ubuntu:24.04"),
    ("nvcr.io/nvidia/pytorch:24.01-py3", "docker://nvcr.io/nvidia/pytorch:24.01-py3"),
    ("docker://ubuntu", "docker://ubuntu"),
    ("oras://ghcr.io/a/b:1", "oras://ghcr.io/a/b:1"),
    ("/shared/images/x.sif", "/shared/images/x.sif"),
    ("./x.sif", "./x.sif"),
    ("x.sif", "x.sif"),
])
def test_image_reference(image: str, expected: str) -> None:
    assert image_reference(image) == expected


@pytest.mark.parametrize(("runtime", "image", "command"), [
    ("", "ubuntu", "true"), ("apptainer", "", "true"), ("apptainer", "a b", "true"),
    ("apptainer", "ubuntu", "a\x00b"),
])
def test_bad_arguments_are_refused(runtime: str, image: str, command: str) -> None:
    with pytest.raises(ValueError):
        container_command(runtime, image, command)
