"""VQA exact match and grounding F1, checked against hand-computed values."""
from __future__ import annotations

import pytest

from mmcl.data.msvqa import format_boxes
from mmcl.scenario import (box_iou, exact_match, f1_score, match_boxes, normalize_answer, parse_boxes,
                           score, score_by)


@pytest.mark.parametrize("text, norm", [
    ("Two.", "2"),
    ("  The RED car! ", "red car"),
    ("an apple", "apple"),
    ("twenty", "20"),
    ("none", "0"),
    ("1,000", "1000"),
    ("3.5", "3.5"),
    ("end.", "end"),
    ("yes, it is", "yes it is"),
    ("light_blue", "light blue"),
    ("", ""),
    (None, ""),
])
def test_normalize_answer(text, norm):
    assert normalize_answer(text) == norm


def test_exact_match():
    assert exact_match("Two", "2") == 1.0
    assert exact_match("the boat", "Boat.") == 1.0
    assert exact_match("boats", "boat") == 0.0
    assert exact_match("red car", ["car", "red car"]) == 1.0
    assert exact_match("", "0") == 0.0


def test_parse_boxes_well_formed():
    assert parse_boxes("[10,20,30,40]") == [(10, 20, 30, 40)]
    assert parse_boxes("[10,20,30,40];[0,0,100,100]") == [(10, 20, 30, 40), (0, 0, 100, 100)]
    # what a WordPiece tokenizer decodes to: spaces everywhere, a trailing separator
    assert parse_boxes(" [ 10, 20, 30, 40 ] ; [ 1.5, 2, 3, 4 ] ;") == [(10, 20, 30, 40), (1.5, 2, 3, 4)]


@pytest.mark.parametrize("text", [
    "", "none", "[10,20,30]", "[10,20,30,40", "10,20,30,40", "[10,20,30,40,50]", "[a,b,c,d]",
    "[10,20,30,40] and more", "[10,20,30,40];[1,2,3", "[30,20,10,40]", "[10,20,30,140]", "[-1,0,5,5]",
    "[[10,20,30,40]]", "[10;20;30;40]", None, 42, ["[1,2,3,4]"],
])
def test_parse_boxes_malformed_gives_no_boxes(text):
    assert parse_boxes(text) == []


def test_the_metric_parses_what_the_data_writes():
    boxes = [(10.4, 20.6, 30, 40), (0, 0, 100, 100)]
    text = format_boxes(boxes)  # msvqa-mini's writer: integers, reading order
    assert text == "[0,0,100,100];[10,21,30,40]"
    assert parse_boxes(text) == [(0, 0, 100, 100), (10, 21, 30, 40)]


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((5, 5, 5, 5), (5, 5, 5, 5)) == 0.0  # empty union


def test_match_boxes_is_greedy_one_to_one():
    ref = [(0, 0, 10, 10), (20, 0, 30, 10)]
    # two predictions on the same object: only one may match it
    assert match_boxes([(0, 0, 10, 10), (1, 0, 10, 10)], ref) == 1
    assert match_boxes([(0, 0, 10, 10), (20, 0, 30, 10)], ref) == 2
    # IoU exactly 0.5 counts, just below does not: (0,0,10,10) vs (0,0,10,5) has IoU 0.5
    assert match_boxes([(0, 0, 10, 5)], [(0, 0, 10, 10)]) == 1
    assert match_boxes([(0, 0, 10, 4.9)], [(0, 0, 10, 10)]) == 0
    # greedy takes the best pair first: p0-r0 (IoU 0.9), then p1 can only take r1
    ref2 = [(0, 0, 10, 10), (0, 0, 10, 8)]
    pred2 = [(0, 0, 10, 9), (0, 0, 10, 7)]
    assert match_boxes(pred2, ref2) == 2
    assert match_boxes([], ref) == 0 and match_boxes(pred2, []) == 0


def test_f1_score():
    assert f1_score(0, 0, 0) == 1.0
    assert f1_score(0, 3, 0) == 0.0
    assert f1_score(0, 0, 3) == 0.0
    assert f1_score(2, 4, 2) == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_score_hand_computed():
    preds = ["Two", "yes", "red", "[0,0,10,10];[50,50,60,60]", "[20,0,30,10]", "[garbage", "blue"]
    answers = ["2", "no", "Red.", "[0,0,10,10]", "[20,0,30,10];[40,40,50,50]", "[0,0,5,5]", "[0,0,1,1]"]
    grounding = [False, False, False, True, True, True, True]
    s = score(preds, answers, grounding)
    # VQA over the 3 non-grounding questions: 2 / 3 correct
    assert s["vqa"] == pytest.approx(2 / 3)
    # boxes: tp = 1 + 1 + 0 + 0 = 2; predicted = 2 + 1 + 0 (malformed) + 0 (text) = 3; reference = 1 + 2 + 1 + 1 = 5
    p, r = 2 / 3, 2 / 5
    assert s["grounding_f1"] == pytest.approx(2 * p * r / (p + r))


def test_score_reference_boxes_given_explicitly():
    s = score(["[0,0,10,10]"], ["where is it"], [True], boxes=[[(0, 0, 10, 10)]])
    assert s == {"vqa": None, "grounding_f1": 1.0}


def test_score_without_a_kind_is_none_and_values_in_unit_interval():
    assert score(["a"], ["a"], [False]) == {"vqa": 1.0, "grounding_f1": None}
    assert score([], [], []) == {"vqa": None, "grounding_f1": None}
    with pytest.raises(ValueError):
        score(["a"], ["a", "b"], [False, False])


def test_score_by_scenario():
    keys = ["underwater", "indoor", "underwater", "indoor"]
    res = score_by(keys, ["2", "[0,0,10,10]", "3", "x"], ["2", "[0,0,10,10]", "2", "[1,1,2,2]"],
                   [False, True, False, True])
    assert list(res) == ["underwater", "indoor"]
    assert res["underwater"] == {"vqa": 0.5, "grounding_f1": None}
    # indoor: tp 1, predicted 1, reference 2 -> P 1, R 0.5, F1 2/3
    assert res["indoor"]["vqa"] is None
    assert res["indoor"]["grounding_f1"] == pytest.approx(2 / 3)
