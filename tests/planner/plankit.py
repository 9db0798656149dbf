"""Helpers for planner tests: the reference cases and tiny clusters with known optima."""

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from helix_planner.cluster import Node
from helix_planner.io.helix_ini import load_cluster_ini
from helix_planner.models import get_model
from helix_planner.network import LinkSpec, NetworkModel, build_cluster
from helix_planner.throughput.helix import HelixCapacityModel

REPO = Path(__file__).resolve().parents[2]
def require_reference(environ: Mapping[str, str] = os.environ) -> Path:
    """The reference data: optional on a developer's machine (the tests that read it skip), required
    in CI (CI=true), where a skip would hide that the comparisons with the paper never ran."""
    reference = Path(environ.get("HELIX_REFERENCE", REPO.parent / "shared" / "helix-reference"))
    if not (reference / "gpu_constants.json").exists():
        message = f"Helix reference data not found at {reference}: put it there or set HELIX_REFERENCE"
        if environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true: the tests that compare with the paper must run)", pytrace=False)
        pytest.skip(message)
    return reference

CASES = {
    "single24": ("single24", "single24-llama70b", "llama2-70b", 1289.6),
    "geo24": ("geo24", "geo24-llama70b", "llama2-70b", 1212.2),
    "hetero42": ("hetero42", "hetero42-llama70b", "llama2-70b", 4137.5),
    "small10": ("small10", "small10-llama30b", "llama1-30b", 286.59),
}


def reference_case(reference: Path, catalog, case: str):
    """(cluster, model, Helix capacity model, published objective) of a reference case."""
    cluster_file, _, model_name, published = CASES[case]
    cluster = load_cluster_ini(reference / "clusters" / f"{cluster_file}.ini")
    model = get_model(model_name)
    return cluster, model, HelixCapacityModel(catalog, model.name, model.num_layers, cluster.gpu_counts()), published


class TableCapacity:
    """A capacity model from a table {gpu: [T(1), T(2), ...]}: tiny instances with known optima."""

    name = "table"

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def max_layers(self, gpu: str) -> int:
        return len(self.table.get(gpu, []))

    def capacity(self, gpu: str, layers: int) -> float:
        return self.table[gpu][layers - 1]


def mesh(gpus: list[tuple[str, str, str]], *, intra: float = 1e9, inter: float = 1e9):
    """A full-mesh cluster of (name, gpu, region) with the given link bandwidths (bytes/s)."""
    network = NetworkModel(intra=LinkSpec(intra, 0.001), inter=LinkSpec(inter, 0.05))
    return build_cluster([Node(*g) for g in gpus], network, name="test")
