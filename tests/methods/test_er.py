"""er: a class-balanced fixed-size memory, replayed with every batch."""
import torch

from mmcl.buffers import ReplayBuffer
from mmcl.engine import build_method, run
from mmcl.data import build_stream
from mmcl.stream import TensorSet
from tests.conftest import tiny_cfg


def _set(classes, per_class, offset=0):
    y = torch.tensor([c for c in classes for _ in range(per_class)])
    return TensorSet({"x": torch.arange(len(y)).float()[:, None] + offset, "y": y})


def test_buffer_is_class_balanced_and_fixed_size():
    g = torch.Generator().manual_seed(0)
    buf = ReplayBuffer(10)
    buf.update(_set([0, 1], 50), g)
    assert len(buf) == 10 and torch.bincount(buf.data["y"]).tolist() == [5, 5]
    kept_0 = buf.data["x"][buf.data["y"] == 0][:3].clone()
    buf.update(_set([2, 3], 50, offset=1000), g)
    assert len(buf) == 10 and torch.bincount(buf.data["y"]).tolist() == [3, 3, 2, 2]
    # old classes shrink by dropping samples, never by replacing them
    assert torch.equal(buf.data["x"][buf.data["y"] == 0], kept_0)
    assert (buf.data["x"][buf.data["y"] >= 2] >= 1000).all()
    empty = ReplayBuffer(0)
    empty.update(_set([0], 5), g)
    assert len(empty) == 0


def test_buffer_is_reproducible_from_the_seed():
    cfg = tiny_cfg("er", method={"name": "er", "buffer_size": 12})
    stream = build_stream(cfg)
    a, b = build_method(stream, cfg), build_method(stream, cfg)
    for m in (a, b):
        m.after_experience(stream[0])
        m.after_experience(stream[1])
    assert torch.equal(a.buffer.data["x"], b.buffer.data["x"])


def test_replay_is_part_of_the_loss():
    cfg = tiny_cfg("er", method={"name": "er", "buffer_size": 12})
    stream = build_stream(cfg)
    m = build_method(stream, cfg)
    m.experience = stream[0]
    batch = stream[0].train.take(torch.arange(8))
    before = m.training_loss(batch).item()
    m.after_experience(stream[0])
    m.experience = stream[1]
    # same current batch, but now old-class samples from the memory join it
    seen = []
    orig = m.model.forward
    m.model.forward = lambda b: (seen.append(b["y"].clone()), orig(b))[1]
    m.training_loss(stream[1].train.take(torch.arange(8)))
    assert len(seen[0]) == 8 + cfg["train"]["batch_size"] - 4  # memory (12) smaller than a batch (16)
    assert set(seen[0][8:].tolist()) == {0, 1}
    assert before > 0


def test_er_beats_finetune(tmp_path):
    ft = run(tiny_cfg("finetune"), tmp_path / "ft")["summary"]["modality_agnostic"]
    er = run(tiny_cfg("er", method={"name": "er", "buffer_size": 30}), tmp_path / "er")["summary"]["modality_agnostic"]
    assert er["last_acc"] > ft["last_acc"] + 0.2
    assert er["bwt"] > ft["bwt"] + 0.2
