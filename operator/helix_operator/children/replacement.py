"""Which nodes' worker pods of an outdated worker spec (image, env, resources...) to replace next.

A worker pod is pinned to its node and holds that node's GPUs (a device-plugin limit, and the
weights would not fit twice anyway), so its replacement cannot start beside it: on one node
the old pod must go first. New-before-old is therefore kept per pipeline instead of per pod:
replacements go in batches of at most `maxSurgeNodes` nodes, the weakest pipelines first,
and a node joins a batch only while some pipeline of the plan stays whole (every stage ready
and none being replaced), so the front end always has a pipeline to re-prefill the requests
of a stopped stage on. Where every remaining node breaks the last whole pipeline (a plan of
one pipeline, or a node that all pipelines share) the outage cannot be avoided, and those
nodes go together, up to the same limit, to keep it to one model load.
"""

from collections.abc import Collection, Sequence

Pipelines = Sequence[Sequence[str]]  # the stages' node names of each pipeline, widest first (plan order)


def replacement_batch(candidates: Collection[str], pipelines: Pipelines, down: Collection[str], under_way: int,
                      limit: int) -> list[str]:
    """The nodes to replace now, in order.

    `candidates` run a pod of the outdated spec; `down` are plan nodes without a ready pod;
    `under_way` replacements are still starting and count against `limit`.
    """
    budget = limit - under_way
    if budget <= 0 or not candidates:
        return []
    ordered = weakest_first(candidates, pipelines)
    stages = [frozenset(p) for p in pipelines]
    batch: list[str] = []
    out = set(down)
    for node in ordered:
        if len(batch) == budget:
            break
        if serving(stages, out | {node}) or not serving(stages, out):
            batch.append(node)
            out.add(node)
    if not batch and not under_way:
        return ordered[:budget]
    return batch


def weakest_first(nodes: Collection[str], pipelines: Pipelines) -> list[str]:
    """`nodes` outside every pipeline first (they carry no flow), then by the weakest pipeline they serve."""
    rank: dict[str, int] = {}
    for node in (n for p in reversed(pipelines) for n in p):
        rank.setdefault(node, len(rank))
    return sorted(nodes, key=lambda n: (n in rank, rank.get(n, 0), n))


def serving(stages: Sequence[frozenset[str]], down: set[str]) -> bool:
    """Whether some pipeline (its stages' nodes) has none `down`; always, for a plan without pipelines."""
    return not stages or any(not nodes & down for nodes in stages)
