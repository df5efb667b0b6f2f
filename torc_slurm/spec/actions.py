"""torc's workflow actions, as the spec writes them: a trigger, an action type and its settings.

What an action does and how it runs exactly once is the queue's business (``store/actions.py``);
this module validates the spec entry (``ActionSpec``) and, for the compiler, resolves what needs
the whole workflow (``resolve_actions``): the scheduler exists, ``jobs`` / ``job_name_regexes``
name at least one job each. Errors name the action and the field as the loader does (``actions.0.scheduler``, 0-based).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

TriggerType = Literal["on_workflow_start", "on_workflow_complete", "on_jobs_ready", "on_jobs_complete",
                      "on_worker_start", "on_worker_complete"]
ActionType = Literal["run_commands", "schedule_nodes"]
JOB_TRIGGERS = ("on_jobs_ready", "on_jobs_complete")
WORKER_TRIGGERS = ("on_worker_start", "on_worker_complete")
SCHEDULER_TYPES = ("slurm", "local")
MAX_ALLOCATIONS = 1000


class ActionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    trigger_type: TriggerType
    action_type: ActionType
    jobs: list[str] | None = None
    job_name_regexes: list[str] | None = None
    commands: list[str] | None = None
    scheduler: str | None = None
    scheduler_type: str | None = None
    num_allocations: int | None = None
    start_one_worker_per_node: bool | None = None
    max_parallel_jobs: int | None = None
    persistent: bool = False

    @field_validator("commands")
    @classmethod
    def _commands(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("commands must list at least one command")
            for command in value:
                if not command.strip():
                    raise ValueError("a command must not be empty")
                if "\0" in command:
                    raise ValueError("a command must not contain a NUL character")
        return value

    @field_validator("scheduler_type")
    @classmethod
    def _scheduler_type(cls, value: str | None) -> str | None:
        if value is not None and value not in SCHEDULER_TYPES:
            raise ValueError(f"scheduler_type {value!r} is not supported: torc_slurm schedules with Slurm "
                             "('slurm') or runs on this machine ('local'); other schedulers have no backend here")
        return value

    @field_validator("num_allocations", "max_parallel_jobs")
    @classmethod
    def _count(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= MAX_ALLOCATIONS:
            raise ValueError(f"must be between 1 and {MAX_ALLOCATIONS}, not {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ActionSpec:
        kind, trigger = self.action_type, self.trigger_type
        if kind == "run_commands":
            if not self.commands:
                raise ValueError("a run_commands action needs commands (a list of shell commands)")
            extra = [f for f in ("scheduler", "scheduler_type", "num_allocations", "start_one_worker_per_node",
                                 "max_parallel_jobs") if getattr(self, f) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} belong to schedule_nodes, not run_commands")
        else:
            if not self.scheduler:
                raise ValueError("a schedule_nodes action needs scheduler (the name of a slurm_schedulers entry)")
            if self.commands:
                raise ValueError("commands belong to run_commands, not schedule_nodes")
            if trigger in WORKER_TRIGGERS:
                raise ValueError(f"{trigger} runs once per runner: schedule_nodes there would submit an allocation "
                                 "from every runner of every allocation; use on_workflow_start or a job trigger")
        if trigger in JOB_TRIGGERS:
            if not self.jobs and not self.job_name_regexes:
                raise ValueError(f"{trigger} needs jobs or job_name_regexes (the jobs it waits for)")
        elif (self.jobs or self.job_name_regexes) and trigger in WORKER_TRIGGERS:
            raise ValueError(f"jobs and job_name_regexes belong to on_jobs_ready / on_jobs_complete, not {trigger}")
        # On on_workflow_start / on_workflow_complete they are checked (every name must exist) and
        # otherwise only describe the action, as in torc, which resolves them and fires on the event.
        if self.persistent and trigger not in WORKER_TRIGGERS:
            raise ValueError("persistent (once per runner) applies only to on_worker_start / on_worker_complete; "
                             f"{trigger} runs exactly once per trigger")
        return self

    @property
    def is_local(self) -> bool:
        return self.action_type == "schedule_nodes" and self.scheduler_type == "local"


@dataclass(frozen=True)
class CompiledAction:
    """One action with its jobs resolved to job indices (sorted; empty for non-job triggers)."""

    index: int
    spec: ActionSpec
    jobs: tuple[int, ...] = ()

    def config(self) -> dict[str, Any]:
        return self.spec.model_dump(exclude_none=True, exclude_defaults=False)


def label(index: int) -> str:
    """The action's path as the loader names fields of its entries (``actions.0.scheduler``), so
    load-time and compile-time errors point the same way."""
    return f"actions.{index}"


def resolve_actions(actions: Sequence[ActionSpec], job_names: Mapping[str, int], scheduler_names: set[str],
                    matches: Callable[[str], frozenset[int]], error: Callable[..., Exception]) -> list[CompiledAction]:
    """The actions with their job triggers resolved. ``job_names``: expanded job name -> index;
    ``matches(pattern)``: the indices of the jobs whose name the regex finds (it raises for a bad
    pattern); ``error(message, field=...)`` builds the spec error to raise."""
    out = []
    for index, action in enumerate(actions):
        where = label(index)
        if action.action_type == "schedule_nodes" and action.scheduler_type != "local" \
                and action.scheduler not in scheduler_names:
            listed = ", ".join(sorted(scheduler_names)) or "none (add a slurm_schedulers entry)"
            raise error(f"unknown scheduler {action.scheduler!r}; the workflow's schedulers: {listed}",
                        field=f"{where}.scheduler")
        members: set[int] = set()
        for position, name in enumerate(action.jobs or ()):
            if name not in job_names:
                raise error(f"unknown job {name!r} (names are matched after parameter expansion)",
                            field=f"{where}.jobs.{position}")
            members.add(job_names[name])
        for position, pattern in enumerate(action.job_name_regexes or ()):
            try:
                found = matches(pattern)
            except ValueError as exc:  # compile_regex says why; name the action's field
                raise error(str(exc), field=f"{where}.job_name_regexes.{position}") from None
            if not found:
                raise error(f"regex {pattern!r} matches no job", field=f"{where}.job_name_regexes.{position}")
            members |= found
        if action.trigger_type not in JOB_TRIGGERS:
            members = set()  # descriptive only (see ActionSpec._consistent): nothing waits for them
        out.append(CompiledAction(index, action, tuple(sorted(members))))
    return out
