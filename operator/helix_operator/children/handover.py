"""Which nodes to free before the front end moves to a new plan, so that some plan always serves.

When every pipeline of the new plan needs a node whose old worker still holds it (the nodes
change layers), switching the front end first leaves it with nothing to serve on until the old
workers drain and the new ones load: an outage as long as a model load. Instead the nodes of one
new pipeline are freed first, chosen so that some pipeline of the running plan stays whole and
its front end keeps serving (requests on a stopped stage re-prefill elsewhere); the front end
switches once that new pipeline is ready. Where every choice breaks the running plan's last
whole pipeline, there is nothing to keep, and the switch goes first as before (requests then
wait in the new front end for a pipeline).
"""

from collections.abc import Collection, Sequence

Key = tuple[str, int, int]  # a worker's node and layers [start, end)


def room_to_make(target: Sequence[Sequence[str]], ready: Collection[str], under_way: Collection[str],
                 blocked: Collection[str], running: Sequence[Sequence[Key]], up: Collection[Key]) -> list[str] | None:
    """The nodes whose old pods should leave now, [] to wait for a new pipeline under way, or
    None to switch the front end now.

    `target`: the new plan's pipelines (stage nodes); `ready`, `under_way` and `blocked`: nodes
    whose new pod is ready, exists but is not ready yet, or cannot be created while another pod
    holds the node. `running`: the running plan's pipelines (stage keys); `up`: keys with a ready
    pod that is not leaving.
    """
    if not target or not running or any(all(n in ready for n in p) for p in target):
        return None
    if any(all(n in ready or n in under_way for n in p) for p in target):
        return []
    choices = []
    for pipeline in target:
        nodes = set(pipeline)
        if nodes <= {*ready, *under_way, *blocked}:
            keeps = any(all(key in up and key[0] not in nodes for key in stages) for stages in running)
            if keeps:
                choices.append(sorted(n for n in nodes if n in blocked))
    return min(choices, key=len) if choices else None
