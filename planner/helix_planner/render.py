"""A picture of a plan (SVG and PNG): one row per node, grouped by region, bars over the layers held.

Bar colour is the GPU type and the filled share of a bar the node's utilisation (flow / capacity);
vertical lines join stages that hand activations to each other, wider for more flow. Hand-offs
between regions are drawn red and dashed: they cross the slow, long links that decide most of a
geo-distributed plan's latency, so a reader should find them at a glance. The legend says all this.
"""

from pathlib import Path
from typing import TYPE_CHECKING

from helix_planner.figures import drawing, new_figure, save
from helix_planner.plan_format import Plan, PlannedEdge, PlannedNode

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]
CROSSING = "#d62728"
HANDOFF = "#555555"


def region_crossings(plan: Plan) -> list[PlannedEdge]:
    """Hand-offs between nodes of different regions, in the plan's edge order."""
    region = {n.name: n.region for n in plan.nodes}
    return [e for e in plan.edges if e.src in region and e.dst in region and region[e.src] != region[e.dst]]


def draw_placement(plan: Plan, path: Path) -> list[Path]:
    """Write the picture to `path` (.svg) and beside it (.png); the paths written."""
    with drawing():
        return _draw(plan, path)


def _draw(plan: Plan, path: Path) -> list[Path]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    layers = int(plan.model["numLayers"])
    nodes = sorted(plan.nodes, key=lambda n: (n.region, n.start, n.name))
    row = {n.name: i for i, n in enumerate(nodes)}
    colours = {gpu: PALETTE[i % len(PALETTE)] for i, gpu in enumerate(sorted({n.gpu_type for n in nodes}))}
    crossings = region_crossings(plan)
    figure = new_figure(11.0, 2.4 + 0.26 * len(nodes))
    ax = figure.add_subplot()
    for node in nodes:
        _draw_node(ax, node, row[node.name], colours[node.gpu_type])
    _draw_regions(ax, nodes, layers)
    _draw_handoffs(ax, plan, nodes, row, crossings)
    ax.set_yticks(range(len(nodes)), [f"{n.name} ({n.gpu_type})" for n in nodes])
    ax.set_ylim(len(nodes) - 0.5, -0.5)
    ax.set_xlim(0, layers)
    ax.set_xlabel("layers")
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    gap = "n/a" if plan.gap is None else f"{plan.gap * 100:.2f}%"
    ax.set_title(f"{plan.model['name']} on {plan.cluster}: max flow {plan.throughput:.1f} tok/s "
                 f"(bound {plan.upper_bound or 0:.1f}, gap {gap}), {len(plan.pipelines)} pipelines, "
                 f"plan {plan.plan_hash}\n{len(crossings)} hand-offs cross regions, "
                 f"{sum(e.flow for e in crossings):.1f} tok/s in all", loc="left", fontsize=10)
    handles = [Patch(facecolor=c, label=gpu) for gpu, c in colours.items()] + [
        Patch(facecolor="none", edgecolor="#333333", label="layers held; filled share = utilisation"),
        Line2D([], [], color=HANDOFF, linewidth=2, alpha=0.6, label="activations handed on (width: tok/s)"),
        Line2D([], [], color=CROSSING, linewidth=2, linestyle="--", label="region crossing"),
    ]
    legend = figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize=8,
                           frameon=False)
    legend.set_gid("legend")
    return save(figure, path)


def _draw_node(ax: "Axes", node: PlannedNode, y: int, colour: str) -> None:
    width = node.end - node.start
    used = node.flow / node.capacity if node.capacity > 0 else 0.0
    ax.barh(y, width, left=node.start, height=0.7, fill=False, edgecolor=colour, linewidth=1.2)
    ax.barh(y, width * used, left=node.start, height=0.7, color=colour, alpha=0.85)


def _draw_handoffs(ax: "Axes", plan: Plan, nodes: list[PlannedNode], row: dict[str, int],
                   crossings: list[PlannedEdge]) -> None:
    """A line per hand-off, wider for more flow; region crossings red and dashed, labelled once per
    layer boundary and pair of regions with the flow they carry together."""
    top_flow = max((e.flow for e in plan.edges), default=1.0) or 1.0
    end = {n.name: n.end for n in nodes}
    region = {n.name: n.region for n in nodes}
    crossing_ids = {id(e): k for k, e in enumerate(crossings)}
    labels: dict[tuple[int, str, str], tuple[float, int]] = {}  # (layer, from, to) -> (tok/s, top row)
    for edge in plan.edges:
        if edge.src not in row or edge.dst not in row:
            continue
        crossing = id(edge) in crossing_ids
        (line,) = ax.plot([end[edge.src]] * 2, [row[edge.src], row[edge.dst]], color=CROSSING if crossing else HANDOFF,
                          linestyle="--" if crossing else "-", linewidth=0.6 + 3.4 * edge.flow / top_flow,
                          alpha=0.9 if crossing else 0.45)
        if crossing:
            line.set_gid(f"region-crossing-{crossing_ids[id(edge)]}")
            key = (end[edge.src], region[edge.src], region[edge.dst])
            flow, top = labels.get(key, (0.0, len(nodes)))
            labels[key] = (flow + edge.flow, min(top, row[edge.src], row[edge.dst]))
    for (layer, source, target), (flow, top) in labels.items():
        ax.text(layer + 0.4, top - 0.1, f"{source} \u2192 {target}: {flow:.0f} tok/s", color=CROSSING, fontsize=7,
                va="bottom", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})


def _draw_regions(ax: "Axes", nodes: list[PlannedNode], layers: int) -> None:
    """Shade every other region and name each one at the right edge."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, node in enumerate(nodes):
        first.setdefault(node.region, i)
        last[node.region] = i
    for k, region in enumerate(first):
        if k % 2:
            ax.axhspan(first[region] - 0.5, last[region] + 0.5, color="#f2f2f2", zorder=0)
        ax.text(layers * 1.01, (first[region] + last[region]) / 2, f"region {region}", rotation=-90,
                va="center", ha="left", fontsize=9, fontweight="bold")
