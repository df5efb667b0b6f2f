"""torc's workflow actions, as the spec writes them: a trigger, an action type and its settings.

What an action does and how it runs exactly once is the queue's business (``store/actions.py``);
this module only validates the spec entry.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

TriggerType = Literal["on_workflow_start", "on_workflow_complete", "on_jobs_ready", "on_jobs_complete",
                      "on_worker_start", "on_worker_complete"]
ActionType = Literal["run_commands", "schedule_nodes"]


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
