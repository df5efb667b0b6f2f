"""Validation of workflow actions, in YAML and JSON5: every refusal names the file, the action
(``actions.N``, as the loader names fields) and the field; the compiler resolves jobs and regexes to job indices."""

from __future__ import annotations

import pytest

from torc_slurm.compiler import compile_workflow
from torc_slurm.errors import SpecError
from torc_slurm.spec.load import parse_spec

YAML_HEAD = """name: w
jobs:
  - name: prep_1
    command: "true"
  - name: prep_2
    command: "true"
  - name: final
    command: "true"
    depends_on: [prep_1, prep_2]
slurm_schedulers:
  - name: big
    walltime: "01:00:00"
actions:
"""

GOOD_YAML = YAML_HEAD + """  - trigger_type: on_workflow_start
    action_type: schedule_nodes
    scheduler: big
    scheduler_type: slurm
    num_allocations: 2
  - trigger_type: on_jobs_ready
    action_type: schedule_nodes
    job_name_regexes: ["^prep_"]
    jobs: [final]
    scheduler: big
  - trigger_type: on_jobs_complete
    action_type: run_commands
    jobs: [final]
    commands: ["echo done"]
  - trigger_type: on_worker_start
    action_type: run_commands
    persistent: true
    commands: ["hostname"]
"""


def compile_text(text: str, source: str = "spec.yaml"):
    return compile_workflow(parse_spec(text, source), source)


def test_actions_compile_with_their_jobs_resolved() -> None:
    compiled = compile_text(GOOD_YAML)
    assert [(a.index, a.spec.trigger_type, a.jobs) for a in compiled.actions] == [
        (0, "on_workflow_start", ()), (1, "on_jobs_ready", (0, 1, 2)), (2, "on_jobs_complete", (2,)),
        (3, "on_worker_start", ())]


def test_jobs_on_a_workflow_trigger_are_checked_but_wait_for_nothing() -> None:
    """torc's own examples name the first stage's jobs on on_workflow_start: accepted, every name
    must exist, and the action still fires on the workflow event, not on those jobs."""
    compiled = compile_text(YAML_HEAD + """  - trigger_type: on_workflow_start
    action_type: schedule_nodes
    scheduler: big
    jobs: [prep_1, prep_2]
""")
    assert [(a.spec.trigger_type, a.jobs) for a in compiled.actions] == [("on_workflow_start", ())]
    with pytest.raises(SpecError) as info:
        compile_text(YAML_HEAD + """  - trigger_type: on_workflow_complete
    action_type: run_commands
    commands: ["true"]
    jobs: [prep_9]
""")
    assert info.value.field == "actions.0.jobs.0" and "unknown job 'prep_9'" in info.value.message


BAD = [
    ("""  - trigger_type: on_worker_start
    action_type: run_commands
    commands: ["true"]
    jobs: [final]
""", "actions.0", "belong to on_jobs_ready"),
    ("""  - trigger_type: on_jobs_ready
    action_type: run_commands
    commands: ["true"]
""", "actions.0", "needs jobs or job_name_regexes"),
    ("""  - trigger_type: on_workflow_start
    action_type: run_commands
    commands: []
""", "actions.0.commands", "at least one command"),
    ("""  - trigger_type: on_workflow_start
    action_type: schedule_nodes
""", "actions.0", "needs scheduler"),
    ("""  - trigger_type: on_workflow_start
    action_type: schedule_nodes
    scheduler: big
    scheduler_type: pbs
""", "actions.0.scheduler_type", "not supported"),
    ("""  - trigger_type: on_workflow_start
    action_type: run_commands
    commands: ["true"]
  - trigger_type: on_workflow_start
    action_type: schedule_nodes
    scheduler: small
""", "actions.1.scheduler", "unknown scheduler 'small'"),
    ("""  - trigger_type: on_jobs_complete
    action_type: run_commands
    jobs: [nope]
    commands: ["true"]
""", "actions.0.jobs.0", "unknown job 'nope'"),
    ("""  - trigger_type: on_jobs_complete
    action_type: run_commands
    job_name_regexes: ["^post_"]
    commands: ["true"]
""", "actions.0.job_name_regexes.0", "matches no job"),
    ("""  - trigger_type: on_jobs_complete
    action_type: run_commands
    job_name_regexes: ["(a"]
    commands: ["true"]
""", "actions.0.job_name_regexes.0", "invalid regular expression"),
    ("""  - trigger_type: on_worker_start
    action_type: schedule_nodes
    scheduler: big
""", "actions.0", "once per runner"),
    ("""  - trigger_type: on_workflow_start
    action_type: run_commands
    commands: ["true"]
    persistent: true
""", "actions.0", "persistent"),
    ("""  - trigger_type: on_workflow_start
    action_type: schedule_nodes
    scheduler: big
    num_allocations: 0
""", "actions.0.num_allocations", "between 1"),
    ("""  - trigger_type: on_job_start
    action_type: run_commands
    commands: ["true"]
""", "actions.0.trigger_type", ""),
]


@pytest.mark.parametrize(("entry", "field", "words"), BAD, ids=[b[2] or b[1] for b in BAD])
def test_yaml_refusals_name_file_action_and_field(entry: str, field: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        compile_text(YAML_HEAD + entry)
    error = info.value
    assert error.file == "spec.yaml"
    assert error.field == field, str(error)
    assert words in error.message, str(error)


JSON5_HEAD = """// torc actions in JSON5
{
  name: 'w',
  jobs: [
    {name: 'prep_1', command: 'true'},
    {name: 'final', command: 'true', depends_on: ['prep_1'],},
  ],
  slurm_schedulers: [{name: 'big', walltime: '01:00:00'}],
  actions: [
"""


def _json5_supported() -> bool:
    try:
        parse_spec("// a comment\n{name: 'w', jobs: [{name: 'a', command: 'true'},],}", "probe.json5")
    except SpecError:
        return False
    return True


json5 = pytest.mark.skipif(not _json5_supported(), reason="the spec loader does not read JSON5 yet")


@json5
def test_json5_actions_compile() -> None:
    text = JSON5_HEAD + """    {trigger_type: 'on_jobs_ready', action_type: 'schedule_nodes', jobs: ['final'], scheduler: 'big'},
    {trigger_type: 'on_workflow_complete', action_type: 'run_commands', commands: ['echo done'],},
  ],
}"""
    compiled = compile_text(text, "spec.json5")
    assert [a.jobs for a in compiled.actions] == [(1,), ()]


@json5
@pytest.mark.parametrize(("entry", "field", "words"), [
    ("{trigger_type: 'on_jobs_ready', action_type: 'run_commands', commands: ['true']}", "actions.0",
     "needs jobs or job_name_regexes"),
    ("{trigger_type: 'on_workflow_start', action_type: 'schedule_nodes', scheduler: 'nope'}",
     "actions.0.scheduler", "unknown scheduler"),
    (("{trigger_type: 'on_workflow_start', action_type: 'schedule_nodes', scheduler: 'big',"
      " scheduler_type: 'aws'}"), "actions.0.scheduler_type", "not supported"),
])
def test_json5_refusals_name_file_action_and_field(entry: str, field: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        compile_text(JSON5_HEAD + "    " + entry + ",\n  ],\n}", "spec.json5")
    assert info.value.file == "spec.json5"
    assert info.value.field == field, str(info.value)
    assert words in info.value.message
