"""er: a fixed-size memory (class-balanced, or per step), replayed with every batch."""
import torch

from mmcl.engine import build_method, run
from mmcl.settings import build_stream
from tests.conftest import tiny_cfg


def test_buffer_is_reproducible_from_the_seed():
    cfg = tiny_cfg("er", method={"name": "er", "buffer_size": 12})
    stream = build_stream(cfg)
    a, b = build_method(stream, cfg), build_method(stream, cfg)
    for m in (a, b):
        m.after_experience(stream[0])
        m.after_experience(stream[1])
    assert torch.equal(a.memory.data["x"], b.memory.data["x"])


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
