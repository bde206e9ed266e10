"""Short-answer normalisation for VQA exact match, and the text format of grounding boxes.

Normalisation follows the spirit of the VQA evaluation script: lowercase, punctuation and
articles dropped, number words written as digits, so that "Two." and "2" match.

Grounding answers are boxes as text: `[x1,y1,x2,y2]` with coordinates normalised to 0-100
(x to the right, y down, x1 <= x2, y1 <= y2), several boxes separated by `;`. Model output
is parsed strictly: if any part of the string is not a well-formed box, the whole answer
yields no boxes (a miss when scored), and parsing never raises.
"""
from __future__ import annotations

import re

Box = tuple[float, float, float, float]

ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {
    # "none" -> "0" as the VQA evaluation script does: the usual answer to "how many" when absent.
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11",
    "twelve": "12", "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16",
    "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20",
}
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d)")
# any punctuation (underscore included) except a decimal point between two digits
_PUNCT = re.compile(r"(?!(?<=\d)\.(?=\d))(?:[^\w\s]|_)")
_NUM = r"[-+]?\d+(?:\.\d+)?"
_BOX = re.compile(r"\s*\[\s*({n})\s*,\s*({n})\s*,\s*({n})\s*,\s*({n})\s*\]\s*".format(n=_NUM))


def normalize_answer(text: object) -> str:
    """The canonical form of a short answer: lowercase words, no punctuation or articles, digits for numbers."""
    if not isinstance(text, str):
        return ""
    s = _THOUSANDS_COMMA.sub("", text.lower().strip())
    s = _PUNCT.sub(" ", s)
    words = [NUMBER_WORDS.get(w, w) for w in s.split()]
    return " ".join(w for w in words if w not in ARTICLES)


def parse_boxes(text: object) -> list[Box]:
    """Boxes in `[x1,y1,x2,y2]; [...]` text (0-100 coordinates); [] if anything in it is malformed."""
    if not isinstance(text, str):
        return []
    boxes: list[Box] = []
    for part in text.split(";"):
        if not part.strip():
            continue  # tolerate a trailing or doubled separator
        m = _BOX.fullmatch(part)
        if m is None:
            return []
        x1, y1, x2, y2 = (float(v) for v in m.groups())
        if not (0.0 <= x1 <= x2 <= 100.0 and 0.0 <= y1 <= y2 <= 100.0):
            return []
        boxes.append((x1, y1, x2, y2))
    return boxes


