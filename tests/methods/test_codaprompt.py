"""codaprompt: per-sample prompts as attention-weighted sums of components, earlier components frozen."""
import io

import pytest
import torch
import torch.nn.functional as F

from mmcl.settings import build_stream
from mmcl.engine import build_method, make_optimizer, run
from mmcl.methods.prompting import ortho_penalty
from tests.harness import run_experience, tiny_token_cfg, train_steps

SMALL = {"train_per_class": 24, "test_per_class": 12}  # 3 modalities x 2 classes, fast
HP = {"pool_size": 12, "length": 4}  # 4 components per experience


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(name="codaprompt", hp=None, **sections):
    method = {"name": name, **(HP if name == "codaprompt" else {}), **(hp or {})}
    train = {"lr": 3e-3, **sections.pop("train", {})}
    return tiny_token_cfg(name, method=method, benchmark=SMALL, train=train, **sections)


def _method(name="codaprompt", **hp):
    cfg = _cfg(name, hp)
    stream = build_stream(cfg)
    torch.manual_seed(0)
    return build_method(stream, cfg), stream, cfg


def _steps(m, exp, steps, opt=None):
    return train_steps(m, exp, steps, opt)


def _experience(m, exp, steps=15, opt=None):
    return run_experience(m, exp, steps, opt)


def _mixed(stream, k=4):
    return {key: torch.cat([e.test[key][:k] for e in stream]) for key in stream[0].test.keys()}


def test_components_start_orthonormal_and_replace_the_shared_prompt():
    m, stream, _ = _method()
    assert m.model.prompts is None and not m.uses_known_modality
    assert m.per_exp == 4
    for name, shape in (("P", (12, 4, m.width)), ("K", (12, m.width)), ("A", (12, m.width))):
        t = getattr(m.pool, name)
        assert t.shape == shape
        flat = t.detach().reshape(12, -1)
        torch.testing.assert_close(flat @ flat.T, torch.eye(12), atol=1e-5, rtol=0)
        assert ortho_penalty(t.detach()).item() < 1e-10


def test_prompt_is_the_attention_weighted_sum_of_components():
    m, stream, _ = _method()
    _experience(m, stream[0], steps=5)
    _experience(m, stream[1], steps=5)
    m.model.eval()
    batch = _mixed(stream)
    q = m.query(batch)
    prompts, aux = m.prompts(batch, q, train=False)
    assert aux is None and prompts.shape == (12, 4, m.width)
    c = m.components(8)  # two experiences trained: 2 x 4 components in use
    by_hand = torch.zeros(12, 4, m.width)
    for b in range(12):
        for j in range(8):
            alpha = F.cosine_similarity(q[b] * c["A"][j], c["K"][j], dim=0)
            by_hand[b] += alpha * c["P"][j]
    torch.testing.assert_close(prompts, by_hand, atol=1e-5, rtol=1e-4)
    assert m.attention(batch).shape == (12, 8)
    # no softmax: plain cosines, of both signs
    alpha = m.attention(batch)
    assert (alpha.abs() <= 1 + 1e-6).all() and (alpha < 0).any() and (alpha > 0).any()
    # the prompt differs per sample (fine-tuning prepends one shared prompt to every sample)
    assert len(torch.unique(prompts.reshape(12, -1), dim=0)) == 12
    assert torch.equal(m.predict(batch, 6), m.model.logits(m.model(batch, prompts=prompts), 6))
    ft, _, _ = _method("finetune")
    assert ft.model.prompts is not None


def test_training_uses_earlier_components_but_updates_only_the_current_ones():
    m, stream, _ = _method()
    _experience(m, stream[0], steps=5)
    exp = stream[1]
    m.experience = exp
    m.before_experience(exp)
    assert m.in_use(train=True) == 8 and m.in_use(train=False) == 4
    batch = exp.train.take(torch.arange(16))
    m.model.zero_grad()
    m.training_loss(batch).backward()
    for name in ("P", "K", "A"):
        g = getattr(m.pool, name).grad.reshape(12, -1).norm(dim=1)
        assert (g[:4] == 0).all(), name  # experience 1's components: frozen
        assert (g[4:8] > 0).all(), name  # experience 2's: trained
        assert (g[8:] == 0).all(), name  # experience 3's: not in use yet
    # ... yet the frozen components shape the prompt: it depends on them
    q = m.query(batch)
    p1, _ = m.prompts(batch, q, train=True)
    with torch.no_grad():
        m.frozen["P"][:4] *= 2
    p2, _ = m.prompts(batch, q, train=True)
    assert not torch.allclose(p1, p2)


def test_earlier_components_do_not_change_when_later_experiences_are_trained():
    m, stream, _ = _method()
    cfg_train = {**m.cfg["train"], "weight_decay": 0.1}
    opt = make_optimizer(m.param_groups(), cfg_train)  # one optimiser kept across experiences, with decay
    _experience(m, stream[0], opt=opt)
    after_1 = {k: v[:4].clone() for k, v in m.components(12).items()}
    init_2 = None
    for t in (1, 2):
        m.experience = stream[t]
        m.before_experience(stream[t])
        if t == 1:
            init_2 = {k: v[4:8].clone() for k, v in m.components(12).items()}
        _steps(m, stream[t], 15, opt)
        m.after_experience(stream[t])
    now = m.components(12)
    assert all(torch.equal(now[k][:4], after_1[k]) for k in after_1)
    assert not torch.allclose(now["P"][4:8], init_2["P"])  # experience 2's components did train
    # experience 2's components started orthonormal and orthogonal to experience 1's trained ones
    for k in ("P", "K", "A"):
        old, new = after_1[k].reshape(4, -1), init_2[k].reshape(4, -1)
        torch.testing.assert_close(new @ new.T, torch.eye(4), atol=1e-5, rtol=0)
        assert (new @ old.T).abs().max() < 1e-5


def test_orthogonality_regulariser():
    m, stream, _ = _method(ortho_mu=0.5)
    _experience(m, stream[0], steps=10)
    m.experience = stream[1]
    m.before_experience(stream[1])
    _steps(m, stream[1], 10)
    batch = stream[1].train.take(torch.arange(16))
    terms = m.loss_terms(batch)
    c = m.components(8)
    expected = 0.5 * sum(((x.reshape(8, -1) @ x.reshape(8, -1).T - torch.eye(8)) ** 2).mean() for x in c.values())
    torch.testing.assert_close(terms["ortho"], expected)
    assert terms["ortho"].item() > 0  # training moved the components off orthonormality
    m.hp.ortho_mu = 0.0
    assert set(m.loss_terms(batch)) == {"ce"}  # the released default: initialisation only


def test_extra_state_round_trips_mid_experience():
    a, stream, cfg = _method()
    _experience(a, stream[0], steps=8)
    a.experience = stream[1]
    a.before_experience(stream[1])
    _steps(a, stream[1], 5)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)
    fresh = build_method(stream, _cfg(seed=5))  # other seed: other components, other query projection
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    fresh.experience = stream[1]
    batch = stream[1].train.take(torch.arange(16))
    assert fresh.num_trained == a.num_trained == 1
    assert all(torch.equal(fresh.components(12)[k], a.components(12)[k]) for k in ("P", "K", "A"))
    assert torch.equal(fresh.training_loss(batch), a.training_loss(batch))
    assert torch.equal(fresh.predict(batch, 4), a.predict(batch, 4))
    # and the next experience's new components are drawn identically (the generator is restored)
    for m in (a, fresh):
        m.after_experience(stream[1])
        m.experience = stream[2]
        m.before_experience(stream[2])
    assert torch.equal(fresh.pool.P.detach(), a.pool.P.detach())


def test_runs_in_the_engine(tmp_path):
    metrics = run(_cfg(train={"epochs": 3, "batch_size": 8}), tmp_path / "codaprompt")
    aware = metrics["matrices"]["modality_aware"]
    assert len(aware) == 3
    assert sum(aware[i][i] for i in range(3)) / 3 > 0.75  # just-learned experiences: chance 0.5
