"""Cluster and model files are read strictly: a misspelt key is refused with the key it was
probably meant to be (it used to be ignored, and the plan used a default silently), and a YAML
document that expands exponentially through aliases is refused instead of hanging."""

from pathlib import Path

import pytest

from helix_planner.errors import PlanningError
from helix_planner.io.cluster_yaml import load_cluster_yaml

GOOD = """name: demo
model: llama2-70b
nodes:
  - {name: a, gpu: A100, region: us-east}
pools:
  - {gpu: T4, region: eu-west, count: 2}
network:
  intraRegion: {bandwidth: 10Gbps, latency: 1ms}
  interRegion: {bandwidth: 100Mbps, latency: 50ms}
  frontend: {region: us-east}
  regionPairs: [{from: us-east, to: eu-west, bandwidth: 1Gbps, latency: 80ms}]
  links: [{from: a, to: t4-eu-west-1, disabled: true}]
"""


def _load(tmp_path: Path, text: str):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return load_cluster_yaml(path)


def test_a_well_formed_file_loads(tmp_path: Path) -> None:
    cluster, model = _load(tmp_path, GOOD)
    assert {n.region for n in cluster.nodes} == {"us-east", "eu-west"} and model is not None


@pytest.mark.parametrize("right, wrong, where, meant", [
    ("{name: a, gpu: A100, region: us-east}", "{name: a, gpu: A100, regoin: us-east}", r"nodes\[0\]", "region"),
    ("{gpu: T4, region: eu-west, count: 2}", "{gpu: T4, region: eu-west, cuont: 2}", r"pools\[0\]", "count"),
    ("intraRegion: {bandwidth", "intraRegon: {bandwidth", "network", "intraRegion"),
    ("interRegion: {bandwidth", "interRegion: {bandwith", "network interRegion", "bandwidth"),
    ("bandwidth: 1Gbps, latency: 80ms}", "bandwidth: 1Gbps, latncy: 80ms}", r"network regionPairs\[0\]", "latency"),
    ("frontend: {region: us-east}", "frontend: {regions: us-east}", "network frontend", "region"),
    ("disabled: true}", "disable: true}", r"network links\[0\]", "disabled"),
])
def test_a_misspelt_key_is_refused_with_a_did_you_mean(tmp_path: Path, right: str, wrong: str, where: str,
                                                        meant: str) -> None:
    assert GOOD.count(right) == 1
    with pytest.raises(PlanningError, match=rf"unknown key `\w+` in {where}; did you mean `{meant}`\?"):
        _load(tmp_path, GOOD.replace(right, wrong))


def test_an_unknown_top_level_key_and_model_key_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PlanningError, match="unknown key `node` in the cluster file; did you mean `nodes`"):
        _load(tmp_path, GOOD.replace("nodes:", "node:"))
    with pytest.raises(PlanningError,
                       match="unknown key `numLayer` in the model description; did you mean `numLayers`"):
        _load(tmp_path, GOOD.replace("model: llama2-70b", "model: {name: m, numLayer: 4, hiddenSize: 8}"))


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    """Nine levels of nine aliases: 9^9 values once expanded, in ten short lines."""
    levels = ['x0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    levels += [f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    with pytest.raises(PlanningError, match="expands through its aliases"):
        _load(tmp_path, "\n".join(levels) + "\nnodes: *a8\n")


def test_a_file_that_contains_itself_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PlanningError, match="expands through its aliases"):
        _load(tmp_path, "nodes: &n [*n]\n")
