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
