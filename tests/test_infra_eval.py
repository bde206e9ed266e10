"""Validation split, modality-known prediction, synthetic token streams, Gaussian class statistics."""
import torch

from mmcl.settings import build_stream
from mmcl.engine import evaluate, run
from mmcl.methods.base import METHODS
from mmcl.methods.gaussians import ClassGaussians, realign_head
from tests.harness import tiny_cfg, tiny_token_cfg


def test_validation_split_holds_out_training_data_and_never_uses_test():
    full = build_stream(tiny_cfg())
    val = build_stream(tiny_cfg(eval={"split": "validation", "val_fraction": 0.25}))
    for e_full, e_val in zip(full, val):
        n = len(e_full.train)
        assert len(e_val.train) + len(e_val.test) == n
        assert len(e_val.test) == round(n * 0.25)
        rows = lambda ts: {tuple(r.tolist()) for r in ts["x"]}  # noqa: E731
        assert rows(e_val.test) <= rows(e_full.train)  # held-out training samples
        assert not rows(e_val.test) & rows(e_full.test)  # no test sample
        assert not rows(e_val.test) & rows(e_val.train)
        for c in e_full.classes:  # per class
            assert (e_val.test["y"] == c).sum() == round((e_full.train["y"] == c).sum().item() * 0.25)
    again = build_stream(tiny_cfg(eval={"split": "validation", "val_fraction": 0.25}))
    assert torch.equal(again[0].test["x"], val[0].test["x"])  # seeded


def test_synthetic_token_stream_has_the_keys_of_mm5_and_modality_ids():
    s = build_stream(tiny_token_cfg())
    e = s[1]
    assert {"tokens", "mask", "zs", "m", "y"} <= set(e.train.keys())
    assert e.train["tokens"].shape[1:] == (4, 16)
    assert e.modality == "audio" and (e.train["m"] == 2).all()  # MODALITIES index of audio


def test_engine_asks_modality_specific_methods_twice():
    cfg = tiny_token_cfg("finetune")
    stream = build_stream(cfg)
    calls = []
    # predict never sees the labels: the oracle looks them up by the sample's own inputs
    label = {t.numpy().tobytes(): int(y) for e in stream for t, y in zip(e.test["tokens"], e.test["y"])}

    class Spy(METHODS["finetune"]):
        uses_known_modality = True

        def predict(self, batch, n, known_modality=False):
            calls.append(known_modality)
            assert "y" not in batch
            logits = super().predict(batch, n)
            y = torch.tensor([label[t.numpy().tobytes()] for t in batch["tokens"]])
            # aware: a perfect oracle; agnostic: always class 0
            if known_modality:
                return torch.nn.functional.one_hot(y, n).float()
            return torch.nn.functional.one_hot(torch.zeros_like(y), n).float() + 0 * logits

    m = Spy(stream, cfg, Spy.Hparams())
    row = evaluate(m, stream, len(stream) - 1)
    assert set(calls) == {False, True}
    assert row["modality_aware"] == [1.0, 1.0, 1.0]
    assert row["modality_agnostic"][1:] == [0.0, 0.0]


def test_class_gaussians_sample_their_statistics_and_realign_a_head():
    g = torch.Generator().manual_seed(0)
    feats = torch.cat([torch.randn(500, 3, generator=g) * 0.1 + 2, torch.randn(500, 3, generator=g) * 0.1 - 2])
    labels = torch.tensor([0] * 500 + [1] * 500)
    st = ClassGaussians()
    st.add(feats, labels)
    x, y = st.sample(2000, torch.Generator().manual_seed(1))
    assert torch.allclose(x[y == 0].mean(0), torch.full((3,), 2.0), atol=0.02)
    assert torch.allclose(x[y == 1].std(0), torch.full((3,), 0.1), atol=0.01)
    head = torch.nn.Linear(3, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))  # wrong way round
    realign_head(head, head, st, 2, torch.Generator().manual_seed(2), epochs=20, lr=0.05)
    assert (head(feats).argmax(1) == labels).float().mean() > 0.99
    st2 = ClassGaussians()
    st2.load_state_dict(st.state_dict())
    assert torch.equal(st2.cov[1], st.cov[1])


def test_validation_runs_end_to_end(tmp_path):
    r = run(tiny_cfg("finetune", eval={"split": "validation"}), tmp_path / "r")
    assert r["stream_info"]["split"] == "validation"  # recorded in metrics.json
