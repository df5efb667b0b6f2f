"""Site configs: the shipped ones, loading errors that name file and field, the shipped-data lookup,
and site detection."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest
from pydantic import ValidationError

from torc_slurm.errors import SpecError
from torc_slurm.slurm import sites
from torc_slurm.slurm.cli_backend import CliBackend
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
    assert cpu == Partition(name="cpu", cpus_per_node=8, memory="8000M", max_walltime="1-00:00:00")
    assert gpu is not None
    assert (gpu.cpus_per_node, gpu.gpus_per_node, gpu.memory_bytes) == (16, 4, 16000 * 2**20)
    assert site.partition() == cpu


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
