"""Site configs: the shipped ones, loading errors that name file and field, the shipped-data lookup,
and site detection."""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from torc_slurm.errors import SpecError
from torc_slurm.slurm import sites
from torc_slurm.slurm.cli_backend import CliBackend
from torc_slurm.spec.units import parse_walltime
from torc_slurm.slurm.sites import (
    Partition,
    SiteConfig,
    detect_current_site,
    detect_site,
    list_sites,
    load_site,
    query_cluster_name,
    shipped_dir,
    site_config_dir,
)

REQUIRED_SITES = {"localhost", "generic", "kestrel", "perlmutter", "frontier"}


def test_shipped_sites_load_and_are_named_after_their_files() -> None:
    names = list_sites()
    assert REQUIRED_SITES <= set(names) and len(names) >= 6
    for name in names:
        site = load_site(name)
        assert site.name == name
        text = (site_config_dir() / f"{name}.yaml").read_text()
        assert text.startswith("#"), f"{name}.yaml must start with a comment naming its source"


def test_the_local_test_cluster() -> None:
    site = load_site("localhost")
    assert site.cluster_names == ["torc"] and site.lock_kind == "flock"
    cpu, gpu = site.partition("cpu"), site.partition("gpu")
    assert cpu == Partition(name="cpu", cpus_per_node=8, memory="8000M", max_walltime="01:00:00", max_nodes=2)
    assert gpu is not None
    assert (gpu.cpus_per_node, gpu.gpus_per_node, gpu.memory_bytes, gpu.max_nodes) == (16, 4, 16000 * 2**20, 1)
    assert gpu.max_walltime_seconds == 2 * 3600
    assert site.partition() == cpu


def test_the_local_test_cluster_matches_its_slurm_conf() -> None:
    """localhost.yaml describes what scripts/start-local-slurm.sh writes into slurm.conf."""
    script = (Path(sites.__file__).resolve().parents[2] / "scripts" / "start-local-slurm.sh").read_text()
    nodes = {m["name"]: m for m in re.finditer(
        r"^NodeName=(?P<name>\S+) .*?CPUs=(?P<cpus>\d+) .*?RealMemory=(?P<mem>\d+)(?: Gres=gpu:(?P<gpus>\S+))?",
        script, re.MULTILINE)}
    parts = {m["name"]: m for m in re.finditer(
        r"^PartitionName=(?P<name>\S+) Nodes=(?P<nodes>\S+) .*?MaxTime=(?P<maxtime>\S+)", script, re.MULTILINE)}
    site = load_site("localhost")
    assert {p.name for p in site.partitions} == set(parts)
    for partition in site.partitions:
        conf = parts[partition.name]
        node = nodes[conf["nodes"]]
        gpus = node["gpus"] or "0"
        gpus = {"${NUM_FAKE_GPUS}": re.search(r"NUM_FAKE_GPUS=(\d+)", script)[1]}.get(gpus, gpus)  # type: ignore[index]
        assert partition.max_walltime_seconds == parse_walltime(conf["maxtime"])
        assert partition.cpus_per_node == int(node["cpus"])
        assert partition.memory_bytes == int(node["mem"]) * 2**20
        assert partition.gpus_per_node == int(gpus)
        assert partition.max_nodes == _node_count(conf["nodes"])


def _node_count(hostlist: str) -> int:
    ranges = re.fullmatch(r"[a-z]+(?:\[(\d+)-(\d+)\])?\d*", hostlist)
    assert ranges is not None, hostlist
    return int(ranges[2]) - int(ranges[1]) + 1 if ranges[1] else 1


HPC_SITES = ["kestrel", "perlmutter", "frontier", "eiger"]


@pytest.mark.parametrize("name", sorted(REQUIRED_SITES - {"generic"} | set(HPC_SITES)))
def test_every_partition_has_limits_and_node_figures(name: str) -> None:
    site = load_site(name)
    assert site.partitions, f"{name} lists no partitions"
    for partition in site.partitions:
        assert partition.max_walltime_seconds > 0
        assert partition.cpus_per_node >= 1 and partition.memory_bytes >= 2**30
        assert partition.max_walltime_seconds_for(partition.max_nodes or 1) <= partition.max_walltime_seconds
    if site.default_partition is not None:
        assert site.partition() is not None


@pytest.mark.parametrize("name", HPC_SITES)
def test_hpc_sites_cite_their_sources_and_set_up_python(name: str) -> None:
    text = (site_config_dir() / f"{name}.yaml").read_text()
    assert "https://" in text, f"{name}.yaml must cite the centre's documentation"
    site = load_site(name)
    # Eiger gets Python from a uenv selected with sbatch options, which the file explains instead.
    assert site.setup_lines or "--uenv=" in text


@pytest.mark.parametrize(
    ("name", "variable", "gpus"),
    [
        ("kestrel", "CUDA_VISIBLE_DEVICES", 4),
        ("perlmutter", "CUDA_VISIBLE_DEVICES", 4),
        ("frontier", "ROCR_VISIBLE_DEVICES", 8),
        ("localhost", "CUDA_VISIBLE_DEVICES", 4),
    ],
)
def test_gpu_sites_name_their_visibility_variable(name: str, variable: str, gpus: int) -> None:
    site = load_site(name)
    assert site.gpu_visibility_variable == variable
    assert max(p.gpus_per_node for p in site.partitions) == gpus


def test_eiger_is_cpu_only() -> None:
    assert all(p.gpus_per_node == 0 for p in load_site("eiger").partitions)


def test_required_options_of_the_shipped_sites() -> None:
    assert load_site("kestrel").required_options == ["account"]
    assert load_site("frontier").required_options == ["account"]
    assert load_site("perlmutter").required_options == ["constraint"]
    assert load_site("localhost").required_options == []


def test_perlmutter_selects_nodes_by_constraint_and_qos() -> None:
    site = load_site("perlmutter")
    for name in ("cpu", "gpu"):
        entry = site.partition(name)
        assert entry is not None and not entry.is_partition
        assert entry.sbatch_options() == {"qos": "regular", "constraint": name}


def test_frontier_walltime_depends_on_the_node_count() -> None:
    site = load_site("frontier")
    batch = site.partition("batch")
    assert batch is not None and batch.max_nodes == 9472 and batch.max_walltime == "12:00:00"
    hours = {nodes: batch.max_walltime_seconds_for(nodes) / 3600 for nodes in (1, 91, 92, 183, 184, 9472)}
    assert hours == {1: 2, 91: 2, 92: 6, 183: 6, 184: 12, 9472: 12}
    extended = site.partition("extended")
    assert extended is not None and (extended.max_nodes, extended.max_walltime_seconds) == (64, 86400)
    debug = site.partition("debug")
    assert debug is not None and debug.qos == "debug" and not debug.is_partition


def test_partition_model_additions_default_to_nothing() -> None:
    plain = Partition(name="p", cpus_per_node=4, memory="4G", max_walltime="01:00:00")
    assert (plain.max_nodes, plain.walltime_by_nodes, plain.qos, plain.constraint, plain.is_partition) == (
        None, [], None, None, True)
    assert plain.sbatch_options() == {}
    assert plain.max_walltime_seconds_for(1000) == 3600
    assert SiteConfig(name="s").required_options == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_nodes": 0}, "greater than or equal to 1"),
        ({"walltime_by_nodes": [{"min_nodes": 1, "max_walltime": "02:00:00"}]}, "more than the partition"),
        ({"walltime_by_nodes": [{"min_nodes": 2, "max_walltime": "00:10:00"},
                                {"min_nodes": 2, "max_walltime": "00:20:00"}]}, "more than once"),
        ({"max_nodes": 4, "walltime_by_nodes": [{"min_nodes": 8, "max_walltime": "00:10:00"}]}, "above max_nodes"),
        ({"walltime_by_nodes": [{"min_nodes": 0, "max_walltime": "00:10:00"}]}, "greater than or equal to 1"),
        ({"qos": "bad qos"}, "not a valid Slurm name"),
        ({"constraint": "cpu;rm"}, "constraint"),
        ({"is_partition": "maybe"}, "boolean"),
    ],
)
def test_bad_partition_additions_are_refused(fields: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"name": "p", "cpus_per_node": 4, "memory": "4G", "max_walltime": "01:00:00"}
    with pytest.raises(ValidationError, match=message):
        Partition.model_validate({**base, **fields})


def test_constraint_expressions_are_accepted() -> None:
    entry = Partition(name="p", cpus_per_node=4, memory="4G", max_walltime="01:00:00", constraint="gpu&hbm80g")
    assert entry.sbatch_options() == {"constraint": "gpu&hbm80g"}


def test_missing_required_options() -> None:
    site = SiteConfig(name="s", required_options=["account", "constraint"])
    assert site.missing_options(["account", "time"], environ={}) == ["constraint"]
    assert site.missing_options([], environ={"SBATCH_CONSTRAINT": "cpu"}) == ["account"]
    assert site.missing_options([], environ={"SBATCH_ACCOUNT": " ", "SBATCH_CONSTRAINT": "gpu"}) == ["account"]
    assert SiteConfig(name="s").missing_options([], environ={}) == []
    with pytest.raises(ValidationError, match="long sbatch option name"):
        SiteConfig(name="s", required_options=["--account"])


def test_frontier_describes_amd_gpus() -> None:
    site = load_site("frontier")
    assert site.gpu_visibility_variable == "ROCR_VISIBLE_DEVICES"
    batch = site.partition("batch")
    assert batch is not None and (batch.cpus_per_node, batch.gpus_per_node) == (56, 8)


def test_shipped_dir_prefers_packaged_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert shipped_dir("templates") == Path(sites.__file__).resolve().parents[2] / "templates"
    assert (shipped_dir("templates") / "sbatch.sh.j2").is_file()
    packaged = tmp_path / "torc_slurm"
    (packaged / "_data" / "templates").mkdir(parents=True)
    monkeypatch.setattr(importlib.resources, "files", lambda package: packaged)
    assert shipped_dir("templates") == packaged / "_data" / "templates"
    with pytest.raises(ValueError):
        shipped_dir("../etc")


def test_load_by_path(tmp_path: Path) -> None:
    path = tmp_path / "mysite.yaml"
    path.write_text("name: mysite\nlock_kind: soft\nsetup_lines: ['module load python']\n")
    site = load_site(path)
    assert (site.name, site.lock_kind, site.setup_lines) == ("mysite", "soft", ["module load python"])
    assert load_site(str(path)) == site


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("name: x\nparttions: []\n", "parttions", "Extra inputs"),
        (
            "name: x\npartitions:\n  - {name: a, cpus_per_node: 8, memory: lots, max_walltime: '1:00:00'}\n",
            "partitions.0.memory",
            "invalid memory",
        ),
        ("name: x\ngpu_visibility_variable: HIP_VISIBLE\n", "gpu_visibility_variable", "CUDA_VISIBLE_DEVICES"),
        ("name: x\nhostname_patterns: ['(']\n", "hostname_patterns", "regular expression"),
        ("name: x\ndefault_partition: missing\n", None, "not among the partitions"),
        ("name: Bad Name\n", "name", "lower-case"),
    ],
)
def test_bad_site_configs_name_file_and_field(
    tmp_path: Path, text: str, field: str | None, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message) as caught:
        load_site(path)
    assert caught.value.file == str(path)
    assert caught.value.field == field
    assert str(path) in str(caught.value)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\npartitions: [\n  {name: a\n")
    with pytest.raises(SpecError) as caught:
        load_site(path)
    assert caught.value.file == str(path) and caught.value.line is not None


def test_unknown_site_lists_the_known_ones() -> None:
    with pytest.raises(SpecError, match="unknown site 'atlantis'.*kestrel"):
        load_site("atlantis")


def test_default_account_comes_from_the_named_variable() -> None:
    site = SiteConfig(name="s", default_account_env="SBATCH_ACCOUNT")
    assert site.default_account({"SBATCH_ACCOUNT": " proj1 "}) == "proj1"
    assert site.default_account({}) is None
    assert SiteConfig(name="s").default_account({"SBATCH_ACCOUNT": "x"}) is None
    with pytest.raises(ValidationError):
        SiteConfig(name="s", default_account_env="NOT-A-NAME")


SITES = [
    SiteConfig(name="alpha", cluster_names=["Alpha"], hostname_patterns=[r"^alpha-login\d+$"]),
    SiteConfig(name="beta", cluster_names=["beta"], hostname_patterns=[r"^login\d+$"]),
]


@pytest.mark.parametrize(
    ("cluster", "hostname", "expected"),
    [
        ("alpha", "anything", "alpha"),
        ("ALPHA", "login3", "alpha"),  # the cluster name wins over the hostname
        (None, "login3", "beta"),
        ("unknown", "alpha-login2", "alpha"),
        (None, "laptop", "generic"),
    ],
)
def test_detect_site(cluster: str | None, hostname: str, expected: str) -> None:
    assert detect_site(cluster, hostname, SITES).name == expected


def test_detect_among_shipped_sites() -> None:
    assert detect_site("torc", "vm").name == "localhost"
    assert detect_site("kestrel", "x1000c0s0b0n0").name == "kestrel"
    assert detect_site(None, "kl2.hpc.nrel.gov").name == "kestrel"
    assert detect_site(None, "login07.frontier.olcf.ornl.gov").name == "frontier"
    assert detect_site(None, "eiger-ln010").name == "eiger"
    assert detect_site(None, "my-laptop").name == "generic"


class FakeBackend(CliBackend):
    def __init__(self, name: str | None) -> None:
        super().__init__()
        self._cluster = name

    def cluster_name(self) -> str | None:
        return self._cluster


def test_query_cluster_name_asks_the_backend() -> None:
    assert query_cluster_name(FakeBackend("perlmutter")) == "perlmutter"
    assert detect_current_site(FakeBackend("perlmutter")).name == "perlmutter"


@pytest.mark.slurm
def test_the_local_cluster_is_detected_as_localhost() -> None:
    assert query_cluster_name(CliBackend()) == "torc"
    assert detect_current_site(CliBackend()).name == "localhost"
