"""What the method base class writes once for every method: teacher, snapshot, seeds, structure before weights."""
import pytest
import torch

from mmcl import seeds
from mmcl.engine import build_method
from mmcl.methods import METHODS
from mmcl.settings import build_stream
from tests.harness import tiny_cfg


def test_frozen_teacher_is_a_detached_copy_of_the_snapshot():
    cfg = tiny_cfg("finetune")
    m = build_method(build_stream(cfg), cfg)
    state = m.snapshot()
    with torch.no_grad():
        for p in m.trainable_parameters():
            p.add_(1.0)  # the model moves on after the snapshot
    t = m.frozen_teacher(state)
    assert t is not m.model and not any(p.requires_grad for p in t.parameters()) and not t.training
    assert all(torch.equal(t.state_dict()[k], v) for k, v in state.items())
    moved = {n: p for n, p in m.model.named_parameters() if p.requires_grad}
    assert moved and not any(torch.equal(t.state_dict()[n], p) for n, p in moved.items())
    assert m.frozen_teacher(None) is None
    with pytest.raises(ValueError, match="does not match"):
        m.frozen_teacher({"no_such_weight": torch.zeros(1)})


def test_derived_seeds_are_named_and_distinct():
    assert seeds.derive_seed(3, "method") == 3 + 7919  # the formulas results depend on
    assert seeds.derive_seed(2, "batch_order", 1, 4) == 2 * 1_000_003 + 1_009 + 4
    purposes = [("method",), ("batch_order", 0, 1), ("joint_budget", 0), ("module", 0), ("validation",)]
    assert len({seeds.derive_seed(5, *p) for p in purposes}) == len(purposes)
    # the one known coincidence: they shuffle different data (a step, the pre-training set), see seeds.py
    assert seeds.derive_seed(5, "batch_order", 0, 0) == seeds.derive_seed(5, "base_batch_order", 0)
    with pytest.raises(KeyError, match="unknown seed purpose"):
        seeds.derive_seed(0, "nonsense")


def test_checkpoints_restore_structure_before_weights(monkeypatch):
    """`load_state_dict` calls `restore_structure(extra)` before the model's weights load, then `load_extra_state`."""
    cfg = tiny_cfg("finetune")
    m = build_method(build_stream(cfg), cfg)
    calls = []
    monkeypatch.setattr(m, "restore_structure", lambda extra: calls.append(("structure", extra)))
    monkeypatch.setattr(m.model, "load_state_dict", lambda *a, **k: calls.append(("weights",)) or ([], []))
    monkeypatch.setattr(m, "load_extra_state", lambda extra: calls.append(("extra", extra)))
    m.load_state_dict({"model": {}, "rng": m.rng.get_state(), "extra": {"k": 1}})
    assert calls == [("structure", {"k": 1}), ("weights",), ("extra", {"k": 1})]


def test_no_method_reads_the_setting_name():
    """Methods ask their setting (`self.setting`), they do not branch on its name."""
    import inspect

    for name, cls in METHODS.items():
        src = inspect.getsource(inspect.getmodule(cls))
        for needle in ('cfg["setting"]', "self.scenario", "setting.name ==", "setting == "):
            assert needle not in src, (name, needle)
