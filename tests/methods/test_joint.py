"""joint: trains on the union of everything seen so far (upper reference), in both settings.

A scenario-setting run through `mmcl run` is in
tests/scenario/test_scenario_engine.py::test_llava_json_benchmark_runs_a_user_stream.
"""
import torch

from mmcl.settings import build_stream
from mmcl.engine import build_method, run
from tests.harness import cfg_for, tiny_cfg


def test_training_data_is_the_union_so_far():
    cfg = tiny_cfg("joint")
    stream = build_stream(cfg)
    m = build_method(stream, cfg)
    sizes = [len(m.training_data(e)) for e in stream]
    assert sizes == [len(stream[0].train) * (i + 1) for i in range(3)]
    assert set(m.training_data(stream[2])["y"].tolist()) == set(range(6))


def test_joint_does_not_forget(tmp_path):
    j = run(tiny_cfg("joint"), tmp_path / "j")["summary"]["modality_agnostic"]
    ft = run(tiny_cfg("finetune"), tmp_path / "f")["summary"]["modality_agnostic"]
    assert j["last_acc"] > 0.9 and j["last_acc"] > ft["last_acc"] + 0.3
    assert j["forgetting"] < 0.1


def test_budget_step_draws_the_current_step_size_from_the_union_seeded():
    """budget=step: each experience trains on as many samples as it has, drawn from the union so
    far; the draw depends on the seed and the step only (a resumed run draws the same)."""
    import pytest

    from mmcl.config import ConfigError

    cfg = tiny_cfg("joint", method={"name": "joint", "budget": "step"})
    stream = build_stream(cfg)
    m = build_method(stream, cfg)
    last = m.training_data(stream[2])
    assert [len(m.training_data(e)) for e in stream] == [len(e.train) for e in stream]
    assert set(last["y"].tolist()) == set(range(6))  # all three experiences' classes, not just the current one
    again = build_method(build_stream(cfg), cfg).training_data(stream[2])
    assert torch.equal(again["x"], last["x"]) and torch.equal(again["y"], last["y"])
    other = build_method(stream, {**cfg, "seed": cfg["seed"] + 1}).training_data(stream[2])
    assert not torch.equal(other["y"], last["y"])
    with pytest.raises((ConfigError, ValueError), match="budget"):
        build_method(stream, {**cfg, "method": {"name": "joint", "budget": "all"}})


def test_a_bad_budget_is_rejected_when_the_config_is_loaded():
    """A method's closed hyper-parameter sets (`Method.choices`) are checked by `validate`, with the key named."""
    import pytest

    from mmcl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="'method.budget' must be one of union, step, got 'all'"):
        tiny_cfg("joint", method={"name": "joint", "budget": "all"})
    with pytest.raises(ConfigError, match="method.budget"):
        load_config("msvqa-mini-joint", ["method.budget=steps"])
    assert load_config("msvqa-mini-joint", ["method.budget=union"])["method"]["budget"] == "union"


# -- scenario setting ---
def test_joint_scenario_draws_a_step_sized_sample_of_the_union():
    cfg = cfg_for({"name": "joint"})
    assert cfg["method"]["budget"] == "step"  # the scenario default: the same compute as a continual method
    stream = build_stream(cfg)
    m = build_method(stream, cfg)
    first, second = m.training_data(stream[0]), m.training_data(stream[1])
    assert first.questions == stream[0].train.questions  # one step: ordinary training
    assert len(second) == len(stream[1].train)
    ids = set(second.ids)
    assert ids & set(stream[0].train.ids) and ids & set(stream[1].train.ids)  # both steps' questions
    assert build_method(stream, cfg).training_data(stream[1]).ids == second.ids  # seeded: the same on resume
