"""dualprompt: a shared G-prompt plus one E-prompt per experience, chosen at test by key-query matching."""
import io

import pytest
import torch
import torch.nn.functional as F

from mmcl.settings import build_stream
from mmcl.engine import build_method, make_optimizer, run
from tests.harness import run_experience, tiny_token_cfg, train_steps

SMALL = {"train_per_class": 24, "test_per_class": 12}  # 3 modalities x 2 classes, fast
HP = {"g_length": 2, "e_length": 3}


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(name="dualprompt", hp=None, **sections):
    method = {"name": name, **(HP if name == "dualprompt" else {}), **(hp or {})}
    train = {"lr": 3e-3, **sections.pop("train", {})}
    return tiny_token_cfg(name, method=method, benchmark=SMALL, train=train, **sections)


def _method(name="dualprompt", **hp):
    cfg = _cfg(name, hp)
    stream = build_stream(cfg)
    torch.manual_seed(0)
    return build_method(stream, cfg), stream, cfg


def _steps(m, exp, steps, opt=None):
    return train_steps(m, exp, steps, opt)


def _experience(m, exp, steps=16, opt=None):
    return run_experience(m, exp, steps, opt)


@pytest.fixture(scope="module")
def trained():
    """A dualprompt method trained through the three experiences (one per modality)."""
    m, stream, cfg = _method()
    for exp in stream:
        _experience(m, exp)
    m.model.eval()
    return m, stream, cfg


def test_pool_has_one_expert_per_experience_and_replaces_the_shared_prompt():
    m, stream, _ = _method()
    assert m.model.prompts is None
    assert m.pool.g.shape == (2, m.width)
    assert m.pool.e.shape == (3, 3, m.width) and m.pool.keys.shape == (3, m.width)
    assert m.uses_known_modality


def test_training_uses_the_current_expert_and_pulls_only_its_key():
    m, stream, _ = _method()
    exp = stream[1]
    m.experience = exp
    batch = exp.train.take(torch.arange(16))
    q = m.query(batch)
    prompts, aux = m.prompts(batch, q, train=True)
    assert torch.equal(prompts[:, :2], m.pool.g.expand(16, -1, -1))  # [g; e_t] for every sample
    assert torch.equal(prompts[:, 2:], m.pool.e[1].expand(16, -1, -1))
    cos = F.cosine_similarity(q, m.pool.keys[1].detach()[None], dim=-1)
    torch.testing.assert_close(aux["pull"], 1.0 * (1 - cos).mean())
    assert aux["pull"].item() > 0
    m.model.zero_grad()
    m.training_loss(batch).backward()
    g_e, g_k = m.pool.e.grad.flatten(1).norm(dim=1), m.pool.keys.grad.norm(dim=1)
    assert g_e[1] > 0 and g_e[0] == 0 and g_e[2] == 0
    assert g_k[1] > 0 and g_k[0] == 0 and g_k[2] == 0
    assert m.pool.g.grad.abs().sum() > 0  # the G-prompt is shared and trained throughout
    before = F.cosine_similarity(q, m.pool.keys[1].detach()[None], dim=-1).mean()
    _steps(m, exp, 15)
    assert F.cosine_similarity(q, m.pool.keys[1].detach()[None], dim=-1).mean() > before + 0.05


def test_at_test_the_expert_of_the_samples_experience_is_chosen(trained):
    m, stream, _ = trained
    for t, exp in enumerate(stream):
        batch = dict(exp.test.tensors)
        hit = (m.chosen(batch) == t).float().mean().item()
        assert hit > 0.9, (t, hit)  # chance: 1/3
        # the choice does not read the modality id...
        assert torch.equal(m.chosen({**batch, "m": torch.zeros_like(batch["m"])}), m.chosen(batch))
        # ...except in the modality-aware protocol, where the modality's own expert is used
        assert (m.chosen(batch, known_modality=True) == t).all()
        # and the chosen expert is the one the model is scored with
        q = m.query(batch)
        prompts, _ = m.prompts(batch, q, train=False)
        e, _ = m.experts()
        assert torch.equal(prompts[:, 2:], e[m.chosen(batch)])


def test_prompts_differ_per_sample_unlike_fine_tuning(trained):
    m, stream, _ = trained
    batch = {k: torch.cat([e.test[k][:4] for e in stream]) for k in stream[0].test.keys()}
    prompts, _ = m.prompts(batch, m.query(batch), train=False)
    assert len(torch.unique(prompts.reshape(12, -1), dim=0)) == 3
    assert torch.equal(m.predict(batch, 6), m.model.logits(m.model(batch, prompts=prompts), 6))
    ft, _, _ = _method("finetune")
    assert ft.model.prompts is not None  # fine-tuning: one prompt shared by every sample


def test_only_trained_experts_are_candidates_and_aware_falls_back_for_unseen_modalities():
    m, stream, _ = _method()
    batch = stream[2].test.take(torch.arange(8))
    assert (m.chosen(batch) == 0).all()  # nothing trained yet: the (untrained) first expert
    _experience(m, stream[0], steps=5)
    _experience(m, stream[1], steps=5)
    assert set(m.chosen(batch).tolist()) <= {0, 1}
    # depth has no trained expert yet: the aware protocol falls back to all trained ones
    assert torch.equal(m.chosen(batch, known_modality=True), m.chosen(batch))


def test_earlier_experts_do_not_change_when_later_experiences_are_trained():
    m, stream, _ = _method()
    cfg_train = {**m.cfg["train"], "weight_decay": 0.1}
    opt = make_optimizer(m.param_groups(), cfg_train)  # one optimiser kept across experiences, with decay
    _experience(m, stream[0], steps=10, opt=opt)
    e0, k0 = m.experts()
    e0, k0 = e0[0].clone(), k0[0].clone()
    batch = stream[0].test.take(torch.arange(8))
    g_before = m.pool.g.detach().clone()
    _experience(m, stream[1], steps=10, opt=opt)
    _experience(m, stream[2], steps=10, opt=opt)
    e, k = m.experts()
    assert torch.equal(e[0], e0) and torch.equal(k[0], k0)
    assert not torch.equal(m.pool.g.detach(), g_before)  # the shared G-prompt keeps training
    # what experience 1's samples are prompted with is what they were prompted with after experience 1
    prompts, _ = m.prompts(batch, m.query(batch), train=False)
    assert torch.equal(prompts[:, 2:][m.chosen(batch) == 0], e0.expand(int((m.chosen(batch) == 0).sum()), -1, -1))


def test_extra_state_round_trips_mid_experience():
    a, stream, cfg = _method()
    _experience(a, stream[0], steps=10)
    a.experience = stream[1]
    a.before_experience(stream[1])
    _steps(a, stream[1], 5)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)
    fresh = build_method(stream, _cfg(seed=5))  # other seed: other pool, other query projection
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    fresh.experience = stream[1]
    batch = stream[1].train.take(torch.arange(16))
    assert fresh.num_trained == a.num_trained == 1
    assert all(torch.equal(x, y) for x, y in zip(fresh.experts(), a.experts()))
    assert torch.equal(fresh.training_loss(batch), a.training_loss(batch))
    for known in (False, True):
        assert torch.equal(fresh.chosen(batch, known), a.chosen(batch, known))
        assert torch.equal(fresh.predict(batch, 4, known), a.predict(batch, 4, known))


def test_runs_in_the_engine(tmp_path):
    metrics = run(_cfg(train={"epochs": 2, "batch_size": 8}), tmp_path / "dualprompt")
    aware = metrics["matrices"]["modality_aware"]
    assert len(aware) == 3 and len(metrics["matrices"]["modality_agnostic"]) == 3
    assert sum(aware[i][i] for i in range(3)) / 3 > 0.75  # just-learned experiences: chance 0.5
