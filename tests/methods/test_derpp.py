"""derpp: a reservoir memory of inputs, labels and stored logits, replayed with two extra terms."""
import torch

from mmcl.settings import build_stream
from mmcl.engine import build_method, run
from mmcl.methods.derpp import LogitReservoir
from tests.harness import tiny_cfg


def _method(**hp):
    cfg = tiny_cfg("derpp", method={"name": "derpp", "buffer_size": 12, **hp})
    stream = build_stream(cfg)
    torch.manual_seed(0)
    return build_method(stream, cfg), stream, cfg


def _train_a_little(m, exp, steps=20):
    """Plain fine-tuning steps on `exp`: the model moves away from what the memory stored."""
    opt = torch.optim.Adam(m.trainable_parameters(), lr=0.01)
    m.experience = exp
    for s in range(steps):
        batch = exp.train.take(torch.arange(s * 8, s * 8 + 8) % len(exp.train))
        loss = torch.nn.functional.cross_entropy(m.model.logits(m.model(batch), m.num_seen), batch["y"])
        opt.zero_grad()
        loss.backward()
        opt.step()


def _grads(m, batch):
    m.model.zero_grad()
    m.training_loss(batch).backward()
    return torch.cat([p.grad.flatten() for p in m.trainable_parameters()])


def test_memory_stores_the_logits_of_the_model_at_storage_time():
    m, stream, _ = _method()
    n0, n1 = stream.seen_after(0), stream.seen_after(1)
    m.experience = stream[0]
    m.after_experience(stream[0])
    mem = m.memory.data
    assert len(mem) == 12 and set(mem["y"].tolist()) <= set(stream[0].classes)
    with torch.no_grad():
        now = m.model.logits(m.model({"x": mem["x"]}), n0)
    assert torch.allclose(mem["logits"][:, :n0], now, atol=1e-5)
    assert (mem["logits"][:, n0:] == 0).all() and (mem["n_logits"] == n0).all()
    # stored samples keep the logits of their storage time; new ones get the current model's, wider
    old_x, old_z = mem["x"].clone(), mem["logits"].clone()
    _train_a_little(m, stream[1])
    m.after_experience(stream[1])
    mem = m.memory.data
    assert len(mem) == 12
    kept = mem["n_logits"] == n0
    new = mem["n_logits"] == n1
    assert kept.any() and new.any() and (kept | new).all()
    assert set(mem["y"][new].tolist()) <= set(stream[1].classes)
    for x, z in zip(mem["x"][kept], mem["logits"][kept]):
        row = (old_x == x).all(1).nonzero().flatten()
        assert len(row) == 1 and torch.equal(old_z[row[0]], z)
    with torch.no_grad():
        now = m.model.logits(m.model({"x": mem["x"][new]}), n1)
        then = m.model.logits(m.model({"x": mem["x"][kept]}), n0)
    assert torch.allclose(mem["logits"][new][:, :n1], now, atol=1e-5)
    assert not torch.allclose(mem["logits"][kept][:, :n0], then, atol=1e-2)  # the model has moved since


def test_logit_term_is_active_after_the_first_experience_and_changes_the_gradient():
    m, stream, _ = _method()
    batch = stream[1].train.take(torch.arange(8))
    m.experience = stream[0]
    assert set(m.loss_terms(stream[0].train.take(torch.arange(8)))) == {"ce"}  # empty memory: plain CE
    m.after_experience(stream[0])
    m.experience = stream[1]
    # right after storage the model reproduces its stored logits: the term is (numerically) zero
    assert m.loss_terms(batch)["mse"].item() < 1e-8
    _train_a_little(m, stream[1])
    state = m.rng.get_state()
    terms = m.loss_terms(batch)
    assert terms["mse"].item() > 1e-2 and terms["replay_ce"].item() > 0
    m.rng.set_state(state)
    g = _grads(m, batch)
    m.rng.set_state(state)
    m.hp.alpha = 0.0
    g_no_mse = _grads(m, batch)
    m.rng.set_state(state)
    m.hp.beta = 0.0
    g_ce = _grads(m, batch)
    assert not torch.allclose(g, g_no_mse, atol=1e-6)
    assert not torch.allclose(g_no_mse, g_ce, atol=1e-6)
    # with both weights zero the loss is fine-tuning's
    m.model.zero_grad()
    ft = torch.nn.functional.cross_entropy(m.model.logits(m.model(batch), m.num_seen), batch["y"])
    ft.backward()
    assert torch.allclose(g_ce, torch.cat([p.grad.flatten() for p in m.trainable_parameters()]), atol=1e-6)


def test_reservoir_never_exceeds_its_size_and_samples_uniformly():
    g = torch.Generator().manual_seed(0)
    res = LogitReservoir(10, num_classes=4)
    for n_new in (3, 4, 50, 1, 200):
        slots, picked = res.plan(n_new, g)
        rows = {"x": torch.randn(n_new, 2)[picked], "y": torch.zeros(len(picked), dtype=torch.long),
                "logits": torch.zeros(len(picked), 4), "n_logits": torch.ones(len(picked), dtype=torch.long)}
        res.write(slots, rows)
        assert len(res) == min(10, res.seen) and len(picked) == len(set(picked.tolist())) <= n_new
    # every offered sample ends up in memory with probability capacity / offered (algorithm R)
    hits = torch.zeros(60)
    for _ in range(1000):
        r = LogitReservoir(10, 1)
        for lo, hi in ((0, 7), (7, 20), (20, 60)):  # three "experiences"
            slots, picked = r.plan(hi - lo, g)
            r.write(slots, {"i": picked + lo, "y": picked})
        hits[r.data["i"]] += 1
    assert (hits / 1000 - 10 / 60).abs().max() < 0.06
    m, stream, _ = _method(buffer_size=0)
    m.experience = stream[0]
    m.after_experience(stream[0])
    assert len(m.memory) == 0


def test_memory_is_reproducible_and_extra_state_round_trips():
    a, stream, cfg = _method()
    torch.manual_seed(0)
    b = build_method(stream, cfg)  # same initial model, same seeded rng
    for m in (a, b):
        for e in (stream[0], stream[1]):
            m.experience = e
            m.after_experience(e)
    assert torch.equal(a.memory.data["x"], b.memory.data["x"])
    assert torch.equal(a.memory.data["logits"], b.memory.data["logits"])
    fresh = build_method(stream, cfg)
    fresh.load_state_dict(a.state_dict())
    assert fresh.memory.seen == a.memory.seen == 2 * len(stream[0].train)
    for k in a.memory.data.keys():
        assert torch.equal(fresh.memory.data[k], a.memory.data[k])
    batch = stream[2].train.take(torch.arange(8))
    fresh.experience = a.experience = stream[2]
    assert torch.equal(fresh.training_loss(batch), a.training_loss(batch))
    fresh.after_experience(stream[2])
    a.after_experience(stream[2])
    assert torch.equal(fresh.memory.data["x"], a.memory.data["x"])


def test_derpp_beats_finetune(tmp_path):
    ft = run(tiny_cfg("finetune"), tmp_path / "ft")["summary"]["modality_agnostic"]
    der = run(tiny_cfg("derpp", method={"name": "derpp", "buffer_size": 30}), tmp_path / "der")
    der = der["summary"]["modality_agnostic"]
    assert der["last_acc"] > ft["last_acc"] + 0.2
    assert der["bwt"] > ft["bwt"] + 0.2
