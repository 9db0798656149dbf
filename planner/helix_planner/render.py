"""An SVG picture of a plan: one row per node, grouped by region, bars over the layers held.

Bar colour is the GPU type, bar fill the node's utilisation (flow / capacity); lines join
stages that hand activations to each other, thicker for more flow.
"""

from html import escape

from helix_planner.plan_format import Plan

_PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]
_ROW, _LEFT, _WIDTH, _TOP = 18, 190, 720, 60


def render_svg(plan: Plan) -> str:
    layers = int(plan.model["numLayers"])
    nodes = sorted(plan.nodes, key=lambda n: (n.region, n.start, n.name))
    colours = {gpu: _PALETTE[i % len(_PALETTE)] for i, gpu in enumerate(sorted({n.gpu_type for n in nodes}))}
    rows: dict[str, int] = {}
    parts: list[str] = []
    y = _TOP
    region = None
    for node in nodes:
        if node.region != region:
            region = node.region
            parts.append(f'<text x="8" y="{y + 13}" font-weight="bold">region {escape(region)}</text>')
            y += _ROW
        rows[node.name] = y
        x0 = _LEFT + _WIDTH * node.start / layers
        width = _WIDTH * (node.end - node.start) / layers
        fill = node.flow / node.capacity if node.capacity > 0 else 0.0
        colour = colours[node.gpu_type]
        parts.append(f'<text x="16" y="{y + 12}">{escape(node.name)} ({escape(node.gpu_type)})</text>')
        parts.append(f'<rect x="{x0:.1f}" y="{y + 2}" width="{width:.1f}" height="{_ROW - 5}" fill="none" stroke="{colour}"/>')
        parts.append(f'<rect x="{x0:.1f}" y="{y + 2}" width="{width * fill:.1f}" height="{_ROW - 5}" fill="{colour}" opacity="0.8">'
                     f'<title>{escape(node.name)} layers [{node.start}, {node.end}) flow {node.flow:.1f} / {node.capacity:.1f} tok/s</title></rect>')
        y += _ROW
    top_flow = max((e.flow for e in plan.edges), default=1.0) or 1.0
    for edge in plan.edges:
        if edge.src in rows and edge.dst in rows:
            x = _LEFT + _WIDTH * next(n.end for n in nodes if n.name == edge.src) / layers
            stroke = 0.5 + 3.5 * edge.flow / top_flow
            parts.append(f'<line x1="{x:.1f}" y1="{rows[edge.src] + 9}" x2="{x:.1f}" y2="{rows[edge.dst] + 9}" '
                         f'stroke="#333" stroke-opacity="0.35" stroke-width="{stroke:.2f}"/>')
    ticks = [f'<line x1="{_LEFT + _WIDTH * t / layers:.1f}" y1="{_TOP - 6}" x2="{_LEFT + _WIDTH * t / layers:.1f}" y2="{y}" stroke="#ddd"/>'
             f'<text x="{_LEFT + _WIDTH * t / layers:.1f}" y="{_TOP - 10}" text-anchor="middle">{t}</text>'
             for t in range(0, layers + 1, max(1, layers // 10))]
    gap = "n/a" if plan.gap is None else f"{plan.gap * 100:.2f}%"
    title = (f'{escape(plan.model["name"])} on {escape(plan.cluster)}: {plan.throughput:.1f} tok/s, '
             f'bound {plan.upper_bound or 0:.1f} (gap {gap}), {len(plan.pipelines)} pipelines, plan {plan.plan_hash}')
    legend = "".join(f'<rect x="{_LEFT + 110 * i}" y="{y + 10}" width="12" height="12" fill="{c}"/>'
                     f'<text x="{_LEFT + 110 * i + 16}" y="{y + 21}">{escape(g)}</text>' for i, (g, c) in enumerate(colours.items()))
    height = y + 40
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LEFT + _WIDTH + 30}" height="{height}" '
            f'font-family="sans-serif" font-size="11">\n<rect width="100%" height="100%" fill="white"/>\n'
            f'<text x="8" y="20" font-size="14" font-weight="bold">{title}</text>\n'
            f'<text x="{_LEFT}" y="{_TOP - 24}">layers</text>\n' + "\n".join(ticks + parts) + "\n" + legend + "\n</svg>\n")
