"""Pictures as SVG and PNG, drawn with matplotlib (the optional `plots` extra).

matplotlib rather than the hand-written SVG the project had: it draws legends, one axis per
quantity and step CDFs without custom layout code, and writes PNG (what people paste into
issues and chats) beside SVG (what scales and can be searched). It is imported only when a
picture is asked for, so planning and simulating need nothing beyond the base install.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from helix_planner.errors import PlanningError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INSTALL_HINT = "pip install -e '.[plots]' (the plots extra, from the checkout)"
PNG_DPI = 150


@contextmanager
def drawing() -> Iterator[None]:
    """Draw pictures inside this: matplotlib set up, or one line saying how to install it."""
    try:
        from matplotlib import rc_context
    except ModuleNotFoundError as err:
        raise PlanningError(f"pictures need matplotlib ({err}): {INSTALL_HINT}") from None
    # SVG text stays text (searchable; tests read legends), ids are stable from run to run, and lines
    # keep every point: simplification would thin a CDF's steps. Paths are made when lines are added,
    # so this must hold while drawing, not only while saving.
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "helix", "path.simplify": False}):
        yield


def new_figure(width: float, height: float) -> "Figure":
    """A figure of `width` x `height` inches, laid out so labels and legends are not cut off."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save(figure: "Figure", path: Path) -> list[Path]:
    """`path` as .svg and the same picture as .png beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    svg, png = path.with_suffix(".svg"), path.with_suffix(".png")
    figure.savefig(svg, format="svg", metadata={"Date": None})
    figure.savefig(png, format="png", dpi=PNG_DPI)
    return [svg, png]
