"""VQA score and grounding F1 for the scenario setting (DESIGN.md sections 3 and 4).

- VQA score: normalised exact match (`answers.normalize_answer`), averaged over the
  non-grounding questions.
- Grounding F1: for each grounding question, predicted and reference boxes are matched
  greedily one-to-one (highest IoU first) at IoU >= 0.5; true positives, predicted boxes and
  reference boxes are summed over all grounding questions (micro average) and
  F1 = 2PR / (P + R) with P = tp / predicted, R = tp / reference.

Both are in [0, 1] and are the cells of the `vqa` and `grounding_f1` matrices. A set with
no question of a kind gets None for that kind, never a made-up 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Iterable, Optional, Sequence

from mmcl.scenario.answers import Box, normalize_answer, parse_boxes

IOU_THRESHOLD = 0.5


def exact_match(prediction: str, answer: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals the (or any acceptable) normalised answer, else 0.0."""
    refs = [answer] if isinstance(answer, str) else list(answer)
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(r) for r in refs))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two `(x1, y1, x2, y2)` boxes; 0 when the union is empty."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(pred: Sequence[Box], ref: Sequence[Box], threshold: float = IOU_THRESHOLD) -> int:
    """Number of greedy one-to-one matches (highest IoU first) with IoU >= `threshold`."""
    pairs = sorted(((box_iou(p, r), i, j) for i, p in enumerate(pred) for j, r in enumerate(ref)),
                   key=lambda t: (-t[0], t[1], t[2]))
    used_p, used_r, tp = set(), set(), 0
    for iou, i, j in pairs:
        if iou < threshold:
            break
        if i in used_p or j in used_r:
            continue
        used_p.add(i)
        used_r.add(j)
        tp += 1
    return tp


def f1_score(tp: int, n_pred: int, n_ref: int) -> float:
    """F1 from box counts. Nothing predicted and nothing to find is perfect (1.0)."""
    if n_pred == 0 and n_ref == 0:
        return 1.0
    if tp == 0:
        return 0.0
    p, r = tp / n_pred, tp / n_ref
    return 2 * p * r / (p + r)


@dataclass
class ScenarioScorer:
    """Accumulates predictions of one evaluation set (a step, or a scenario) into its VQA score and grounding F1."""

    n_vqa: int = 0
    correct: float = 0.0
    n_grounding: int = 0
    tp: int = 0
    n_pred_boxes: int = 0
    n_ref_boxes: int = 0
    unparsed: int = 0  # grounding answers that are not empty yet hold no well-formed box list (scored as no box)

    def add(self, prediction: str, answer: str | Sequence[str], grounding: bool = False,
            boxes: Optional[Sequence[Sequence[float]]] = None) -> None:
        """Score one answer. For grounding, reference boxes are `boxes` if given, else parsed from `answer`."""
        if not grounding:
            self.n_vqa += 1
            self.correct += exact_match(prediction, answer)
            return
        ref = [tuple(map(float, b)) for b in boxes] if boxes is not None else parse_boxes(answer)
        pred = parse_boxes(prediction)
        if not pred and str(prediction).strip():
            self.unparsed += 1
        self.n_grounding += 1
        self.tp += match_boxes(pred, ref)
        self.n_pred_boxes += len(pred)
        self.n_ref_boxes += len(ref)

    def update(self, predictions: Iterable[str], answers: Iterable, grounding: Iterable[bool],
               boxes: Optional[Iterable] = None) -> "ScenarioScorer":
        preds, refs, kinds = list(predictions), list(answers), list(grounding)
        bxs = list(boxes) if boxes is not None else [None] * len(preds)
        if not (len(preds) == len(refs) == len(kinds) == len(bxs)):
            raise ValueError(f"lengths differ: {len(preds)} predictions, {len(refs)} answers, "
                             f"{len(kinds)} grounding flags, {len(bxs)} box lists")
        for p, a, g, b in zip(preds, refs, kinds, bxs):
            self.add(p, a, bool(g), b)
        return self

    @property
    def vqa(self) -> float | None:
        return self.correct / self.n_vqa if self.n_vqa else None

    @property
    def grounding_f1(self) -> float | None:
        return f1_score(self.tp, self.n_pred_boxes, self.n_ref_boxes) if self.n_grounding else None

    def result(self) -> dict[str, float | None]:
        """`{"vqa": ..., "grounding_f1": ...}`, the two matrix cells of this set."""
        return {"vqa": self.vqa, "grounding_f1": self.grounding_f1}


def score(predictions: Sequence[str], answers: Sequence, grounding: Sequence[bool],
          boxes: Optional[Sequence] = None) -> dict[str, float | None]:
    """VQA score and grounding F1 of one evaluation set: `{"vqa": ..., "grounding_f1": ...}`."""
    return ScenarioScorer().update(predictions, answers, grounding, boxes).result()


def score_by(keys: Sequence[Hashable], predictions: Sequence[str], answers: Sequence,
             grounding: Sequence[bool], boxes: Optional[Sequence] = None) -> dict[Hashable, dict[str, float | None]]:
    """`score` per group (e.g. keys = each sample's scenario or step), in order of first appearance."""
    n = len(predictions)
    if len(keys) != n:
        raise ValueError(f"{len(keys)} keys for {n} predictions")
    bxs = list(boxes) if boxes is not None else [None] * n
    scorers: dict[Hashable, ScenarioScorer] = {}
    for k, p, a, g, b in zip(keys, predictions, answers, grounding, bxs):
        scorers.setdefault(k, ScenarioScorer()).add(p, a, bool(g), b)
    return {k: s.result() for k, s in scorers.items()}
