"""Boxes as answer text: the one format msvqa-mini writes and the forgiving parser for model output.

Format (what ground-truth answers look like): ``[x1,y1,x2,y2]`` with integers 0-100, the box's
left, top, right and bottom edges as a percentage of the image width / height (origin top-left);
several boxes are joined by ``;`` with no spaces, in reading order (top edge, then left edge), e.g.
``[12,30,25,44];[50,60,70,81]``.

``parse_boxes`` reads that and anything close to it (spaces, parentheses, decimals, a trailing
period, surrounding words); it never raises: text without a well-formed box gives ``[]``.
"""
from __future__ import annotations

import math
import re

Box = tuple[float, float, float, float]

_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"[\[(]" + ",".join([_NUM] * 4) + r"[\])]")


def format_box(box) -> str:
    """One box (x1, y1, x2, y2) in 0-100 coordinates -> '[x1,y1,x2,y2]' with rounded integers."""
    x1, y1, x2, y2 = (min(100, max(0, int(math.floor(v + 0.5)))) for v in box)
    return f"[{x1},{y1},{x2},{y2}]"


def format_boxes(boxes) -> str:
    """Boxes in 0-100 coordinates -> the answer text, in reading order ('' for no boxes)."""
    return ";".join(format_box(b) for b in sorted(boxes, key=lambda b: (round(b[1]), round(b[0]), b[2], b[3])))


def parse_boxes(text) -> list[Box]:
    """Every well-formed box in `text`, as floats clipped to 0-100 with x1<=x2, y1<=y2.

    Boxes with zero width or height after clipping are dropped. Never raises: non-strings and text
    without a box give []."""
    if not isinstance(text, str):
        return []
    out = []
    for m in _BOX.finditer(text):
        try:
            v = [min(100.0, max(0.0, float(g))) for g in m.groups()]
        except (ValueError, OverflowError):  # pragma: no cover - the regex only admits numbers
            continue
        x1, x2 = sorted((v[0], v[2]))
        y1, y2 = sorted((v[1], v[3]))
        if x2 > x1 and y2 > y1:
            out.append((x1, y1, x2, y2))
    return out


def parse_box(text) -> Box | None:
    """The first well-formed box in `text`, or None."""
    boxes = parse_boxes(text)
    return boxes[0] if boxes else None


def is_box_answer(text) -> bool:
    """True when `text` is nothing but boxes in the answer format (separators and spaces allowed)."""
    if not isinstance(text, str) or not text.strip():
        return False
    rest = _BOX.sub("", text)
    return bool(_BOX.search(text)) and not rest.replace(";", "").strip(" ,.")


def pixel_box_to_percent(box, width: int, height: int) -> Box:
    """(x1, y1, x2, y2) pixel edges -> 0-100 coordinates rounded to 2 decimals."""
    x1, y1, x2, y2 = box
    return (round(100.0 * x1 / width, 2), round(100.0 * y1 / height, 2),
            round(100.0 * x2 / width, 2), round(100.0 * y2 / height, 2))
