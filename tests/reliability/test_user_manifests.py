"""A manifest may list each file once: twice would put it in train and test, or in two classes."""
import copy

import numpy as np
import pytest
from PIL import Image

from mmcl.config import BASE, deep_merge, validate
from mmcl.errors import ConfigError
from mmcl.settings import build_stream


def _cfg(manifest) -> dict:
    return validate(deep_merge(copy.deepcopy(BASE), {
        "benchmark": {"name": "user", "experiences": [{"modality": "image", "source": {"layout": "manifest",
                                                                                       "manifest": str(manifest)}}]},
        "method": {"name": "finetune"}, "logging": {"progress": False}, "report": False}))


def _images(root):
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c", "d"):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"{name}.png")


@pytest.mark.parametrize("rows,first,second", [
    ("a.png,cat,train\nb.png,dog,train\nc.png,cat,test\nd.png,dog,test\na.png,cat,test\n", 2, 6),  # train and test
    ("a.png,cat,train\nb.png,dog,train\nc.png,cat,test\nd.png,dog,test\nb.png,cat,train\n", 3, 6),  # two classes
], ids=["train-and-test", "two-classes"])
def test_a_file_listed_twice_is_refused_naming_both_rows(tmp_path, rows, first, second):
    _images(tmp_path)
    m = tmp_path / "m.csv"
    m.write_text("path,label,split\n" + rows)
    with pytest.raises(ConfigError, match=rf"listed twice \({m}:{first} and {m}:{second}\)"):
        build_stream(_cfg(m))


def test_a_relative_path_leaving_the_data_folder_is_reported(tmp_path):
    from mmcl.errors import DataError

    (tmp_path / "data").mkdir()
    _images(tmp_path / "data")
    _images(tmp_path)  # files outside the data folder
    m = tmp_path / "data" / "m.csv"
    m.write_text("path,label,split\na.png,cat,train\nb.png,dog,train\nc.png,cat,test\nd.png,dog,test\n"
                 "../a.png,cat,train\n")
    with pytest.raises(DataError) as e:
        build_stream(_cfg(m))
    assert any("relative path '../a.png' leads outside" in ln for ln in e.value.lines)


def test_a_path_given_as_a_source_name_suggests_the_mapping(tmp_path):
    cfg = copy.deepcopy(BASE)
    cfg = deep_merge(cfg, {"benchmark": {"name": "user", "experiences": [{"modality": "image", "source": "/data/pics"}]},
                           "method": {"name": "finetune"}})
    with pytest.raises(ConfigError, match=r"looks like a path.*source: \{root: /data/pics\}"):
        build_stream(validate(cfg))
