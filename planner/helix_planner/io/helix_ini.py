"""The Helix artifact's `.ini` files: clusters and `[Solution]` layouts (read and write).

Cluster links `[Link-a-b]` are bidirectional and become two directed links; source/sink
links connect the front end. Values are unit expressions (see `units`).
"""

import ast
import configparser
from pathlib import Path

from helix_planner.cluster import SINK, SOURCE, Cluster, Link, Node
from helix_planner.errors import PlanningError
from helix_planner.units import eval_unit_expr

LAYOUT_OFFSET = 2  # the artifact numbers compute nodes from 2 (0 and 1 are source and sink)


def node_name(index: int) -> str:
    return f"node-{index}"


def _read(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    try:
        with path.open() as handle:
            parser.read_file(handle)
    except (OSError, configparser.Error) as err:
        raise PlanningError(f"cannot read {path}: {err}") from None
    return parser


def load_cluster_ini(path: Path) -> Cluster:
    """Read a Helix cluster file; nodes are named node-0 … node-N-1 in file order."""
    parser = _read(path)
    try:
        count = int(parser["NodeNames"]["total_compute_nodes"])
        nodes = [Node(node_name(i), parser[f"ComputeNode-{i}"]["type"].strip()) for i in range(count)]
    except (KeyError, ValueError) as err:
        raise PlanningError(f"{path} is not a Helix cluster file (missing {err})") from None
    cluster = Cluster(nodes=nodes, name=path.stem)
    for section in parser.sections():
        if not section.startswith("Link-"):
            continue
        _, a, b = section.split("-", 2)
        bandwidth = eval_unit_expr(parser[section]["bandwidth"])
        latency = eval_unit_expr(parser[section].get("latency", "0"))
        src = SOURCE if a == SOURCE else node_name(int(a))
        dst = SINK if b == SINK else node_name(int(b))
        cluster.add_link(Link(src, dst, bandwidth, latency))
        if src != SOURCE and dst != SINK:  # node-to-node links carry traffic both ways
            cluster.add_link(Link(dst, src, bandwidth, latency))
    _infer_regions(cluster)
    return cluster


def _infer_regions(cluster: Cluster) -> None:
    """Group nodes joined by fast links (>= 1/10 of the fastest) into regions r0, r1, ...

    The artifact's files carry no region names; geo24's partitions show up as cliques of
    fast links, which is what region-aware reports and pictures need.
    """
    fastest = max((link.bandwidth for k, link in cluster.links.items() if SOURCE not in k and SINK not in k),
                  default=0)
    parent = {n.name: n.name for n in cluster.nodes}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for (a, b), link in cluster.links.items():
        if a in parent and b in parent and link.bandwidth >= fastest / 10:
            parent[find(a)] = find(b)
    roots: dict[str, str] = {}
    for i, node in enumerate(cluster.nodes):
        root = find(node.name)
        roots.setdefault(root, f"r{len(roots)}")
        cluster.nodes[i] = Node(node.name, node.gpu, roots[root])


def load_layout_ini(path: Path, cluster: Cluster) -> dict[str, tuple[int, int]]:
    """Read a `[Solution]` layout: node name -> [start, end) layer range (contiguous)."""
    parser = _read(path)
    offset = int(parser["Settings"].get("offset", str(LAYOUT_OFFSET))) if parser.has_section("Settings") else 2
    layout: dict[str, tuple[int, int]] = {}
    for key, value in parser["Solution"].items():
        index = int(key.rsplit("_", 1)[1]) - offset
        layers = sorted(ast.literal_eval(value))
        if not layers:
            continue
        if layers != list(range(layers[0], layers[-1] + 1)):
            raise PlanningError(f"{path}: {key} holds non-contiguous layers {layers}")
        name = node_name(index)
        cluster.node(name)
        layout[name] = (layers[0], layers[-1] + 1)
    return layout


def dump_layout_ini(layout: dict[str, tuple[int, int]], cluster: Cluster) -> str:
    """Write a layout in the artifact's `[Solution]` format (nodes numbered in cluster order)."""
    lines = ["[Settings]", f"offset={LAYOUT_OFFSET}", "", "[Solution]"]
    for index, node in enumerate(cluster.nodes):
        if node.name in layout:
            start, end = layout[node.name]
            lines.append(f"compute_node_{index + LAYOUT_OFFSET}={list(range(start, end))}")
    return "\n".join(lines) + "\n"
