"""Synthetic fleets for scale tests, seeded so that every run plans the same cluster.

`synthetic_cluster` is the small generator of the first scale tests: N nodes dealt round-robin
over R regions, links shaped like the reference clusters' (fast within a region, 1.25e9 B/s
+-10%, 1 ms; slow between, 12.5e6 B/s +-20%, 50 ms +-10 ms), one Link object per node pair.

`fleet_cluster` builds the 500-2,000-GPU fleets of the planner benchmark (`FLEETS`). Regions
come from a list of cloud-like locations on four continents; each region draws its own GPU
mix over the seven types with measured LLaMA-2-70B profiles (some regions A100/L4-heavy,
others T4/V100-heavy) and its own size (0.6-1.4x the mean). Links are per region pair, as a
WAN is: within a region 10-25 Gbps at 0.2-0.5 ms; between regions of one continent 2-5 Gbps
at 10-30 ms; across continents 0.5-2 Gbps at 60-180 ms (per node pair; the cluster model
has no shared WAN caps). The front end sits in the first region and reaches every node over
that region's links. Links live in a `RegionMesh`, so the fleet costs memory per region
pair, not per node pair.
"""

import random
from dataclasses import dataclass

from helix_planner.cluster import SINK, SOURCE, Cluster, Link, Node, RegionMesh

DEFAULT_MIX = {"A100": 2, "V100": 2, "L4": 4, "L4x2": 2, "T4": 6, "T4x2": 2, "T4x4": 1}
FLEET_GPUS = ("A100", "V100", "L4", "L4x2", "T4", "T4x2", "T4x4")
# (name, continent): cloud-like regions, taken in this order
LOCATIONS = (("us-east", "na"), ("eu-west", "eu"), ("ap-northeast", "as"), ("us-west", "na"),
             ("eu-central", "eu"), ("ap-south", "as"), ("sa-east", "sa"), ("us-central", "na"),
             ("eu-north", "eu"), ("ap-southeast", "as"))
GBPS = 1e9 / 8  # bytes/s in one Gbit/s


@dataclass(frozen=True)
class FleetSpec:
    gpus: int
    regions: int
    seed: int = 0


FLEETS = {500: FleetSpec(500, 6), 1000: FleetSpec(1000, 8), 2000: FleetSpec(2000, 10)}


def synthetic_cluster(nodes: int, regions: int, *, mix: dict[str, int] | None = None, seed: int = 0) -> Cluster:
    rng = random.Random(seed)
    mix = mix or DEFAULT_MIX
    types = [gpu for gpu, weight in mix.items() for _ in range(weight)]
    members = [Node(f"n{i:03d}", types[rng.randrange(len(types))] if i >= len(mix) else list(mix)[i], f"r{i % regions}")
               for i in range(nodes)]
    cluster = Cluster(nodes=members, name=f"synthetic-{nodes}x{regions}")
    for a in members:
        for b in members:
            if a.name < b.name:
                same = a.region == b.region
                bandwidth = 1.25e9 * rng.uniform(0.9, 1.1) if same else 12.5e6 * rng.uniform(0.8, 1.2)
                latency = 0.001 if same else rng.uniform(0.04, 0.06)
                cluster.add_link(Link(a.name, b.name, bandwidth, latency))
                cluster.add_link(Link(b.name, a.name, bandwidth, latency))
        near = a.region == "r0"
        cluster.add_link(Link(SOURCE, a.name, 1.25e9 if near else 12.5e6, 0.001 if near else 0.05))
        cluster.add_link(Link(a.name, SINK, 1.25e9 if near else 12.5e6, 0.001 if near else 0.05))
    return cluster


def fleet_cluster(spec: FleetSpec) -> Cluster:
    """The fleet `spec` describes (see the module docstring for how it is drawn)."""
    if not 1 <= spec.regions <= len(LOCATIONS):
        raise ValueError(f"a fleet has 1 to {len(LOCATIONS)} regions, not {spec.regions}")
    rng = random.Random(spec.seed)
    places = LOCATIONS[:spec.regions]
    sizes = _split(spec.gpus, [rng.uniform(0.6, 1.4) for _ in places])
    nodes: list[Node] = []
    for (region, _), size in zip(places, sizes):
        weights = [rng.uniform(0.2, 1.0) ** 2 for _ in FLEET_GPUS]
        for gpu, count in zip(FLEET_GPUS, _split(size, weights)):
            nodes += [Node(f"n{len(nodes) + i:04d}", gpu, region) for i in range(count)]
    pairs: dict[tuple[str, str], tuple[float, float]] = {}
    for a, (ra, ca) in enumerate(places):
        for rb, cb in places[a:]:
            if ra == rb:
                link = (rng.uniform(10, 25) * GBPS, rng.uniform(2e-4, 5e-4))
            elif ca == cb:
                link = (rng.uniform(2, 5) * GBPS, rng.uniform(0.010, 0.030))
            else:
                link = (rng.uniform(0.5, 2) * GBPS, rng.uniform(0.060, 0.180))
            pairs[(ra, rb)] = pairs[(rb, ra)] = link
    cluster = Cluster(nodes=nodes, links=RegionMesh({n.name: n.region for n in nodes}, pairs),
                      name=f"fleet-{spec.gpus}x{spec.regions}")
    home = places[0][0]
    for node in nodes:
        bandwidth, latency = pairs[(home, node.region)]
        cluster.add_link(Link(SOURCE, node.name, bandwidth, latency))
        cluster.add_link(Link(node.name, SINK, bandwidth, latency))
    return cluster


def _split(total: int, weights: list[float]) -> list[int]:
    """`total` split in proportion to `weights` (largest remainders get the leftovers)."""
    shares = [total * w / sum(weights) for w in weights]
    counts = [int(s) for s in shares]
    for i in sorted(range(len(shares)), key=lambda j: counts[j] - shares[j])[:total - sum(counts)]:
        counts[i] += 1
    return counts
