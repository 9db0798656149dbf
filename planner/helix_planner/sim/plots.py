"""Charts of a run (SVG and PNG, see `helix_planner.figures`): throughput over time, latency CDFs,
per-node utilisation.

Decode and prompt throughput get an axis each: prompt tokens/s is often ten times decode's, and
on a shared axis the decode line, the figure that matters for serving, lies flat along the bottom.
Latency CDFs are empirical step functions through every measured request, so their shape is the
data's, and each panel says how many requests it holds.
"""

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from helix_planner.figures import drawing, new_figure, save
from helix_planner.sim.metrics import SimResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes

DECODE, PROMPT, KV = "#4e79a7", "#f28e2b", "#e15759"


def write_plots(result: SimResult, directory: Path) -> list[Path]:
    """throughput, latency_cdf and nodes, each as .svg and .png in `directory`; the paths written."""
    with drawing():
        return [*_throughput(result, directory / "throughput.svg"),
                *_latency_cdfs(result, directory / "latency_cdf.svg"), *_nodes(result, directory / "nodes.svg")]


def _throughput(result: SimResult, path: Path) -> list[Path]:
    s = result.series
    times = np.array(s["time"])
    width = max(1, len(times) // 120)
    figure = new_figure(8.0, 5.0)
    decode_ax, prompt_ax = figure.subplots(2, 1, sharex=True)
    figure.suptitle(f"{result.label}: throughput ({result.scheduler}, {result.mode}, lengths {result.lengths})",
                    fontsize=10)
    for ax, key, mean, name, colour in ((decode_ax, "decodeThroughput", result.decode_throughput, "decode", DECODE),
                                        (prompt_ax, "promptThroughput", result.prompt_throughput, "prompt", PROMPT)):
        ax.axvspan(0.0, result.warmup, color="#eeeeee", label="warm-up (not measured)")
        ax.plot(times, _moving_average(np.array(s[key]), width), color=colour, linewidth=1.2, label=f"{name} tok/s")
        ax.axhline(mean, color=colour, linestyle="--", linewidth=0.9, label=f"window mean {mean:.1f}")
        ax.set_ylabel(f"{name} tokens/s")
        ax.set_ylim(bottom=0)
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(color="#dddddd", linewidth=0.6)
    prompt_ax.set_xlabel("simulated time (s)")
    return save(figure, path)


def _latency_cdfs(result: SimResult, path: Path) -> list[Path]:
    figure = new_figure(10.0, 4.0)
    ttft_ax, tpot_ax = figure.subplots(1, 2)
    figure.suptitle(f"{result.label}: latency of requests in the measured window", fontsize=10)
    _cdf(ttft_ax, "time to first token", "ttft", result.ttft_values, DECODE)
    _cdf(tpot_ax, "time per output token", "tpot", result.tpot_values, PROMPT)
    return save(figure, path)


def _cdf(ax: "Axes", title: str, gid: str, values: list[float], colour: str) -> None:
    """The empirical CDF through every value, with its p50 and p95 marked."""
    ax.set_title(f"{title} ({len(values)} requests)", fontsize=9)
    ax.set_xlabel("seconds")
    ax.set_ylabel("share of requests")
    ax.grid(color="#dddddd", linewidth=0.6)
    if not values:
        ax.text(0.5, 0.5, "no request in the window", transform=ax.transAxes, ha="center")
        return
    xs = np.sort(np.array(values, dtype=float))
    ys = np.arange(1, len(xs) + 1) / len(xs)
    (line,) = ax.step(np.concatenate([[xs[0]], xs]), np.concatenate([[0.0], ys]), where="post", color=colour,
                      linewidth=1.2, label="requests")
    line.set_gid(f"{gid}-cdf")
    for q, style in ((50, ":"), (95, "--")):
        ax.axvline(float(np.percentile(xs, q)), color="#555555", linestyle=style, linewidth=0.9,
                   label=f"p{q} {np.percentile(xs, q):.3g} s")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize=8)


def _nodes(result: SimResult, path: Path) -> list[Path]:
    nodes = sorted(result.nodes, key=lambda n: (n.start, n.name))
    figure = new_figure(9.0, 1.6 + 0.3 * len(nodes))
    ax = figure.add_subplot()
    ys = np.arange(len(nodes))
    ax.barh(ys - 0.18, [n.busy * 100 for n in nodes], height=0.34, color=DECODE, label="compute busy")
    ax.barh(ys + 0.18, [n.kv_mean * 100 for n in nodes], height=0.34, color=KV, label="KV cache used (mean)")
    ax.set_yticks(ys, [f"{n.name} {n.gpu} [{n.start},{n.end})" for n in nodes], fontsize=8)
    ax.set_ylim(len(nodes) - 0.5, -0.5)
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the measured window")
    ax.set_title(f"{result.label}: per-node utilisation", fontsize=10, loc="left")
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    figure.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return save(figure, path)


def _moving_average(values: np.ndarray, width: int) -> np.ndarray:
    return np.convolve(values, np.ones(width) / width, mode="same") if width > 1 else values
