"""The simulated GPU fleet: Node objects labelled as GPU feature discovery labels them, and the
slowdown each simulated GPU type gives the processes its node agent runs.

The slowdown is the simulated hardware's, so the node agent sets it (HELIX_SLOWDOWN, which
`helix worker` honours) from the node's GPU label, the way a device plugin hands a container
its device; the operator never learns that the GPUs are simulated. The GPUProfiles in
`operator/examples/gpuprofiles-simulated.yaml` describe the same types to the planner, with
speeds in the same ratios.
"""

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

GPU_PRODUCT = "nvidia.com/gpu.product"
REGION = "topology.kubernetes.io/region"
GPU_RESOURCE = "nvidia.com/gpu"
SLOWDOWN = {"SIM-A100": 1.0, "SIM-L4": 2.0, "SIM-T4": 3.0}
DEMO_NODES = (("gpu-east-0", "SIM-A100", "us-east"), ("gpu-east-1", "SIM-L4", "us-east"),
              ("gpu-east-2", "SIM-T4", "us-east"), ("gpu-west-0", "SIM-A100", "eu-west"),
              ("gpu-west-1", "SIM-L4", "eu-west"), ("gpu-west-2", "SIM-T4", "eu-west"))
EXAMPLES = Path(__file__).resolve().parents[2] / "operator" / "examples"
DEMO_FILES = ("gpuprofiles-simulated.yaml", "helixcluster-local.yaml")


def device_env(labels: Mapping[str, str]) -> dict[str, str]:
    """What a node's agent adds to every container: the slowdown of its simulated GPU, if any."""
    factor = SLOWDOWN.get(labels.get(GPU_PRODUCT, ""))
    return {} if factor is None else {"HELIX_SLOWDOWN": f"{factor:g}"}


def _node(name: str, labels: dict[str, str], allocatable: dict[str, str],
          taints: list[dict[str, str]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}},
            "spec": {"taints": taints} if taints else {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110", **allocatable}}}


def gpu_node(name: str, gpu: str, region: str) -> dict[str, Any]:
    """A one-GPU node, tainted so that only pods tolerating GPUs land on it (as GPU pools usually are)."""
    return _node(name, {GPU_PRODUCT: gpu, "nvidia.com/gpu.count": "1", REGION: region}, {GPU_RESOURCE: "1"},
                 [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}])


def cpu_node(name: str, region: str) -> dict[str, Any]:
    """A node without GPUs, where the front end runs."""
    return _node(name, {REGION: region}, {}, [])


def demo_nodes() -> list[dict[str, Any]]:
    """One CPU node and six simulated GPU nodes in two regions."""
    return [cpu_node("cpu-0", "us-east")] + [gpu_node(*node) for node in DEMO_NODES]


class KubeYamlLoader(yaml.SafeLoader):
    """YAML 1.2 numbers, as kubectl reads them (`8e12` is a float)."""


KubeYamlLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                     re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)$"),
                                     list("-+0123456789."))


def load_manifests(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=KubeYamlLoader) if doc]


def demo_manifests(examples: Path = EXAMPLES) -> list[dict[str, Any]]:
    """The simulated GPUProfiles and the demo HelixCluster, from the repository's examples."""
    missing = [name for name in DEMO_FILES if not (examples / name).exists()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not found in {examples}: run from a checkout of the "
                                "repository (pip install -e .)")
    return [doc for name in DEMO_FILES for doc in load_manifests(examples / name)]
