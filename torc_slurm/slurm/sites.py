"""Site configs: what an HPC centre's Slurm looks like (partitions, GPU variable, lock kind,
setup lines), where the shipped configs live, loading them, and detecting the current site.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from torc_slurm.errors import SlurmError, SpecError
from torc_slurm.spec.models import MemoryText, StrictModel, WalltimeText
from torc_slurm.spec.units import parse_memory, parse_walltime

if TYPE_CHECKING:
    from torc_slurm.slurm.backend import SlurmBackend

GENERIC_SITE = "generic"
_SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_SLURM_WORD = re.compile(r"^[A-Za-z0-9_.,+:=@%/\-\[\]]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.,:=@%/\-\[\]&|()*]+$")
_OPTION_NAME = re.compile(r"^[a-z][a-z0-9\-]*$")


class NodeWalltime(StrictModel):
    """A walltime limit that applies to jobs of at least ``min_nodes`` nodes (Frontier's bins)."""

    min_nodes: int = Field(ge=1)
    max_walltime: WalltimeText

    @property
    def max_walltime_seconds(self) -> int:
        return parse_walltime(self.max_walltime)


class Partition(StrictModel):
    """One Slurm partition and the shape of its nodes.

    Where a centre selects nodes by QOS and constraint rather than by partition (NERSC), an entry
    describes one such selection: ``is_partition: false`` keeps its name from being passed as
    ``--partition``, and ``qos``/``constraint`` are what choosing the entry adds to the allocation
    (unless the scheduler, its ``extra`` or ``slurm_defaults`` set them). Choosing a QOS on a real
    partition works the same way (Frontier's ``debug`` QOS). Every new field defaults to nothing.
    """

    name: str
    cpus_per_node: int = Field(ge=1)
    memory: MemoryText
    gpus_per_node: int = Field(0, ge=0)
    max_walltime: WalltimeText
    # The most nodes one job may ask for (None: no limit known).
    max_nodes: int | None = Field(None, ge=1)
    # Stricter walltime limits by job size: the entry with the largest min_nodes <= the job's node
    # count applies; sizes below every entry get max_walltime.
    walltime_by_nodes: list[NodeWalltime] = []
    qos: str | None = None
    constraint: str | None = None
    is_partition: bool = True

    @field_validator("name", "qos")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _SLURM_WORD.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid Slurm name")
        return value

    @field_validator("constraint")
    @classmethod
    def _constraint(cls, value: str | None) -> str | None:
        # Constraints may combine features with & | ( ) * as well.
        if value is not None and not _CONSTRAINT.fullmatch(value):
            raise ValueError(f"constraint {value!r} holds characters a Slurm constraint cannot")
        return value

    @model_validator(mode="after")
    def _limits(self) -> "Partition":
        sizes = [limit.min_nodes for limit in self.walltime_by_nodes]
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"walltime_by_nodes names a min_nodes more than once: {sorted(sizes)}")
        for limit in self.walltime_by_nodes:
            if limit.max_walltime_seconds > self.max_walltime_seconds:
                raise ValueError(
                    f"walltime_by_nodes gives {limit.max_walltime} from {limit.min_nodes} nodes, more than the"
                    f" partition's max_walltime {self.max_walltime}"
                )
            if self.max_nodes is not None and limit.min_nodes > self.max_nodes:
                raise ValueError(f"walltime_by_nodes starts at {limit.min_nodes} nodes, above max_nodes {self.max_nodes}")
        return self

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)

    @property
    def max_walltime_seconds(self) -> int:
        return parse_walltime(self.max_walltime)

    def max_walltime_seconds_for(self, nodes: int) -> int:
        """The walltime limit of a job of ``nodes`` nodes (``walltime_by_nodes``, else ``max_walltime``)."""
        fitting = [limit for limit in self.walltime_by_nodes if limit.min_nodes <= nodes]
        if not fitting:
            return self.max_walltime_seconds
        return max(fitting, key=lambda limit: limit.min_nodes).max_walltime_seconds

    def sbatch_options(self) -> dict[str, str]:
        """The options choosing this entry adds: its qos and constraint, where it names them."""
        options = {"qos": self.qos, "constraint": self.constraint}
        return {name: value for name, value in options.items() if value is not None}


class SiteConfig(StrictModel):
    """How torc_slurm should use one HPC centre's Slurm."""

    name: str
    description: str = ""
    cluster_names: list[str] = []
    hostname_patterns: list[str] = []
    default_account_env: str | None = None
    gpu_visibility_variable: Literal["CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK"] = (
        "CUDA_VISIBLE_DEVICES"
    )
    lock_kind: Literal["flock", "soft"] = "flock"
    # Jobs that name a container image run inside it with this runtime when it is installed on the
    # node (else natively, with one warning per workflow).
    container_runtime: Literal["apptainer", "singularity"] | None = None
    setup_lines: list[str] = []
    partitions: list[Partition] = []
    default_partition: str | None = None
    # Long sbatch option names every allocation at this site must carry ("account"): the centre
    # rejects jobs without them. See missing_options().
    required_options: list[str] = []
    # Whether sbatch works from compute nodes. When it does not, runners leave schedule_nodes
    # actions to `torc slurm watch` on the login node (see the README's Actions section).
    compute_nodes_can_submit: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _SITE_NAME.fullmatch(value):
            raise ValueError(f"site name {value!r} may hold only lower-case letters, digits, '_' and '-'")
        return value

    @field_validator("hostname_patterns")
    @classmethod
    def _patterns(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"hostname pattern {value!r} is not a regular expression: {exc}") from None
        return values

    @field_validator("default_account_env")
    @classmethod
    def _account_env(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @field_validator("setup_lines")
    @classmethod
    def _setup_lines(cls, values: list[str]) -> list[str]:
        for value in values:
            if _CONTROL.search(value):
                raise ValueError(f"setup line {value!r} must be one line without control characters")
        return values

    @field_validator("required_options")
    @classmethod
    def _required_options(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _OPTION_NAME.fullmatch(value):
                raise ValueError(f"required option {value!r} must be a long sbatch option name such as 'account'")
        return values

    @model_validator(mode="after")
    def _partitions(self) -> "SiteConfig":
        names = [partition.name for partition in self.partitions]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"partitions {duplicates} are defined more than once")
        if self.default_partition is not None and self.default_partition not in names:
            raise ValueError(
                f"default_partition {self.default_partition!r} is not among the partitions {names}"
            )
        return self

    def partition(self, name: str | None = None) -> Partition | None:
        """The named partition (default: ``default_partition``), or None if the site does not list it."""
        wanted = name or self.default_partition
        return next((p for p in self.partitions if p.name == wanted), None)

    def missing_options(self, options: Iterable[str], environ: Mapping[str, str] | None = None) -> list[str]:
        """The ``required_options`` that neither ``options`` (long names, as rendered) nor sbatch's own
        input variables (``SBATCH_ACCOUNT`` for ``account``, ...) in ``environ`` provide."""
        given = set(options)
        env = os.environ if environ is None else environ
        return [
            name
            for name in self.required_options
            if name not in given and not env.get("SBATCH_" + name.upper().replace("-", "_"), "").strip()
        ]

    def default_account(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The user's default account from ``default_account_env``, if the site names one and it is set."""
        if not self.default_account_env:
            return None
        value = (os.environ if environ is None else environ).get(self.default_account_env, "").strip()
        return value or None


def shipped_dir(kind: str) -> Path:
    """The directory of shipped data ``kind`` ('site_configs' or 'templates').

    A wheel carries it inside the package (``torc_slurm/_data/<kind>``); a source checkout or an
    editable install has it at the top of the repository.
    """
    if kind not in ("site_configs", "templates"):
        raise ValueError(f"unknown kind of shipped data {kind!r}")
    packaged = importlib.resources.files("torc_slurm") / "_data" / kind
    if packaged.is_dir():
        return Path(str(packaged))
    source = Path(__file__).resolve().parents[2] / kind
    if source.is_dir():
        return source
    raise SlurmError(
        f"the shipped {kind} are missing (looked in {packaged} and {source}): reinstall torc-slurm"
    )


def site_config_dir() -> Path:
    """Where the shipped site configs are."""
    return shipped_dir("site_configs")


def list_sites() -> list[str]:
    """Names of the shipped site configs."""
    return sorted(path.stem for path in site_config_dir().glob("*.yaml"))


def load_site(name_or_path: str | Path) -> SiteConfig:
    """A shipped site config by name ('kestrel'), or a site config file by path."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
    else:
        path = site_config_dir() / f"{text}.yaml"
        if not path.is_file():
            raise SpecError(f"unknown site {text!r}; shipped sites: {', '.join(list_sites())}")
    return _load_file(path)


def _load_file(path: Path) -> SiteConfig:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"cannot read site config: {exc.strerror or exc}", file=str(path)) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise SpecError(f"invalid YAML: {exc}", file=str(path), line=line) from exc
    if not isinstance(data, dict):
        raise SpecError("a site config must be a mapping of fields", file=str(path))
    try:
        return SiteConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = _location(errors[0]["loc"]) or None
        messages = "; ".join(f"{_location(error['loc']) or '(top level)'}: {error['msg']}" for error in errors)
        raise SpecError(f"invalid site config: {messages}", file=str(path), field=first) from exc


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def detect_site(
    cluster_name: str | None, hostname: str, sites: Iterable[SiteConfig] | None = None
) -> SiteConfig:
    """The site whose ``cluster_names`` holds ``cluster_name``; else the first whose
    ``hostname_patterns`` match ``hostname`` (``re.search``); else 'generic'."""
    candidates = list(sites) if sites is not None else [load_site(name) for name in list_sites()]
    candidates = [site for site in candidates if site.name != GENERIC_SITE]
    if cluster_name:
        wanted = cluster_name.strip().lower()
        for site in candidates:
            if wanted in (name.lower() for name in site.cluster_names):
                return site
    for site in candidates:
        if any(re.search(pattern, hostname) for pattern in site.hostname_patterns):
            return site
    return load_site(GENERIC_SITE)


def query_cluster_name(backend: "SlurmBackend | None" = None) -> str | None:
    """Slurm's ``ClusterName`` (``scontrol show config``), or None when it is unset."""
    if backend is None:
        from torc_slurm.slurm.backend import get_backend

        backend = get_backend()
    return backend.cluster_name()


def detect_current_site(backend: "SlurmBackend | None" = None) -> SiteConfig:
    """The site this machine belongs to, from Slurm's ClusterName and the hostname."""
    try:
        cluster_name = query_cluster_name(backend)
    except SlurmError:
        cluster_name = None
    return detect_site(cluster_name, socket.gethostname())
