"""SVG charts of a run: throughput over time, latency CDFs, per-node utilisation.

SVG rather than PNG: text and axes come for free without a plotting library (matplotlib is
not a dependency), and every browser shows them.
"""

from html import escape
from pathlib import Path

import numpy as np

from helix_planner.sim.metrics import SimResult

_COLOURS = ["#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1"]
_W, _H, _PAD = 640, 320, 56


def write_plots(result: SimResult, directory: Path) -> list[Path]:
    """Write throughput.svg, latency_cdf.svg and nodes.svg into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    s = result.series
    times = np.array(s["time"])
    smooth = max(1, len(times) // 120)
    charts = {
        "throughput.svg": _lines(
            f"{result.label}: throughput ({result.scheduler})", "simulated time (s)", "tokens/s",
            [("decode", times, _moving_average(np.array(s["decodeThroughput"]), smooth)),
             ("prompt", times, _moving_average(np.array(s["promptThroughput"]), smooth))],
            shade=(0.0, result.warmup)),
        "latency_cdf.svg": _side_by_side(
            _lines("time to first token", "seconds", "share of requests", [("TTFT", *_cdf(result.ttft_values))]),
            _lines("time per output token", "seconds", "share of requests", [("TPOT", *_cdf(result.tpot_values))])),
        "nodes.svg": _node_bars(result),
    }
    paths = []
    for name, svg in charts.items():
        (directory / name).write_text(svg)
        paths.append(directory / name)
    return paths


def _moving_average(values: np.ndarray, width: int) -> np.ndarray:
    return np.convolve(values, np.ones(width) / width, mode="same") if width > 1 else values


def _cdf(values: list[float]) -> tuple[np.ndarray, np.ndarray]:
    xs = np.sort(np.array(values, dtype=float))
    return xs, np.arange(1, len(xs) + 1) / max(len(xs), 1)


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values in [lo, hi]: steps of 1, 2 or 5 times a power of ten."""
    step = (hi - lo) / count or 1.0
    magnitude = 10 ** np.floor(np.log10(step))
    step = min(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= step)
    return [float(t) for t in np.arange(np.ceil(lo / step) * step, hi + step * 1e-9, step)]


def _svg(width: int, height: int, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
            f'font-size="11"><rect width="100%" height="100%" fill="white"/>{"".join(body)}</svg>\n')


def _lines(title: str, xlabel: str, ylabel: str, series: list[tuple[str, np.ndarray, np.ndarray]],
           shade: tuple[float, float] | None = None) -> str:
    xs_all = np.concatenate([x for _, x, _ in series]) if series else np.zeros(1)
    ys_all = np.concatenate([y for _, _, y in series]) if series else np.zeros(1)
    x_lo, x_hi = (float(xs_all.min()), float(xs_all.max())) if len(xs_all) else (0.0, 1.0)
    y_hi = float(ys_all.max()) if len(ys_all) and ys_all.max() > 0 else 1.0
    y_ticks = _ticks(0.0, y_hi)
    if y_ticks[-1] < y_hi:  # extend the axis to the next round value
        y_hi = y_ticks[-1] + (y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else y_hi)
    x_hi = x_hi if x_hi > x_lo else x_lo + 1.0
    left, right, top, bottom = _PAD, _W - 16, 28, _H - 40

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * (right - left)

    def py(y: float) -> float:
        return bottom - y / y_hi * (bottom - top)

    body = [f'<text x="{left}" y="18" font-weight="bold">{escape(title)}</text>']
    if shade:
        body.append(f'<rect x="{px(shade[0]):.1f}" y="{top}" width="{px(min(shade[1], x_hi)) - px(shade[0]):.1f}" '
                    f'height="{bottom - top}" fill="#eee"><title>warm-up</title></rect>')
    for t in _ticks(x_lo, x_hi):
        body.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{bottom}" y2="{bottom + 4}" stroke="#333"/>'
                    f'<text x="{px(t):.1f}" y="{bottom + 16}" text-anchor="middle">{t:g}</text>')
    for t in _ticks(0.0, y_hi):
        body.append(f'<line x1="{left}" x2="{right}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#ddd"/>'
                    f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    body.append(f'<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#333"/>')
    body.append(f'<text x="{(left + right) / 2}" y="{_H - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    body.append(f'<text x="14" y="{(top + bottom) / 2}" transform="rotate(-90 14 {(top + bottom) / 2})" '
                f'text-anchor="middle">{escape(ylabel)}</text>')
    for i, (name, xs, ys) in enumerate(series):
        colour = _COLOURS[i % len(_COLOURS)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs.tolist(), ys.tolist()))
        body.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        body.append(f'<text x="{right - 80}" y="{top + 14 * (i + 1)}" fill="{colour}">{escape(name)}</text>')
    return _svg(_W, _H, body)


def _side_by_side(a: str, b: str) -> str:
    inner = [f'<svg x="0" y="0" width="{_W}" height="{_H}">{a}</svg>', f'<svg x="{_W}" y="0" width="{_W}" '
             f'height="{_H}">{b}</svg>']
    return _svg(2 * _W, _H, inner)


def _node_bars(result: SimResult) -> str:
    nodes = sorted(result.nodes, key=lambda n: (n.start, n.name))
    row, left, width = 16, 190, 380
    height = 48 + row * len(nodes)
    body = [f'<text x="8" y="18" font-weight="bold">{escape(result.label)}: per-node utilisation in the window</text>',
            f'<text x="{left}" y="36" fill="{_COLOURS[0]}">compute busy</text>',
            f'<text x="{left + 110}" y="36" fill="{_COLOURS[1]}">KV cache used (mean)</text>']
    for i, n in enumerate(nodes):
        y = 44 + i * row
        body.append(f'<text x="8" y="{y + 11}">{escape(n.name)} {escape(n.gpu)} [{n.start},{n.end})</text>')
        for j, (value, colour) in enumerate(((n.busy, _COLOURS[0]), (n.kv_mean, _COLOURS[1]))):
            body.append(f'<rect x="{left}" y="{y + 1 + 7 * j}" width="{width * min(value, 1.0):.1f}" height="6" '
                        f'fill="{colour}"><title>{value * 100:.0f}%</title></rect>')
        body.append(f'<text x="{left + width + 8}" y="{y + 11}">{n.busy * 100:.0f}% / {n.kv_mean * 100:.0f}%, '
                    f'queue {n.queue_mean:.1f}</text>')
    return _svg(left + width + 200, height, body)
