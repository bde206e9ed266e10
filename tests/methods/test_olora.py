"""olora: orthogonal LoRA subspaces, one adapter per step (scenario setting only, the one it supports).

On tiny scenario streams: an adapter per step, earlier ones frozen, orthogonality, no step id, resume.
"""
from __future__ import annotations

import json

import pytest
import torch

from mmcl import cli
from mmcl.config import load_config
from mmcl.settings import build_stream
from mmcl.engine import build_method
from mmcl.methods.olora import OLoRA
from tests.harness import interrupt_and_resume, run_experience, scenario_cfg, train_steps, write_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def steps_cfg(**method):
    return scenario_cfg(method={"name": "olora", **method}, train={"epochs": 1, "batch_size": 8, "lr": 3e-3})


def adapter(m: OLoRA, k: int) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.adapter_parameters(k)]


def test_second_step_adds_an_adapter_and_leaves_the_first_untouched():
    cfg = steps_cfg()
    stream = build_stream(cfg)
    m = build_method(stream, cfg)
    run_experience(m, stream[0], 2)
    assert m.num_adapters == 1 and m.current == 0
    first = adapter(m, 0)
    batch = next(stream[1].test.batches(4))
    inputs = m.model.batch(batch["images"], batch["questions"], batch["answers"])
    m.model.eval()
    with torch.no_grad():
        before = m.model(**inputs).logits
    m.experience = stream[1]
    m.before_experience(stream[1])
    assert m.num_adapters == 2 and m.current == 1
    with torch.no_grad():  # a new adapter starts with B = 0: the model's output is unchanged
        assert torch.equal(m.model(**inputs).logits, before)
    trainable = {n for n, p in m.model.named_parameters() if p.requires_grad and "lora_" in n}
    assert trainable and all(".step1." in n for n in trainable)
    assert {id(p) for p in m.adapter_parameters(1)} == {id(p) for p in m.model.lora_parameters() if p.requires_grad}
    m.model.train()
    train_steps(m, stream[1], 2)
    m.after_experience(stream[1])
    assert m.num_adapters == 2
    assert all(torch.equal(a, b) for a, b in zip(first, adapter(m, 0)))  # step-1 adapter bitwise unchanged
    assert any(not torch.equal(p, torch.zeros_like(p)) for p in m.adapter_parameters(1, "B"))  # step 2 trained
    names = {n for n, _ in m.model.named_parameters()}
    assert any(".lora_A.default." in n for n in names) and any(".lora_A.step1." in n for n in names)


def test_orthogonality_is_nonzero_and_only_moves_the_current_adapter():
    cfg = steps_cfg(lambda_1=0.5, lambda_2=0.1)
    stream = build_stream(cfg)
    m = build_method(stream, cfg)
    run_experience(m, stream[0], 1)
    assert m.orthogonality().item() == 0.0  # first step: no previous subspace
    m.experience = stream[1]
    m.before_experience(stream[1])
    orth = m.orthogonality()
    assert orth.item() > 0 and orth.requires_grad
    m.model.zero_grad(set_to_none=True)
    orth.backward()
    with_grad = {n for n, p in m.model.named_parameters() if p.grad is not None}
    assert with_grad and all(".lora_A.step1." in n for n in with_grad)
    assert all(p.grad.abs().sum() > 0 for p in m.adapter_parameters(1, "A"))
    # the term is the L1 of A_prev A_cur^T summed over layers, as written in the paper
    manual = sum((a0 @ a1.T).abs().sum() for a0, a1 in zip(m.adapter_parameters(0, "A"), m.adapter_parameters(1, "A")))
    assert torch.allclose(orth.detach(), manual.detach())
    # training with the penalty reduces the overlap; the task loss alone would not aim at it
    m.model.zero_grad(set_to_none=True)
    opt = torch.optim.Adam(m.param_groups(), lr=1e-2)
    start = orth.item()
    for _ in range(5):
        loss = m.orthogonality() * 0.5
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert m.orthogonality().item() < start
    t = m.loss_terms(next(stream[1].train.batches(8)))
    assert set(t) == {"task", "orth", "l2"} and t["l2"].item() > 0


def test_answers_use_every_adapter_without_a_step_id():
    cfg = steps_cfg()
    stream = build_stream(cfg)
    m = build_method(stream, cfg)
    run_experience(m, stream[0], 2)
    run_experience(m, stream[1], 2)
    batch = next(stream[2].test.batches(6))
    tagged = {**batch, "scenario": [stream[0].scenario] * 6, "step": [0] * 6}
    inputs = m.model.batch(batch["images"], batch["questions"], batch["answers"])
    m.model.eval()
    with torch.no_grad():
        ref = m.model(**inputs).logits
    answers = m.predict(batch, None)
    for k in (0, 1, 2):  # whichever step is current: the answers do not change
        m.experience = stream[k]
        assert m.predict(tagged, None) == answers
    for layer in m.lora_layers():
        assert list(layer.active_adapters) == ["default", "step1"]
    with torch.no_grad():  # both adapters contribute: silencing either one changes the output
        for k in (0, 1):
            saved = adapter(m, k)
            for p in m.adapter_parameters(k, "B"):
                p.zero_()
            assert not torch.allclose(m.model(**inputs).logits, ref)
            for p, s in zip(m.adapter_parameters(k), saved):
                p.copy_(s)
        assert torch.equal(m.model(**inputs).logits, ref)


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    # in the middle of step 3 (2 batches per step): three adapters exist
    state = interrupt_and_resume(tmp_path, monkeypatch, OLoRA, steps_cfg(), 5)
    assert state["method"]["extra"] == {"num_adapters": 3, "current": 2}
    assert any(".lora_A.default." in k for k in state["method"]["model"])  # frozen adapters are saved
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)["method"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=False)["method"]
    assert a["extra"]["num_adapters"] == 4 and a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_mmcl_run_4_steps_and_bundled_config(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["run", str(write_cfg(tmp_path / "c.yaml", steps_cfg())), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "olora" and len(m["matrices"]["vqa"]) == 4
    bundled, ft = load_config("msvqa-mini-olora"), load_config("msvqa-mini-finetune")
    assert bundled["method"]["name"] == "olora"
    assert all(bundled[k] == ft[k] for k in ("train", "vlm", "base", "eval", "stream"))


@pytest.mark.parametrize("lambdas,same", [({"lambda_1": 5.0}, False), ({"lambda_1": 0.0, "lambda_2": 0.0}, True)],
                         ids=["orthogonality", "terms-zeroed"])
def test_its_own_terms_change_what_training_does(lambdas, same):
    """The orthogonality term changes the new adapter's training; zeroed, olora trains as plain LoRA does."""
    cfg = steps_cfg(**lambdas)
    stream = build_stream(cfg)
    m = build_method(stream, cfg)
    run_experience(m, stream[0], 1)
    m.begin_experience(stream[1])
    start = m.snapshot()
    result = {}
    for name, loss_of in (("own", m.training_loss), ("plain", m.model.loss)):
        m.model.load_state_dict(start, strict=False)
        opt = torch.optim.Adam(m.param_groups(), lr=1e-2)
        for batch in list(stream[1].train.batches(8))[:3]:
            loss = loss_of(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        result[name] = [p.detach().clone() for p in m.adapter_parameters(1)]
    assert all(torch.equal(a, b) for a, b in zip(result["own"], result["plain"])) == same
