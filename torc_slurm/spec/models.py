"""Pydantic models of a workflow spec, in NREL torc's format. Unknown keys are errors.

String fields of jobs, files and user_data may hold Python format templates (``{i:03d}``); they are
validated here only as far as they can be before parameter expansion (see ``parameters.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from torc_slurm.spec.units import parse_duration, parse_memory, parse_walltime

# A parameter value: a string to parse ("0:99", "[1,2]", "['a','b']"), a YAML list, or a scalar.
ParameterValue = Union[str, int, float, list[Union[int, float, str]]]
ParameterMode = Literal["product", "zip"]
SortMethod = Literal["gpus_runtime_memory", "gpus_memory_runtime", "none"]

# Values that reach sbatch lines. Anything else (spaces, newlines, '#', quotes, '$') is refused.
_SLURM_WORD = re.compile(r"^[A-Za-z0-9_.,+:=@%/\-\[\]]+$")
_SLURM_SIZE = re.compile(r"^\d+[KMGTkmgt]?[Bb]?$")
_EXTRA_OPTION = re.compile(r"^--?[A-Za-z][A-Za-z0-9\-]*(=[^\x00-\x1f\x7f]*)?$")
# Name used for a job/file/scheduler: also reaches file paths, so no separators or dot-dot.
_NAME = re.compile(r"^[A-Za-z0-9_.+\-@=,:\[\]{}() ]+$")

DEFAULT_RESOURCES_NAME = "default"


def _parsed_by(parser: Callable[[str], int]) -> AfterValidator:
    """Keep the text as written, but only if ``parser`` accepts it."""

    def check(value: str) -> str:
        parser(value)
        return value

    return AfterValidator(check)


MemoryText = Annotated[str, _parsed_by(parse_memory)]      # '100m', '4g', '1t'
DurationText = Annotated[str, _parsed_by(parse_duration)]  # ISO-8601: 'PT30M'
WalltimeText = Annotated[str, _parsed_by(parse_walltime)]  # Slurm: 'HH:MM:SS', 'D-HH:MM:SS'


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResourceRequirements(StrictModel):
    """Per-job resources. A spec entry named 'default' replaces the built-in default
    (1 CPU, 0 GPUs, 1 node, 1 GiB, PT1H) for jobs that name none."""

    name: str
    num_cpus: int = Field(1, ge=1)
    num_gpus: int = Field(0, ge=0)
    num_nodes: int = Field(1, ge=1)
    memory: MemoryText = "1g"
    runtime: DurationText = "PT1H"

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)

    @property
    def runtime_seconds(self) -> int:
        return parse_duration(self.runtime)


BUILTIN_DEFAULT_RESOURCES = ResourceRequirements(name=DEFAULT_RESOURCES_NAME)


class SlurmScheduler(StrictModel):
    """One kind of Slurm allocation. Every value is validated here and shell-quoted when rendered."""

    name: str
    account: str | None = None
    partition: str | None = None
    nodes: int = Field(1, ge=1)
    walltime: WalltimeText = "01:00:00"
    mem: str | None = None
    gres: str | None = None
    qos: str | None = None
    ntasks_per_node: int | None = Field(None, ge=1)
    tmp: str | None = None
    extra: list[str] = []

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", value):
            raise ValueError(f"scheduler name {value!r} may hold only letters, digits, '_', '.', '-'")
        return value

    @field_validator("account", "partition", "qos", "gres")
    @classmethod
    def _word(cls, value: str | None) -> str | None:
        if value is not None and not _SLURM_WORD.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid Slurm value (letters, digits and _.,+:=@%/-[] only)")
        return value

    @field_validator("mem", "tmp")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None and not _SLURM_SIZE.fullmatch(value):
            raise ValueError(f"{value!r} is not a Slurm size such as '64G' or '500M'")
        return value

    @field_validator("extra")
    @classmethod
    def _extra(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _EXTRA_OPTION.fullmatch(value):
                raise ValueError(f"extra option {value!r} must look like '--option=value' on one line")
        return values

    @property
    def walltime_seconds(self) -> int:
        return parse_walltime(self.walltime)


class FileSpec(StrictModel):
    name: str
    path: str
    parameters: dict[str, ParameterValue] = {}
    parameter_mode: ParameterMode = "product"


class UserDataSpec(StrictModel):
    name: str
    data: Any = None
    is_ephemeral: bool = False
    parameters: dict[str, ParameterValue] = {}
    parameter_mode: ParameterMode = "product"


class JobSpec(StrictModel):
    name: str
    command: str
    invocation_script: str | None = None
    depends_on: list[str] = []
    depends_on_regexes: list[str] = []
    input_files: list[str] = []
    output_files: list[str] = []
    input_user_data: list[str] = []
    output_user_data: list[str] = []
    resource_requirements: str | None = None
    scheduler: str | None = None
    priority: int = 0
    cancel_on_blocking_job_failure: bool = False
    supports_termination: bool = False
    env: dict[str, str] = {}
    parameters: dict[str, ParameterValue] = {}
    parameter_mode: ParameterMode = "product"

    @field_validator("env")
    @classmethod
    def _env(cls, values: dict[str, str]) -> dict[str, str]:
        for key in values:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"environment variable name {key!r} is not valid")
        return values

    @field_validator("command")
    @classmethod
    def _command(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("command must not be empty")
        return value


class SourceLines:
    """Where each job entry starts in the spec file (1-based), so errors found after loading (by the
    compiler) can name the line too. Location, not content: it never makes two specs unequal."""

    __slots__ = ("jobs",)

    def __init__(self, jobs: tuple[int | None, ...] = ()) -> None:
        self.jobs = jobs

    def job(self, index: int | None) -> int | None:
        return self.jobs[index] if index is not None and 0 <= index < len(self.jobs) else None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SourceLines)

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"SourceLines({len(self.jobs)} jobs)"


class WorkflowSpec(StrictModel):
    name: str
    description: str | None = None
    user: str | None = None
    project: str | None = None
    metadata: dict[str, Any] = {}
    parameters: dict[str, ParameterValue] = {}
    jobs: list[JobSpec] = Field(min_length=1)
    files: list[FileSpec] = []
    user_data: list[UserDataSpec] = []
    resource_requirements: list[ResourceRequirements] = []
    slurm_schedulers: list[SlurmScheduler] = []
    slurm_defaults: dict[str, Union[str, int]] = {}
    jobs_sort_method: SortMethod = "gpus_runtime_memory"
    compute_node_expiration_buffer_seconds: int = Field(60, ge=0)
    compute_node_wait_for_new_jobs_seconds: int = Field(90, ge=0)

    @field_validator("slurm_defaults")
    @classmethod
    def _slurm_defaults(cls, values: dict[str, str | int]) -> dict[str, str | int]:
        for key, value in values.items():
            if not re.fullmatch(r"[a-z][a-z0-9\-_]*", key):
                raise ValueError(f"slurm_defaults key {key!r} is not an sbatch option name")
            if not _SLURM_WORD.fullmatch(str(value)):
                raise ValueError(f"slurm_defaults value {value!r} for {key!r} is not a valid Slurm value")
        return values

    @model_validator(mode="after")
    def _unique_names(self) -> "WorkflowSpec":
        for label, items in (
            ("resource_requirements", self.resource_requirements),
            ("slurm_schedulers", self.slurm_schedulers),
        ):
            seen: set[str] = set()
            for item in items:
                if item.name in seen:
                    raise ValueError(f"{label} name {item.name!r} is defined twice")
                seen.add(item.name)
        return self

    _lines: SourceLines = PrivateAttr(default_factory=SourceLines)  # set by spec.load

    def resources_by_name(self) -> dict[str, ResourceRequirements]:
        table = {DEFAULT_RESOURCES_NAME: BUILTIN_DEFAULT_RESOURCES}
        table.update({rr.name: rr for rr in self.resource_requirements})
        return table


def validate_name(kind: str, name: str) -> None:
    """An expanded job/file/user_data name: printable, no path separators, not '.' or '..'."""
    if not name or not _NAME.fullmatch(name) or name in {".", ".."} or ".." in name:
        raise ValueError(
            f"{kind} name {name!r} is not allowed: use letters, digits, spaces and _.+-@=,:()[]{{}}"
            " (no '/', no '..', no control characters)"
        )
