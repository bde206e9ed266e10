"""ewc: a Fisher-weighted pull towards the previous experience's parameters, in both settings (modality, scenario).

The anchor is the model of the end of the previous experience. Modality setting: the Fisher, the penalty
and forgetting on the synthetic stream. Scenario setting (at the end): the Fisher over the LoRA / projector
parameters on tiny msvqa-mini streams, kept near the anchor against a `finetune` twin, and exact resume.
"""
import io

import pytest
import torch
import torch.nn.functional as F

from mmcl.settings import build_stream
from mmcl.engine import build_method, run
from mmcl.methods.ewc import EWC
from tests.harness import copy_weights, pair, resume_equals_uninterrupted, tiny_cfg, train_step, trained


# Overlapping classes: on the default, well separated synthetic stream the model becomes certain of
# every training sample within a few steps, and the empirical Fisher (squared gradients of the true
# labels' log-likelihood) vanishes with the gradients, leaving EWC nothing to protect.
HARD = {"name": "synthetic", "separation": 1.0}


def _cfg(name, **hp):
    return tiny_cfg(name, method={"name": name, **hp}, benchmark=HARD)


def _method(name="ewc", **hp):
    cfg = _cfg(name, **hp)
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


def _grads(m, loss):
    m.model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in m.model.named_parameters() if p.requires_grad}


def _params(m):
    return {n: p.detach().clone() for n, p in m.model.named_parameters() if p.requires_grad}


def _consolidated(**hp):
    """An ewc method trained on experience 1 and consolidated, then a few steps into experience 2."""
    m, stream, cfg = _method(**hp)
    _train(m, stream[0])
    m.after_experience(stream[0])
    _train(m, stream[1], steps=10)
    return m, stream, cfg


def test_no_penalty_in_the_first_experience():
    m, stream, _ = _method()
    m.experience = stream[0]
    batch = stream[0].train.take(torch.arange(8))
    assert m.fisher is None and m.penalty().item() == 0
    assert torch.equal(m.training_loss(batch), _ce(m, batch))  # exactly fine-tuning's loss
    _train(m, stream[0])
    assert m.fisher is None and m.penalty().item() == 0


def test_penalty_is_zero_at_the_anchor_and_grows_once_parameters_move():
    m, stream, _ = _method()
    _train(m, stream[0])
    m.after_experience(stream[0])
    m.experience = stream[1]
    batch = stream[1].train.take(torch.arange(8))
    assert all(torch.equal(m.anchor[n], p) for n, p in _params(m).items())
    assert m.penalty().item() == 0  # at the stored parameters
    _train(m, stream[1], steps=10)
    pen = m.penalty()
    assert pen.item() > 0
    lam = m.hp.ewc_lambda
    torch.testing.assert_close(m.training_loss(batch), _ce(m, batch) + lam / 2 * pen)
    # the penalty is lambda/2 * sum F (theta - theta*)^2, by hand
    by_hand = sum((m.fisher[n] * (p - m.anchor[n]) ** 2).sum() for n, p in _params(m).items())
    torch.testing.assert_close(pen, by_hand)


def test_penalty_changes_the_gradient_relative_to_finetuning():
    m, stream, cfg = _consolidated()
    batch = stream[1].train.take(torch.arange(8))
    ft = build_method(stream, _cfg("finetune"))
    ft.load_state_dict({**m.state_dict(), "extra": {}})  # same parameters, no penalty
    ft.experience = stream[1]
    g_ewc, g_ft = _grads(m, m.training_loss(batch)), _grads(ft, ft.training_loss(batch))
    assert any(not torch.allclose(g_ewc[n], g_ft[n]) for n in g_ewc)
    # the difference is exactly the penalty's gradient lambda * F * (theta - theta*)
    params = _params(m)
    for n in g_ewc:
        expected = m.hp.ewc_lambda * m.fisher[n] * (params[n] - m.anchor[n])
        torch.testing.assert_close(g_ewc[n] - g_ft[n], expected, rtol=1e-4, atol=1e-5)


def test_fisher_is_the_mean_squared_per_sample_gradient():
    m, stream, _ = _method()
    _train(m, stream[0])
    m.model.train()
    data = stream[0].train.subset(torch.arange(0, len(stream[0].train), 10))  # both classes
    n = stream.seen_after(0)
    fisher = m.compute_fisher(data, n)
    assert m.model.training  # the mode is restored
    names = [k for k, p in m.model.named_parameters() if p.requires_grad]
    assert sorted(fisher) == sorted(names)
    assert all((f >= 0).all() for f in fisher.values())
    assert sum(f.sum() for f in fisher.values()) > 0
    # by hand: one sample at a time, squared gradient of log p(y | x) over the classes seen so far
    expected = {k: torch.zeros_like(p) for k, p in _params(m).items()}
    for i in range(len(data)):
        s = data.take(torch.tensor([i]))
        m.model.zero_grad()
        F.log_softmax(m.model.logits(m.model(s), n), 1)[0, s["y"][0]].backward()
        for k, p in m.model.named_parameters():
            expected[k] += p.grad ** 2 / len(data)
    for k in fisher:
        torch.testing.assert_close(fisher[k], expected[k], rtol=1e-4, atol=1e-7)
    # deterministic: the same numbers every time
    again = m.compute_fisher(data, n)
    assert all(torch.equal(fisher[k], again[k]) for k in fisher)


def test_running_fisher_decays_with_gamma_and_anchor_is_the_latest_model():
    m, stream, _ = _method(gamma=0.5)
    _train(m, stream[0])
    m.after_experience(stream[0])
    f1 = {k: v.clone() for k, v in m.fisher.items()}
    _train(m, stream[1])
    new = m.compute_fisher(stream[1].train, stream.seen_after(1))
    m.after_experience(stream[1])
    for k in f1:
        torch.testing.assert_close(m.fisher[k], 0.5 * f1[k] + new[k])
    assert all(torch.equal(m.anchor[k], p) for k, p in _params(m).items())


def test_extra_state_round_trips():
    m, stream, cfg = _consolidated()
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh = build_method(stream, cfg)
    assert fresh.fisher is None
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    fresh.experience = stream[1]
    batch = stream[1].train.take(torch.arange(8))
    assert fresh.penalty().item() > 0
    assert torch.equal(fresh.penalty(), m.penalty())
    assert torch.equal(fresh.training_loss(batch), m.training_loss(batch))
    g_a, g_b = _grads(m, m.training_loss(batch)), _grads(fresh, fresh.training_loss(batch))
    assert all(torch.equal(g_a[k], g_b[k]) for k in g_a)


def test_parameters_stay_closer_to_the_consolidated_ones_than_under_finetuning():
    ewc, stream, _ = _method()
    torch.manual_seed(0)
    ft = build_method(stream, _cfg("finetune"))
    ft.load_state_dict({**ewc.state_dict(), "extra": {}})
    for m in (ewc, ft):  # identical first experience (no penalty yet)
        _train(m, stream[0])
    ewc.after_experience(stream[0])
    after_1 = _params(ewc)
    assert all(torch.equal(after_1[k], v) for k, v in _params(ft).items())
    for m in (ewc, ft):
        _train(m, stream[1], steps=40)
        _train(m, stream[2], steps=40)

    def moved(m, weighted):
        w = ewc.fisher if weighted else {k: 1.0 for k in after_1}
        return sum((w[k] * (p - after_1[k]) ** 2).sum() for k, p in _params(m).items()).item()

    assert moved(ewc, weighted=True) < 0.2 * moved(ft, weighted=True)  # what the penalty measures
    assert moved(ewc, weighted=False) < 0.2 * moved(ft, weighted=False)


def test_ewc_runs_in_the_engine_and_forgets_less_than_finetune(tmp_path):
    ft = run(_cfg("finetune"), tmp_path / "ft")["summary"]["modality_agnostic"]
    ewc = run(_cfg("ewc"), tmp_path / "ewc")["summary"]["modality_agnostic"]
    assert ewc["bwt"] > ft["bwt"] + 0.1


# -- scenario setting ---------------------------------------------------------------------
@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
def test_ewc_resume_equals_uninterrupted(tmp_path, monkeypatch):
    resume_equals_uninterrupted(tmp_path, monkeypatch, EWC, {"name": "ewc"})
