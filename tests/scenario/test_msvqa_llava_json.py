"""LLaVA-format JSON reader / writer and the box answer format of msvqa-mini."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmcl.data.msvqa import (LlavaFormatError, ObjectBox, Sample, format_boxes, is_box_answer, read_llava_json,
                             write_llava_json)
from mmcl.scenario import parse_boxes


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


@pytest.fixture()
def fixture_dir(tmp_path):
    """A small MSVQA-like copy in the LLaVA layout: data.json beside an images/ folder."""
    _png(tmp_path / "images" / "a.png")
    _png(tmp_path / "images" / "b.png")
    entries = [
        {"id": "uw-1", "image": "images/a.png", "scenario": "underwater",
         "conversations": [{"from": "human", "value": "<image>\nHow many fish are there?"},
                           {"from": "gpt", "value": "2"},
                           {"from": "human", "value": "Where are the fish?"},
                           {"from": "gpt", "value": "[10,10,20,20];[50,50,60,70]"}],
         "boxes": [{"label": "fish", "box": [10, 10, 20, 20]}, {"label": "fish", "box": [50, 50, 60, 70]}]},
        {"id": 7, "image": "images/b.png", "question_type": "exist",
         "conversations": [{"from": "user", "value": "Is there a mug in the image?\n<image>"},
                           {"from": "assistant", "value": "no"}],
         "boxes": [[1, 2, 3, 4.5]]},
    ]
    (tmp_path / "data.json").write_text(json.dumps(entries))
    return tmp_path


def test_reader_happy_path(fixture_dir):
    s = read_llava_json(fixture_dir / "data.json", scenario="indoor", split="test")
    assert [x.id for x in s] == ["uw-1", "uw-1#1", "7"]
    a, g, b = s
    assert a.question == "How many fish are there?" and a.answer == "2"
    assert a.scenario == "underwater" and b.scenario == "indoor"  # the entry's own field wins over the default
    assert a.split == "test" and a.qtype is None and b.qtype == "exist"
    assert Path(a.image) == (fixture_dir / "images" / "a.png").resolve() and Path(a.image).is_file()
    assert a.boxes == (ObjectBox("fish", (10.0, 10.0, 20.0, 20.0)), ObjectBox("fish", (50.0, 50.0, 60.0, 70.0)))
    assert b.boxes == (ObjectBox("", (1.0, 2.0, 3.0, 4.5)),)
    assert b.question == "Is there a mug in the image?"
    assert g.is_grounding and not a.is_grounding and not b.is_grounding


def test_reader_jsonl_and_image_root(tmp_path):
    _png(tmp_path / "pics" / "x.png")
    line = {"image": "x.png", "conversations": [{"from": "human", "value": "<image>\nWhat color is the car?"},
                                                {"from": "gpt", "value": "red"}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(line) + "\n\n" + json.dumps(line) + "\n")
    s = read_llava_json(tmp_path / "d.jsonl", image_root=tmp_path / "pics")
    assert [x.id for x in s] == ["0", "1"] and s[0].answer == "red"


def test_writer_round_trip(fixture_dir, tmp_path):
    s = read_llava_json(fixture_dir / "data.json")
    out = tmp_path / "export" / "out.json"
    assert write_llava_json(s, out, image_root=fixture_dir) == 3
    entries = json.loads(out.read_text())
    assert entries[0]["image"] == "images/a.png"
    assert entries[0]["conversations"][0]["value"].startswith("<image>\n")
    back = read_llava_json(out, image_root=fixture_dir)
    assert back == s


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    ('{"a": 1}', "expected a JSON list"),
    ('[1]', "entry 0: expected a JSON object"),
    ('[{"id": "q", "conversations": []}]', "entry 0 (id 'q'): missing 'image'"),
    ('[{"id": "q", "image": "images/missing.png", "conversations": []}]', "entry 0 (id 'q'): image 'images/missing.png' not found"),
    ('[{"image": "images/a.png"}]', "entry 0: missing 'conversations'"),
    ('[{"image": "images/a.png", "conversations": [{"from": "human", "value": "q"}]}]', "expected human/gpt pairs"),
    ('[{"image": "images/a.png", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}]',
     "a human turn then a gpt turn"),
    ('[{"image": "images/a.png", "conversations": [{"from": "robot", "value": "q"}, {"from": "gpt", "value": "a"}]}]',
     "conversations[0]"),
    ('[{"image": "images/a.png", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], '
     '"boxes": [[1, 2, 3]]}]', "boxes[0]: expected 4 numbers"),
    ('[{"image": "images/a.png", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], '
     '"boxes": [{"label": "x", "box": [50, 2, 30, 4]}]}]', "boxes[0]: expected 0 <= x1 <= x2 <= 100"),
    ('[{"image": "images/a.png", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], '
     '"question_type": "riddle"}]', "'question_type' must be one of"),
])
def test_reader_errors_name_file_and_entry(fixture_dir, content, needle):
    bad = fixture_dir / "bad.json"
    bad.write_text(content)
    with pytest.raises(LlavaFormatError) as e:
        read_llava_json(bad)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(bad)) and needle in msg, msg


def test_reader_missing_file(tmp_path):
    with pytest.raises(LlavaFormatError, match="file not found"):
        read_llava_json(tmp_path / "nope.json")


def test_box_format_and_parser():
    boxes = [(50.2, 60.0, 70.4, 81.0), (12.0, 30.0, 25.0, 44.6)]
    text = format_boxes(boxes)
    assert text == "[12,30,25,45];[50,60,70,81]"  # reading order, integers
    assert parse_boxes(text) == [(12.0, 30.0, 25.0, 45.0), (50.0, 60.0, 70.0, 81.0)]
    assert is_box_answer(text) and not is_box_answer("3") and not is_box_answer("the box is [1,2,3,4]")
    # malformed answers (parsed by the metric's parser, tested in test_metrics.py): never raise
    for junk in ["", "[1,2,3]", "[1,2,3,4,5]", "[a,b,c,d]", "[[[", None, 42, ["[1,2,3,4]"], "1,2,3,4"]:
        assert parse_boxes(junk) == []


def test_sample_to_dict():
    s = Sample("i", "/x.png", "q", "a", "indoor", (ObjectBox("mug", (1.0, 2.0, 3.0, 4.0)),), "count", "train")
    d = s.to_dict()
    assert d["boxes"] == [{"label": "mug", "box": [1.0, 2.0, 3.0, 4.0]}] and d["qtype"] == "count"
    json.dumps(d)
