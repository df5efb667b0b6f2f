"""Spec -> CompiledWorkflow: expanded jobs, interned dependency sets, files. Pure: no I/O.

Dependencies come from ``depends_on`` (names), ``depends_on_regexes`` (an unanchored search, as
``re.search``; each pattern must match at least one other job; a job never matches itself), and
file and user_data edges (the consumer of an input depends on its single producer). Each job points
at one *dependency set*; equal sets are stored once, so 1000 jobs waiting on the same 1000 jobs cost
1000 membership rows, not a million edges.

Regexes run on RE2 (``google-re2``, see ``spec.regexes``), which matches in time linear in the
name's length whatever the pattern: ``^(a+)+$`` cannot hang ``create``. Its syntax is torc's (Rust
``regex``): no backreferences and no lookaround; a pattern using them is refused, naming the job.

Sizes are checked before anything is expanded: at most ``MAX_JOBS`` jobs (and as many files and
user_data entries) per workflow, counted from the parameters' lengths (see ``spec.limits``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from torc_slurm.errors import SpecError
from torc_slurm.spec.limits import MAX_DEPENDENCY_ROWS, MAX_JOBS, short_repr, short_text
from torc_slurm.spec.models import (
    DEFAULT_RESOURCES_NAME,
    NAME_PATTERN,
    JobSpec,
    ResourceRequirements,
    SlurmScheduler,
    WorkflowSpec,
    validate_name,
)
from torc_slurm.spec.parameters import (
    Template,
    combinations,
    compile_template,
    count_combinations,
    parse_values,
    referenced_names,
)
from torc_slurm.spec.actions import CompiledAction, resolve_actions
from torc_slurm.spec.regexes import NameIndex

_MAX_MESSAGE = 2000


_JOB_TEXT_FIELDS = ("name", "command", "invocation_script", "resource_requirements", "scheduler", "group")
_JOB_LIST_FIELDS = ("depends_on", "depends_on_regexes", "input_files", "output_files",
                    "input_user_data", "output_user_data")
# torc's regexes over file and user_data names: each field -> the list its matches join, and what it names.
_JOB_REGEX_FIELDS = {"input_file_regexes": ("input_files", "file"), "output_file_regexes": ("output_files", "file"),
                     "input_user_data_regexes": ("input_user_data", "user_data"),
                     "output_user_data_regexes": ("output_user_data", "user_data")}


@dataclass(slots=True)
class CompiledJob:  # not frozen: a frozen __init__ costs ~7 us per job, most of a 100k-job compile
    name: str
    command: str
    invocation_script: str | None
    env: dict[str, str]
    num_cpus: int
    num_gpus: int
    num_nodes: int
    memory_bytes: int
    runtime_s: int
    resource_requirements: str
    scheduler: str | None
    priority: int
    cancel_on_blocking_job_failure: bool
    supports_termination: bool
    depset: int | None  # index into CompiledWorkflow.dependency_sets
    input_files: tuple[int, ...]
    output_files: tuple[int, ...]
    input_user_data: tuple[int, ...]
    output_user_data: tuple[int, ...]
    rank: int = 0  # claim order: priority, then jobs_sort_method, then spec order
    max_attempts: int = 3  # attempts that may end interrupted (lost, terminated, timed out)
    failure_handler: str | None = None
    enforce_runtime: bool = False
    runtime_grace: float = 1.5
    group: int | None = None        # index into CompiledWorkflow.groups
    launcher: str | None = None     # multi-node jobs: 'srun' (default) or 'none'
    image: str | None = None


@dataclass(frozen=True)
class CompiledGroup:
    """Jobs that start together. ``lead``: the member whose exit ends the group (``group_end``
    'lead'); ``members`` in spec order, which is also their rank within the group."""

    name: str
    lead: int | None        # job index
    group_end: str          # 'lead' | 'all'
    members: tuple[int, ...]


@dataclass(frozen=True)
class CompiledFile:
    name: str
    path: str
    producer: int | None  # job index


@dataclass(frozen=True)
class CompiledUserData:
    name: str
    data: Any
    is_ephemeral: bool
    producer: int | None


@dataclass
class CompiledWorkflow:
    spec: WorkflowSpec
    jobs: list[CompiledJob]
    dependency_sets: list[tuple[int, ...]]  # sorted job indices
    files: list[CompiledFile]
    user_data: list[CompiledUserData]
    external_inputs: dict[int, list[int]] = field(default_factory=dict)  # file -> consumer jobs
    groups: list[CompiledGroup] = field(default_factory=list)
    actions: list[CompiledAction] = field(default_factory=list)  # spec order, job triggers resolved

    @property
    def schedulers(self) -> list[SlurmScheduler]:
        return list(self.spec.slurm_schedulers)

    @property
    def logical_dependencies(self) -> int:
        """What a user would count: one per (job, prerequisite) pair."""
        sizes = [len(s) for s in self.dependency_sets]
        return sum(sizes[job.depset] for job in self.jobs if job.depset is not None)

    @property
    def stored_memberships(self) -> int:
        return sum(len(s) for s in self.dependency_sets)

    def counts(self) -> dict[str, int]:
        return {
            "jobs": len(self.jobs),
            "dependency_sets": len(self.dependency_sets),
            "logical_dependencies": self.logical_dependencies,
            "stored_dependency_rows": self.stored_memberships,
            "files": len(self.files),
            "user_data": len(self.user_data),
        }


# Read-only stand-ins shared by many jobs: CompiledJob.env when a job has none (nothing writes a
# compiled job's env), and an _Expanded's text and lists once its CompiledJob is built.
_NO_ENV: dict[str, str] = {}
_SPENT: dict[str, Any] = {}


@dataclass(slots=True)
class _Expanded:
    entry: int  # index of the spec entry
    name: str
    text: dict[str, str | None]
    lists: dict[str, list[str]]


def compile_workflow(spec: WorkflowSpec, source: str = "<spec>") -> CompiledWorkflow:
    """Validate everything that needs the whole workflow and build the compiled form."""
    compiler: _Compiler | None = None
    try:
        compiler = _Compiler(spec)
        return compiler.run()
    except SpecError as exc:
        line = compiler.line_of(exc) if compiler is not None else None
        error = exc.with_context(file=source, line=line)
        if len(error.message) > _MAX_MESSAGE or len(error.job or "") > 200:  # a message, not a dump
            error = SpecError(short_text(error.message, _MAX_MESSAGE), file=error.file,
                              job=error.job and short_text(error.job, 200), field=error.field, line=error.line)
        raise error from None


class _Compiler:
    def __init__(self, spec: WorkflowSpec) -> None:
        self.spec = spec
        self.shared = {name: _values(value, None, f"parameters.{name}")
                       for name, value in spec.parameters.items()}
        self._figures: dict[str, _Figures] = {}
        self._entry: int | None = None  # the job entry being expanded (for error lines)
        self._entries: dict[str, int] = {}  # expanded job name -> its spec entry
        self._scheduler_names = {s.name for s in spec.slurm_schedulers}

    def line_of(self, exc: SpecError) -> int | None:
        """The spec line of the job entry an error is about, when the spec was loaded from YAML."""
        entry = self._entry if self._entry is not None else self._entries.get(exc.job or "")
        return self.spec._lines.job(entry)

    def run(self) -> CompiledWorkflow:
        files = self._expand_named("file", self.spec.files, ("name", "path"))
        data = self._expand_named("user_data", self.spec.user_data, ("name",))
        jobs = self._expand_jobs()
        if any(_has_regexes(entry) for entry in self.spec.jobs):
            self._match_name_regexes(jobs, [f["name"] for f, _ in files], [d["name"] for d, _ in data])
        names = {job.name: index for index, job in enumerate(jobs)}
        file_index = {f["name"]: i for i, (f, _) in enumerate(files)}
        data_index = {d["name"]: i for i, (d, _) in enumerate(data)}
        lookup = self._lookup
        inputs = [lookup(job, "input_files", file_index) if job.lists["input_files"] else ()
                  for job in jobs]
        outputs = [lookup(job, "output_files", file_index) if job.lists["output_files"] else ()
                   for job in jobs]
        data_in = [lookup(job, "input_user_data", data_index) if job.lists["input_user_data"] else ()
                   for job in jobs]
        data_out = [lookup(job, "output_user_data", data_index) if job.lists["output_user_data"] else ()
                    for job in jobs]
        file_producer = _producers(jobs, outputs, [f["name"] for f, _ in files], "output_files")
        data_producer = _producers(jobs, data_out, [d["name"] for d, _ in data], "output_user_data")

        prerequisites = self._prerequisites(jobs, names, inputs, data_in, file_producer, data_producer)
        groups = self._groups(jobs, names, prerequisites)
        set_ids: dict[frozenset[int], int] = {}
        depsets: list[tuple[int, ...]] = []
        job_sets: list[int | None] = []
        for members in prerequisites:
            if not members:
                job_sets.append(None)
                continue
            if members not in set_ids:
                set_ids[members] = len(depsets)
                depsets.append(tuple(sorted(members)))
            job_sets.append(set_ids[members])
        _check_acyclic(jobs, depsets, job_sets)

        resolved_by_names: dict[tuple[str | None, str | None], tuple[str, _Figures, str | None]] = {}
        resolved = []
        for job in jobs:
            key = (job.text["resource_requirements"], job.text["scheduler"])
            found = resolved_by_names.get(key)
            if found is None:
                found = resolved_by_names[key] = self._resources(job)
            resolved.append(found)
        ranks = _ranks(resolved, [self.spec.jobs[job.entry].priority for job in jobs],
                       self.spec.jobs_sort_method)
        flags = [self._flags(e) for e in self.spec.jobs]
        compiled = []
        for i, job in enumerate(jobs):
            compiled.append(_job(job, flags[job.entry], resolved[i], ranks[i], job_sets[i], inputs[i], outputs[i],
                                 data_in[i], data_out[i]))
            job.text = job.lists = _SPENT  # a million-job sweep never holds both forms of every job
        for number, group in enumerate(groups):
            for member in group.members:
                compiled[member].group = number
        for job, item in zip(compiled, jobs):
            entry = self.spec.jobs[item.entry]
            if entry.launcher is not None or entry.image is not None:
                job.launcher, job.image = entry.launcher, entry.image
        external: dict[int, list[int]] = {}
        for index, job_inputs in enumerate(inputs):
            for f in job_inputs:
                if file_producer.get(f) is None:
                    external.setdefault(f, []).append(index)
        return CompiledWorkflow(
            spec=self.spec,
            jobs=compiled,
            dependency_sets=depsets,
            files=[CompiledFile(f["name"], f["path"], file_producer.get(i)) for i, (f, _) in enumerate(files)],
            user_data=[CompiledUserData(d["name"], entry.data, entry.is_ephemeral, data_producer.get(i))
                       for i, (d, entry) in enumerate(data)],
            external_inputs=external,
            groups=groups,
            actions=self._actions(names),
        )

    def _actions(self, names: dict[str, int]) -> list[CompiledAction]:
        if not self.spec.actions:
            return []
        return resolve_actions(self.spec.actions, names, self._scheduler_names, NameIndex(names).matches, SpecError)

    # -- expansion -------------------------------------------------------------------------
    def _parameters_for(self, entry: Any, texts: Sequence[str], job: str | None,
                        where: str) -> dict[str, list[Any]]:
        """An entry's parameters: its own, plus the workflow-level ones it names in ``use_parameters``
        (in that order; torc's rule), or without that list, those its fields use as placeholders."""
        mine = {name: _values(value, job, f"{where}parameters.{name}") for name, value in entry.parameters.items()}
        use = entry.use_parameters
        if use is not None:
            unknown = [name for name in use if name not in self.shared]
            if unknown:
                defined = ", ".join(self.shared) or "none"
                raise SpecError(f"{short_repr(unknown[0])} is not a workflow-level parameter (defined: {defined})",
                                job=job, field=f"{where}use_parameters")
            used_shared: Iterable[str] = [name for name in dict.fromkeys(use) if name not in mine]
        else:
            known = set(self.shared) | set(mine)
            used_shared = sorted(name for name in _placeholders(texts, known) if name not in mine)
        return {**{name: self.shared[name] for name in used_shared}, **mine}

    def _plan(self, kind: str, entries: Sequence[Any], texts_of: Callable[[Any], list[str]]) -> list[dict[str, Any]]:
        """Each entry's parameters, after checking that all of them together stay within ``MAX_JOBS``
        entries of this kind: counted from the lengths, before anything is expanded."""
        plans = []
        total = 0
        for index, entry in enumerate(entries):
            job = entry.name if kind == "job" else None
            where = "" if kind == "job" else f"{kind}[{entry.name}]."
            field_name = f"{where}parameters"
            if kind == "job":
                self._entry = index
            params = self._parameters_for(entry, texts_of(entry), job, where)
            try:
                count = count_combinations(params, entry.parameter_mode)
            except ValueError as exc:
                raise SpecError(str(exc), job=job, field=field_name) from None
            # a job whose name uses only some of its parameters (or none) is one job per combination of
            # those; its lists expand over the others (see _gather)
            named = referenced_names([entry.name], set(params)) if kind == "job" and params else set(params)
            jobs = count
            if len(named) < len(params):
                if count > MAX_JOBS:
                    raise SpecError(_too_many(kind, params, entry.parameter_mode, count, 0, "combinations"),
                                    job=job, field=field_name)
                if entry.parameter_mode == "product":
                    jobs = math.prod(len(params[name]) for name in named)
            if total + jobs > MAX_JOBS:
                raise SpecError(_too_many(kind, params, entry.parameter_mode, jobs, total), job=job, field=field_name)
            total += jobs
            plans.append(params)
        self._entry = None
        return plans

    def _expand_named(self, kind: str, entries: Sequence[Any], fields: Sequence[str]):
        result: list[tuple[dict[str, str], Any]] = []
        seen: dict[str, int] = {}
        plans = self._plan(kind, entries, lambda entry: [getattr(entry, f) for f in fields])
        for entry, params in zip(entries, plans):
            templates = {f: compile_template(getattr(entry, f), set(params)) for f in fields}
            for combo in _combos(params, entry.parameter_mode, None, f"{kind} '{entry.name}'"):
                rendered = {f: _render(t, combo, None, f"{kind}s[{entry.name}].{f}") for f, t in templates.items()}
                name = rendered["name"]
                _check_name(kind, name, None)
                if name in seen:
                    raise SpecError(f"{kind} name {short_repr(name)} is defined twice after parameter expansion",
                                    field=f"{kind}[{entry.name}].name")
                seen[name] = len(result)
                result.append((rendered, entry))
        return result

    def _expand_jobs(self) -> list[_Expanded]:
        name_allowed = NAME_PATTERN.fullmatch  # validate_name's rule, inlined for a million names
        jobs: list[_Expanded] = []
        where = self._entries
        plans = self._plan("job", self.spec.jobs, _job_texts)
        for entry_index, (entry, params) in enumerate(zip(self.spec.jobs, plans)):
            self._entry = entry_index
            if not params:  # the common case of a written-out job: nothing to render
                text: dict[str, Any] = {f: getattr(entry, f) for f in _JOB_TEXT_FIELDS}
                text["env"] = dict(entry.env)
                expanded = [_Expanded(entry_index, entry.name, text,
                                      {f: list(getattr(entry, f)) for f in _list_fields(entry)})]
            else:
                expanded = self._expand_entry(entry_index, entry, params)
            for item in expanded:
                if not name_allowed(item.name) or ".." in item.name or item.name == ".":
                    _check_name("job", item.name, entry.name)  # raises, saying why
                if item.name in where:
                    raise SpecError(
                        f"two jobs are named {short_repr(item.name)} after parameter expansion "
                        f"(spec entries #{where[item.name] + 1} and #{entry_index + 1}); "
                        "put every parameter into the name", job=item.name, field="name")
                where[item.name] = entry_index
                jobs.append(item)
        self._entry = None
        return jobs

    def _expand_entry(self, entry_index: int, entry: Any, params: dict[str, list[Any]]) -> list[_Expanded]:
        known = set(params)
        scalars = {f: compile_template(getattr(entry, f), known) if getattr(entry, f) else None
                   for f in _JOB_TEXT_FIELDS}
        lists = {f: [compile_template(t, known) for t in getattr(entry, f)] for f in _list_fields(entry)}
        env = {k: compile_template(v, known) for k, v in entry.env.items()}
        combos = _combos(params, entry.parameter_mode, entry.name, "parameters")  # one at a time: 1M dicts are 200 MB
        named = scalars["name"].names if scalars["name"] else frozenset()  # an empty name is refused later
        if len(named) < len(known):
            return self._gather(entry_index, entry.name, named, scalars, lists, env, list(combos))
        # Render only what varies; the constant fields and lists are shared by every expanded job.
        const_text: dict[str, Any] = {f: t.text if t else None for f, t in scalars.items()
                                      if t is None or not t.names}
        var_text = [(f, t) for f, t in scalars.items() if t is not None and t.names]
        const_lists = {f: [t.text for t in ts] for f, ts in lists.items() if not any(t.names for t in ts)}
        var_lists = [(f, ts) for f, ts in lists.items() if f not in const_lists]
        const_env = not any(t.names for t in env.values())
        env_text = {k: v.text for k, v in env.items()}
        # No list varies and no regex adds to one (_match_name_regexes writes into it): every job
        # of the entry can share one dict, which a million-job sweep notices.
        shared_lists = not var_lists and not _has_regexes(entry)
        # The loop below runs once per job of a sweep: str.format_map straight on each field's
        # format string (Template.render's fast path without its call); a failure is explained below.
        var_formats = [(f, t.fmt) for f, t in var_text]  # compile_template always sets fmt
        expanded = []
        append = expanded.append
        combo: dict[str, Any] = {}
        try:
            for combo in combos:
                text = const_text.copy()
                for f, fmt in var_formats:
                    text[f] = fmt.format_map(combo)
                text["env"] = env_text if const_env else {k: v.render(combo) for k, v in env.items()}
                item_lists = const_lists if shared_lists else const_lists.copy()
                for f, ts in var_lists:
                    item_lists[f] = [t.render(combo) for t in ts]
                append(_Expanded(entry_index, text["name"], text, item_lists))
        except (ValueError, TypeError):  # say which field failed: render the failing combination field by field
            for f, t in [*var_text, *((f"env.{k}", v) for k, v in env.items()),
                         *((f, t) for f, ts in var_lists for t in ts)]:
                _render(t, combo, entry.name, f)
            raise
        return expanded

    @staticmethod
    def _gather(entry_index: int, name: str, named: frozenset[str], scalars: Mapping[str, Template | None],
                lists: Mapping[str, list[Template]], env: Mapping[str, Template],
                combos: list[dict[str, Any]]) -> list[_Expanded]:
        """A job whose name uses only some of its parameters (``named``; maybe none): one job per
        combination of those, whose list fields (depends_on, files, user data, regexes) expand over
        all the combinations sharing them. ``report_{d}`` with d x t depends on every
        ``analyze_{d}_{t}`` of its d. A scalar field (command, env …) may use only ``named``: with
        another parameter it would have several values for one job."""
        for field_name, template in [*scalars.items(), *((f"env.{k}", v) for k, v in env.items())]:
            if template is not None and not template.names <= named:
                others = ", ".join(sorted(template.names - named))
                raise SpecError(f"this field uses the parameter(s) {others}, which the job name does not, so "
                                "one job would have several values here; put them into the name, or use them "
                                "only in list fields such as depends_on and input_files", job=name, field=field_name)
        order = sorted(named)
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for combo in combos:
            groups.setdefault(tuple(combo[p] for p in order), []).append(combo)
        expanded = []
        for group in groups.values():
            first = group[0]
            text: dict[str, Any] = {f: (_render(t, first, name, f) if t.names else t.text) if t else None
                                    for f, t in scalars.items()}
            text["env"] = {k: _render(v, first, name, f"env.{k}") if v.names else v.text for k, v in env.items()}
            item_lists = {f: _dedup(_render(t, c, text["name"], f) for c in group for t in ts)
                          for f, ts in lists.items()}
            expanded.append(_Expanded(entry_index, text["name"], text, item_lists))
        return expanded

    def _match_name_regexes(self, jobs: list[_Expanded], file_names: list[str], data_names: list[str]) -> None:
        """torc's ``input_file_regexes`` & co: each pattern (re.search, RE2) must match at least one
        file (user_data) name; the names it matches join the job's list, as if written there."""
        indexes = {"file": NameIndex(dict.fromkeys(file_names)), "user_data": NameIndex(dict.fromkeys(data_names))}
        names = {"file": file_names, "user_data": data_names}
        cache: dict[tuple[str, str], list[str]] = {}
        for job in jobs:
            lists = job.lists
            for regex_field, (target, kind) in _JOB_REGEX_FIELDS.items():
                patterns = lists.get(regex_field)
                if not patterns:
                    continue
                found: list[str] = []
                for pattern in patterns:
                    matched = cache.get((kind, pattern))
                    if matched is None:
                        try:
                            positions = indexes[kind].matches(pattern)
                        except ValueError as exc:
                            raise SpecError(str(exc), job=job.name, field=regex_field) from None
                        matched = cache[(kind, pattern)] = [names[kind][i] for i in sorted(positions)]
                    if not matched:
                        section = "files" if kind == "file" else "user_data"
                        raise SpecError(f"regular expression {short_repr(pattern)} matches no {kind} "
                                        f"(defined under '{section}')", job=job.name, field=regex_field)
                    found.extend(matched)
                lists[target] = _dedup([*lists[target], *found])

    # -- resolution ------------------------------------------------------------------------
    @staticmethod
    def _lookup(job: _Expanded, field_name: str, index: Mapping[str, int]) -> tuple[int, ...]:
        names = job.lists[field_name]
        if not names:
            return ()
        found = []
        for name in names:
            if name not in index:
                kind = "file" if "files" in field_name else "user_data"
                section = kind if kind == "user_data" else "files"
                raise SpecError(f"unknown {kind} {short_repr(name)} (define it under '{section}')",
                                job=job.name, field=field_name)
            found.append(index[name])
        return tuple(dict.fromkeys(found))

    def _prerequisites(self, jobs, names, inputs, data_in, file_producer, data_producer):
        """Each job's prerequisites as a frozenset. A regex is compiled and matched against the job
        names (those with its literal prefix, if any) once per distinct pattern; jobs whose only
        dependency is the same pattern share one frozenset object, so interning 1000 x 1000 costs
        no more than 1000 x 1."""
        regex_cache: dict[str, frozenset[int]] = {}
        index_of_names = NameIndex(names)
        empty: frozenset[int] = frozenset()
        result: list[frozenset[int]] = []
        unions: dict[tuple[tuple[str, ...], frozenset[int]], frozenset[int]] = {}  # same inputs, same set
        built = 0  # members of the sets built below (not shared): the work and memory, capped

        def build(size: int, job: _Expanded) -> None:
            nonlocal built
            built += size
            if built > MAX_DEPENDENCY_ROWS:
                raise SpecError(
                    f"the prerequisites of the jobs up to this one already take more than "
                    f"{MAX_DEPENDENCY_ROWS:,} dependency rows: each job's set differs (e.g. a regex over many "
                    "jobs plus a name of its own), so none is shared. Put a barrier job between the groups, "
                    "or give the jobs the same prerequisites", job=job.name, field="depends_on_regexes")

        for index, job in enumerate(jobs):
            lists = job.lists
            if not (lists["depends_on"] or lists["depends_on_regexes"] or inputs[index] or data_in[index]):
                result.append(empty)
                continue
            members: set[int] = set()
            shared: list[frozenset[int]] = []
            own_match = False
            for name in lists["depends_on"]:
                if name not in names:
                    raise SpecError(f"depends on unknown job {short_repr(name)}", job=job.name, field="depends_on")
                if names[name] == index:
                    raise SpecError("a job cannot depend on itself", job=job.name, field="depends_on")
                members.add(names[name])
            for pattern in lists["depends_on_regexes"]:
                matches = regex_cache.get(pattern)
                if matches is None:
                    try:
                        matches = regex_cache[pattern] = index_of_names.matches(pattern)
                    except ValueError as exc:
                        raise SpecError(str(exc), job=job.name, field="depends_on_regexes") from None
                if index in matches:  # a job never matches itself
                    build(len(matches), job)
                    matches = matches - {index}
                    own_match = True
                if not matches:
                    raise SpecError(f"regular expression {short_repr(pattern)} matches no other job",
                                    job=job.name, field="depends_on_regexes")
                shared.append(matches)
            for kind, needed, producers in (("input_files", inputs[index], file_producer),
                                            ("input_user_data", data_in[index], data_producer)):
                for item in needed:
                    producer = producers.get(item)
                    if producer == index:
                        raise SpecError("a job cannot consume what it produces itself", job=job.name, field=kind)
                    if producer is not None:
                        members.add(producer)
            if len(shared) == 1 and members <= shared[0]:
                result.append(shared[0])
                continue
            key = (tuple(lists["depends_on_regexes"]), frozenset(members))
            union = None if own_match else unions.get(key)
            if union is None:
                build(len(members) + sum(map(len, shared)), job)
                union = frozenset(members.union(*shared))
                if not own_match and shared:
                    unions[key] = union
            result.append(union)
        return result

    def _groups(self, jobs: list[_Expanded], names: Mapping[str, int],
                prerequisites: list[frozenset[int]]) -> list[CompiledGroup]:
        """Gather the members of each group (a job's ``group`` may name a ``groups`` entry, or a
        group of its own with no lead), check leads and that no member waits for another, and make
        every member wait for everything any member waits for (the group starts as one). Updates
        ``prerequisites`` in place."""
        declared = {}
        for group in self.spec.groups:
            _check_name("group", group.name, None)
            if group.name in declared:
                raise SpecError(f"group {short_repr(group.name)} is defined twice", field=f"groups[{group.name}].name")
            declared[group.name] = group
        members: dict[str, list[int]] = {}
        for index, job in enumerate(jobs):
            name = job.text.get("group")
            if name:
                try:
                    validate_name("group", name)
                except ValueError as exc:
                    raise SpecError(str(exc), job=job.name, field="group") from None
                members.setdefault(name, []).append(index)
        result = []
        for name, group in declared.items():
            if name not in members:
                raise SpecError(f"group {short_repr(name)} has no member jobs (give jobs `group: {name}`)",
                                field=f"groups[{name}]")
            if group.lead is not None and (group.lead not in names or names[group.lead] not in members[name]):
                raise SpecError(f"the lead {short_repr(group.lead)} of group {short_repr(name)} is not one of its "
                                "jobs", field=f"groups[{name}].lead")
        for name, indices in members.items():
            group = declared.get(name)
            lead = names[group.lead] if group is not None and group.lead is not None else None
            end = (group.group_end if group is not None and group.group_end else None) or \
                ("lead" if lead is not None else "all")
            if end == "lead" and lead is None:
                raise SpecError(f"group {short_repr(name)} ends with its lead (group_end: lead) but names no lead",
                                field=f"groups[{name}].group_end")
            inside = set(indices)
            for index in indices:
                waits = prerequisites[index] & inside
                if waits:
                    other = jobs[min(waits)].name
                    raise SpecError(f"job {short_repr(jobs[index].name)} waits for {short_repr(other)} of its own "
                                    f"group {short_repr(name)}, but a group's jobs start together",
                                    job=jobs[index].name, field="depends_on")
            union = frozenset().union(*(prerequisites[i] for i in indices))
            for index in indices:
                prerequisites[index] = union
            result.append(CompiledGroup(name, lead, end, tuple(indices)))
        return result

    def _flags(self, entry: JobSpec) -> tuple[int, bool, bool, int, str | None, bool, float]:
        """The per-entry settings every job of the entry shares, with the workflow's defaults."""
        spec = self.spec
        if entry.failure_handler is not None and entry.failure_handler not in {h.name for h in spec.failure_handlers}:
            choices = ", ".join(h.name for h in spec.failure_handlers) or "none are defined"
            raise SpecError(f"unknown failure handler {short_repr(entry.failure_handler)} "
                            f"(failure_handlers: {choices})", job=entry.name, field="failure_handler")
        return (entry.priority, entry.cancel_on_blocking_job_failure, entry.supports_termination,
                entry.max_attempts or spec.max_attempts, entry.failure_handler,
                spec.enforce_runtime if entry.enforce_runtime is None else entry.enforce_runtime,
                entry.runtime_grace or spec.runtime_grace)

    def _resources(self, job: _Expanded) -> tuple[str, _Figures, str | None]:
        """The job's resource figures and scheduler, checked; parsed once per entry name."""
        rr_name = job.text["resource_requirements"] or DEFAULT_RESOURCES_NAME
        figures = self._figures.get(rr_name)
        if figures is None:
            resources: ResourceRequirements | None = self.spec.resources_by_name().get(rr_name)
            if resources is None:
                raise SpecError(f"unknown resource_requirements {short_repr(rr_name)}", job=job.name,
                                field="resource_requirements")
            figures = self._figures[rr_name] = _Figures(
                resources.num_cpus, resources.num_gpus, resources.num_nodes, resources.memory_bytes,
                resources.runtime_seconds)
        scheduler = job.text["scheduler"]
        if scheduler is not None and scheduler not in self._scheduler_names:
            choices = ", ".join(s.name for s in self.spec.slurm_schedulers) or "none are defined"
            raise SpecError(f"unknown scheduler {short_repr(scheduler)} (slurm_schedulers: {choices})",
                            job=job.name, field="scheduler")
        return rr_name, figures, scheduler


# _job() builds CompiledJob positionally (keywords cost 5x as much, per job): keep the two in step.
assert tuple(f.name for f in fields(CompiledJob)) == (
    "name", "command", "invocation_script", "env", "num_cpus", "num_gpus", "num_nodes", "memory_bytes",
    "runtime_s", "resource_requirements", "scheduler", "priority", "cancel_on_blocking_job_failure",
    "supports_termination", "depset", "input_files", "output_files", "input_user_data", "output_user_data",
    "rank", "max_attempts", "failure_handler", "enforce_runtime", "runtime_grace", "group", "launcher", "image"), \
    "CompiledJob's fields changed: update _job()"


def _job(job: _Expanded, flags: tuple[int, bool, bool, int, str | None, bool, float], resolved: tuple[str, _Figures, str | None],
         rank: int, depset, inputs, outputs, data_in, data_out) -> CompiledJob:
    text = job.text
    rr_name, f, scheduler = resolved
    env = text["env"]
    return CompiledJob(  # positional, in field order (checked above)
        job.name, text["command"] or "", text["invocation_script"], dict(env) if env else _NO_ENV,  # type: ignore[arg-type]
        f.cpus, f.gpus, f.nodes, f.memory_bytes, f.runtime_s, rr_name, scheduler, flags[0], flags[1], flags[2],
        depset, inputs, outputs, data_in, data_out, rank, *flags[3:])


def job_definition(job: CompiledJob, files: Sequence[CompiledFile],
                   user_data: Sequence[CompiledUserData]) -> tuple[tuple[str, Any], ...]:
    """What a job runs with, by part: a change in any part makes a completed job rerun
    (``torc workflows update``/``reinit``). Priority, scheduler and retry settings are not part."""
    return (
        ("command", job.command, job.invocation_script),
        ("env", sorted(job.env.items()) if job.env else ()),
        ("resources", job.num_cpus, job.num_gpus, job.num_nodes, job.memory_bytes, job.runtime_s),
        ("files", tuple(files[i].path for i in job.input_files), tuple(files[i].path for i in job.output_files)),
        ("input user data", tuple((user_data[i].name, json.dumps(user_data[i].data, sort_keys=True, default=str))
                                  for i in job.input_user_data)),
    )


def job_hash(job: CompiledJob, files: Sequence[CompiledFile], user_data: Sequence[CompiledUserData]) -> str:
    """A short stable hash of ``job_definition`` (stored as jobs.spec_hash); the common case of a
    job without env, files or user data takes a flat path (it is computed for every job created)."""
    if job.env or job.input_files or job.output_files or job.input_user_data:
        text = repr(job_definition(job, files, user_data))
    else:
        text = repr((job.command, job.invocation_script, job.num_cpus, job.num_gpus, job.num_nodes,
                     job.memory_bytes, job.runtime_s))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class _Figures(NamedTuple):
    cpus: int
    gpus: int
    nodes: int
    memory_bytes: int
    runtime_s: int


def _values(raw: Any, job: str | None, field_name: str) -> list[Any]:
    try:
        return parse_values(raw)
    except ValueError as exc:
        raise SpecError(str(exc), job=job, field=field_name) from None


def _combos(params, mode, job, field_name):
    try:
        yield from combinations(params, mode)
    except ValueError as exc:
        raise SpecError(str(exc), job=job, field=field_name) from None


def _job_texts(entry: Any) -> list[str]:
    texts = [t for t in (getattr(entry, f) for f in _JOB_TEXT_FIELDS) if t]
    return texts + [t for f in _list_fields(entry) for t in getattr(entry, f)] + list(entry.env.values())


def _has_regexes(entry: JobSpec) -> bool:
    return bool(entry.input_file_regexes or entry.output_file_regexes or entry.input_user_data_regexes
                or entry.output_user_data_regexes)


def _list_fields(entry: JobSpec) -> tuple[str, ...]:
    """The list fields an entry's expanded jobs carry: the regexes over files and user data only
    when it has any (most jobs have none, and every field costs per job)."""
    return (*_JOB_LIST_FIELDS, *_JOB_REGEX_FIELDS) if _has_regexes(entry) else _JOB_LIST_FIELDS


def _too_many(kind: str, params: Mapping[str, Sequence[Any]], mode: str, count: int, so_far: int,
              noun: str = "") -> str:
    sizes = (" x " if mode == "product" else ", ").join(f"{name}: {len(values):,}" for name, values in params.items())
    plural = {"job": "jobs", "file": "files"}.get(kind, f"{kind} entries")
    already = f" on top of the {so_far:,} before it" if so_far else ""
    return (f"the parameters ({sizes}; {mode}) expand to {count:,} {noun or plural}{already}; a workflow may "
            f"have at most {MAX_JOBS:,} {plural}" + (" (and as many combinations in one entry)" if noun else ""))


def _placeholders(texts: Iterable[str], known: set[str]) -> set[str]:
    return referenced_names(list(texts), known)


def _render(template: Template, combo: Mapping[str, Any], job: str | None, field_name: str) -> str:
    try:
        return template.render(combo)
    except ValueError as exc:
        raise SpecError(str(exc), job=job, field=field_name) from None


def _check_name(kind: str, name: str, job: str | None) -> None:
    try:
        validate_name(kind, name)
    except ValueError as exc:
        raise SpecError(str(exc), job=job or (name if kind == "job" else None), field="name") from None


def _dedup(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _producers(jobs: Sequence[_Expanded], outputs: Sequence[tuple[int, ...]], names: Sequence[str],
               field_name: str) -> dict[int, int]:
    producer: dict[int, int] = {}
    for index, produced in enumerate(outputs):
        for item in produced:
            if item in producer:
                raise SpecError(f"{short_repr(names[item])} is produced by two jobs: "
                                f"{short_repr(jobs[producer[item]].name)} and {short_repr(jobs[index].name)}",
                                job=jobs[index].name, field=field_name)
            producer[item] = index
    return producer


def _check_acyclic(jobs: Sequence[_Expanded], depsets: Sequence[tuple[int, ...]],
                   job_sets: Sequence[int | None]) -> None:
    """Kahn's algorithm over dependency sets (the same counting the queue does at run time)."""
    remaining = [len(members) for members in depsets]
    member_of: list[list[int]] = [[] for _ in jobs]
    for set_id, members in enumerate(depsets):
        for member in members:
            member_of[member].append(set_id)
    waiting: list[list[int]] = [[] for _ in depsets]
    ready = []
    for index, set_id in enumerate(job_sets):
        (ready.append(index) if set_id is None else waiting[set_id].append(index))
    done = 0
    while ready:
        job = ready.pop()
        done += 1
        for set_id in member_of[job]:
            remaining[set_id] -= 1
            if remaining[set_id] == 0:
                ready.extend(waiting[set_id])
    if done == len(jobs):
        return
    cycle = _find_cycle(jobs, depsets, job_sets, {i for i, s in enumerate(job_sets)
                                                  if s is not None and remaining[s] > 0})
    raise SpecError("dependency cycle (each job waits for the next): "
                    + " -> ".join(repr(jobs[i].name) for i in cycle),
                    job=jobs[cycle[0]].name, field="depends_on")


def _find_cycle(jobs, depsets, job_sets, stuck: set[int]) -> list[int]:
    """Walk prerequisites among the stuck jobs until a job repeats: that loop is a cycle."""
    start = min(stuck)
    path, seen = [start], {start: 0}
    while True:
        current = path[-1]
        nxt = next(m for m in depsets[job_sets[current]] if m in stuck)  # every stuck job waits on a stuck one
        if nxt in seen:
            loop = path[seen[nxt]:]
            return [*loop, nxt]
        seen[nxt] = len(path)
        path.append(nxt)


def _ranks(resolved: Sequence[tuple[str, _Figures, str | None]], priorities: Sequence[int],
           method: str) -> list[int]:
    """Claim order: priority (high first), then jobs_sort_method (big first), then spec order."""
    figures = [f for _, f, _ in resolved]
    if method == "gpus_runtime_memory":
        keys = [(-p, -f.gpus, -f.runtime_s, -f.memory_bytes, i) for i, (p, f) in enumerate(zip(priorities, figures))]
    elif method == "gpus_memory_runtime":
        keys = [(-p, -f.gpus, -f.memory_bytes, -f.runtime_s, i) for i, (p, f) in enumerate(zip(priorities, figures))]
    else:
        keys = [(-p, i) for i, p in enumerate(priorities)]
    ranks = [0] * len(keys)
    for rank, key in enumerate(sorted(keys)):
        ranks[key[-1]] = rank
    return ranks
