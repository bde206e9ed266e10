"""The mm5 benchmark (image + text here: fast generators) and the prompted text-anchored model."""
import numpy as np
import pytest
import torch

from mmcl.config import load_config
from mmcl.data import mm5
from mmcl.settings import build_stream
from mmcl.data.mm5 import image as mm5_image
from mmcl.engine import build_method, run, seed_everything

TINY = ["benchmark.train_per_class=12", "benchmark.test_per_class=6", "benchmark.modalities=[image,text]",
        "train.epochs=3", "train.batch_size=16", "logging.progress=false", "report=false"]


def test_image_generator_is_real_deterministic_and_validated(tmp_path):
    a = mm5_image.generate(tmp_path / "a", seed=0, train_per_class=3, test_per_class=2)
    b = mm5_image.generate(tmp_path / "b", seed=0, train_per_class=3, test_per_class=2)
    c = mm5_image.generate(tmp_path / "c", seed=1, train_per_class=3, test_per_class=2)
    assert a["sha256"] == b["sha256"] != c["sha256"]
    assert a["counts"] == {"train": 18, "test": 12}
    samples, y, split = mm5_image.load(tmp_path / "a")
    assert samples[0].shape == (28, 28) and samples[0].dtype == np.uint8
    assert np.bincount(y[split == 0]).tolist() == [3] * 6
    src = {f["split"]: set() for f in a["files"]}
    for f in a["files"]:
        src[f["split"]].add(f["source_index"])
    assert not src["train"] & src["test"]
    bad = tmp_path / "a" / a["files"][4]["path"]
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=str(bad)):
        mm5_image.load(tmp_path / "a")


def test_stream_layout_orders_and_cache(monkeypatch):
    cfg = load_config("mm5-finetune", TINY)
    s = build_stream(cfg)
    assert [e.modality for e in s] == ["image", "text"]
    assert s.class_names[0] == "a silhouette of a cat" and s.class_names[6].startswith("a quote about")
    e0 = s[0].train
    assert e0["tokens"].shape == (72, mm5.TOKENS, mm5.WIDTH) and e0["mask"][:, :4].all() and not e0["mask"][:, 4:].any()
    assert (s[1].train["m"] == 4).all() and s[1].train["mask"][:, 0].all()
    assert torch.allclose(s[1].train["zs"].norm(dim=1), torch.ones(len(s[1].train)), atol=1e-4)
    # a second build reads the feature cache: no frozen encoder runs again
    monkeypatch.setattr(mm5, "encode_modality", lambda *a, **k: pytest.fail("encoder re-run"))
    s2 = build_stream(cfg)
    assert torch.equal(s2[1].test["tokens"], s[1].test["tokens"])
    # two experiences per modality, and a seeded random modality order
    s3 = build_stream(load_config("mm5-finetune", TINY + ["stream.experiences_per_modality=2"]))
    assert [e.name for e in s3] == ["image-1", "image-2", "text-1", "text-2"] and len(s3[0].classes) == 3
    orders = {tuple(e.modality for e in build_stream(load_config("mm5-finetune", TINY + ["stream.order=random", f"seed={k}"])))
              for k in range(6)}
    assert orders == {("image", "text"), ("text", "image")}


def test_prompts_are_real_and_backbone_frozen():
    cfg = load_config("mm5-finetune", TINY)
    s = build_stream(cfg)
    seed_everything(0)
    method = build_method(s, cfg)
    model = method.model
    batch = s[0].train.take(torch.arange(8))
    emb = model(batch)
    other = model(batch, prompts=torch.randn(8, 4, model.width))
    assert not torch.allclose(emb, other)  # the prompts go through the frozen transformer
    model.logits(emb, 6).sum().backward()
    assert model.prompts.grad is not None and model.prompts.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())
    assert not any(k.startswith("backbone.") for k in method.state_dict()["model"])


def test_both_protocols_and_text_zero_shot(tmp_path):
    z = run(load_config("mm5-zeroshot", TINY), tmp_path / "z")
    # text: the MiniLM sentence embedding against "a quote about <topic>" is a real zero-shot classifier
    assert z["baseline"]["modality_aware"][1] > 1 / 8 + 0.15
    ft = run(load_config("mm5-finetune", TINY), tmp_path / "ft")
    aware, agn = ft["matrices"]["modality_aware"], ft["matrices"]["modality_agnostic"]
    # after text, image classes compete with text classes only in the agnostic protocol
    assert aware[1][0] >= agn[1][0]
    assert all(aware[i][j] >= agn[i][j] - 1e-9 for i in range(2) for j in range(i + 1))


def test_optical_flow_tokens_see_the_direction_of_motion():
    from mmcl.models.encoders import optical_flow_grid

    rng = np.random.default_rng(0)
    texture = (rng.random((32, 32)) * 255).astype(np.uint8)
    frames = np.zeros((2, 8, 64, 64, 3), np.uint8)
    for t in range(8):
        frames[0, t, 16:48, 8 + 2 * t:40 + 2 * t] = texture[..., None]  # moving right
        frames[1, t, 8 + 2 * t:40 + 2 * t, 16:48] = texture[..., None]  # moving down
    flow = optical_flow_grid(frames, grid=4).reshape(2, 7, 4, 4, 2)
    fx, fy = flow[..., 0].mean(dim=(1, 2, 3)), flow[..., 1].mean(dim=(1, 2, 3))
    assert fx[0] > 0.3 and abs(fy[0]) < 0.2 * fx[0]
    assert fy[1] > 0.3 and abs(fx[1]) < 0.2 * fy[1]


def test_mmcl_data_generates_validates_and_prints_the_manifest(capsys):
    from mmcl.cli import main

    args = ["data", "mm5", "benchmark.modalities=[image,text]", "benchmark.train_per_class=4",
            "benchmark.test_per_class=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "image: cat, dog, cow, horse, sheep, bird" in out and "Animal-MNIST" in out
    table = out[out.index("modality "):].splitlines()
    assert table[2].split()[:4] == ["image", "6", "24", "12"] and table[3].split()[0] == "text"
    assert main(["data", "animals"]) == 2
