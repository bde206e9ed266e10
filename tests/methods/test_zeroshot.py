"""zeroshot: nothing is trained; the model is scored exactly as built (both settings)."""
import torch

from mmcl.settings import build_stream
from mmcl.engine import build_method, run, seed_everything
from tests.harness import TWO_STEPS, scenario_cfg, tiny_cfg


def test_zeroshot_never_changes_the_model(tmp_path):
    cfg = tiny_cfg("zeroshot")
    m = run(cfg, tmp_path / "r")
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=False)["method"]["model"]
    seed_everything(cfg["seed"])
    fresh = build_method(build_stream(cfg), cfg).model.state_dict()
    assert all(torch.equal(state[k], fresh[k]) for k in fresh)
    # the first row is the untrained model's score on experience 0
    assert m["matrices"]["modality_agnostic"][0][0] == m["baseline"]["modality_agnostic"][0]
    assert m["timing"]["samples_per_s"] is None


# -- scenario setting ---
def test_zeroshot_scenario_answers_as_the_base_model_every_step(tmp_path):
    cfg = scenario_cfg("zeroshot", benchmark=TWO_STEPS, eval={"batch_size": 32, "max_new_tokens": 4, "future": True})
    m = run(cfg, tmp_path / "z")
    assert m["timing"]["samples_per_s"] is None and m["stages"]["base_model"]["questions"] > 0
    for name in ("vqa", "grounding_f1"):  # the base model never changes: every row is the baseline
        assert all(row == m["baseline"][name] for row in m["matrices"][name])
