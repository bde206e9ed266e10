"""The `animals` benchmark: real Animal-MNIST silhouettes, frozen encoders, cached features."""
import numpy as np
import pytest
import torch

from mmcl.config import load_config
from mmcl.data import animals
from mmcl.settings import build_stream
from mmcl.engine import build_method, run, seed_everything

TINY = ["benchmark.train_per_class=40", "benchmark.test_per_class=20", "benchmark.image_size=64",
        "logging.progress=false", "report=false"]


def test_reads_the_packaged_dataset():
    x, y = animals.load_animal_mnist()
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10


def test_split_is_fixed_and_disjoint():
    _, y = animals.load_animal_mnist()
    tr, te = animals.split_indices(y, 800, 200, seed=0)
    tr2, _ = animals.split_indices(y, 800, 200, seed=0)
    for c in range(10):
        assert len(tr[c]) == 800 and len(te[c]) == 200
        assert not set(tr[c]) & set(te[c]) and (y[tr[c]] == c).all()
        assert np.array_equal(tr[c], tr2[c])


def test_stream_features_anchors_and_cache(monkeypatch):
    cfg = load_config("animals-finetune", TINY)
    s = build_stream(cfg)
    assert len(s) == 5 and s.class_names[:2] == ["bear", "bird"] and s[0].name == "bear+bird"
    assert s[0].train["x"].shape == (80, 1280) and s[0].test["x"].shape == (40, 1280)
    assert torch.allclose(s.anchors.norm(dim=1), torch.ones(10), atol=1e-4) and s.anchors.shape == (10, 384)
    assert torch.allclose(s[0].train["zs"].norm(dim=1), torch.ones(80), atol=1e-4)
    # a second build reads the cache: the frozen encoder is not run again
    from mmcl.models import encoders

    monkeypatch.setattr(encoders, "images_to_features", lambda *a, **k: pytest.fail("encoder re-run"))
    s2 = build_stream(cfg)
    assert torch.equal(s2[3].train["x"], s[3].train["x"])
    # a random class order is seeded and recorded
    r = build_stream(load_config("animals-finetune", TINY + ["stream.order=random", "seed=3"]))
    assert sorted(r.class_names) == sorted(s.class_names) and r.class_names != s.class_names
    assert r.info["class_order"] == r.class_names


def test_untrained_model_is_the_zero_shot_map():
    cfg = load_config("animals-zeroshot", TINY)
    s = build_stream(cfg)
    seed_everything(0)
    m = build_method(s, cfg)
    batch = s[0].test.take(torch.arange(10))
    assert torch.allclose(m.model(batch), batch["zs"], atol=1e-5)


def test_er_beats_finetune_on_animals(tmp_path):
    """The acceptance comparison of the foundation issue, on a reduced split for speed."""
    ft = run(load_config("animals-finetune", TINY), tmp_path / "ft")["summary"]["modality_agnostic"]
    er = run(load_config("animals-er", TINY + ["method.buffer_size=100"]), tmp_path / "er")["summary"]["modality_agnostic"]
    jt = run(load_config("animals-joint", TINY), tmp_path / "jt")["summary"]["modality_agnostic"]
    assert er["last_acc"] > ft["last_acc"] + 0.2 and er["bwt"] > ft["bwt"]
    assert jt["last_acc"] >= er["last_acc"] - 0.05
