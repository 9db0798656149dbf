"""Synthetic fleets for scale tests: N nodes over R regions with a GPU mix (seeded).

Links follow the reference clusters' shape: fast within a region (1.25e9 B/s +-10%,
1 ms), slow between regions (12.5e6 B/s +-20%, 50 ms +-10 ms), front end in region 0.
"""

import random

from helix_planner.cluster import SINK, SOURCE, Cluster, Link, Node

DEFAULT_MIX = {"A100": 2, "V100": 2, "L4": 4, "L4x2": 2, "T4": 6, "T4x2": 2, "T4x4": 1}


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
