"""Boxes as answer text: the one format msvqa-mini writes (model output is parsed, strictly, by
`mmcl.scenario.answers.parse_boxes`, the parser the grounding metric uses).

Format (what ground-truth answers look like): ``[x1,y1,x2,y2]`` with integers 0-100, the box's
left, top, right and bottom edges as a percentage of the image width / height (origin top-left);
several boxes are joined by ``;`` with no spaces, in reading order (top edge, then left edge), e.g.
``[12,30,25,44];[50,60,70,81]``.

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
