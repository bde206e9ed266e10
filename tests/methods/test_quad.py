"""quad: question-only replay with attention distillation (scenario setting only, the one it supports).

On tiny scenario streams: question-only memory, replay targets and attention maps of the previous model.
"""
from __future__ import annotations

import json

import pytest
import torch

from mmcl import cli
from mmcl.config import load_config
from mmcl.settings import build_stream
from mmcl.engine import build_method
from mmcl.methods.quad import BLOCKS, Quad, attention_blocks
from tests.harness import TINY_VLM, interrupt_and_resume, scenario_cfg, train_step, write_cfg


def steps_cfg(**method):
    return scenario_cfg(method={"name": "quad", "memory": 12, "replay_batch_size": 4, **method},
                        train={"epochs": 1, "batch_size": 8, "lr": 3e-3})


def test_memory_holds_questions_only_within_budget():
    cfg = steps_cfg()
    stream = build_stream(cfg)
    m = build_method(stream, cfg)
    train_step(m, stream[0])
    train_step(m, stream[1])
    assert list(m.memory.groups) == [stream[0].name, stream[1].name]
    qs, gs = m.stored_questions()
    assert len(qs) == 12 and all(len(x["questions"]) == 6 for x in m.memory.groups.values())
    assert all(isinstance(q, str) for q in qs) and set(qs) <= set(stream[0].train.questions + stream[1].train.questions)

    def tensors(x):
        if isinstance(x, torch.Tensor):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from tensors(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                yield from tensors(v)

    stored = m.extra_state()["memory"]
    assert all(t.dim() == 1 and t.dtype == torch.bool for t in tensors(stored))  # no images: text and flags
    assert all(set(cols) == {"questions", "grounding"} for cols in m.memory.groups.values())  # no answers
    # replay pairs use the current step's images
    assert m.replay is not None and len(m.replay["questions"]) == 12  # step 1 alone filled the memory at step 2
    assert set(m.replay["image_index"].tolist()) <= set(stream[1].train.image_index.tolist())


def test_distillation_targets_come_from_the_frozen_previous_model():
    cfg = steps_cfg()
    stream = build_stream(cfg)
    m = build_method(stream, cfg)
    batch = next(stream[0].train.batches(8))
    assert set(m.loss_terms(batch)) == {"task"}  # first step: plain cross-entropy
    train_step(m, stream[0])
    m.experience = stream[1]
    m.before_experience(stream[1])
    assert m.teacher is not m.model and not any(p.requires_grad for p in m.teacher.parameters())
    # the replay targets are the previous model's greedy answers to (stored question, current image)
    imgs = stream[1].train.images[m.replay["image_index"]]
    assert m.teacher.generate(imgs, m.replay["questions"], max_new_tokens=8) == m.replay["answers"]
    batch = next(stream[1].train.batches(8))
    state = m.rng.get_state()
    terms = m.loss_terms(batch)
    for b in BLOCKS:  # the student is still the teacher: zero attention distillation
        assert terms[b].abs().item() < 1e-5
    opt = torch.optim.Adam(m.param_groups(), lr=3e-3)
    for _ in range(3):
        loss = m.training_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    m.rng.set_state(state)
    teacher_before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    terms = m.loss_terms(batch)
    assert all(terms[b].item() > 0 for b in BLOCKS) and terms["replay"].item() > 0
    kd = sum(terms[b] for b in BLOCKS)
    kd.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.model.lora_parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in m.teacher.state_dict().items())  # frozen


def test_attention_maps_have_the_expected_shapes_and_blocks():
    cfg = steps_cfg()
    stream = build_stream(cfg)
    m = build_method(stream, cfg)
    batch = next(stream[0].train.batches(3))
    tokens = m.model.batch(batch["images"], batch["questions"], batch["answers"])
    _, att = m._forward(m.model, tokens, True)
    B, L = tokens["input_ids"].shape
    heads = max(1, TINY_VLM["lm_dim"] // 32)
    assert len(att) == TINY_VLM["lm_layers"] and all(a.shape == (B, heads, L, L) for a in att)
    image, text = attention_blocks(tokens["input_ids"], tokens["attention_mask"], m.model.image_token_id)
    assert (image.sum(1) == m.model.num_image_tokens).all()  # (32 / 16)^2 = 4 image tokens per sample
    assert not (image & text).any() and ((image | text) == tokens["attention_mask"].bool()).all()


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    # in the middle of step 3 (2 batches per step): teacher and replay set exist
    interrupt_and_resume(tmp_path, monkeypatch, Quad, steps_cfg(), 5)


def test_mmcl_run_4_steps_and_bundled_config(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["run", str(write_cfg(tmp_path / "c.yaml", steps_cfg())), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "quad" and len(m["matrices"]["grounding_f1"]) == 4
    bundled, ft = load_config("msvqa-mini-quad"), load_config("msvqa-mini-finetune")
    assert all(bundled[k] == ft[k] for k in ("train", "vlm", "base", "eval", "stream"))


def _second_step_training(m, stream, loss_of, steps=3):
    """From the same start of step 2 (weights and generator), `steps` Adam steps with `loss_of(batch)`; the
    trained parameters after them."""
    state, rng = m.snapshot(), m.rng.get_state()
    m.model.load_state_dict(state, strict=False)
    m.rng.set_state(rng)
    opt = torch.optim.Adam(m.param_groups(), lr=1e-2)
    for batch in list(stream[1].train.batches(8))[:steps]:
        loss = loss_of(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    out = {n: p.detach().clone() for n, p in m.model.named_parameters() if p.requires_grad}
    m.model.load_state_dict(state, strict=False)
    m.rng.set_state(rng)
    return out


@pytest.mark.parametrize("weights,same", [({}, False), ({"replay_weight": 0.0, "attn_weight": 0.0}, True)],
                         ids=["own-terms", "terms-zeroed"])
def test_its_own_terms_change_what_training_does(weights, same):
    """Replay and attention distillation change the trained parameters; zeroed, quad trains as fine-tuning does."""
    cfg = steps_cfg(**weights)
    stream = build_stream(cfg)
    m = build_method(stream, cfg)
    train_step(m, stream[0])
    m.begin_experience(stream[1])
    own = _second_step_training(m, stream, m.training_loss)
    plain = _second_step_training(m, stream, m.model.loss)  # the answer cross-entropy alone
    close = all(torch.allclose(own[n], plain[n], atol=1e-5) for n in own)
    assert close == same
