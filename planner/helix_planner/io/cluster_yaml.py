"""The project's own cluster file (YAML): nodes or pools, regions, and a network model.

    name: demo
    model: llama2-70b            # or a mapping with numLayers, hiddenSize, ...
    nodes:
      - {name: a100-0, gpu: A100, region: us-east}
    pools:
      - {gpu: T4, region: eu-west, count: 8}       # named t4-eu-west-0 ... unless namePrefix
    network:
      intraRegion: {bandwidth: 10Gbps, latency: 1ms}
      interRegion: {bandwidth: 100Mbps, latency: 50ms}
      frontend: {region: us-east}                  # or {bandwidth: ..., latency: ...}
      regionPairs: [{from: us-east, to: eu-west, bandwidth: 1Gbps, latency: 80ms}]
      links:
        - {from: a100-0, to: t4-eu-west-3, bandwidth: 2Gbps}   # override one link (both ways)
        - {from: a100-0, to: t4-eu-west-2, disabled: true}     # no link at all

Bandwidth accepts bits (`Gbps`) or bytes (`GB/s`); a bare number is bytes/s.
"""

from pathlib import Path
from typing import Any

from helix_planner.cluster import Cluster, Node
from helix_planner.errors import PlanningError
from helix_planner.io.strict import check_keys, load_yaml, mapping
from helix_planner.models import ModelSpec, model_from_mapping
from helix_planner.network import LinkSpec, NetworkModel, build_cluster
from helix_planner.units import parse_quantity

TOP_KEYS = ("name", "model", "nodes", "pools", "network")
NODE_KEYS = ("name", "gpu", "region")
POOL_KEYS = ("gpu", "region", "count", "namePrefix")
NETWORK_KEYS = ("intraRegion", "interRegion", "frontend", "regionPairs", "links")
SPEC_KEYS = ("bandwidth", "latency")


def load_cluster_yaml(path: Path) -> tuple[Cluster, ModelSpec | None]:
    try:
        text = path.read_text()
    except OSError as err:
        raise PlanningError(f"cannot read cluster file {path}: {err}") from None
    data = load_yaml(text, f"cluster file {path}")
    if not isinstance(data, dict):
        raise PlanningError(f"{path} must be a mapping with `nodes` or `pools` and `network`")
    return cluster_from_mapping(data, default_name=path.stem)


def cluster_from_mapping(data: dict[str, Any], *, default_name: str = "cluster") -> tuple[Cluster, ModelSpec | None]:
    check_keys(data, TOP_KEYS, "the cluster file")
    nodes = [_node(item, i) for i, item in enumerate(data.get("nodes") or [])]
    for i, pool in enumerate(data.get("pools") or []):
        nodes += _pool(mapping(pool, f"pools[{i}]"), i)
    if not nodes:
        raise PlanningError("the cluster file has no nodes: add `nodes:` entries or `pools:` with a count")
    network = _network(data.get("network") or {})
    model = None
    if data.get("model") is not None:
        raw = data["model"]
        model = model_from_mapping(raw if isinstance(raw, dict) else {"name": raw})
    return build_cluster(nodes, network, name=str(data.get("name", default_name))), model


def _node(item: dict[str, Any], index: int) -> Node:
    if not isinstance(item, dict) or "gpu" not in item:
        raise PlanningError(f"nodes[{index}] needs at least `gpu` (and usually `name` and `region`)")
    check_keys(item, NODE_KEYS, f"nodes[{index}]")
    return Node(str(item.get("name", f"node-{index}")), str(item["gpu"]), str(item.get("region", "default")))


def _pool(pool: dict[str, Any], index: int) -> list[Node]:
    check_keys(pool, POOL_KEYS, f"pools[{index}]")
    if "gpu" not in pool or "count" not in pool:
        raise PlanningError(f"pool {pool!r} needs `gpu` and `count`")
    region = str(pool.get("region", "default"))
    prefix = str(pool.get("namePrefix", f"{str(pool['gpu']).lower()}-{region}"))
    count = int(pool["count"])
    if count < 0:
        raise PlanningError(f"pool {prefix} has a negative count {count}")
    return [Node(f"{prefix}-{i}", str(pool["gpu"]), region) for i in range(count)]


def _spec(item: dict[str, Any], default: LinkSpec, where: str, extra: tuple[str, ...] = ()) -> LinkSpec:
    check_keys(mapping(item, f"network {where}"), SPEC_KEYS + extra, f"network {where}")
    try:
        bandwidth = parse_quantity(item["bandwidth"]) if "bandwidth" in item else default.bandwidth
        latency = parse_quantity(item["latency"]) if "latency" in item else default.latency
    except ValueError as err:
        raise PlanningError(f"network {where}: {err}") from None
    if bandwidth < 0 or latency < 0:
        raise PlanningError(f"network {where}: bandwidth and latency must not be negative")
    return LinkSpec(bandwidth, latency)


def _network(data: dict[str, Any]) -> NetworkModel:
    check_keys(mapping(data, "network"), NETWORK_KEYS, "network")
    model = NetworkModel()
    model.intra = _spec(data.get("intraRegion") or {}, model.intra, "intraRegion")
    model.inter = _spec(data.get("interRegion") or {}, model.inter, "interRegion")
    frontend = data.get("frontend") or {}
    check_keys(mapping(frontend, "network frontend"), SPEC_KEYS + ("region",), "network frontend")
    model.frontend_region = frontend.get("region")
    if "bandwidth" in frontend or "latency" in frontend:
        model.frontend = _spec(frontend, model.intra, "frontend", ("region",))
    for i, pair in enumerate(data.get("regionPairs") or []):
        spec = _spec(pair, model.inter, f"regionPairs[{i}]", ("from", "to"))
        model.region_pairs[(str(pair["from"]), str(pair["to"]))] = spec
    for i, link in enumerate(data.get("links") or []):
        where = f"links[{i}]"
        check_keys(mapping(link, f"network {where}"), SPEC_KEYS + ("from", "to", "disabled"), f"network {where}")
        pair = (str(link["from"]), str(link["to"]))
        if link.get("disabled"):
            model.removed.add(pair)
        else:
            model.link_overrides[pair] = _spec(link, model.intra, where, ("from", "to", "disabled"))
    return model
