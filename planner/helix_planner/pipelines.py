"""Per-request pipelines drawn from a max flow, and the interleaved weighted round robin.

A flow decomposes into source-to-sink paths; each path is a pipeline (ordered stages with
their layer ranges) carrying a share of the throughput. The front end and the simulator
pick a pipeline per request by IWRR over those shares, so traffic follows the flow.
"""

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from helix_planner.cluster import SINK, SOURCE

_EPS = 1e-6


@dataclass(frozen=True)
class Stage:
    node: str
    start: int
    end: int


@dataclass(frozen=True)
class Pipeline:
    stages: tuple[Stage, ...]
    tokens_per_second: float


def decompose(
    edge_flow: dict[tuple[str, str], float],
    layout: dict[str, tuple[int, int]],
    *,
    min_share: float = 1e-4,
) -> list[Pipeline]:
    """Split an acyclic flow into paths, widest first; drop paths below `min_share` of the total.

    With partial inference a stage may start inside its node's range: each stage's `start` is
    where the previous stage ended.
    """
    remaining = {k: v for k, v in edge_flow.items() if v > _EPS}
    total = sum(v for (a, _), v in remaining.items() if a == SOURCE)
    pipelines: list[Pipeline] = []
    out: dict[str, list[str]] = {}
    for a, b in remaining:
        out.setdefault(a, []).append(b)
    while True:
        path = _widest_path(remaining, out)
        if path is None:
            break
        width = min(remaining[(a, b)] for a, b in zip(path, path[1:]))
        for a, b in zip(path, path[1:]):
            remaining[(a, b)] -= width
            if remaining[(a, b)] <= _EPS:
                del remaining[(a, b)]
        if total > 0 and width < min_share * total:
            continue
        stages, position = [], 0
        for name in path[1:-1]:
            start, end = layout[name]
            stages.append(Stage(name, max(start, position), end))
            position = end
        pipelines.append(Pipeline(tuple(stages), width))
    return pipelines


def _widest_path(edges: dict[tuple[str, str], float],
                 out: dict[str, list[str]] | None = None) -> list[str] | None:
    """Widest SOURCE->SINK path in a DAG (bottleneck Dijkstra on a heap; ties go to the larger
    name). `out` lists successors (a superset of `edges`' is fine), so that a caller taking
    many paths builds it once."""
    if out is None:
        out = {}
        for a, b in edges:
            out.setdefault(a, []).append(b)
    best: dict[str, float] = {SOURCE: float("inf")}
    parent: dict[str, str] = {}
    heap: list[tuple[float, _Reversed]] = [(-best[SOURCE], _Reversed(SOURCE))]
    done: set[str] = set()
    while heap:
        negative, entry = heapq.heappop(heap)
        node = entry.name
        if node in done or -negative < best[node]:
            continue
        done.add(node)
        if node == SINK:
            break
        for nxt in out.get(node, []):
            cap = edges.get((node, nxt))
            if cap is None:
                continue
            width = min(best[node], cap)
            if nxt not in done and width > best.get(nxt, 0.0):
                best[nxt], parent[nxt] = width, node
                heapq.heappush(heap, (-width, _Reversed(nxt)))
    if SINK not in parent:
        return None
    path = [SINK]
    while path[-1] != SOURCE:
        path.append(parent[path[-1]])
    return path[::-1]


@dataclass(frozen=True)
class _Reversed:
    """A name that sorts in reverse, so the heap pops the larger name first among equal widths."""

    name: str

    def __lt__(self, other: "_Reversed") -> bool:
        return self.name > other.name


class InterleavedWeightedRoundRobin:
    """Interleaved WRR: in each round, item i is served once per weight unit it still has.

    Weights are the pipelines' tokens/s as the integers up to `resolution` that best keep
    their ratios, so over a cycle each pipeline gets requests in proportion to its flow, and
    a heavy pipeline is never served more than `resolution` times in a row.
    """

    def __init__(self, weights: list[float], *, resolution: int = 20) -> None:
        if not weights or max(weights) <= 0:
            raise ValueError("IWRR needs at least one positive weight")
        self.weights = _integer_weights(weights, resolution)
        self._round = 1
        self._index = -1

    def next(self, available: Sequence[bool] | None = None) -> int:
        """Index of the next item, skipping items marked unavailable (LookupError if none is left)."""
        if available is not None and not any(a and w > 0 for a, w in zip(available, self.weights)):
            raise LookupError("no available item with positive weight")
        top = max(self.weights)
        while True:
            self._index += 1
            if self._index >= len(self.weights):
                self._index = 0
                self._round = self._round % top + 1
            if self.weights[self._index] >= self._round and (available is None or available[self._index]):
                return self._index


def _integer_weights(weights: list[float], resolution: int) -> list[int]:
    """Small integers proportional to `weights`: the smallest scale with the least ratio error."""
    top = max(weights)
    best_error, best = float("inf"), [1 if w > 0 else 0 for w in weights]
    for scale in range(1, resolution + 1):
        ints = [max(1, round(scale * w / top)) if w > 0 else 0 for w in weights]
        error = max(abs(i / scale - w / top) / (w / top) for i, w in zip(ints, weights) if w > 0)
        if error < best_error - 1e-9:
            best_error, best = error, ints
    return best
