"""The sbatch script for one allocation, rendered from ``templates/sbatch.sh.j2``.

Every ``#SBATCH`` value is shell-quoted (sbatch undoes the quoting), directives are sorted so the same
inputs give the same bytes, and any value holding a newline or other control character is refused
even if it passed the spec's validation: one newline would be enough to add a directive or a command.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import jinja2
from pydantic import BaseModel, ValidationError

from torc_slurm.errors import SlurmError
from torc_slurm.slurm.sites import SiteConfig, shipped_dir
from torc_slurm.spec.models import SlurmScheduler
from torc_slurm.spec.units import format_walltime

TEMPLATE = "sbatch.sh.j2"
OUTPUT_NAME = "slurm-%j.out"
ERROR_NAME = "slurm-%j.err"

# Options torc_slurm sets itself; a spec may not override them.
RESERVED = frozenset({"job-name", "output", "error", "signal", "wrap", "parsable"})
# slurm_defaults keys that are not sbatch option names.
_ALIASES = {"walltime": "time"}
# Short options an `extra` entry may use, mapped to their long names.
_SHORT = {
    "A": "account", "C": "constraint", "D": "chdir", "G": "gpus", "J": "job-name", "N": "nodes",
    "c": "cpus-per-task", "e": "error", "n": "ntasks", "o": "output", "p": "partition", "q": "qos",
    "t": "time", "w": "nodelist", "x": "exclude",
}  # fmt: skip
# Options that say how many CPUs the allocation gets; without any, it takes whole nodes (--exclusive),
# because the runner packs the node itself and Slurm would otherwise give it one CPU.
CPU_LAYOUT = frozenset({"exclusive", "cpus-per-task", "ntasks", "ntasks-per-node", "cpus-per-gpu", "mincpus",
                        "oversubscribe", "overcommit"})
# sbatch options whose scheduler field has another name.
_FIELD_OF = {"time": "walltime", "ntasks-per-node": "ntasks_per_node"}
_OPTION_NAME = re.compile(r"^[a-z][a-z0-9\-]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(shipped_dir("templates")),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )


def render_sbatch(
    *,
    scheduler: SlurmScheduler,
    site: SiteConfig,
    slurm_defaults: Mapping[str, str | int],
    job_name: str,
    output_dir: Path,
    runner_argv: Sequence[str],
    signal_buffer_seconds: int,
    account_fallback: str | None = None,
) -> str:
    """The batch script that starts one runner per node of a ``scheduler`` allocation.

    Precedence of ``#SBATCH`` values: the scheduler's fields, then ``slurm_defaults``, then the
    site's default partition, then ``account_fallback`` (the user's default account, which the
    caller reads from ``site.default_account_env``). ``extra`` may add options and override
    defaults but not the scheduler's fields or the options torc_slurm sets itself. Unless some
    option sets the CPU layout (``CPU_LAYOUT``), the allocation takes whole nodes (``--exclusive``).
    """
    # Validate again: a model built with model_construct() never went through pydantic.
    scheduler = _revalidated(scheduler, f"scheduler {scheduler.name!r}")
    site = _revalidated(site, f"site {site.name!r}")
    if not runner_argv:
        raise SlurmError("runner_argv must name the runner command")
    if not 0 <= signal_buffer_seconds <= 65535:
        raise SlurmError(f"signal_buffer_seconds must be between 0 and 65535, not {signal_buffer_seconds}")
    if signal_buffer_seconds >= scheduler.walltime_seconds:
        raise SlurmError(
            f"scheduler {scheduler.name!r}: the signal buffer ({signal_buffer_seconds} s) must be shorter"
            f" than the walltime ({scheduler.walltime})"
        )
    output_dir = Path(output_dir)
    if not output_dir.is_absolute():
        raise SlurmError(
            f"output_dir {output_dir} must be absolute: Slurm reads relative paths from the job's cwd"
        )
    if "%" in str(output_dir):
        raise SlurmError(f"output_dir {output_dir} must not contain '%': Slurm would read it as a pattern")

    options = _scheduler_options(scheduler)
    fields = set(options)
    defaults = _defaults(slurm_defaults, fields)
    if scheduler.partition is None and "partition" not in defaults and site.default_partition:
        defaults["partition"] = site.default_partition
    _apply_site_entry(site, options, defaults)
    extra = _extra_options(scheduler.extra, fields)
    for name in extra:
        defaults.pop(name, None)
    options.update(defaults)
    options.update(extra)
    if "account" not in options and account_fallback:
        options["account"] = account_fallback
    if not CPU_LAYOUT & set(options):
        options["exclusive"] = None
    options.update(
        {
            "job-name": job_name,
            "output": str(output_dir / OUTPUT_NAME),
            "error": str(output_dir / ERROR_NAME),
            "signal": f"B:TERM@{signal_buffer_seconds}",
        }
    )

    directives = []
    for name in sorted(options):
        value = options[name]
        if value is None:
            directives.append(f"--{name}")
        else:
            directives.append(f"--{name}={shlex.quote(_checked(value, f'#SBATCH --{name}'))}")
    command = " ".join(shlex.quote(_checked(arg, "runner argument")) for arg in runner_argv)
    setup_lines = [_checked(line, f"site {site.name!r} setup line") for line in site.setup_lines]
    return _environment().get_template(TEMPLATE).render(
        directives=directives,
        site_name=shlex.quote(_checked(site.name, "site name")),
        signal_buffer_seconds=signal_buffer_seconds,
        gpu_visibility_variable=shlex.quote(site.gpu_visibility_variable),
        lock_kind=shlex.quote(site.lock_kind),
        container_runtime=shlex.quote(site.container_runtime or ""),
        setup_lines=setup_lines,
        multi_node=scheduler.nodes > 1,
        command=command,
    )


def _apply_site_entry(site: SiteConfig, options: dict[str, str | None], defaults: dict[str, str | None]) -> None:
    """What the site's entry for the chosen partition adds: its qos and constraint as defaults (the
    scheduler's fields, ``slurm_defaults`` and ``extra`` win), and no ``--partition`` when the entry
    is a QOS/constraint selection rather than a Slurm partition. Entries without these change nothing."""
    chosen = options.get("partition") or defaults.get("partition")
    entry = site.partition(chosen) if chosen else None
    if entry is None:
        return
    if not entry.is_partition:
        options.pop("partition", None)
        defaults.pop("partition", None)
    for name, value in entry.sbatch_options().items():
        if name not in options and name not in defaults:
            defaults[name] = value


_Model = TypeVar("_Model", bound=BaseModel)


def _revalidated(model: _Model, what: str) -> _Model:
    try:
        return type(model).model_validate(model.model_dump())
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SlurmError(f"{what} is invalid: {problems}") from exc


def _checked(value: object, what: str) -> str:
    text = str(value)
    if _CONTROL.search(text):
        raise SlurmError(f"{what} value {text!r} contains a newline or another control character")
    return text


def _scheduler_options(scheduler: SlurmScheduler) -> dict[str, str | None]:
    fields: dict[str, object] = {
        "account": scheduler.account,
        "partition": scheduler.partition,
        "nodes": scheduler.nodes,
        "time": format_walltime(scheduler.walltime_seconds),
        "mem": scheduler.mem,
        "gres": scheduler.gres,
        "qos": scheduler.qos,
        "ntasks-per-node": scheduler.ntasks_per_node,
        "tmp": scheduler.tmp,
    }
    return {name: str(value) for name, value in fields.items() if value is not None}


def _defaults(slurm_defaults: Mapping[str, str | int], taken: set[str]) -> dict[str, str | None]:
    defaults: dict[str, str | None] = {}
    for key, value in slurm_defaults.items():
        name = _ALIASES.get(key, key.replace("_", "-"))
        if not _OPTION_NAME.match(name):
            raise SlurmError(f"slurm_defaults key {key!r} is not an sbatch option name")
        if name in RESERVED:
            raise SlurmError(f"slurm_defaults may not set --{name}: torc_slurm sets it")
        if isinstance(value, bool):
            raise SlurmError(f"slurm_defaults value for {key!r} must be a string or a number, not {value!r}")
        if name not in taken:
            defaults[name] = str(value)
    return defaults


def _extra_options(extra: Sequence[str], fields: set[str]) -> dict[str, str | None]:
    options: dict[str, str | None] = {}
    for item in extra:
        option, sep, value = _checked(item, "extra option").partition("=")
        if option.startswith("--"):
            name = option[2:]
        elif option.startswith("-") and option[1:] in _SHORT:
            name = _SHORT[option[1:]]
        else:
            raise SlurmError(f"extra option {item!r}: write it as '--long-name=value'")
        if not _OPTION_NAME.match(name):
            raise SlurmError(f"extra option {item!r} does not name an sbatch option")
        if name in RESERVED:
            raise SlurmError(f"extra option {item!r}: torc_slurm sets --{name} itself")
        if name in fields:
            field = _FIELD_OF.get(name, name)
            raise SlurmError(f"extra option {item!r}: set the scheduler's own field {field!r} instead")
        if name in options:
            raise SlurmError(f"extra option --{name} is given twice")
        options[name] = value if sep else None
    return options
