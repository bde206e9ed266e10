"""comm: per-modality prompts, self-regularisation, relevance-weighted aggregation, re-alignment."""
import io

import pytest
import torch
import torch.nn.functional as F

from mmcl.settings import build_stream
from mmcl.engine import build_method, run
from mmcl.methods.comm import pooled_tokens
from mmcl.stream import MODALITIES, TensorSet
from tests.harness import tiny_token_cfg

FAST = {"realign_per_class": 32, "realign_epochs": 3, "relevance_epochs": 10}  # smaller re-training budgets: tests stay quick
RETURNING = {"modalities": ["image", "image", "audio"]}  # image, then image again (new classes), then audio


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(name="comm", bench=None, **hp):
    method = {"name": name, **(FAST if name == "comm" else {}), **hp}
    return tiny_token_cfg(name, method=method, **({"benchmark": bench} if bench else {}))


def _method(bench=None, seed=0, **hp):
    cfg = _cfg(bench=bench, **hp)
    stream = build_stream(cfg)
    torch.manual_seed(seed)
    return build_method(stream, cfg), stream, cfg


def _train(m, exp, steps=15, loss=None):
    """A few Adam steps on `exp` with the method's loss (or `loss`), like the engine: only what gets gradients moves."""
    opt = torch.optim.Adam(m.param_groups(), lr=0.01)
    m.experience = exp
    for s in range(steps):
        batch = exp.train.take(torch.arange(s * 8, s * 8 + 8) % len(exp.train))
        out = loss(batch) if loss else m.training_loss(batch)
        opt.zero_grad(set_to_none=True)
        out.backward()
        opt.step()


def _ce(m, batch):
    return F.cross_entropy(m.model.logits(m.model(batch, prompts=m._own_prompts(m.model, batch, batch["m"])),
                                          m.num_seen), batch["y"])


def _experience(m, exp, steps=15):
    m.experience = exp
    m.before_experience(exp)
    _train(m, exp, steps)
    m.after_experience(exp)


def _params(m):
    return {k: v.detach().clone() for k, v in m.model.named_parameters() if not k.startswith("backbone.")}


def _tensors(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)


def test_relevance_learns_modalities_from_statistics_only():
    m, stream, _ = _method()
    n_train = len(stream[0].train)
    for exp in stream:
        m.experience = exp
        m.train_relevance(exp)
        exp.train = TensorSet.empty()  # gone: later updates of R can only use the stored statistics
    # the method keeps per-modality means and covariances, never samples
    state = m.extra_state()["modality_stats"]
    D = stream[0].test["tokens"].shape[-1]
    assert sorted(state["mean"]) == [MODALITIES.index(e.modality) for e in stream] and state["count"][0] == n_train
    assert all(v.shape == (D,) for v in state["mean"].values())
    assert all(v.shape == (D, D) for v in state["cov"].values())
    for exp in stream:
        batch = dict(exp.test.tensors)
        w = m.relevance(batch)
        torch.testing.assert_close(w.sum(1), torch.ones(len(w)))
        assert (w >= 0).all()
        acc = (w.argmax(1) == MODALITIES.index(exp.modality)).float().mean().item()
        assert acc >= 0.9, (exp.modality, acc)
        del batch["m"]  # the agnostic choice is made without the modality id
        assert torch.equal(m.infer_modality(batch), w.argmax(1))
    # restricted to a subset, the weights live on it and still sum to 1
    w = m.relevance(dict(stream[2].test.tensors), candidates=[0, 2])
    assert (w[:, [1, 3, 4]] == 0).all() and torch.allclose(w.sum(1), torch.ones(len(w)))


def test_prompts_blend_earlier_modalities_by_relevance_and_not_without_inter_modal():
    m, stream, cfg = _method()
    for exp in stream:
        m.experience = exp
        m.train_relevance(exp)
    blend = m.hp.blend
    img, aud, dep = (MODALITIES.index(e.modality) for e in stream)
    batch = dict(stream[2].test.tensors)
    own = batch["m"]
    w = m.prompt_weights(m.model, batch, own)
    torch.testing.assert_close(w.sum(1), torch.ones(len(w)))
    assert torch.allclose(w[:, dep], torch.full((len(w),), 1 - blend))
    r = m.relevance(batch, candidates=[img, aud])  # R's weights over the earlier modalities
    torch.testing.assert_close(w[:, [img, aud]], blend * r[:, [img, aud]])
    assert (w[:, [img, aud]] > 1e-3).any()
    P = torch.stack(list(m.model.comm_prompts)).detach()
    by_hand = (1 - blend) * P[dep] + blend * (r[:, img, None, None] * P[img] + r[:, aud, None, None] * P[aud])
    torch.testing.assert_close(m._own_prompts(m.model, batch, own), by_hand)
    # the first modality has no earlier one: its own prompts only
    first = dict(stream[0].test.tensors)
    assert torch.equal(m.prompt_weights(m.model, first, first["m"]), F.one_hot(first["m"], len(MODALITIES)).float())
    # inter_modal off: the same model uses its own modality's prompts only, and predicts differently
    off = build_method(stream, _cfg(inter_modal=False))
    off.load_state_dict(m.state_dict())
    off.experience = stream[2]
    assert torch.equal(off.prompt_weights(off.model, batch, own), F.one_hot(own, len(MODALITIES)).float())
    assert torch.equal(off._own_prompts(off.model, batch, own), P[dep].expand(len(own), -1, -1))
    assert not torch.allclose(off.predict(batch, 6, True), m.predict(batch, 6, True))


def test_returning_modality_starts_from_its_prompts_and_is_merged_after():
    m, stream, _ = _method(RETURNING)
    img, aud = MODALITIES.index("image"), MODALITIES.index("audio")
    _experience(m, stream[0])
    before = m.model.comm_prompts[img].detach().clone()
    others = {j: m.model.comm_prompts[j].detach().clone() for j in range(len(MODALITIES)) if j != img}
    m.experience = stream[1]
    m.before_experience(stream[1])
    assert torch.equal(m.prev_prompt, before) and torch.equal(m.model.comm_prompts[img], before)  # starts from them
    _train(m, stream[1])
    trained = m.model.comm_prompts[img].detach().clone()
    assert not torch.allclose(trained, before)
    assert all(torch.equal(m.model.comm_prompts[j], p) for j, p in others.items())  # other modalities untouched
    m.after_experience(stream[1])
    merge = m.hp.merge
    torch.testing.assert_close(m.model.comm_prompts[img].detach(), merge * before + (1 - merge) * trained)
    assert m.prev_prompt is None
    # training the next modality (audio) leaves image's prompts alone although they enter its blend
    merged = m.model.comm_prompts[img].detach().clone()
    m.experience = stream[2]
    m.before_experience(stream[2])
    assert m.prev_prompt is None  # audio is new: nothing to merge
    _train(m, stream[2])
    assert torch.equal(m.model.comm_prompts[img], merged)
    assert not torch.allclose(m.model.comm_prompts[aud], others[aud])
    # without self-regularisation the returning prompts are not merged
    off, _, _ = _method(RETURNING, self_reg=False)
    _experience(off, stream[0])
    off.experience = stream[1]
    off.before_experience(stream[1])
    assert off.prev_prompt is None and "shift" not in off.loss_terms(stream[1].train.take(torch.arange(8)))
    _train(off, stream[1])
    trained = off.model.comm_prompts[img].detach().clone()
    off.after_experience(stream[1])
    assert torch.equal(off.model.comm_prompts[img], trained)


def _shift_is_zero_then_grows(m, exp):
    m.experience = exp
    m.before_experience(exp)
    batch = exp.train.take(torch.arange(16))
    t = m.loss_terms(batch)
    assert t["shift"].item() == 0  # the previous model is an exact copy
    _train(m, exp, steps=10, loss=lambda b: _ce(m, b))  # plain fine-tuning: the representation drifts
    t = m.loss_terms(batch)
    assert t["shift"].item() > 1e-4
    torch.testing.assert_close(m.training_loss(batch), t["ce"] + m.hp.shift_weight * t["shift"])
    m.model.zero_grad()
    t["shift"].backward()
    g = {k: p.grad for k, p in m.model.named_parameters() if p.grad is not None}
    assert g["head.weight"].abs().sum() > 0
    return g


def test_shift_penalty_is_zero_after_the_copy_and_grows_with_drift():
    m, stream, _ = _method()
    m.experience = stream[0]
    m.before_experience(stream[0])
    assert m.teacher is None and set(m.loss_terms(stream[0].train.take(torch.arange(8)))) == {"ce"}
    _train(m, stream[0])
    m.after_experience(stream[0])
    # a new modality: the previous model differs only in the shared head (its entry parts are the current ones)
    g = _shift_is_zero_then_grows(m, stream[1])
    assert set(g) == {"head.weight", "head.bias"} | {k for k in g if k.startswith(("input_proj.audio", "comm_prompts"))}
    assert all(not k.startswith(("backbone.", "comm_relevance", "input_proj.image")) for k in g)
    # a returning modality: the previous model's full forward, so its own prompts are pulled back too
    r, rstream, _ = _method(RETURNING)
    _experience(r, rstream[0])
    g = _shift_is_zero_then_grows(r, rstream[1])
    assert g[f"comm_prompts.{MODALITIES.index('image')}"].abs().sum() > 0
    assert g["input_proj.image.weight"].abs().sum() > 0
    # without self-regularisation: no previous model, no penalty
    off, _, _ = _method(self_reg=False)
    _experience(off, stream[0])
    off.experience = stream[1]
    off.before_experience(stream[1])
    batch = stream[1].train.take(torch.arange(8))
    assert set(off.loss_terms(batch)) == {"ce"} and torch.equal(off.training_loss(batch), _ce(off, batch))


@torch.no_grad()
def _agnostic_acc(m, exp, n):
    return (m.predict(dict(exp.test.tensors), n).argmax(1) == exp.test["y"]).float().mean().item()


def test_realignment_trains_only_the_head_from_statistics():
    m, stream, _ = _method()
    _experience(m, stream[0])
    m.experience = stream[1]
    m.before_experience(stream[1])
    _train(m, stream[1], steps=30, loss=lambda b: _ce(m, b))  # fine-tuning: old classes lose the argmax
    m.train_relevance(stream[1])
    old_acc = _agnostic_acc(m, stream[0], stream.seen_after(1))
    stream[0].train = TensorSet.empty()  # the old data are gone for good
    before = _params(m)
    m.realign_step(stream[1])
    after = _params(m)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight", "head.bias"}
    # what is stored: a mean and a covariance of [f, zs] per class seen, and no sample anywhere
    st = m.class_stats
    W, A = m.model.width, stream[1].train["zs"].shape[1]
    assert st.classes == list(range(stream.seen_after(1)))
    assert all(st.mean[c].shape == (W + A,) and st.cov[c].shape == (W + A, W + A) for c in st.classes)
    sizes = {len(e.train) for e in stream} | {len(stream[1].train)}
    state = m.extra_state()
    stored = [t for k in ("class_stats", "modality_stats") for t in _tensors(state[k])]
    assert stored and not any(t.dim() and t.shape[0] in sizes for t in stored)
    assert _agnostic_acc(m, stream[0], stream.seen_after(1)) > old_acc + 0.3  # the head is re-aligned
    # with realign off, after_experience leaves the head as it is
    off, stream, _ = _method(realign=False)
    _experience(off, stream[0])
    off.experience = stream[1]
    off.before_experience(stream[1])
    _train(off, stream[1])
    head = {k: v for k, v in _params(off).items() if k.startswith("head.")}
    off.after_experience(stream[1])
    assert all(torch.equal(v, _params(off)[k]) for k, v in head.items()) and len(off.class_stats) == 0


def test_each_switch_changes_the_outcome():
    """The same two experiences (image, image again) from the same start, each component switched off in turn."""
    results = {}
    for name, hp in {"all": {}, "self_reg": {"self_reg": False}, "inter_modal": {"inter_modal": False},
                     "realign": {"realign": False}}.items():
        m, stream, _ = _method({"modalities": ["image", "audio", "image"]}, **hp)
        for exp in stream:
            _experience(m, exp, steps=5)
        results[name] = (m.predict(dict(stream[2].test.tensors), 6), _params(m))
    for name in ("self_reg", "inter_modal", "realign"):
        assert not torch.allclose(results[name][0], results["all"][0], atol=1e-4), name


def test_extra_state_round_trips_mid_experience():
    a, stream, cfg = _method(RETURNING)
    _experience(a, stream[0])
    a.experience = stream[1]
    a.before_experience(stream[1])
    _train(a, stream[1], steps=6)  # mid-experience: previous model, prompt snapshot and statistics all set
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)
    b = build_method(stream, cfg)  # another initial model; before_experience is not run again
    b.load_state_dict(torch.load(buf, weights_only=False))
    b.experience = stream[1]
    batch = stream[1].train.take(torch.arange(16))
    ta, tb = a.loss_terms(batch), b.loss_terms(batch)
    assert ta["shift"].item() > 0 and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert torch.equal(a.prev_prompt, b.prev_prompt)
    test = dict(stream[0].test.tensors)
    for known in (False, True):
        assert torch.equal(a.predict(test, 4, known), b.predict(test, 4, known))
    for m in (a, b):  # the rest of the experience and its consolidation (which draws from self.rng)
        _train(m, stream[1], steps=4)
        m.after_experience(stream[1])
    pa, pb = _params(a), _params(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert torch.equal(a.rng.get_state(), b.rng.get_state())


def test_comm_runs_end_to_end_and_forgets_less_than_finetune(tmp_path):
    ft = run(_cfg("finetune"), tmp_path / "ft")
    cm = run(_cfg(), tmp_path / "comm")
    assert len(cm["matrices"]["modality_agnostic"]) == 3 and (tmp_path / "comm" / "checkpoints" / "last.pt").exists()
    ft_s, cm_s = ft["summary"]["modality_agnostic"], cm["summary"]["modality_agnostic"]
    assert cm_s["forgetting"] < ft_s["forgetting"] - 0.3, (cm_s, ft_s)
    assert cm_s["last_acc"] > ft_s["last_acc"] + 0.3, (cm_s, ft_s)


def test_a_returning_modality_keeps_its_input_projection_unless_told_otherwise():
    for freeze in (True, False):
        m, stream, _ = _method(RETURNING, freeze_returning=freeze)
        _experience(m, stream[0])
        proj = {k: v.detach().clone() for k, v in m.model.input_proj["image"].state_dict().items()}
        prompts = m.model.comm_prompts[MODALITIES.index("image")].detach().clone()
        _experience(m, stream[1])  # image returns with new classes
        same = all(torch.equal(v, m.model.input_proj["image"].state_dict()[k]) for k, v in proj.items())
        assert same == freeze
        assert not torch.equal(prompts, m.model.comm_prompts[MODALITIES.index("image")])  # prompts train (and merge)
        # a modality seen for the first time trains its projection either way
        m.experience = stream[2]
        m.before_experience(stream[2])
        assert any(p is m.model.input_proj["audio"].weight for p in m.param_groups())


def test_drift_map_recovers_an_affine_drift():
    m, _, _ = _method(RETURNING, drift_ridge=1e-6)
    g = torch.Generator().manual_seed(0)
    old = torch.randn(400, 6, generator=g, dtype=torch.float64)
    A = torch.eye(6, dtype=torch.float64) + 0.3 * torch.randn(6, 6, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    A_hat, b_hat = m.drift_map(old, old @ A + b)
    torch.testing.assert_close(A_hat, A, atol=1e-4, rtol=0)
    torch.testing.assert_close(b_hat, b, atol=1e-4, rtol=0)
    strong, _, _ = _method(RETURNING, drift_ridge=1e6)  # a strong ridge keeps the identity: no compensation
    A_id, b_id = strong.drift_map(old, old @ A + b)
    assert (A_id - torch.eye(6, dtype=torch.float64)).abs().max() < 1e-3 and b_id.abs().max() < 1e-3


def test_drift_compensation_moves_stale_statistics_towards_the_current_features():
    """When image returns and its projection trains (freeze_returning off, so the drift is large), the stored
    means of its earlier classes are carried towards where the current model puts those classes; with
    `drift=false` they stay where the earlier model put them."""
    means = {}
    for drift in (True, False):
        m, stream, _ = _method(RETURNING, freeze_returning=False, drift=drift)
        _experience(m, stream[0])
        stale = {c: m.class_stats.mean[c].clone() for c in stream[0].classes}
        _experience(m, stream[1], steps=30)
        true = m.pre_head(stream[0].train, MODALITIES.index("image")).double()
        W = m.model.width
        err = lambda mu, c: (mu[:W] - true[stream[0].train["y"] == c][:, :W].mean(0)).norm().item()  # noqa: E731
        means[drift] = {c: (err(stale[c], c), err(m.class_stats.mean[c], c)) for c in stream[0].classes}
        assert m.teacher is None  # the start-of-experience copy is dropped after the experience
    for c, (before, after) in means[True].items():
        assert after < 0.7 * before, (c, before, after)
    assert all(after == before for before, after in means[False].values())
