"""finetune: the lower bound, in both settings: it learns each experience and forgets old ones.

Longer scenario runs (4 steps, exact resume) are the engine tests of tests/scenario/test_scenario_engine.py,
and finetune is the twin the scenario tests of er, ewc and lwf compare with.
"""
import torch

from mmcl.engine import build_method, run
from mmcl.settings import build_stream
from tests.harness import cfg_for, tiny_cfg, train_step


def test_finetune_learns_current_and_forgets_old(tmp_path):
    m = run(tiny_cfg("finetune"), tmp_path / "r")
    A = m["matrices"]["modality_agnostic"]
    assert all(A[i][i] > 0.9 for i in range(3))  # each experience is learned
    assert A[2][0] < 0.3 and m["summary"]["modality_agnostic"]["bwt"] < -0.5


# -- scenario setting ---
def test_finetune_scenario_trains_only_what_the_stream_trains_with_the_answer_loss():
    cfg = cfg_for({"name": "finetune"})
    stream = build_stream(cfg)
    m = build_method(stream, cfg)
    trainable = {n for n, p in m.model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and not any("embed_tokens" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in m.model.named_parameters()}
    batch = next(stream[0].train.batches(8))
    m.begin_experience(stream[0])
    assert torch.equal(m.training_loss(batch), m.model.loss(batch))  # the setting's loss, nothing added
    train_step(m, stream[0])
    after = dict(m.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in trainable)  # it learns
    assert all(torch.equal(before[n], after[n]) for n in before if n not in trainable)  # the base stays
