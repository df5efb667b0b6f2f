"""OSMO workflow files translated into the native torc spec (pure: a dict in, a dict out).

NVIDIA OSMO writes workflows as ``workflow: {name, groups: [{name, tasks: [...]}]}`` (tasks that
start together, ended by a lead) or ``workflow: {name, tasks: [...]}`` (a serial workflow). This
module turns such a document into the dict that ``spec.models.WorkflowSpec`` validates, so it runs
through the same compiler, queue and runners as a torc spec. ``spec.load`` detects the format and
adds the file name and line numbers to the errors raised here.

The mapping
-----------
- ``workflow.name`` -> ``name``.
- An OSMO group -> a native group ``{name, lead, group_end: lead}``; its tasks -> jobs with
  ``group: NAME``. Each group has exactly one ``lead: true`` task. Two leads are an error; no lead
  is an error too when the group has two tasks or more (OSMO refuses such a group as well: the lead
  decides when the group ends, so we do not guess; a native spec can say ``group_end: all``
  instead). A group of one task has that task as its lead, as in OSMO.
- ``workflow.tasks`` (a serial workflow) -> plain jobs, no groups (``lead`` means nothing there).
- ``command`` + ``args`` -> the job command: every piece shell-quoted (``shlex.quote``), joined by
  spaces, so ``["bash", "-c"]`` + a multi-line script runs exactly as written.
- ``inputs: [{task: X}]`` -> a dependency. A group waits for every group that any of its tasks
  depends on (OSMO's rule), so every member of the group depends on every task of each such
  upstream group. In a serial workflow a task depends on the tasks it names. An input from a task
  of the same group is an error (a group's tasks start together).
- ``image`` -> the job's ``image`` (the runner runs natively unless the site names a runtime).
- ``environment`` -> ``env`` (numbers and booleans become text, as OSMO does).
- ``workflow.resources`` (named profiles) -> ``resource_requirements`` of the same names;
  a task's ``resource: NAME`` selects one, and without it the task uses the ``default`` profile,
  or torc's built-in default (1 CPU, 0 GPUs, 1 GiB, runtime PT1M) when no ``default`` is given.
  A task may give its own profile inline under ``resources`` (not together with ``resource``).
  ``cpu`` -> ``num_cpus`` (a whole number >= 1), ``gpu`` -> ``num_gpus``, ``memory`` -> ``memory``
  (binary units: ``Ki``, ``Mi``, ``Gi``, ``Ti``, with or without a trailing ``B``, or a number of
  bytes). ``G``/``M``/``K``/``T`` alone are refused as ambiguous (Kubernetes reads ``1G`` as 10^9
  bytes, OSMO as 2^30), and so are decimal units (``GB``, ``MB``) and ``m``. The runtime is always
  torc's default (PT1M): OSMO has no per-task runtime.

Substitutions (in ``command`` and ``args``)
-------------------------------------------
- ``{{output}}``: the task's own output folder, ``$TORC_OUTPUT_DIR/tasks/TASK``;
- ``{{input:N}}``: the output folder of the task's Nth input (0-based, in ``inputs`` order);
- ``{{input:NAME}}``: the output folder of input task NAME (it must be one of the task's inputs);
- ``{{host:TASK}}``: the host of TASK, a task of the same group.

They are inserted by closing the single quotes around the literal text, so the job's own shell
expands them and the program (e.g. the inner ``bash -c`` script) receives the absolute path as
plain text: ``mkdir -p {{output}}/data`` becomes ``'mkdir -p '"${TORC_OUTPUT_DIR}/tasks/T"'/data'``.
Task names are limited to letters, digits, ``.``, ``_`` and ``-`` (starting with a letter or digit,
no ``..``), so folder names need no quoting. Every task's command starts with
``mkdir -p -m 700 -- "$TORC_OUTPUT_DIR/tasks" "$TORC_OUTPUT_DIR/tasks/TASK" &&`` so the folder
exists, user-only, before the task runs (and is there, empty, for a task that writes nothing).
Any other ``{{...}}`` (``{{workflow_id}}``, Jinja variables) is an error; so is a substitution that
names no input, an unknown task, or a task outside the group.

The environment contract (what the runner sets for every job)
-------------------------------------------------------------
- ``TORC_OUTPUT_DIR``: the workflow's output folder, an absolute path (every job);
- for members of a group: ``TORC_GROUP`` (the group's name), ``TORC_GROUP_RANK`` (the member's
  0-based index in the group, in spec order), ``TORC_GROUP_SIZE``, ``TORC_GROUP_HOSTS`` (the hosts
  of all members, by rank, comma-separated) and ``TORC_GROUP_HOST_<rank>`` for each rank (the host
  of that member). ``{{host:TASK}}`` becomes ``"${TORC_GROUP_HOST_<rank of TASK>}"``.

Not supported (each is refused with "not supported", naming the field): ``version`` other than 2,
``default-values`` (Jinja templates), ``workflow.labels``/``pool``/``timeout``/``backend``; a
group's ``barrier`` and ``ignoreNonleadStatus: false``; a task's ``outputs``, ``files``, ``kpis``,
``privileged``, ``hostNetwork``, ``volumeMounts``, ``credentials``, ``downloadType``, ``cacheSize``,
``exitActions``, ``checkpoint`` and ``backend``; URL inputs and input ``regex``; a resource
profile's ``storage``, ``platform``, ``nodesExcluded`` and ``topology``. Fields OSMO does not have
are refused as unknown. Nothing is dropped silently.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from torc_slurm.errors import SpecError
from torc_slurm.spec.limits import MAX_COUNT, MAX_MEMORY_BYTES, short_repr, short_text

__all__ = ["OsmoError", "host_variable", "is_osmo", "output_folder", "task_locations", "translate"]

_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MAX_NAME = 128
_TOKEN = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUANTITY = re.compile(r"(\d{1,20}(?:\.\d{1,20})?)([A-Za-z]*)")
_BINARY = {"": 0, "B": 0, "Ki": 1, "KiB": 1, "Mi": 2, "MiB": 2, "Gi": 3, "GiB": 3, "Ti": 4, "TiB": 4,
           "Pi": 5, "PiB": 5}
_UNITS = ("t", 4), ("g", 3), ("m", 2), ("k", 1)

_TOP = {"workflow", "version"}
_TOP_UNSUPPORTED = {"default-values": "Jinja templates: render the file with OSMO's own tools first"}
_WORKFLOW = {"name", "groups", "tasks", "resources"}
_WORKFLOW_UNSUPPORTED = {
    "labels": "OSMO workflow labels have no torc counterpart",
    "pool": "OSMO pools: torc runs where the runner or the Slurm allocation is",
    "timeout": "OSMO queue and execution timeouts; give torc runtimes in a native spec",
    "backend": "OSMO backends: torc runs on Slurm or locally",
}
_GROUP = {"name", "tasks", "ignoreNonleadStatus"}
_GROUP_UNSUPPORTED = {
    "barrier": "OSMO's barrier script; a native torc group can end with all its members (group_end: all)",
}
_TASK = {"name", "image", "command", "args", "lead", "inputs", "resource", "resources", "environment"}
_TASK_UNSUPPORTED = {
    "outputs": "uploading outputs to URLs; tasks write to {{output}}, a folder under the output folder",
    "files": "inline files; write them from the command instead",
    "kpis": "OSMO KPIs",
    "privileged": "privileged containers",
    "hostNetwork": "container host networking (tasks run on the host's network already)",
    "volumeMounts": "container volume mounts",
    "credentials": "OSMO credentials",
    "downloadType": "OSMO data downloads",
    "cacheSize": "OSMO data caches",
    "exitActions": "OSMO exit actions; use failure_handlers in a native spec",
    "checkpoint": "OSMO checkpoint uploads",
    "backend": "OSMO backends: torc runs on Slurm or locally",
}
_RESOURCE = {"cpu", "gpu", "memory"}
_RESOURCE_UNSUPPORTED = {
    "storage": "disk space is not reserved by torc",
    "platform": "OSMO platforms; choose nodes with a Slurm scheduler (partition) in a native spec",
    "nodesExcluded": "excluding nodes",
    "topology": "topology requirements",
}
_INPUT = {"task"}
_INPUT_UNSUPPORTED = {"url": "URL inputs (downloads)", "regex": "input filters (regex)"}

Loc = tuple[Any, ...]


class OsmoError(SpecError):
    """An OSMO file this import refuses. ``loc`` is the path to the offending value in the document
    (keys and list indices), ``line_offset`` the number of lines into that string value where the
    problem is (a token in a multi-line script; None when the whole value is meant), so the loader
    can give the file's line."""

    def __init__(self, message: str, *, file: str | None = None, task: str | None = None,
                 field: str | None = None, line: int | None = None, loc: Loc = (),
                 line_offset: int | None = None) -> None:
        self.loc = loc
        self.line_offset = line_offset
        super().__init__(message, file=file, job=task, field=field, line=line)

    @property
    def task(self) -> str | None:
        return self.job

    def describe(self) -> str:
        where = []
        if self.file:
            where.append(f"{self.file}" + (f":{self.line}" if self.line else ""))
        if self.job:
            where.append(f"task '{self.job}'")
        if self.field:
            where.append(f"field '{self.field}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message

    def with_context(self, **context: object) -> OsmoError:
        merged: dict[str, Any] = {"file": self.file, "task": self.job, "field": self.field, "line": self.line}
        if "job" in context:
            context["task"] = context.pop("job")
        merged.update({k: v for k, v in context.items() if merged.get(k) is None})
        return OsmoError(self.message, loc=self.loc, line_offset=self.line_offset, **merged)


def is_osmo(data: Any) -> bool:
    """An OSMO document: ``workflow:`` (a mapping) at the top and no torc ``jobs``. Normally it has
    ``workflow.groups`` or ``workflow.tasks``; one without either is still read as OSMO, so the
    error says what OSMO needs rather than what a torc spec needs."""
    return isinstance(data, Mapping) and isinstance(data.get("workflow"), Mapping) and "jobs" not in data


def output_folder(task: str) -> str:
    """The shell text of ``task``'s output folder (double-quoted, expanded by the job's shell)."""
    return f'"${{TORC_OUTPUT_DIR}}/tasks/{task}"'


def host_variable(rank: int) -> str:
    """The shell text of the host of the group member of rank ``rank``."""
    return f'"${{TORC_GROUP_HOST_{rank}}}"'


def task_locations(data: Mapping[str, Any]) -> list[Loc]:
    """Where each task (so each job of ``translate``'s result, in order) is in the document."""
    workflow = data.get("workflow") if isinstance(data, Mapping) else None
    if not isinstance(workflow, Mapping):
        return []
    found: list[Loc] = []
    if isinstance(workflow.get("groups"), list):
        for g, group in enumerate(workflow["groups"]):
            tasks = group.get("tasks") if isinstance(group, Mapping) else None
            if isinstance(tasks, list):
                found.extend(("workflow", "groups", g, "tasks", t) for t in range(len(tasks)))
    elif isinstance(workflow.get("tasks"), list):
        found.extend(("workflow", "tasks", t) for t in range(len(workflow["tasks"])))
    return found


# -- the translation -------------------------------------------------------------------------------

class _Task:
    __slots__ = ("data", "group", "inputs", "loc", "name", "rank")

    def __init__(self, name: str, loc: Loc, data: Mapping[str, Any], group: int | None, rank: int) -> None:
        self.name, self.loc, self.data, self.group, self.rank = name, loc, data, group, rank
        self.inputs: list[str] = []


def translate(data: Mapping[str, Any]) -> dict[str, Any]:
    """An OSMO document (as read from YAML or JSON) -> a native torc spec dict. Raises ``OsmoError``."""
    return _Translator(data).run()


class _Translator:
    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.group_names: dict[int, str] = {}   # by position in workflow.groups
        self.tasks: list[_Task] = []
        self.by_name: dict[str, _Task] = {}
        self.names: dict[str, str] = {}         # task and group names, normalized as OSMO compares them
        self.inline_profiles: list[dict[str, Any]] = []  # tasks' own 'resources'

    # errors --------------------------------------------------------------------------------------
    def fail(self, message: str, loc: Loc, *, line_offset: int | None = None) -> OsmoError:
        task, field = self.describe(loc)
        return OsmoError(message, task=task, field=field, loc=loc, line_offset=line_offset)

    def describe(self, loc: Loc) -> tuple[str | None, str | None]:
        """(task name, field path within the task) or (None, path with group names)."""
        task = None
        rest: Loc = loc
        if loc[:2] == ("workflow", "tasks") and len(loc) >= 3:
            task, rest = self._task_name(("workflow", "tasks", loc[2])), loc[3:]
        elif loc[:2] == ("workflow", "groups") and len(loc) >= 5 and loc[3] == "tasks":
            task, rest = self._task_name(loc[:5]), loc[5:]
        if task is not None:
            return task, _path(rest) or None
        if loc[:2] == ("workflow", "groups") and len(loc) >= 3:
            group = self.group_names.get(loc[2]) or _name_in(self.data, loc[:3])
            label = short_text(group) if group else f"#{loc[2] + 1}"
            tail = _path(loc[3:])
            return None, f"workflow.groups[{label}]" + (f".{tail}" if tail else "")
        return None, _path(loc) or None

    def _task_name(self, loc: Loc) -> str:
        name = _name_in(self.data, loc)
        return short_text(name) if name else f"#{loc[-1] + 1}"

    # the document ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        data = self.data
        self.check_keys(data, (), _TOP, _TOP_UNSUPPORTED)
        if "version" in data:
            version = data["version"]
            if isinstance(version, bool) or str(version).strip() not in {"2"}:
                raise self.fail(f"not supported: OSMO workflow spec version {short_repr(version)} "
                                "(only version 2)", ("version",))
        workflow = data["workflow"]
        loc: Loc = ("workflow",)
        self.check_keys(workflow, loc, _WORKFLOW, _WORKFLOW_UNSUPPORTED)
        name = workflow.get("name")
        if name is None:
            raise self.fail("required field is missing: the workflow's name", loc)
        if not isinstance(name, str) or not name.strip():
            raise self.fail(f"the workflow's name must be text, not {_describe(name)}", (*loc, "name"))
        if "{{" in name:
            raise self.fail("not supported: {{...}} in the workflow's name (OSMO Jinja templates)", (*loc, "name"))
        groups, tasks = workflow.get("groups"), workflow.get("tasks")
        if groups and tasks:
            raise self.fail("give either 'groups' or 'tasks', not both (as in OSMO)", (*loc, "tasks"))
        if not groups and not tasks:
            where = "groups" if "groups" in workflow else "tasks" if "tasks" in workflow else None
            raise self.fail("an OSMO workflow needs 'groups' (a list of groups of tasks) or 'tasks' "
                            "(a list of tasks)", (*loc, where) if where else loc)
        profiles = self.resources(workflow.get("resources"), (*loc, "resources"))
        native_groups = self.read_groups(groups, (*loc, "groups")) if groups else None
        if not groups:
            self.read_serial(tasks, (*loc, "tasks"))
        self.read_inputs()
        jobs = [self.job(task, profiles) for task in self.tasks]
        result: dict[str, Any] = {"name": name, "metadata": {"imported_from": "osmo"}, "jobs": jobs}
        if native_groups:
            result["groups"] = native_groups
        inline = list(profiles.values())
        inline.extend(self.inline_profiles)
        if inline:
            result["resource_requirements"] = inline
        return result

    def check_keys(self, value: Any, loc: Loc, known: set[str], unsupported: Mapping[str, str]) -> None:
        if not isinstance(value, Mapping):
            raise self.fail(f"expected a mapping, not {_describe(value)}", loc)
        for key in value:
            if key in known:
                continue
            if key in unsupported:
                raise self.fail(f"not supported: {key} ({unsupported[key]})", (*loc, key))
            supported = ", ".join(sorted(known))
            raise self.fail(f"unknown OSMO field {short_repr(key)}, not supported (supported here: {supported})",
                            (*loc, key))

    # groups and tasks --------------------------------------------------------------------------------
    def read_groups(self, groups: Any, loc: Loc) -> list[dict[str, Any]]:
        if not isinstance(groups, list):
            raise self.fail(f"'groups' must be a list of groups, not {_describe(groups)}", loc)
        result = []
        for g, group in enumerate(groups):
            gloc = (*loc, g)
            self.check_keys(group, gloc, _GROUP, _GROUP_UNSUPPORTED)
            name = self.name_of(group, gloc, "group")
            self.group_names[g] = name
            if group.get("ignoreNonleadStatus", True) is not True:
                raise self.fail("not supported: ignoreNonleadStatus other than true (a group's outcome is its "
                                "lead's; a native torc group can wait for all members with group_end: all)",
                                (*gloc, "ignoreNonleadStatus"))
            tasks = group.get("tasks")
            if not isinstance(tasks, list) or not tasks:
                what = "is missing" if tasks is None else f"must be a non-empty list of tasks, not {_describe(tasks)}"
                raise self.fail(f"the group's 'tasks' {what}", (*gloc, "tasks") if "tasks" in group else gloc)
            leads = []
            for t, task in enumerate(tasks):
                tloc = (*gloc, "tasks", t)
                item = self.read_task(task, tloc, g, t)
                lead = task.get("lead", False)
                if lead is True:
                    leads.append(item)
                    if len(leads) == 2:
                        raise self.fail(f"group {short_repr(name)} has two leads, {short_repr(leads[0].name)} and "
                                        f"{short_repr(item.name)}: exactly one task of a group has lead: true",
                                        (*tloc, "lead"))
            if not leads:
                if len(tasks) > 1:
                    raise self.fail(f"group {short_repr(name)} has no lead: mark exactly one of its tasks "
                                    "lead: true (its exit ends the group, as in OSMO)", gloc)
                leads.append(self.tasks[-1])  # a group of one task: that task leads (OSMO's rule)
            result.append({"name": name, "lead": leads[0].name, "group_end": "lead"})
        return result

    def read_serial(self, tasks: Any, loc: Loc) -> None:
        if not isinstance(tasks, list):
            raise self.fail(f"'tasks' must be a list of tasks, not {_describe(tasks)}", loc)
        for t, task in enumerate(tasks):
            self.read_task(task, (*loc, t), None, t)

    def read_task(self, task: Any, loc: Loc, group: int | None, rank: int) -> _Task:
        self.check_keys(task, loc, _TASK, _TASK_UNSUPPORTED)
        name = self.name_of(task, loc, "task")
        if "lead" in task and not isinstance(task["lead"], bool):
            raise self.fail(f"'lead' must be true or false, not {_describe(task['lead'])}", (*loc, "lead"))
        item = _Task(name, loc, task, group, rank)
        self.tasks.append(item)
        self.by_name[name] = item
        return item

    def name_of(self, value: Mapping[str, Any], loc: Loc, kind: str) -> str:
        name = value.get("name")
        if name is None:
            raise self.fail(f"required field is missing: the {kind}'s name", loc)
        if not isinstance(name, str):
            raise self.fail(f"a {kind} name must be text, not {_describe(name)}", (*loc, "name"))
        if len(name) > _MAX_NAME or not _TASK_NAME.fullmatch(name) or ".." in name:
            raise self.fail(f"{kind} name {short_repr(name)} is not allowed here: use letters, digits, '.', '_' "
                            f"and '-' (starting with a letter or digit, no '..', at most {_MAX_NAME} characters)",
                            (*loc, "name"))
        # OSMO's rule: task and group names are distinct, ignoring case and '-' vs '_' (they name folders).
        key = name.lower().replace("_", "-")
        seen = self.names
        if key in seen:
            other = seen[key]
            same = "" if other == name else f" (names differ only in case or '-'/'_': {short_repr(other)})"
            raise self.fail(f"{kind} name {short_repr(name)} is used twice{same}; task and group names must all "
                            "differ", (*loc, "name"))
        seen[key] = name
        return name

    # inputs and dependencies --------------------------------------------------------------------------
    def read_inputs(self) -> None:
        for task in self.tasks:
            inputs = task.data.get("inputs", [])
            loc = (*task.loc, "inputs")
            if not isinstance(inputs, list):
                raise self.fail(f"'inputs' must be a list such as [{{task: NAME}}], not {_describe(inputs)}", loc)
            for i, entry in enumerate(inputs):
                iloc = (*loc, i)
                self.check_keys(entry, iloc, _INPUT, _INPUT_UNSUPPORTED)
                other = entry.get("task")
                if not isinstance(other, str):
                    raise self.fail("an input needs 'task: NAME'" if other is None
                                    else f"'task' must be a task name, not {_describe(other)}",
                                    (*iloc, "task") if "task" in entry else iloc)
                if other not in self.by_name:
                    more = " (inputs from other workflows are not supported)" if ":" in other else ""
                    raise self.fail(f"unknown task {short_repr(other)}{more}; tasks: {self.names_hint()}",
                                    (*iloc, "task"))
                upstream = self.by_name[other]
                if upstream is task:
                    raise self.fail("a task cannot be its own input", (*iloc, "task"))
                if task.group is not None and upstream.group == task.group:
                    raise self.fail(f"{short_repr(other)} is in the same group, {short_repr(self.group_names[task.group])}, "
                                    "whose tasks start together; a task can only take inputs from other groups",
                                    (*iloc, "task"))
                task.inputs.append(other)

    def depends_on(self, task: _Task) -> list[str]:
        if task.group is None:
            return list(dict.fromkeys(task.inputs))
        upstream = {self.by_name[name].group for member in self.tasks if member.group == task.group
                    for name in member.inputs}
        return [t.name for t in self.tasks if t.group in upstream]

    def names_hint(self) -> str:
        names = [t.name for t in self.tasks]
        shown = ", ".join(names[:10])
        return shown + (f" … ({len(names)} in all)" if len(names) > 10 else "")

    # one job -------------------------------------------------------------------------------------------
    def job(self, task: _Task, profiles: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        data = task.data
        pieces: list[str] = []
        for field in ("command", "args"):
            value = data.get(field)
            if value is None:
                if field == "command":
                    raise self.fail("required field is missing: command (a list, e.g. [\"bash\", \"-c\"])", task.loc)
                continue
            floc = (*task.loc, field)
            if not isinstance(value, list) or (field == "command" and not value):
                raise self.fail(f"'{field}' must be a{' non-empty' if field == 'command' else ''} list of strings, "
                                f"e.g. [\"bash\", \"-c\"], not {_describe(value)}", floc)
            for i, piece in enumerate(value):
                pieces.append(self.piece(task, piece, (*floc, i)))
        setup = (f'mkdir -p -m 700 -- "${{TORC_OUTPUT_DIR:?}}/tasks" {output_folder(task.name)}')
        job: dict[str, Any] = {"name": task.name, "command": f"{setup} && {' '.join(pieces)}"}
        if task.group is not None:
            job["group"] = self.group_names[task.group]
        depends = self.depends_on(task)
        if depends:
            job["depends_on"] = depends
        if "image" in data:
            image = data["image"]
            if not isinstance(image, str) or not image or any(c.isspace() or ord(c) < 32 for c in image):
                raise self.fail(f"'image' must be an image name without spaces, not {_describe(image)}",
                                (*task.loc, "image"))
            if "{{" in image:
                raise self.fail("not supported: {{...}} in the image (OSMO Jinja templates)", (*task.loc, "image"))
            job["image"] = image
        env = self.environment(task)
        if env:
            job["env"] = env
        rr = self.task_resources(task, profiles)
        if rr is not None:
            job["resource_requirements"] = rr
        return job

    def piece(self, task: _Task, piece: Any, loc: Loc) -> str:
        if isinstance(piece, bool) or not isinstance(piece, (str, int, float)):
            raise self.fail(f"expected text, not {_describe(piece)}", loc)
        text = str(piece)
        parts: list[str] = []
        position = 0
        for match in _TOKEN.finditer(text):
            if match.start() > position:
                parts.append(shlex.quote(text[position:match.start()]))
            parts.append(self.token(task, match[1], loc, text.count("\n", 0, match.start())))
            position = match.end()
        if position < len(text) or not parts:
            parts.append(shlex.quote(text[position:]))
        return "".join(parts)

    def token(self, task: _Task, inner: str, loc: Loc, offset: int) -> str:
        token = inner.strip()
        shown = "{{" + short_text(inner) + "}}"
        kind, _, arg = token.partition(":")
        kind, arg = kind.strip(), arg.strip()
        if token == "output":
            return output_folder(task.name)
        if kind == "input" and arg:
            if arg.isdigit():
                index = int(arg)
                if index >= len(task.inputs):
                    have = (f"{len(task.inputs)} input{'s' if len(task.inputs) != 1 else ''} "
                            f"({', '.join(task.inputs)})" if task.inputs else "no inputs")
                    raise self.fail(f"{shown} names no input: the task has {have}; N counts from 0",
                                    loc, line_offset=offset)
                return output_folder(task.inputs[index])
            if arg not in self.by_name:
                raise self.fail(f"{shown}: unknown task {short_repr(arg)}; tasks: {self.names_hint()}",
                                loc, line_offset=offset)
            if arg not in task.inputs:
                raise self.fail(f"{shown}: {short_repr(arg)} is not an input of this task; add "
                                f"'- task: {arg}' to its inputs", loc, line_offset=offset)
            return output_folder(arg)
        if kind == "host" and arg:
            other = self.by_name.get(arg)
            if other is None:
                raise self.fail(f"{shown}: unknown task {short_repr(arg)}; tasks: {self.names_hint()}",
                                loc, line_offset=offset)
            if task.group is None:
                raise self.fail(f"{shown} works only between tasks of one group (workflow.groups); this "
                                "workflow has no groups", loc, line_offset=offset)
            if other.group != task.group:
                raise self.fail(f"{shown}: {short_repr(arg)} is not in this task's group "
                                f"{short_repr(self.group_names[task.group])}; a host is known only for tasks "
                                "that run together", loc, line_offset=offset)
            return host_variable(other.rank)
        raise self.fail(f"not supported: the substitution {shown} (supported: {{{{output}}}}, {{{{input:N}}}}, "
                        "{{input:TASK}}, {{host:TASK}})", loc, line_offset=offset)

    def environment(self, task: _Task) -> dict[str, str]:
        env = task.data.get("environment")
        if env is None:
            return {}
        loc = (*task.loc, "environment")
        if not isinstance(env, Mapping):
            raise self.fail(f"'environment' must be a mapping of names to values, not {_describe(env)}", loc)
        result = {}
        for key, value in env.items():
            if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
                raise self.fail(f"environment variable name {short_repr(key)} is not valid", (*loc, key))
            if value is None or not isinstance(value, (str, int, float, bool)):
                raise self.fail(f"an environment value must be text, not {_describe(value)}", (*loc, key))
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if "{{" in text:
                raise self.fail("not supported: {{...}} in environment values (only in command and args)",
                                (*loc, key))
            result[key] = text
        return result

    # resources ----------------------------------------------------------------------------------------
    def resources(self, value: Any, loc: Loc) -> dict[str, dict[str, Any]]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(f"'resources' must map profile names to resources, not {_describe(value)}", loc)
        profiles: dict[str, dict[str, Any]] = {}
        for name, profile in value.items():
            if not isinstance(name, str) or not name:
                raise self.fail(f"a resource profile name must be text, not {_describe(name)}", loc)
            profiles[name] = self.profile(name, profile, (*loc, name))
        return profiles

    def profile(self, name: str, profile: Any, loc: Loc) -> dict[str, Any]:
        if profile is None:
            profile = {}
        self.check_keys(profile, loc, _RESOURCE, _RESOURCE_UNSUPPORTED)
        result: dict[str, Any] = {"name": name}
        if profile.get("cpu") is not None:
            result["num_cpus"] = self.count(profile["cpu"], (*loc, "cpu"), 1, "cpu")
        if profile.get("gpu") is not None:
            result["num_gpus"] = self.count(profile["gpu"], (*loc, "gpu"), 0, "gpu")
        if profile.get("memory") is not None:
            result["memory"] = self.memory(profile["memory"], (*loc, "memory"))
        return result

    def task_resources(self, task: _Task, profiles: Mapping[str, dict[str, Any]]) -> str | None:
        data = task.data
        if "resource" in data and "resources" in data:
            raise self.fail("give either 'resource' (a profile name) or 'resources' (the task's own profile), "
                            "not both", (*task.loc, "resources"))
        if "resources" in data:
            name = f"{task.name}:resources"
            if name in profiles:
                raise self.fail(f"the task's own resources would be named {short_repr(name)}, which a "
                                "workflow resource profile is named already", (*task.loc, "resources"))
            self.inline_profiles.append(self.profile(name, data["resources"], (*task.loc, "resources")))
            return name
        chosen = data.get("resource", "default")
        if not isinstance(chosen, str):
            raise self.fail(f"'resource' must name a profile of workflow.resources, not {_describe(chosen)}",
                            (*task.loc, "resource"))
        if chosen == "default":
            return None  # the spec's 'default' entry if given, else torc's built-in default
        if chosen not in profiles:
            known = ", ".join(sorted(profiles)) or "none are defined"
            raise self.fail(f"unknown resource profile {short_repr(chosen)} (workflow.resources: {known})",
                            (*task.loc, "resource"))
        return chosen

    def count(self, value: Any, loc: Loc, low: int, what: str) -> int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 7:
            number = int(value.strip())
        if number is None:
            hint = " (torc counts whole CPUs)" if what == "cpu" else ""
            raise self.fail(f"{what} must be a whole number, not {_describe(value)}{hint}", loc)
        if not low <= number <= MAX_COUNT:
            raise self.fail(f"{what} must be between {low} and {MAX_COUNT:,}, not {number}", loc)
        return number

    def memory(self, value: Any, loc: Loc) -> str:
        text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
        match = _QUANTITY.fullmatch(text) if text is not None else None
        if match is None:
            raise self.fail(f"memory must be a quantity such as '4Gi' or '512Mi', not {_describe(value)}", loc)
        unit = match[2]
        if unit not in _BINARY:
            if unit in {"K", "M", "G", "T", "P", "k"}:
                why = (f"'{unit}' is ambiguous (Kubernetes reads it as a power of 1000, OSMO as a power of "
                       f"1024): write '{unit.upper()}i'")
            elif unit == "m":
                why = "'m' means thousandths (Kubernetes' milli), not mebibytes: write 'Mi'"
            elif unit.upper() in {"KB", "MB", "GB", "TB", "PB"}:
                why = f"decimal units are not accepted by OSMO: write '{unit[0].upper()}i' (binary)"
            else:
                why = "use Ki, Mi, Gi or Ti"
            raise self.fail(f"memory {short_repr(value)}: {why}", loc)
        try:
            exact = Decimal(match[1]) * 1024 ** _BINARY[unit]
        except InvalidOperation:  # pragma: no cover - the pattern admits only plain decimals
            raise self.fail(f"memory {short_repr(value)} is not a number", loc) from None
        size = math.ceil(exact)  # whole bytes, rounded up
        if size <= 0:
            raise self.fail(f"memory {short_repr(value)} must be more than 0", loc)
        if size > MAX_MEMORY_BYTES:
            raise self.fail(f"memory {short_repr(value)} is more than 1 PiB, the most a job may ask for", loc)
        for suffix, power in _UNITS:
            if size % 1024 ** power == 0:
                return f"{size // 1024 ** power}{suffix}"
        return f"{size}b"


def _name_in(data: Any, loc: Loc) -> str | None:
    node = data
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return None
    name = node.get("name") if isinstance(node, Mapping) else None
    return name if isinstance(name, str) else None


def _path(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if value is None:
        return "an empty value (null)"
    if isinstance(value, str):
        return f"the text {short_repr(value)}"
    if isinstance(value, (int, float)):
        return f"the number {short_repr(value)}"
    return {list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)
