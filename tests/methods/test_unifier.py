"""unifier: vision representation expansion plus a vision consistency constraint (scenario setting only).

On tiny scenario streams: branches per scenario, VCC, no scenario id at test time, resume.
"""
from __future__ import annotations

import json

import torch

from mmcl import cli
from mmcl.config import load_config
from mmcl.settings import build_stream
from mmcl.engine import build_method, run
from mmcl.methods.unifier import Unifier
from tests.harness import interrupt_and_resume, scenario_cfg, train_step, write_cfg


def steps_cfg(**method):
    return scenario_cfg(method={"name": "unifier", **method}, train={"epochs": 1, "batch_size": 8, "lr": 3e-3})


def branch(m: Unifier, k: int) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.vre.branch_parameters(k)]


def test_second_step_adds_a_branch_and_leaves_the_first_untouched_vcc_has_gradients():
    cfg = steps_cfg()
    stream = build_stream(cfg)
    m = build_method(stream, cfg)
    tower = {n: p.detach().clone() for n, p in m.model.vision_tower.named_parameters() if ".vre." not in n}
    train_step(m, stream[0])
    assert m.vre.num_branches == 1 and m.branch_of == {stream[0].scenario: 0}
    first = branch(m, 0)
    proj = [p.detach().clone() for p in m.vre.projector_parameters()]
    m.experience = stream[1]
    m.before_experience(stream[1])
    assert m.vre.num_branches == 2 and m.current == 1
    trainable = {n for n, p in m.model.named_parameters() if p.requires_grad}
    assert not any(".vre.branches.0." in n for n in trainable) and any(".vre.branches.1." in n for n in trainable)
    assert any("multi_modal_projector" in n for n in trainable) and any("lora_" in n for n in trainable)
    # VCC is non-zero at step 2 and sends gradients to the current branch
    terms = m.loss_terms(next(stream[1].train.batches(8)))
    assert terms["vcc"].item() > 0
    terms["vcc"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.vre.branch_parameters(1)[:2])
    m.model.zero_grad(set_to_none=True)
    train_step(m, stream[1])
    assert all(torch.equal(a, b) for a, b in zip(first, branch(m, 0)))  # step-1 branch untouched
    assert any(not torch.equal(a, b) for a, b in zip(proj, m.vre.projector_parameters()))  # projector trained
    after = dict(m.model.vision_tower.named_parameters())
    assert all(torch.equal(v, after[n]) for n, v in tower.items())  # the tower's own weights frozen
    # a returning scenario reuses its branch
    m.experience = stream[0]
    m.before_experience(stream[0])
    assert m.vre.num_branches == 2 and m.current == 0


def test_answers_need_no_scenario_id_and_use_every_branch():
    cfg = steps_cfg()
    stream = build_stream(cfg)
    m = build_method(stream, cfg)
    train_step(m, stream[0])
    train_step(m, stream[1])
    batch = next(stream[2].test.batches(6))
    tagged = {**batch, "scenario": [stream[0].scenario] * 6}
    m.model.eval()
    inputs = m.model.batch(batch["images"], batch["questions"], batch["answers"])
    with torch.no_grad():
        ref = m.model(**inputs).logits
    answers = m.predict(batch, None)
    for k in (0, 1):  # which branch trains, which step is current: neither changes a test answer
        m.current = k
        m._set_trainable()
        m.experience = stream[k]
        assert m.predict(tagged, None) == answers
        with torch.no_grad():
            assert torch.equal(m.model(**inputs).logits, ref)
    with torch.no_grad():  # all branches run: silencing branch 0's projector columns changes the output
        for ad in m.vre.adapters:
            ad.proj[0].zero_()
        assert not torch.allclose(m.model(**inputs).logits, ref)


def test_vcc_only_distils_the_projector_output_of_the_previous_model():
    cfg = steps_cfg(vre=False, vcc=True, lam=1.0)
    stream = build_stream(cfg)
    m = build_method(stream, cfg)
    assert m.vre is None and not any(".vre." in n for n, _ in m.model.named_parameters())
    train_step(m, stream[0])
    m.experience = stream[1]
    m.before_experience(stream[1])
    assert m.prev_vision is not None and not any(p.requires_grad for p in m.prev_vision.parameters())
    batch = next(stream[1].train.batches(8))
    assert m.loss_terms(batch)["vcc"].item() < 1e-6  # the copy equals the model at the start of the step
    train_step(m, stream[1])
    m.before_experience(stream[2])
    with torch.no_grad():
        for p in m.model.projector.parameters():
            p.add_(0.05 * torch.randn_like(p))
    t = m.loss_terms(batch)
    assert t["vcc"].item() > 0 and t["vcc"].requires_grad


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    # in the middle of step 3 (2 batches per step): three branches exist
    state = interrupt_and_resume(tmp_path, monkeypatch, Unifier, steps_cfg(), 5)
    assert state["method"]["extra"]["vre"]["num_branches"] == 3
    final = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)
    assert final["method"]["extra"]["vre"]["num_branches"] == 4


def test_mmcl_run_4_steps_and_bundled_config(tmp_path):
    out = tmp_path / "run"
    cfg = steps_cfg()
    assert cli.main(["run", str(write_cfg(tmp_path / "c.yaml", cfg)), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "unifier" and len(m["matrices"]["vqa"]) == 4
    bundled = load_config("msvqa-mini-unifier")
    ft = load_config("msvqa-mini-finetune")
    assert bundled["method"]["vre"] and bundled["method"]["vcc"]
    assert all(bundled[k] == ft[k] for k in ("train", "vlm", "base", "eval", "stream"))


def test_switches_off_is_finetune_and_each_switch_changes_the_outcome(tmp_path):
    ft = run(scenario_cfg("finetune", train={"epochs": 1, "batch_size": 8, "lr": 3e-3}), str(tmp_path / "ft"))
    runs = {(v, c): run(steps_cfg(vre=v, vcc=c, lam=10.0), str(tmp_path / f"u{v}{c}"))
            for v, c in ((False, False), (True, False), (True, True))}
    assert runs[False, False]["matrices"] == ft["matrices"]  # no branches, no VCC: plain fine-tuning
    losses = {}
    for (v, c) in runs:
        events = [json.loads(ln) for ln in (tmp_path / f"u{v}{c}" / "events.jsonl").read_text().splitlines()]
        losses[v, c] = [e["loss"] for e in events if e["event"] == "train"]
    assert losses[True, False] != losses[False, False]  # VRE changes training
    assert losses[True, True] != losses[True, False]  # VCC changes training (from step 2 on)


def test_frozen_tower_control_trains_unifiers_budget_without_the_branches():
    """`finetune` with `vlm.train_vision=false` (the control row of the UNIFIER comparison) trains what UNIFIER
    trains outside its VRE parameters (projector, LoRA) and nothing of the vision tower; UNIFIER's only extra
    trainables are its current branch and the VRE projector. Without the switch, finetune trains the tower."""
    cfg = steps_cfg()
    stream = build_stream(cfg)
    uni = build_method(stream, cfg)
    uni.begin_experience(stream[0])
    frozen_cfg = scenario_cfg(method={"name": "finetune"}, vlm={"train_vision": False},
                              train={"epochs": 1, "batch_size": 8, "lr": 3e-3})
    ctrl = build_method(stream, frozen_cfg)
    ctrl.begin_experience(stream[0])
    names = lambda m: {n for n, p in m.model.named_parameters() if p.requires_grad}  # noqa: E731
    extra = names(uni) - names(ctrl)
    assert names(ctrl) <= names(uni) and extra and all(".vre." in n for n in extra)
    assert not any("vision_tower." in n for n in names(ctrl))
    tower = {n: p.detach().clone() for n, p in ctrl.model.vision_tower.named_parameters()}
    train_step(ctrl, stream[0])
    assert all(torch.equal(v, dict(ctrl.model.vision_tower.named_parameters())[n]) for n, v in tower.items())
    full = build_method(stream, scenario_cfg(method={"name": "finetune"}, train={"epochs": 1, "batch_size": 8, "lr": 3e-3}))
    assert any("vision_tower." in n and ".vre." not in n for n in names(full))  # the default trains the tower
