"""zeroshot: nothing is trained; the model is scored exactly as built."""
import torch

from mmcl.settings import build_stream
from mmcl.engine import build_method, run, seed_everything
from tests.conftest import tiny_cfg


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
