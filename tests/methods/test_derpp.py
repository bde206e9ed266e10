"""derpp: a reservoir over the stream (current experience included) of inputs, labels and the logits of
the training step that stored them, replayed with two extra terms."""
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


def _grads(m, batch):
    m.model.zero_grad()
    m.training_loss(batch).backward()
    m._pending = None  # a gradient probe, not a training step: nothing offered to the memory
    return torch.cat([p.grad.flatten() for p in m.trainable_parameters()])


def _step(m, batch, opt):
    """One engine step: loss, backward, `after_backward` (the batch is offered to the memory), update."""
    loss = m.training_loss(batch)
    opt.zero_grad()
    loss.backward()
    m.after_backward()
    opt.step()


def test_memory_stores_the_logits_of_the_training_forward_current_experience_included():
    m, stream, _ = _method()
    n0 = stream.seen_after(0)
    m.begin_experience(stream[0])
    opt = torch.optim.Adam(m.trainable_parameters(), lr=0.01)
    first = stream[0].train.take(torch.arange(8))
    with torch.no_grad():
        before = m.model.logits(m.model(first), n0)  # the forward of the step that stores them
    _step(m, first, opt)
    mem = m.memory.data
    assert len(mem) == 8 and torch.equal(mem["x"], first["x"])  # the current experience's samples, at once
    assert torch.allclose(mem["logits"][:, :n0], before, atol=1e-6) and (mem["n_logits"] == n0).all()
    for s in range(1, 6):  # the reservoir fills, then replaces
        _step(m, stream[0].train.take(torch.arange(s * 8, s * 8 + 8)), opt)
    assert len(m.memory) == 12 and m.memory.seen == 48
    # stored logits are those of their storage time: the model has moved since
    mem = m.memory.data
    with torch.no_grad():
        now = m.model.logits(m.model({"x": mem["x"]}), n0)
    assert not torch.allclose(mem["logits"][:, :n0], now, atol=1e-2)
    # a later experience stores wider logits (its classes seen so far) beside the old ones
    m.begin_experience(stream[1])
    for s in range(20):
        _step(m, stream[1].train.take(torch.arange(s * 8, s * 8 + 8) % len(stream[1].train)), opt)
    widths = set(m.memory.data["n_logits"].tolist())
    assert widths <= {n0, stream.seen_after(1)} and stream.seen_after(1) in widths


def test_replay_terms_act_from_the_second_step_and_change_the_gradient():
    m, stream, _ = _method()
    m.begin_experience(stream[0])
    batch = stream[0].train.take(torch.arange(8))
    assert set(m.loss_terms(batch)) == {"ce"}  # empty memory: plain CE
    m._pending = None
    opt = torch.optim.Adam(m.trainable_parameters(), lr=0.01)
    for s in range(6):
        _step(m, stream[0].train.take(torch.arange(s * 8, s * 8 + 8)), opt)
    batch = stream[0].train.take(torch.arange(48, 56))
    state = m.rng.get_state()
    terms = m.loss_terms(batch)
    m._pending = None
    assert terms["mse"].item() > 0 and terms["replay_ce"].item() > 0  # within the first experience already
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
    m.begin_experience(stream[0])
    _step(m, stream[0].train.take(torch.arange(8)), torch.optim.Adam(m.trainable_parameters(), lr=0.01))
    assert len(m.memory) == 0


def test_memory_is_reproducible_and_extra_state_round_trips():
    a, stream, cfg = _method()
    torch.manual_seed(0)
    b = build_method(stream, cfg)  # same initial model, same seeded rng
    for m in (a, b):
        opt = torch.optim.Adam(m.trainable_parameters(), lr=0.01)
        for e in (stream[0], stream[1]):
            m.begin_experience(e)
            for s in range(4):
                _step(m, e.train.take(torch.arange(s * 8, s * 8 + 8)), opt)
    assert torch.equal(a.memory.data["x"], b.memory.data["x"])
    assert torch.equal(a.memory.data["logits"], b.memory.data["logits"])
    fresh = build_method(stream, cfg)
    fresh.load_state_dict(a.state_dict())
    assert fresh.memory.seen == a.memory.seen == 2 * 4 * 8
    for k in a.memory.data.keys():
        assert torch.equal(fresh.memory.data[k], a.memory.data[k])
    batch = stream[2].train.take(torch.arange(8))
    fresh.experience = a.experience = stream[2]
    assert torch.equal(fresh.training_loss(batch), a.training_loss(batch))
    fresh.after_backward()
    a.after_backward()
    assert torch.equal(fresh.memory.data["x"], a.memory.data["x"])


def test_derpp_beats_finetune(tmp_path):
    ft = run(tiny_cfg("finetune"), tmp_path / "ft")["summary"]["modality_agnostic"]
    der = run(tiny_cfg("derpp", method={"name": "derpp", "buffer_size": 30}), tmp_path / "der")
    der = der["summary"]["modality_agnostic"]
    assert der["last_acc"] > ft["last_acc"] + 0.2
    assert der["bwt"] > ft["bwt"] + 0.2
