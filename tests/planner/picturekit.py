"""Reading the pictures the CLI writes: SVG elements by id, PNG size, both checked against each other."""

import struct
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from helix_planner.figures import PNG_DPI

SVG = "{http://www.w3.org/2000/svg}"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def svg_groups(path: Path, prefix: str) -> list[ElementTree.Element]:
    """Every element whose id starts with `prefix` (matplotlib writes an artist's gid as its id)."""
    return [e for e in ElementTree.parse(path).getroot().iter() if e.get("id", "").startswith(prefix)]


def texts(element: ElementTree.Element) -> list[str]:
    return [t.text.strip() for t in element.iter(f"{SVG}text") if t.text and t.text.strip()]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header, after checking that it is one."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def assert_png_matches_svg(svg: Path) -> None:
    """The PNG beside `svg` is a valid PNG of the same picture: its pixels are the SVG's points at PNG_DPI."""
    root = ElementTree.parse(svg).getroot()
    points = (float(root.get("width", "0").removesuffix("pt")), float(root.get("height", "0").removesuffix("pt")))
    width, height = png_size(svg.with_suffix(".png"))
    assert 400 <= width <= 4000 and 200 <= height <= 8000, (width, height)
    assert abs(width - points[0] * PNG_DPI / 72) <= 2 and abs(height - points[1] * PNG_DPI / 72) <= 2
