"""What a cluster's partitions offer: parsed from Slurm (``scontrol show partition -o`` and
``scontrol show node -o``), or taken from a site config's table when Slurm cannot be asked.

Pure: text in, ``ClusterInfo`` out; the commands run in ``cli_backend``. The result is cached in the
queue per workflow (table ``partition_cache``) by ``fit.cached_cluster_info``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from torc_slurm.errors import SlurmError
from torc_slurm.spec.units import parse_slurm_time

_UNLIMITED = frozenset({"UNLIMITED", "INFINITE", "NONE", "N/A", ""})
_GRES_ITEM = re.compile(r"^([A-Za-z0-9_\-]+)(?::([A-Za-z0-9_.\-]+))?(?::(\d+))?(?:\(.*\))?$")


@dataclass(frozen=True)
class NodeShape:
    """What one node (or several identical ones, ``count``) offers a job."""

    cpus: int
    memory_bytes: int
    gres: dict[str, int] = field(default_factory=dict)   # name -> count per node ("gpu": 4)
    count: int = 1

    @property
    def gpus(self) -> int:
        return self.gres.get("gpu", 0)


@dataclass(frozen=True)
class PartitionInfo:
    name: str
    up: bool
    max_time_s: int | None        # None: no limit
    max_nodes: int | None         # None: no limit (the node count still bounds it)
    nodes: tuple[NodeShape, ...]
    default: bool = False
    state: str = "UP"
    # (min_nodes, seconds): a lower limit for jobs of at least min_nodes nodes (a site's walltime bins)
    max_time_by_nodes: tuple[tuple[int, int], ...] = ()

    def max_time_for(self, nodes: int) -> int | None:
        """The walltime limit of a job of ``nodes`` nodes: its bin, else MaxTime."""
        bins = [(low, seconds) for low, seconds in self.max_time_by_nodes if low <= nodes]
        return max(bins)[1] if bins else self.max_time_s

    @property
    def total_nodes(self) -> int:
        return sum(n.count for n in self.nodes)


@dataclass(frozen=True)
class ClusterInfo:
    source: str                          # "slurm" or "site config <name>"
    partitions: tuple[PartitionInfo, ...]

    def partition(self, name: str | None) -> PartitionInfo | None:
        """The named partition; with None, the default one (Slurm's Default=YES, or the site's)."""
        if name is None:
            return next((p for p in self.partitions if p.default), None)
        return next((p for p in self.partitions if p.name == name), None)

    def to_json(self) -> str:
        return json.dumps({"source": self.source, "partitions": [asdict(p) for p in self.partitions]})

    @classmethod
    def from_json(cls, text: str) -> ClusterInfo:
        data = json.loads(text)
        parts = []
        for p in data["partitions"]:
            nodes = tuple(NodeShape(n["cpus"], n["memory_bytes"], dict(n["gres"]), n["count"]) for n in p["nodes"])
            parts.append(PartitionInfo(p["name"], p["up"], p["max_time_s"], p["max_nodes"], nodes,
                                       p.get("default", False), p.get("state", "UP"),
                                       tuple((low, seconds) for low, seconds in p.get("max_time_by_nodes", ()))))
        return cls(data["source"], tuple(parts))


# --- pure parsers -----------------------------------------------------------------------------

def parse_one_liner(line: str) -> dict[str, str]:
    """One ``scontrol show … -o`` line -> {Key: value}. A value may hold spaces (``OS=Linux 6.1 #1
    SMP``): a word without '=' belongs to the value before it."""
    fields: dict[str, str] = {}
    last: str | None = None
    for word in line.split():
        key, sep, value = word.partition("=")
        if sep and key and re.fullmatch(r"[A-Za-z][A-Za-z0-9_/]*", key):
            fields[key] = value
            last = key
        elif last is not None:
            fields[last] += " " + word
    return fields


def parse_max_time(text: str) -> int | None:
    """Partition MaxTime (``1-00:00:00``, ``01:00:00``, ``30``, ``UNLIMITED``) -> seconds or None."""
    value = text.strip()
    if value.upper() in _UNLIMITED:
        return None
    if value.isdigit():  # Slurm's bare number is minutes
        return int(value) * 60
    try:
        return parse_slurm_time(value, what="MaxTime")
    except ValueError:
        raise SlurmError(f"could not parse a partition MaxTime {text!r}") from None


def parse_max_nodes(text: str) -> int | None:
    value = text.strip()
    if value.upper() in _UNLIMITED:
        return None
    if not value.isdigit():
        raise SlurmError(f"could not parse a partition MaxNodes {text!r}")
    return int(value)


def parse_gres(text: str) -> dict[str, int]:
    """Node ``Gres=`` (``gpu:4``, ``gpu:a100:4(S:0-1)``, ``gpu:2,nvme:1``, ``(null)``) -> {name: count}."""
    gres: dict[str, int] = {}
    value = text.strip()
    if not value or value in ("(null)", "N/A"):
        return gres
    # split on commas outside parentheses
    depth, item, items = 0, "", []
    for char in value:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            items.append(item)
            item = ""
        else:
            item += char
    items.append(item)
    for raw in items:
        match = _GRES_ITEM.match(raw.strip())
        if not match:
            raise SlurmError(f"could not parse node Gres {text!r}")
        name, kind, count = match.groups()
        if count is None and kind is not None and kind.isdigit():
            count = kind
        gres[name] = gres.get(name, 0) + int(count or 1)
    return gres


def parse_cluster(partition_text: str, node_text: str) -> ClusterInfo:
    """``scontrol show partition -o`` and ``scontrol show node -o`` -> ClusterInfo. Nodes are mapped
    to partitions by their ``Partitions=`` field; identical nodes are counted once with ``count``."""
    shapes: dict[str, dict[tuple[int, int, tuple[tuple[str, int], ...]], int]] = {}
    for line in node_text.splitlines():
        if not line.strip().startswith("NodeName="):
            continue
        node = parse_one_liner(line)
        try:
            cpus = int(node.get("CPUTot") or node.get("CPUs") or 0)
            memory = int(node.get("RealMemory") or 0) * 2**20
        except ValueError:
            raise SlurmError(f"could not read CPUs and memory of node {node.get('NodeName')!r}") from None
        shape = (cpus, memory, tuple(sorted(parse_gres(node.get("Gres", "")).items())))
        for name in (node.get("Partitions") or "").split(","):
            if name:
                bucket = shapes.setdefault(name, {})
                bucket[shape] = bucket.get(shape, 0) + 1
    partitions = []
    for line in partition_text.splitlines():
        if not line.strip().startswith("PartitionName="):
            continue
        p = parse_one_liner(line)
        name = p["PartitionName"]
        nodes = tuple(NodeShape(cpus, memory, dict(gres), n) for (cpus, memory, gres), n in
                      sorted(shapes.get(name, {}).items()))
        state = p.get("State", "UP").upper()
        partitions.append(PartitionInfo(name, state == "UP", parse_max_time(p.get("MaxTime", "UNLIMITED")),
                                        parse_max_nodes(p.get("MaxNodes", "UNLIMITED")), nodes,
                                        p.get("Default", "NO").upper() == "YES", state))
    if not partitions:
        raise SlurmError("scontrol show partition listed no partitions")
    return ClusterInfo("slurm", tuple(partitions))


def from_site(site: Any) -> ClusterInfo | None:
    """The site config's partition table as a ClusterInfo (None when the site lists no partitions).
    Entries that are not real partitions (``is_partition: false``, a QOS selection) are kept: the
    scheduler names them the same way."""
    if not site.partitions:
        return None
    parts = []
    for p in site.partitions:
        gres = {"gpu": p.gpus_per_node} if p.gpus_per_node else {}
        bins = tuple((b.min_nodes, b.max_walltime_seconds) for b in getattr(p, "walltime_by_nodes", []))
        parts.append(PartitionInfo(p.name, True, p.max_walltime_seconds, getattr(p, "max_nodes", None),
                                   (NodeShape(p.cpus_per_node, p.memory_bytes, gres, 1),),
                                   p.name == site.default_partition, "UP", bins))
    return ClusterInfo(f"site config {site.name}", tuple(parts))
