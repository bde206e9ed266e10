"""`er`, `ewc` and `lwf` in the scenario setting on tiny streams: what each adds to fine-tuning, and exact resume."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmcl.config import load_config
from mmcl.settings import build_stream
from mmcl.engine import Interrupted, build_method, run
from mmcl.methods.er import ER
from mmcl.methods.ewc import EWC
from mmcl.methods.lwf import LwF
from mmcl.sweep import search_space
from tests.conftest import metrics_without_timing, train_steps
from tests.scenario.test_scenario_engine import scenario_cfg, sigterm_at_loss, train_step

pytestmark = pytest.mark.usefixtures("one_thread")

TWO_STEPS = {"name": "msvqa-mini", "train_images": 5, "test_images": 5, "questions_per_image": 3,
             "scenarios": ["high-altitude", "underwater"]}


def cfg_for(method: dict, **sections) -> dict:
    """Two steps of 15 questions, batches of 8 (2 per step), short answers at evaluation."""
    return scenario_cfg(benchmark=TWO_STEPS, method=method, train={"epochs": 1, "batch_size": 8, "lr": 3e-3},
                        eval={"batch_size": 32, "max_new_tokens": 4}, **sections)


def pair(method: dict):
    """The method and a `finetune` twin built from the same config (same base model, same LoRA init)."""
    cfg = cfg_for(method)
    stream = build_stream(cfg)
    return stream, build_method(stream, cfg), build_method(stream, cfg_for({"name": "finetune"}))


def copy_weights(src, dst) -> None:
    dst.model.load_state_dict(src.model_state(), strict=False)


def trained(m) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in m.model.named_parameters() if p.requires_grad}


def resume_equals_uninterrupted(tmp_path, monkeypatch, cls, method: dict) -> None:
    cfg = cfg_for(method)
    run(cfg, str(tmp_path / "full"))
    original = sigterm_at_loss(monkeypatch, cls, 3)  # first batch of step 2: memory / Fisher / teacher in use
    with pytest.raises(Interrupted):
        run(cfg, str(tmp_path / "cut"))
    state = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=False)
    assert state["position"] == {"exp": 1, "epoch": 0, "step": 1}
    monkeypatch.setattr(cls, "training_loss", original)
    run(cfg, str(tmp_path / "cut"), resume=True)
    assert metrics_without_timing(tmp_path / "cut") == metrics_without_timing(tmp_path / "full")


# -- er ------------------------------------------------------------------------------------
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


def test_er_resume_equals_uninterrupted(tmp_path, monkeypatch):
    resume_equals_uninterrupted(tmp_path, monkeypatch, ER, {"name": "er", "buffer_size": 6, "replay_batch_size": 4})


# -- ewc -----------------------------------------------------------------------------------
def test_ewc_fisher_is_nonzero_and_the_penalty_holds_parameters_near_the_anchor():
    stream, m, ft = pair({"name": "ewc", "ewc_lambda": 1e6})
    assert m.hp.fisher_batch_size >= 1
    train_step(m, stream[0])
    names = set(trained(m))
    assert set(m.fisher) == names == set(m.anchor)
    assert any("lora_" in n for n in names) and any("multi_modal_projector" in n for n in names)
    total = sum(f.sum() for f in m.fisher.values())
    assert total > 0 and all((f >= 0).all() for f in m.fisher.values())
    assert m.penalty().item() == 0.0  # at the anchor
    copy_weights(m, ft)
    anchor, fisher = dict(m.anchor), dict(m.fisher)
    for x in (m, ft):
        torch.manual_seed(0)
        train_step(x, stream[1])
    assert any(not torch.equal(m.anchor[n], anchor[n]) for n in anchor)  # consolidated again after step 2
    moved_ewc = {n: p - anchor[n] for n, p in trained(m).items()}
    moved_ft = {n: p - anchor[n] for n, p in trained(ft).items()}
    weighted = lambda d: sum((fisher[n] * v ** 2).sum() for n, v in d.items()).item()  # noqa: E731
    assert 0 < weighted(moved_ewc) < 0.5 * weighted(moved_ft)
    assert sum(v.pow(2).sum() for v in moved_ewc.values()) < sum(v.pow(2).sum() for v in moved_ft.values())


def test_ewc_resume_equals_uninterrupted(tmp_path, monkeypatch):
    resume_equals_uninterrupted(tmp_path, monkeypatch, EWC, {"name": "ewc"})


# -- lwf -----------------------------------------------------------------------------------
def answer_kl(m, teacher, batch) -> float:
    """Mean over answer tokens of KL(teacher || model) at T = 1."""
    with torch.no_grad():
        tokens = m.model.batch(batch["images"], batch["questions"], batch["answers"])
        s, _ = m.model.answer_logits(tokens)
        t, _ = teacher.answer_logits(tokens)
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True).item()


def test_lwf_distils_the_previous_model_on_answer_tokens():
    stream, m, ft = pair({"name": "lwf", "alpha": 100.0})
    batch = next(stream[0].train.batches(8))
    m.begin_experience(stream[0])
    assert set(m.loss_terms(batch)) == {"ce"}  # first step: no teacher
    train_step(m, stream[0])
    copy_weights(m, ft)
    m.experience = ft.experience = stream[1]
    m.before_experience(stream[1])
    assert m.teacher is not m.model and not any(p.requires_grad for p in m.teacher.parameters())
    batch = next(stream[1].train.batches(8))
    terms = m.loss_terms(batch)
    assert abs(terms["kd"].item()) < 1e-6  # the student is the teacher
    assert torch.allclose(terms["ce"], ft.training_loss(batch))
    for x in (ft, m):  # 8 steps (4 epochs) at a high learning rate, from the same weights on the same batches
        train_steps(x, stream[1], 8, torch.optim.Adam(x.param_groups(), lr=1e-2))
    # on the questions it distils (the step's training data) the student stays closer to the teacher
    ft_kl, lwf_kl = (answer_kl(x, m.teacher, next(stream[1].train.batches(15))) for x in (ft, m))
    assert ft_kl > 0 and lwf_kl < 0.5 * ft_kl
    t = m.loss_terms(batch)
    assert t["kd"].item() > 0
    assert torch.allclose(m.training_loss(batch), t["ce"] + 100.0 * 2.0 ** 2 * t["kd"])


def test_lwf_resume_equals_uninterrupted(tmp_path, monkeypatch):
    resume_equals_uninterrupted(tmp_path, monkeypatch, LwF, {"name": "lwf"})


# -- configs and sweep -----------------------------------------------------------------------
def test_bundled_configs_and_scenario_search_spaces():
    ft = load_config("msvqa-mini-finetune")
    for name in ("er", "ewc", "lwf"):
        cfg = load_config(f"msvqa-mini-{name}")
        assert cfg["method"]["name"] == name
        assert all(cfg[k] == ft[k] for k in ("setting", "benchmark", "train", "vlm", "base", "eval", "stream"))
    assert search_space("msvqa-mini-ewc", []) == {"ewc_lambda": EWC.search_space["scenario"]["ewc_lambda"]}
    assert search_space("msvqa-mini-lwf", []) == {"alpha": [0.1, 1.0, 10.0]}
    assert search_space("mm5-ewc", []) == {"ewc_lambda": [1e4, 1e5, 1e6]}  # modality: unchanged
    assert search_space("mm5-lwf", []) == {"alpha": [0.5, 1.0, 2.0]}
    assert load_config("mm5-er")["method"]["replay_batch_size"] == 0  # modality default unchanged
