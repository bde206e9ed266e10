"""The scenario setting (DESIGN.md section 3): answer normalisation, box parsing and the VQA / grounding metrics."""
from mmcl.scenario.answers import normalize_answer, parse_boxes
from mmcl.scenario.metrics import ScenarioScorer, box_iou, exact_match, f1_score, match_boxes, score, score_by

__all__ = ["normalize_answer", "parse_boxes", "exact_match", "box_iou", "match_boxes",
           "f1_score", "ScenarioScorer", "score", "score_by"]
