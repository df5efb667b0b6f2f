"""Pydantic models of a workflow spec, in NREL torc's format. Unknown keys are errors.

String fields of jobs, files and user_data may hold Python format templates (``{i:03d}``); they are
validated here only as far as they can be before parameter expansion (see ``parameters.py``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, PrivateAttr, field_validator,
                      model_validator)

from torc_slurm.spec.actions import ActionSpec
from torc_slurm.spec.limits import (MAX_ARGUMENT_BYTES, MAX_COUNT, MAX_MEMORY_BYTES, MAX_SECONDS, SQLITE_INT_MAX,
                                    SQLITE_INT_MIN, short_repr)
from torc_slurm.spec.parameters import parse_values
from torc_slurm.spec.units import parse_duration, parse_memory, parse_walltime

ParameterMode = Literal["product", "zip"]
SortMethod = Literal["gpus_runtime_memory", "gpus_memory_runtime", "none"]

# Values that reach sbatch lines. Anything else (spaces, newlines, '#', quotes, '$') is refused.
_SLURM_WORD = re.compile(r"^[A-Za-z0-9_.,+:=@%/\-\[\]]+$")
_SLURM_SIZE = re.compile(r"^\d+[KMGTkmgt]?[Bb]?$")
_EXTRA_OPTION = re.compile(r"^--?[A-Za-z][A-Za-z0-9\-]*(=[^\x00-\x1f\x7f]*)?$")
# Name used for a job/file/scheduler: also reaches file paths, so no separators or dot-dot.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.+\-@=,:\[\]{}() ]+$")

DEFAULT_RESOURCES_NAME = "default"


def _parsed_by(parser: Callable[[str], int], most: int, what: str) -> AfterValidator:
    """Keep the text as written, but only if ``parser`` accepts it and its value is at most ``most``."""

    def check(value: str) -> str:
        if parser(value) > most:
            raise ValueError(f"{short_repr(value)} is more than {what}")
        return value

    return AfterValidator(check)


MemoryText = Annotated[str, _parsed_by(parse_memory, MAX_MEMORY_BYTES, "1 PiB, the most a job may ask for")]
DurationText = Annotated[str, _parsed_by(parse_duration, MAX_SECONDS, f"{MAX_SECONDS // 86400} days")]
WalltimeText = Annotated[str, _parsed_by(parse_walltime, MAX_SECONDS, f"{MAX_SECONDS // 86400} days")]


def _whole_number(low: int, high: int, what: str = "") -> PlainValidator:
    """A whole number written as a number (no booleans, no 4.0, no "4") within [low, high]."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, not {_describe(value)}")
        if not low <= value <= high:
            raise ValueError(f"{short_repr(value)} is out of range: {what or 'the value'} must be between "
                             f"{low:,} and {high:,}")
        return value

    return PlainValidator(check, json_schema_input_type=int)


def Count(low: int, what: str) -> Any:  # noqa: N802 - reads as a type in the models below
    return Annotated[int, _whole_number(low, MAX_COUNT, what)]


Seconds = Annotated[int, _whole_number(0, MAX_SECONDS, "a number of seconds")]
# runtime_grace: how far past its runtime an enforced job may run (a factor, 1 = not at all).
Grace = Annotated[float, Field(ge=1.0, le=100.0, strict=True, allow_inf_nan=False)]
# Attempts that may end interrupted (lost with a runner, terminated at the walltime, timed out).
Attempts = Annotated[int, _whole_number(1, 1000, "a number of attempts")]
# The runner lease (DESIGN §2): under 2 s, a lock wait alone would fence every job.
LeaseSeconds = Annotated[int, _whole_number(2, MAX_SECONDS, "a number of seconds")]
Priority = Annotated[int, _whole_number(SQLITE_INT_MIN, SQLITE_INT_MAX, "priority (a signed 64-bit integer)")]


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()}; YAML also reads yes/no/on/off as booleans)"
    if isinstance(value, float):
        return f"the decimal number {short_repr(value)}"
    if isinstance(value, str):
        return f"the text {short_repr(value)}"
    if value is None:
        return "an empty value (null)"
    return {list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _parameter_value(value: Any) -> Any:
    """A parameter: a string range or list ('1:10', '[a, b]'), a number, or a YAML list of numbers and
    strings. Its values are parsed here too (lazily for ranges), so a bad range fails at load time."""
    if isinstance(value, list):
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, float, str)):
                raise ValueError(f"a parameter list may hold numbers and strings, not {_describe(item)}")
    elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"a parameter must be a range or list such as '1:10' or '[a, b]', a number, or a list "
                         f"of numbers and strings; not {_describe(value)}")
    parse_values(value)
    return value


# A parameter value: a string to parse ("0:99", "[1,2]", "['a','b']"), a YAML list, or a scalar.
ParameterValue = Annotated[Union[str, int, float, list[Union[int, float, str]]], PlainValidator(_parameter_value)]


def _slurm_default(value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"a slurm_defaults value must be text or a whole number, not {_describe(value)}")
    return value


SlurmDefault = Annotated[Union[str, int], PlainValidator(_slurm_default)]


def _argument(what: str) -> AfterValidator:
    def check(value: str) -> str:
        size = len(value.encode("utf-8", "surrogatepass"))
        if size >= MAX_ARGUMENT_BYTES:
            raise ValueError(f"{what} is {size:,} bytes; Linux passes at most {MAX_ARGUMENT_BYTES:,} bytes "
                             "as one argument or variable")
        return value

    return AfterValidator(check)


class StrictModel(BaseModel):
    """Unknown keys are errors. A field written as null (``depends_on: null``) takes its default, as
    torc reads it; a required field written as null stays an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and None in data.values():
            optional = _optional_fields(cls)
            data = {key: value for key, value in data.items() if value is not None or key not in optional}
        return data


_OPTIONAL_FIELDS: dict[type, frozenset[str]] = {}


def _optional_fields(model: type[BaseModel]) -> frozenset[str]:
    found = _OPTIONAL_FIELDS.get(model)
    if found is None:
        found = _OPTIONAL_FIELDS[model] = frozenset(
            name for name, info in model.model_fields.items() if not info.is_required())
    return found


def _refused(reason: str, allowed: Any = ...) -> AfterValidator:
    """A torc field that has no meaning here: refused with ``reason`` unless it holds ``allowed``
    (torc's default, which asks for nothing)."""

    def check(value: Any) -> Any:
        if allowed is ... or value != allowed:
            raise ValueError(reason)
        return value

    return AfterValidator(check)


class ResourceRequirements(StrictModel):
    """Per-job resources. A spec entry named 'default' replaces the built-in default
    (1 CPU, 0 GPUs, 1 node, 1 GiB, PT1M: torc's default runtime) for jobs that name none."""

    name: str
    num_cpus: Count(1, "num_cpus") = 1
    num_gpus: Count(0, "num_gpus") = 0
    num_nodes: Count(1, "num_nodes") = 1
    memory: MemoryText = "1g"
    runtime: DurationText = "PT1M"

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
    nodes: Count(1, "nodes") = 1
    walltime: WalltimeText = "01:00:00"
    mem: str | None = None
    gres: str | None = None
    qos: str | None = None
    ntasks_per_node: Optional[Count(1, "ntasks_per_node")] = None
    tmp: str | None = None
    # sbatch options; torc writes them as one string ("--constraint=x --exclusive"), split as a shell would
    extra: list[str] = []

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", value):
            raise ValueError(f"scheduler name {short_repr(value)} may hold only letters, digits, '_', '.', '-'")
        return value

    @field_validator("account", "partition", "qos", "gres")
    @classmethod
    def _word(cls, value: str | None) -> str | None:
        if value is not None and not _SLURM_WORD.fullmatch(value):
            raise ValueError(f"{short_repr(value)} is not a valid Slurm value (letters, digits and _.,+:=@%/-[] only)")
        return value

    @field_validator("mem", "tmp")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None and not _SLURM_SIZE.fullmatch(value):
            raise ValueError(f"{short_repr(value)} is not a Slurm size such as '64G' or '500M'")
        return value

    @field_validator("extra", mode="before")
    @classmethod
    def _extra_words(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return shlex.split(value)
            except ValueError as exc:  # "No closing quotation"
                raise ValueError(f"cannot split {short_repr(value)} into sbatch options: {exc}") from None
        return value

    @field_validator("extra")
    @classmethod
    def _extra(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _EXTRA_OPTION.fullmatch(value):
                raise ValueError(f"extra option {short_repr(value)} must look like '--option=value' on one line")
        return values

    @property
    def walltime_seconds(self) -> int:
        return parse_walltime(self.walltime)


class FailureRule(StrictModel):
    """torc's failure-handler rule: which exit codes it matches, how often the job is retried, and
    a script run before each retry."""

    exit_codes: list[Annotated[int, _whole_number(-255, 255, "an exit code")]] = []
    match_all_exit_codes: bool = False
    max_retries: Annotated[int, _whole_number(0, 1000, "a number of retries")] = 3
    recovery_script: Annotated[str, _argument("the recovery_script")] | None = None

    @model_validator(mode="after")
    def _matches_something(self) -> "FailureRule":
        if not self.exit_codes and not self.match_all_exit_codes:
            raise ValueError("a rule needs exit_codes or match_all_exit_codes: true")
        return self


class FailureHandler(StrictModel):
    name: str
    rules: list[FailureRule] = Field(min_length=1)


class FileSpec(StrictModel):
    name: str
    path: str
    parameters: dict[str, ParameterValue] = {}
    parameter_mode: ParameterMode = "product"
    use_parameters: list[str] | None = None  # the workflow-level parameters this entry uses


class UserDataSpec(StrictModel):
    name: str
    data: Any = None
    is_ephemeral: bool = False
    parameters: dict[str, ParameterValue] = {}
    parameter_mode: ParameterMode = "product"
    use_parameters: list[str] | None = None


class GroupSpec(StrictModel):
    """Jobs that start together (a gang, on one node or several): every member's resources are
    claimed at once. A group waits for everything any member waits for. When the ``lead`` member
    exits, ``group_end: lead`` ends the group (the others are terminated, which is no failure);
    ``group_end: all`` waits for every member. Default: ``lead`` when a lead is named, else ``all``."""

    name: str
    lead: str | None = None
    group_end: Literal["lead", "all"] | None = None


class JobSpec(StrictModel):
    name: str
    command: Annotated[str, _argument("the command")]
    invocation_script: Annotated[str, _argument("the invocation_script")] | None = None
    depends_on: list[str] = []
    depends_on_regexes: list[str] = []
    input_files: list[str] = []
    output_files: list[str] = []
    input_user_data: list[str] = []
    output_user_data: list[str] = []
    # Regexes (re.search, RE2) over the names of files / user_data: each adds the entries it matches.
    input_file_regexes: list[str] = []
    output_file_regexes: list[str] = []
    input_user_data_regexes: list[str] = []
    output_user_data_regexes: list[str] = []
    resource_requirements: str | None = None
    scheduler: str | None = None
    priority: Priority = 0
    # A job whose prerequisite failed is canceled ("upstream job X failed") unless this is false.
    cancel_on_blocking_job_failure: bool = True
    supports_termination: bool = False
    max_attempts: Attempts | None = None     # None: the workflow's max_attempts
    failure_handler: str | None = None       # a failure_handlers entry
    enforce_runtime: bool | None = None      # None: the workflow's enforce_runtime
    runtime_grace: Grace | None = None       # None: the workflow's runtime_grace
    env: dict[str, Annotated[str, _argument("the value")]] = {}
    group: str | None = None                 # a `groups` entry: start together with its other members
    # A multi-node job (num_nodes > 1) is started through srun across its nodes (or the site's
    # launcher); 'none': run once on the first node, with TORC_NODELIST, to start its own ranks.
    launcher: Literal["srun", "none"] | None = None
    image: str | None = None                 # a container image (run natively unless the site names a runtime)
    parameters: dict[str, ParameterValue] = {}
    parameter_mode: ParameterMode = "product"
    # The workflow-level parameters this job uses (torc). Without it, those its fields name are used.
    use_parameters: list[str] | None = None

    @field_validator("env")
    @classmethod
    def _env(cls, values: dict[str, str]) -> dict[str, str]:
        for key in values:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"environment variable name {short_repr(key)} is not valid")
        return values

    @field_validator("command")
    @classmethod
    def _command(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("command must not be empty")
        return value


class SourceLines:
    """Where each job entry starts in the spec file (1-based), so errors found after loading (by the
    compiler) can name the line too. Location, not content: it never makes two specs unequal.

    ``jobs`` may be a function that finds them, called on first use (a JSON spec is only scanned
    for lines when an error needs one)."""

    __slots__ = ("_jobs",)

    def __init__(self, jobs: tuple[int | None, ...] | Callable[[], tuple[int | None, ...]] = ()) -> None:
        self._jobs = jobs

    @property
    def jobs(self) -> tuple[int | None, ...]:
        if callable(self._jobs):
            self._jobs = self._jobs()
        return self._jobs

    def job(self, index: int | None) -> int | None:
        jobs = self.jobs
        return jobs[index] if index is not None and 0 <= index < len(jobs) else None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SourceLines)

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "SourceLines(…)" if callable(self._jobs) else f"SourceLines({len(self._jobs)} jobs)"


# torc's documentation spells the granularities as its enum (Summary, TimeSeries); its reader and
# examples use snake_case. Both are read, and kept as "summary" / "time_series".
_GRANULARITY = {"summary": "summary", "timeseries": "time_series"}
MONITOR_METRICS = ("cpu_percent", "memory_bytes")


class ResourceMonitorSpec(StrictModel):
    """torc's resource_monitor: whether the runner samples its jobs' CPU and memory, how often, and
    whether it keeps every sample per job (time_series) or only each attempt's peak and average.
    ``metrics`` (written by some torc examples, read by nobody in torc) may only name what is
    sampled anyway: cpu_percent and memory_bytes."""

    enabled: bool = True
    granularity: Literal["summary", "time_series"] = "summary"
    sample_interval_seconds: Annotated[int, _whole_number(1, 3600, "sample_interval_seconds")] = 5
    generate_plots: bool = False
    metrics: list[str] | None = None

    @field_validator("granularity", mode="before")
    @classmethod
    def _granularity(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _GRANULARITY.get(value.replace("_", "").lower(), value)
        return value

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, values: list[str] | None) -> list[str] | None:
        for value in values or ():
            if value not in MONITOR_METRICS:
                raise ValueError(f"metric {short_repr(value)} is not sampled: the runner samples "
                                 f"{' and '.join(MONITOR_METRICS)} (both always)")
        return values


class WorkflowSpec(StrictModel):
    name: str
    description: str | None = None
    user: str | None = None
    project: str | None = None
    metadata: dict[str, Any] = {}
    parameters: dict[str, ParameterValue] = {}
    jobs: list[JobSpec] = Field(min_length=1)
    groups: list[GroupSpec] = []
    files: list[FileSpec] = []
    user_data: list[UserDataSpec] = []
    resource_requirements: list[ResourceRequirements] = []
    slurm_schedulers: list[SlurmScheduler] = []
    slurm_defaults: dict[str, SlurmDefault] = {}
    jobs_sort_method: SortMethod = "gpus_runtime_memory"
    compute_node_expiration_buffer_seconds: Seconds = 60
    compute_node_wait_for_new_jobs_seconds: Seconds = 90
    # Default attempt limit of every job (see JobSpec.max_attempts).
    max_attempts: Attempts = 3
    # A runner that cannot renew its lease for this long kills its jobs; others take them after
    # 1.5x as long, or at once with proof of death (see runner.liveness).
    heartbeat_timeout_seconds: LeaseSeconds = 120
    failure_handlers: list[FailureHandler] = []
    actions: list[ActionSpec] = []
    resource_monitor: ResourceMonitorSpec = ResourceMonitorSpec()
    # runtime is a request (packing, walltime fitting); with enforce_runtime a job still running
    # at runtime x runtime_grace is killed and recorded as timed out.
    enforce_runtime: bool = False
    runtime_grace: Grace = 1.5
    # torc options of its server and its workers that ask for what torc_slurm does not do: accepted
    # only as torc's default (asking for nothing), otherwise refused with the reason.
    use_pending_failed: Annotated[bool, _refused(
        "use_pending_failed: true needs torc's server-side PendingFailed status and AI-assisted recovery, "
        "which torc_slurm does not have; failed jobs are retried by failure_handlers / max_attempts and "
        "rerun with 'torc workflows reinit' or 'reset-status'", False)] = False
    compute_node_ignore_workflow_completion: Annotated[bool, _refused(
        "compute_node_ignore_workflow_completion: true (hold allocations after the workflow completes) is "
        "not supported: a runner exits once nothing it could run can become ready, so no allocation idles", False)] = False
    compute_node_wait_for_healthy_database_minutes: Annotated[Any, _refused(
        "compute_node_wait_for_healthy_database_minutes has no meaning here: there is no database server, "
        "the queue is a file on the shared filesystem; how long a runner survives a stalled filesystem is "
        "heartbeat_timeout_seconds")] = None

    @field_validator("slurm_defaults")
    @classmethod
    def _slurm_defaults(cls, values: dict[str, str | int]) -> dict[str, str | int]:
        for key, value in values.items():
            if not re.fullmatch(r"[a-z][a-z0-9\-_]*", key):
                raise ValueError(f"slurm_defaults key {short_repr(key)} is not an sbatch option name")
            if not _SLURM_WORD.fullmatch(str(value)):
                raise ValueError(f"slurm_defaults value {short_repr(value)} for {short_repr(key)} "
                                 "is not a valid Slurm value")
        return values

    @model_validator(mode="after")
    def _unique_names(self) -> "WorkflowSpec":
        for label, items in (
            ("resource_requirements", self.resource_requirements),
            ("slurm_schedulers", self.slurm_schedulers),
            ("failure_handlers", self.failure_handlers),
        ):
            seen: set[str] = set()
            for item in items:
                if item.name in seen:
                    raise ValueError(f"{label} name {short_repr(item.name)} is defined twice")
                seen.add(item.name)
        return self

    _lines: SourceLines = PrivateAttr(default_factory=SourceLines)  # set by spec.load

    def resources_by_name(self) -> dict[str, ResourceRequirements]:
        table = {DEFAULT_RESOURCES_NAME: BUILTIN_DEFAULT_RESOURCES}
        table.update({rr.name: rr for rr in self.resource_requirements})
        return table


def validate_name(kind: str, name: str) -> None:
    """An expanded job/file/user_data name: printable, no path separators, not '.' or '..'."""
    if not name or not NAME_PATTERN.fullmatch(name) or name in {".", ".."} or ".." in name:
        raise ValueError(
            f"{kind} name {short_repr(name)} is not allowed: use letters, digits, spaces and _.+-@=,:()[]{{}}"
            " (no '/', no '..', no control characters)"
        )
