"""lwf: distillation from a frozen copy of the previous model, tested in both settings (modality and scenario).

Modality setting: distillation over the previously seen classes' logits on the synthetic stream. Scenario
setting (at the end): distillation on answer tokens on tiny msvqa-mini streams, and exact resume.
"""
import io

import pytest
import torch
import torch.nn.functional as F

from mmcl.settings import build_stream
from mmcl.engine import build_method, run
from mmcl.methods.lwf import LwF
from tests.harness import copy_weights, pair, resume_equals_uninterrupted, tiny_cfg, train_step, train_steps


def _method(name="lwf", **hp):
    cfg = tiny_cfg(name, method={"name": name, **hp})
    stream = build_stream(cfg)
    torch.manual_seed(0)
    return build_method(stream, cfg), stream, cfg


def _train(m, exp, steps=20, loss=None):
    """A few Adam steps on `exp` with the method's own loss (or `loss`)."""
    opt = torch.optim.Adam(m.trainable_parameters(), lr=0.01)
    m.experience = exp
    for s in range(steps):
        batch = exp.train.take(torch.arange(s * 8, s * 8 + 8) % len(exp.train))
        out = loss(batch) if loss else m.training_loss(batch)
        opt.zero_grad()
        out.backward()
        opt.step()


def _ce(m, batch):
    return F.cross_entropy(m.model.logits(m.model(batch), m.num_seen), batch["y"])


@torch.no_grad()
def _logits(m, batch, n):
    return m.model.logits(m.model(batch), n)


def _grads(m, batch):
    m.model.zero_grad()
    m.training_loss(batch).backward()
    return torch.cat([p.grad.flatten() for p in m.trainable_parameters()])


def test_no_distillation_in_the_first_experience():
    m, stream, _ = _method()
    m.experience = stream[0]
    m.before_experience(stream[0])
    assert m.teacher is None and m.num_old == 0
    batch = stream[0].train.take(torch.arange(8))
    assert set(m.loss_terms(batch)) == {"ce"}
    assert torch.equal(m.training_loss(batch), _ce(m, batch))  # exactly fine-tuning's loss


def test_teacher_is_the_frozen_model_of_the_end_of_the_previous_experience():
    m, stream, _ = _method()
    m.experience = stream[0]
    m.before_experience(stream[0])
    _train(m, stream[0])
    n_old = stream.seen_after(0)
    batch = stream[1].train.take(torch.arange(16))
    at_end = _logits(m, batch, n_old)  # what the model answers when experience 1 ends
    m.experience = stream[1]
    m.before_experience(stream[1])
    assert m.num_old == n_old < m.num_seen
    assert m.teacher is not m.model and not any(p.requires_grad for p in m.teacher.parameters())
    teacher_params = {id(p) for p in m.teacher.parameters()}
    assert not teacher_params & {id(p) for p in m.trainable_parameters()}
    assert torch.equal(m.teacher_outputs(batch), at_end)
    _train(m, stream[1])
    # the student moved, the teacher did not
    assert not torch.allclose(_logits(m, batch, n_old), at_end, atol=1e-2)
    assert torch.equal(m.teacher_outputs(batch), at_end)
    # the next experience distils from the model of the end of experience 2, over its classes
    at_end_2 = _logits(m, batch, stream.seen_after(1))
    m.experience = stream[2]
    m.before_experience(stream[2])
    assert m.num_old == stream.seen_after(1)
    assert torch.equal(m.teacher_outputs(batch), at_end_2)


def test_distillation_term_is_active_and_changes_the_gradient():
    m, stream, _ = _method(alpha=1.0, temperature=2.0)
    m.experience = stream[0]
    _train(m, stream[0])
    m.experience = stream[1]
    m.before_experience(stream[1])
    batch = stream[1].train.take(torch.arange(16))
    # right after the copy the student is the teacher: nothing to distil yet
    assert m.loss_terms(batch)["kd"].abs().item() < 1e-6
    _train(m, stream[1], loss=lambda b: _ce(m, b))  # fine-tuning steps: the student drifts
    terms = m.loss_terms(batch)
    assert terms["kd"].item() > 1e-3
    # the term is KL(teacher || student) over the old classes at temperature T, weighted alpha * T^2
    T, k = 2.0, m.num_old
    with torch.no_grad():
        p_t = F.softmax(m.teacher_outputs(batch) / T, 1)
        log_s = F.log_softmax(_logits(m, batch, m.num_seen)[:, :k] / T, 1)
        kl = (p_t * (p_t.log() - log_s)).sum(1).mean()
    assert torch.allclose(terms["kd"], kl, atol=1e-6)
    assert torch.allclose(m.training_loss(batch), terms["ce"] + 1.0 * T**2 * terms["kd"], atol=1e-6)
    g = _grads(m, batch)
    m.hp.alpha = 0.0
    g_ft = _grads(m, batch)
    assert not torch.allclose(g, g_ft, atol=1e-6)
    m.model.zero_grad()
    _ce(m, batch).backward()  # with alpha = 0 the gradient is fine-tuning's
    assert torch.allclose(g_ft, torch.cat([p.grad.flatten() for p in m.trainable_parameters()]), atol=1e-7)


def test_extra_state_round_trips_mid_experience():
    a, stream, cfg = _method()
    a.experience = stream[0]
    _train(a, stream[0])
    a.experience = stream[1]
    a.before_experience(stream[1])
    _train(a, stream[1])  # mid-experience: teacher and student now differ
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)  # through bytes, like a checkpoint
    buf.seek(0)
    torch.manual_seed(123)
    fresh = build_method(stream, cfg)  # a different initial model; before_experience is not re-run
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    fresh.experience = stream[1]
    batch = stream[1].train.take(torch.arange(16))
    assert fresh.num_old == a.num_old
    assert torch.equal(fresh.teacher_outputs(batch), a.teacher_outputs(batch))
    assert torch.equal(fresh.training_loss(batch), a.training_loss(batch))
    assert torch.equal(_grads(fresh, batch), _grads(a, batch))
    # a state without a teacher (first experience) round-trips too
    b, _, _ = _method()
    b.experience = stream[0]
    b.before_experience(stream[0])
    fresh.load_state_dict(b.state_dict())
    assert fresh.teacher is None and fresh.num_old == 0


def test_old_class_logits_drift_less_than_under_finetune():
    lwf, stream, _ = _method(alpha=1.0, temperature=2.0)
    ft, _, _ = _method("finetune")
    lwf.experience = stream[0]
    _train(lwf, stream[0], steps=40)
    ft.model.load_state_dict(lwf.model.state_dict())  # both start experience 2 from the same model
    n_old = stream.seen_after(0)
    old_test = dict(stream[0].test.tensors)
    before = _logits(lwf, old_test, n_old)
    centred = lambda z: z - z.mean(1, keepdim=True)  # noqa: E731
    drift, shape_drift = {}, {}
    for name, m in (("lwf", lwf), ("finetune", ft)):
        m.experience = stream[1]
        m.before_experience(stream[1])
        _train(m, stream[1], steps=60)
        after = _logits(m, old_test, n_old)
        drift[name] = (after - before).abs().mean().item()
        # what the distillation preserves: the logits up to a common shift (the old-class softmax)
        shape_drift[name] = (centred(after) - centred(before)).abs().mean().item()
    assert drift["lwf"] < drift["finetune"], drift
    assert shape_drift["lwf"] < 0.5 * shape_drift["finetune"], shape_drift


def test_lwf_forgets_less_than_finetune(tmp_path):
    ft = run(tiny_cfg("finetune"), tmp_path / "ft")["summary"]["modality_agnostic"]
    lwf = run(tiny_cfg("lwf"), tmp_path / "lwf")["summary"]["modality_agnostic"]
    assert lwf["forgetting"] < ft["forgetting"] - 0.1
    assert lwf["last_acc"] > ft["last_acc"] + 0.05


# -- scenario setting ---------------------------------------------------------------------
def answer_kl(m, teacher, batch) -> float:
    """Mean over answer tokens of KL(teacher || model) at T = 1."""
    with torch.no_grad():
        tokens = m.model.batch(batch["images"], batch["questions"], batch["answers"])
        s, _ = m.model.answer_logits(tokens)
        t, _ = teacher.answer_logits(tokens)
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True).item()


@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
def test_lwf_resume_equals_uninterrupted(tmp_path, monkeypatch):
    resume_equals_uninterrupted(tmp_path, monkeypatch, LwF, {"name": "lwf"})
