"""er: a fixed-size memory replayed with every batch, tested in both settings (modality and scenario).

Modality setting: a class-balanced buffer on the synthetic stream. Scenario setting (at the end): a per-step
question memory on tiny msvqa-mini streams, compared with a `finetune` twin, and exact resume.
"""
import pytest
import torch

from mmcl.engine import build_method, run
from mmcl.methods.er import ER
from mmcl.settings import build_stream
from tests.harness import cfg_for, copy_weights, pair, resume_equals_uninterrupted, tiny_cfg, train_step


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


# -- scenario setting ---------------------------------------------------------------------
@pytest.mark.usefixtures("one_thread")
def test_er_stores_samples_within_budget_and_replays_them():
    stream, m, ft = pair({"name": "er", "buffer_size": 6, "replay_batch_size": 4})
    assert m.hp.replay_batch_size == 4 and build_method(stream, cfg_for({"name": "er"})).hp.replay_batch_size == 8
    batch = next(stream[0].train.batches(8))
    m.begin_experience(stream[0])
    ft.begin_experience(stream[0])
    assert len(m.memory) == 0 and torch.equal(m.training_loss(batch), ft.training_loss(batch))  # plain fine-tuning
    train_step(m, stream[0])
    mem = m.memory.groups[stream[0].name]
    assert len(mem["questions"]) == 6 and mem["images"].dtype == torch.uint8 and mem["images"].shape[0] == 6
    assert set(mem["questions"]) <= set(stream[0].train.questions) and len(mem["grounding"]) == 6
    copy_weights(m, ft)
    m.begin_experience(stream[1])
    ft.begin_experience(stream[1])
    batch = next(stream[1].train.batches(8))
    rng = m.rng.get_state()
    joint = m.setting.join(batch, m.memory.sample(4, m.rng))
    assert len(joint["questions"]) == 12 and joint["images"].shape[0] == 12
    assert set(joint["questions"][8:]) <= set(mem["questions"])
    m.rng.set_state(rng)
    loss = m.training_loss(batch)
    assert torch.allclose(loss, m.model.loss(joint))  # the CE over the joint batch, drawn with self.rng
    loss.backward()
    ft.training_loss(batch).backward()
    grads = [(p.grad, q.grad) for p, q in zip(m.trainable_parameters(), ft.trainable_parameters())]
    assert any(not torch.allclose(a, b) for a, b in grads if a is not None)  # replay changes the update
    m.after_experience(stream[1])
    assert [len(x["questions"]) for x in m.memory.groups.values()] == [3, 3]  # budget split over the steps
    assert m.memory.groups[stream[0].name]["questions"] == mem["questions"][:3]


@pytest.mark.usefixtures("one_thread")
def test_er_resume_equals_uninterrupted(tmp_path, monkeypatch):
    resume_equals_uninterrupted(tmp_path, monkeypatch, ER, {"name": "er", "buffer_size": 6, "replay_batch_size": 4})
