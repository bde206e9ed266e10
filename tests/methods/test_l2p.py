"""l2p: a prompt pool whose keys are matched to a frozen query; per-sample prompts, a key-pulling surrogate."""
import io

import pytest
import torch

from mmcl.settings import build_stream
from mmcl.engine import build_method, run
from tests.harness import run_experience, tiny_token_cfg, train_steps

SMALL = {"train_per_class": 24, "test_per_class": 12}  # 3 modalities x 2 classes, fast
HP = {"pool_size": 6, "length": 2, "top_n": 2}  # small pool: 4 prompt tokens per sample


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(name="l2p", hp=None, **sections):
    method = {"name": name, **(HP if name == "l2p" else {}), **(hp or {})}
    train = {"lr": 3e-3, **sections.pop("train", {})}
    return tiny_token_cfg(name, method=method, benchmark=SMALL, train=train, **sections)


def _method(name="l2p", **hp):
    cfg = _cfg(name, hp)
    stream = build_stream(cfg)
    torch.manual_seed(0)
    return build_method(stream, cfg), stream, cfg


def _steps(m, exp, steps, opt=None):
    return train_steps(m, exp, steps, opt)


def _experience(m, exp, steps=24, opt=None):
    return run_experience(m, exp, steps, opt)


@pytest.fixture(scope="module")
def trained():
    """An l2p method trained through the three experiences (one per modality)."""
    m, stream, cfg = _method()
    for exp in stream:
        _experience(m, exp)
    m.model.eval()
    return m, stream, cfg


def _majority_set(m, exp):
    """The prompt set most test samples of `exp` select, and the share of samples that select it."""
    idx = m.selected(dict(exp.test.tensors))
    sets, counts = torch.unique(idx, dim=0, return_counts=True)
    return tuple(sets[counts.argmax()].tolist()), counts.max().item() / len(idx)


def test_the_shared_prompt_is_replaced_by_the_pool():
    m, stream, _ = _method()
    names = {n for n, p in m.model.named_parameters() if p.requires_grad}
    assert m.model.prompts is None and "prompts" not in names
    assert {"prompt_pool.prompts", "prompt_pool.keys"} <= names
    assert m.pool.prompts.shape == (6, 2, m.width) and m.pool.keys.shape == (6, m.width)
    assert not m.uses_known_modality


def test_query_is_frozen_and_blind_to_the_modality_id():
    m, stream, _ = _method()
    batch = stream[0].test.take(torch.arange(8))
    q = m.query(batch)
    assert q.shape == (8, m.width) and not q.requires_grad
    assert torch.equal(m.query({**batch, "m": torch.full((8,), 2)}), q)  # batch["m"] is never read
    assert torch.equal(m.query({k: v for k, v in batch.items() if k != "m"}), q)
    _steps(m, stream[0], 5)  # input projections, head and pool move; the query does not
    assert torch.equal(m.query(batch), q)


def test_surrogate_loss_is_positive_and_pulls_only_the_selected_keys_towards_the_queries():
    m, stream, _ = _method()
    exp = stream[0]
    m.experience = exp
    batch = exp.train.take(torch.arange(16))
    terms = m.loss_terms(batch)
    assert set(terms) == {"ce", "pull"} and terms["pull"].item() > 0
    # the term, by hand: lambda * mean over samples of the sum over its N selected keys of 1 - cos
    q = m.query(batch)
    idx = m.selected(batch, train=True)
    cos = torch.nn.functional.cosine_similarity(q[:, None, :], m.pool.keys[idx].detach(), dim=-1)
    torch.testing.assert_close(terms["pull"], 0.1 * (1 - cos).sum(1).mean())
    # only selected keys get a gradient (selection itself is not differentiable)
    m.model.zero_grad()
    m.training_loss(batch).backward()
    used = torch.zeros(6, dtype=torch.bool)
    used[idx.unique()] = True
    g = m.pool.keys.grad.norm(dim=1)
    assert (g[used] > 0).all() and (g[~used] == 0).all()
    # training moves the selected keys towards the queries of the experience
    keys0 = m.pool.keys.detach().clone()
    sel_before = m.similarity(q).gather(1, idx).mean()
    _steps(m, exp, 20)
    assert not torch.equal(m.pool.keys.detach(), keys0)
    assert m.similarity(q).gather(1, idx).mean() > sel_before + 0.01
    # without the surrogate the keys get no gradient at all
    m.hp.pull_coeff = 0.0
    m.model.zero_grad()
    m.training_loss(batch).backward()
    assert m.pool.keys.grad.abs().sum() == 0


def test_diversified_training_selection_prefers_prompts_unused_by_earlier_experiences():
    m, stream, _ = _method()
    batch = stream[1].train.take(torch.arange(16))
    plain = m.selected(batch, train=True)  # no history yet: the test rule
    assert torch.equal(plain, m.selected(batch))
    m.freq = torch.zeros(6)
    m.freq[plain.unique()] = 10.0  # pretend an earlier experience used these prompts
    div = m.selected(batch, train=True)
    assert not set(div.flatten().tolist()) & set(plain.unique().tolist())
    assert torch.equal(m.selected(batch), plain)  # test-time selection ignores the frequencies
    m.hp.diversify = False
    assert torch.equal(m.selected(batch, train=True), plain)


def test_after_training_the_modalities_select_different_prompts(trained):
    m, stream, _ = trained
    majority = [_majority_set(m, exp) for exp in stream]
    sets = [s for s, _ in majority]
    assert len(set(sets)) == 3, majority  # three modalities, three different prompt sets
    assert all(share > 0.8 for _, share in majority), majority
    # every experience's samples were counted (N selections each) after its training
    assert m.freq.sum().item() == sum(len(e.train) for e in stream) * 2


def test_prompts_differ_per_sample_unlike_fine_tuning(trained):
    m, stream, _ = trained
    batch = {k: torch.cat([e.test[k][:4] for e in stream]) for k in stream[0].test.keys()}
    prompts, _ = m.prompts(batch, m.query(batch), train=False)
    assert prompts.shape == (12, 4, m.width)
    assert len(torch.unique(prompts.reshape(12, -1), dim=0)) >= 3
    # and they are what the model is scored with
    assert torch.equal(m.predict(batch, 6), m.model.logits(m.model(batch, prompts=prompts), 6))
    ft, _, _ = _method("finetune")
    assert ft.model.prompts is not None  # fine-tuning: one prompt shared by every sample


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
    assert torch.equal(fresh.freq, a.freq) and fresh.freq.sum() > 0
    assert torch.equal(fresh.query(batch), a.query(batch))
    assert torch.equal(fresh.selected(batch, train=True), a.selected(batch, train=True))
    assert torch.equal(fresh.training_loss(batch), a.training_loss(batch))
    assert torch.equal(fresh.predict(batch, 4), a.predict(batch, 4))


def test_runs_in_the_engine(tmp_path):
    metrics = run(_cfg(train={"epochs": 3, "batch_size": 8}), tmp_path / "l2p")
    aware = metrics["matrices"]["modality_aware"]
    assert len(aware) == 3 and len(metrics["matrices"]["modality_agnostic"]) == 3
    assert sum(aware[i][i] for i in range(3)) / 3 > 0.75  # just-learned experiences: chance 0.5


def test_training_ce_masks_the_classes_of_earlier_experiences():
    m, stream, _ = _method()
    exp = stream[1]
    m.experience = exp
    batch = exp.train.take(torch.arange(16))
    prompts, _ = m.prompts(batch, m.query(batch), train=True)
    logits = m.model.logits(m.model(batch, prompts=prompts), m.num_seen)
    assert m.num_old == 2 and m.num_seen == 4
    # CE over the current experience's classes only (the released code's train_mask)...
    masked = torch.nn.functional.cross_entropy(logits[:, 2:], batch["y"] - 2)
    torch.testing.assert_close(m.loss_terms(batch)["ce"], masked)
    # ...unlike fine-tuning's CE over every class seen so far
    m.hp.train_mask = False
    torch.testing.assert_close(m.loss_terms(batch)["ce"], torch.nn.functional.cross_entropy(logits, batch["y"]))
    assert not torch.allclose(masked, m.loss_terms(batch)["ce"])
