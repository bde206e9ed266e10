"""Visual question samples, read from and written to the LLaVA-style JSON used by MLLM continual-learning benchmarks.

A file is a JSON list (or JSON Lines, one entry per line, for ``.jsonl``) of entries::

    {"id": "uw-0001",
     "image": "images/underwater/0001.png",            # relative to the image root
     "conversations": [{"from": "human", "value": "<image>\\nHow many fish are there?"},
                       {"from": "gpt", "value": "3"}],
     "scenario": "underwater",                          # optional
     "boxes": [{"label": "fish", "box": [10.5, 20, 30, 41.2]}, ...],   # optional, 0-100 coordinates
     "question_type": "count",                          # optional
     "split": "train"}                                  # optional

Each human/gpt pair of turns becomes one `Sample` (ids of later pairs get ``#k``). The ``<image>``
placeholder is removed from the question. ``boxes`` items may also be bare ``[x1, y1, x2, y2]``
lists; ``from`` may also be ``user`` / ``assistant``. Anything else malformed, and an image that is
not on disk, raises `LlavaFormatError` with one line naming the file and the entry.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from mmcl.data.msvqa.boxes import is_box_answer
from mmcl.results import atomic_write_text

QUESTION_TYPES = ("count", "exist", "category", "color", "grounding")
_HUMAN = ("human", "user")
_GPT = ("gpt", "assistant")


class LlavaFormatError(ValueError):
    """A LLaVA-format file or entry that cannot be used; the message is one line naming file and entry."""


class ObjectBox(NamedTuple):
    """An annotated object: its category and box (x1, y1, x2, y2) in 0-100 image coordinates."""

    label: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Sample:
    """One visual question: the decoded record every msvqa reader returns."""

    id: str
    image: str  # absolute path of the image file
    question: str  # without the <image> placeholder
    answer: str
    scenario: str | None = None
    boxes: tuple[ObjectBox, ...] = ()  # all annotated objects in the image
    qtype: str | None = None  # one of QUESTION_TYPES when known
    split: str | None = None

    @property
    def is_grounding(self) -> bool:
        """Grounding question (answered with boxes) rather than a short-answer one."""
        return self.qtype == "grounding" if self.qtype else is_box_answer(self.answer)

    def to_dict(self) -> dict:
        return {"id": self.id, "image": self.image, "question": self.question, "answer": self.answer,
                "scenario": self.scenario, "boxes": [{"label": b.label, "box": list(b.box)} for b in self.boxes],
                "qtype": self.qtype, "split": self.split}


def _strip_image_token(text: str) -> str:
    return text.replace("<image>\n", "").replace("\n<image>", "").replace("<image>", "").strip()


def _boxes(raw, fail) -> tuple[ObjectBox, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        fail(f"'boxes' must be a list, got {type(raw).__name__}")
    out = []
    for k, item in enumerate(raw):
        label = ""
        if isinstance(item, dict):
            label = item.get("label", item.get("category", ""))
            coords = item.get("box", item.get("bbox"))
            if not isinstance(label, str):
                fail(f"boxes[{k}]: 'label' must be a string, got {label!r:.40}")
        else:
            coords = item
        if (not isinstance(coords, (list, tuple)) or len(coords) != 4
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in coords)):
            fail(f"boxes[{k}]: expected 4 numbers [x1, y1, x2, y2], got {coords!r:.60}")
        x1, y1, x2, y2 = (float(c) for c in coords)
        if not (0 <= x1 <= x2 <= 100 and 0 <= y1 <= y2 <= 100):
            fail(f"boxes[{k}]: expected 0 <= x1 <= x2 <= 100 and 0 <= y1 <= y2 <= 100, got {list(coords)}")
        out.append(ObjectBox(label, (x1, y1, x2, y2)))
    return tuple(out)


def _entries(path: Path) -> list:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LlavaFormatError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LlavaFormatError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    if path.suffix == ".jsonl":
        entries = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise LlavaFormatError(f"{path}: line {n}: not valid JSON ({e})") from None
        return entries
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LlavaFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise LlavaFormatError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    return data


def read_llava_json(path, image_root=None, scenario: str | None = None, split: str | None = None,
                    check_images: bool = True) -> list[Sample]:
    """Samples of a LLaVA-format file (``.json`` list or ``.jsonl``).

    Images resolve against `image_root` (default: the file's folder). `scenario` / `split` fill in
    entries that carry none. Raises `LlavaFormatError` (one line: file, entry, reason).
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    out: list[Sample] = []
    for i, e in enumerate(_entries(path)):
        eid = e.get("id") if isinstance(e, dict) else None

        def fail(reason: str, i=i, eid=eid):
            where = f"entry {i}" + (f" (id {eid!r})" if eid is not None else "")
            raise LlavaFormatError(f"{path}: {where}: {reason}".replace("\n", " "))

        if not isinstance(e, dict):
            fail(f"expected a JSON object, got {type(e).__name__}")
        if eid is not None and not isinstance(eid, (str, int)):
            fail(f"'id' must be a string or integer, got {type(eid).__name__}")
        image = e.get("image")
        if not isinstance(image, str) or not image:
            fail("missing 'image' (a relative path to the picture)")
        img = Path(image) if os.path.isabs(image) else root / image
        if check_images and not img.is_file():
            fail(f"image {image!r} not found under {root}")
        conv = e.get("conversations")
        if not isinstance(conv, list) or not conv:
            fail("missing 'conversations' (a non-empty list of {'from', 'value'} turns)")
        for k, t in enumerate(conv):
            if not isinstance(t, dict) or not isinstance(t.get("value"), str) or t.get("from") not in _HUMAN + _GPT:
                fail(f"conversations[{k}]: expected {{'from': 'human'|'gpt', 'value': text}}, got {t!r:.60}")
        if len(conv) % 2:
            fail(f"conversations has {len(conv)} turns; expected human/gpt pairs")
        sc = e.get("scenario", scenario)
        if sc is not None and not isinstance(sc, str):
            fail(f"'scenario' must be a string, got {sc!r:.40}")
        qtype = e.get("question_type")
        if qtype is not None and qtype not in QUESTION_TYPES:
            fail(f"'question_type' must be one of {', '.join(QUESTION_TYPES)}, got {qtype!r:.40}")
        sp = e.get("split", split)
        boxes = _boxes(e.get("boxes"), fail)
        base = str(eid) if eid is not None else str(i)
        for k in range(0, len(conv), 2):
            q, a = conv[k], conv[k + 1]
            if q["from"] not in _HUMAN or a["from"] not in _GPT:
                fail(f"conversations[{k}:{k + 2}]: expected a human turn then a gpt turn")
            out.append(Sample(base if k == 0 else f"{base}#{k // 2}", str(img.resolve()), _strip_image_token(q["value"]),
                              a["value"].strip(), sc, boxes, qtype, sp))
    return out


def write_llava_json(samples, path, image_root=None) -> int:
    """Write `samples` as a LLaVA-format JSON list (one entry per sample); return the entry count.

    Image paths are written relative to `image_root` (default: the file's folder), in POSIX form.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    root_abs = root.resolve()
    entries = []
    for s in samples:
        img = Path(s.image)
        rel = Path(os.path.relpath(img.resolve() if img.is_absolute() else (root / img).resolve(), root_abs))
        e = {"id": s.id, "image": rel.as_posix(),
             "conversations": [{"from": "human", "value": "<image>\n" + s.question},
                               {"from": "gpt", "value": s.answer}]}
        if s.scenario is not None:
            e["scenario"] = s.scenario
        if s.boxes:
            e["boxes"] = [{"label": b.label, "box": [round(float(c), 2) for c in b.box]} for b in s.boxes]
        if s.qtype is not None:
            e["question_type"] = s.qtype
        if s.split is not None:
            e["split"] = s.split
        entries.append(e)
    atomic_write_text(path, json.dumps(entries, indent=1, ensure_ascii=False) + "\n")
    return len(entries)
