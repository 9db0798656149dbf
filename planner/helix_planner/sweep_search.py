"""Beam search over layer sweeps: staggered placements for clusters of tens of nodes.

Inside one group the links never limit the flow, so a placement carries F when every layer
is covered by exactly F of node flow (see `sweep`). `sweep` fills each boundary greedily,
which is fine-grained on a fleet but coarse on 40 nodes, and stage chains (`stage_mix`) make
every node of a stage hold the same layers. Here each boundary's deficit is filled by up to
`MAX_PICKS` nodes, trying per pick the `width` most budget-efficient (type, layers) choices,
and the `beam` partial placements with the most *potential* (free nodes' budgets, plus the
flow of placed nodes times the layers they still cover, minus F times the layers left) go on
to the next layer; a state whose potential is negative cannot finish. Nodes of one type may
end at different layers, so the search finds staggered placements that neither finds.
The evaluator's max flow of the result is what counts.
"""

import time
from collections.abc import Sequence

from helix_planner.sweep import budget
from helix_planner.topology import NodeClass

Layout = dict[str, tuple[int, int]]
MAX_PICKS = 4  # nodes added at one boundary, at most
TARGET_SHARES = (0.2, 0.1, 0.35, 0.05, 0.5)  # of the way from the best flow to the bound
_Active = tuple[tuple[int, float], ...]  # (end layer, flow) of placed nodes still covering
_Placed = tuple[tuple[int, int, int], ...]  # (class index, start, layers)


def beam_sweep(classes: Sequence[NodeClass], num_layers: int, target: float, deadline: float, *,
               beam: int = 300, width: int = 6) -> Layout | None:
    """A placement covering every layer with `target`, or None (none found, or past `deadline`)."""
    options = [(i, k, t) for i, cls in enumerate(classes) for k, t in enumerate(cls.caps, start=1) if t > 0]
    budgets = [budget(cls) for cls in classes]
    states: list[tuple[_Active, tuple[int, ...], _Placed]] = [((), tuple(len(c.nodes) for c in classes), ())]
    for layer in range(num_layers):
        if time.monotonic() > deadline:
            return None
        following: dict[tuple[_Active, tuple[int, ...]], tuple[float, _Active, tuple[int, ...], _Placed]] = {}
        for active, free, placed in states:
            staying = tuple(a for a in active if a[0] > layer)
            stack = [(target - sum(flow for _, flow in staying), staying, free, placed, 0, 0)]
            while stack:
                deficit, covering, left, done, first, picks = stack.pop()
                if deficit <= 1e-9 * target:
                    potential = (sum(n * b for n, b in zip(left, budgets))
                                 + sum(flow * (end - layer - 1) for end, flow in covering)
                                 - target * (num_layers - layer - 1))
                    key = (tuple(sorted((end, round(flow, 3)) for end, flow in covering)), left)
                    if potential >= -1e-6 and (key not in following or following[key][0] < potential):
                        following[key] = (potential, covering, left, done)
                    continue
                if picks == MAX_PICKS:
                    continue
                choices = sorted(((k * min(t, deficit) / budgets[i], j) for j, (i, k, t) in enumerate(options)
                                  if j >= first and left[i] and layer + k <= num_layers), reverse=True)
                for _, j in choices[:width]:
                    i, k, t = options[j]
                    flow = min(t, deficit)
                    fewer = left[:i] + (left[i] - 1,) + left[i + 1:]
                    stack.append((deficit - flow, covering + ((layer + k, flow),), fewer, done + ((i, layer, k),), j,
                                  picks + 1))
        if not following:
            return None
        best = sorted(following.values(), key=lambda s: -s[0])[:beam]
        states = [(covering, left, done) for _, covering, left, done in best]
    taken = [0] * len(classes)
    layout: Layout = {}
    for i, start, k in states[0][2]:
        layout[classes[i].nodes[taken[i]]] = (start, start + k)
        taken[i] += 1
    return layout


def beam_sweep_targets(low: float, high: float) -> list[float]:
    """Targets to try between the best flow so far and the bound, most promising first (the
    search is not monotone in F: one target may fail where a higher one succeeds)."""
    return [low + (high - low) * share for share in TARGET_SHARES]
