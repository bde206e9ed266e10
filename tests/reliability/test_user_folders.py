"""Class folders: nothing dropped silently (links that lead nowhere, empty classes), names in any script."""
import copy
import os

import numpy as np
import pytest
from PIL import Image

from mmcl.config import BASE, deep_merge, validate
from mmcl.data.user import anchor_text
from mmcl.data.user.layouts import id_kind
from mmcl.errors import ConfigError, DataError
from mmcl.settings import build_stream


def _cfg(root) -> dict:
    return validate(deep_merge(copy.deepcopy(BASE), {
        "benchmark": {"name": "user", "experiences": [{"modality": "image", "source": {"layout": "folders",
                                                                                       "root": str(root)}}]},
        "method": {"name": "finetune"}, "logging": {"progress": False}, "report": False}))


def _tree(root, classes=("cat", "dog"), n=4):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_a_symlink_loop_is_reported_not_dropped(tmp_path):
    _tree(tmp_path / "img")
    os.symlink(tmp_path / "img" / "cat" / "b.png", tmp_path / "img" / "cat" / "a.png")
    os.symlink(tmp_path / "img" / "cat" / "a.png", tmp_path / "img" / "cat" / "b.png")  # a -> b -> a
    with pytest.raises(DataError) as e:
        build_stream(_cfg(tmp_path / "img"))
    assert any("a.png: a symbolic link that leads nowhere" in ln for ln in e.value.lines)


def test_an_empty_class_folder_is_an_error(tmp_path):
    _tree(tmp_path / "img")
    (tmp_path / "img" / "cow").mkdir()
    with pytest.raises(ConfigError, match=r"class folder .*cow has no image file"):
        build_stream(_cfg(tmp_path / "img"))


def test_class_names_in_any_script_are_names():
    assert id_kind("犬") is None and id_kind("собака") is None
    assert id_kind("0042") == "numbers or ids" and id_kind("n02084071") == "WordNet ids"


@pytest.mark.parametrize("name,text", [("one", "an image of a one"), ("elephant", "an image of an elephant"),
                                       ("unicorn", "an image of a unicorn"), ("hour", "an image of an hour"),
                                       ("8", "an image of an 8"), ("dog", "an image of a dog")])
def test_the_article_follows_the_sound(name, text):
    assert anchor_text("an image of a {}", name) == text


def test_skipped_files_are_summarised_and_shown_in_the_report(tmp_path, capsys):
    from mmcl import cli
    from tests.harness import write_cfg

    _tree(tmp_path / "img")
    (tmp_path / "img" / "cat" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 8)
    cfg = _cfg(tmp_path / "img")
    cfg["data"]["on_error"] = "skip"
    cfg["report"] = True
    cfg["train"]["epochs"] = 1
    path = write_cfg(tmp_path / "c.yaml", cfg)
    assert cli.main(["run", str(path), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "1 input file left out (data.on_error=skip), first: " in err and "bad.png" in err
    page = (tmp_path / "r" / "report.html").read_text()
    assert "Input files left out" in page and "bad.png" in page
