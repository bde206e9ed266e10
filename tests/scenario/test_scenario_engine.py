"""The scenario setting end to end: config, msvqa-mini and llava-json streams, protocols, engine, resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmcl import cli
from mmcl.config import ConfigError, load_config
from mmcl.settings import build_stream
from mmcl.data.msvqa import STREAM_SCENARIOS
from mmcl.engine import run
from mmcl.methods.finetune import Finetune
from tests.harness import TINY_VLM, interrupt_and_resume, scenario_cfg, write_cfg


def test_4step_run_through_mmcl_run_writes_both_matrices(tmp_path):
    cfg = scenario_cfg("finetune", report=True)
    out = tmp_path / "run"
    assert cli.main(["run", str(write_cfg(tmp_path / "c.yaml", cfg)), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["setting"] == "scenario" and m["benchmark"] == "msvqa-mini" and m["method"] == "finetune"
    assert [e["scenario"] for e in m["experiences"]] == list(STREAM_SCENARIOS)
    assert all("classes" not in e and e["train"] == 15 and e["test"] == 15 for e in m["experiences"])
    assert set(m["matrices"]) == {"vqa", "grounding_f1"}
    for name, A in m["matrices"].items():
        assert len(A) == 4 and all(len(r) == 4 for r in A)
        assert all(0.0 <= v <= 1.0 for r in A for v in r), name
        assert set(m["summary"][name]) == {"avg_acc", "last_acc", "avg_inc_acc", "forgetting", "bwt", "fwt", "plasticity"}
        assert (out / f"matrix_{name}.csv").is_file() and (out / f"matrix_{name}.png").is_file()
    assert m["stream_info"]["order"] == list(STREAM_SCENARIOS)
    assert m["last_by_scenario"]["vqa"]["indoor"] == m["matrices"]["vqa"][-1][3]
    assert m["stages"]["base_model"]["questions"] == 15  # trained on the ground scenario, cached: a recorded stage
    assert Path(m["stages"]["base_model"]["path"]).is_file()
    assert "base_model" not in m["stream_info"]
    preds = [json.loads(ln) for ln in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 60 and {"step", "question", "answer", "prediction"} <= set(preds[0])
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    names = set(ckpt["method"]["model"])
    assert any("lora_" in n for n in names) and any("multi_modal_projector" in n for n in names)
    assert not any("embed_tokens" in n for n in names)  # the frozen base model is not in the checkpoint
    cfg_out = (out / "config.yaml").read_text()
    assert "setting: scenario" in cfg_out and "hidden_dim" not in cfg_out


def test_20step_protocol_interleaves_disjoint_subtasks_seeded():
    cfg = scenario_cfg(stream={"protocol": "20-step", "order": "random"}, seed=1)
    s = build_stream(cfg)
    assert len(s) == 20 and s.info["order"] == [e.name for e in s]
    for r in range(5):  # every round holds every scenario once: scenarios recur
        assert sorted(e.scenario for e in s.experiences[4 * r:4 * r + 4]) == sorted(STREAM_SCENARIOS)
        assert {e.info["sub_task"] for e in s.experiences[4 * r:4 * r + 4]} == {r + 1}
    for sc in STREAM_SCENARIOS:
        steps = [e for e in s if e.scenario == sc]
        for split in ("train", "test"):
            ids = [set(getattr(e, split).ids) for e in steps]
            imgs = [set(getattr(e, split).image_index.tolist()) for e in steps]
            assert sum(map(len, ids)) == len(set().union(*ids)) == 15  # disjoint, together the whole scenario
            assert sum(map(len, imgs)) == len(set().union(*imgs))  # no image in two sub-tasks
    again = build_stream(cfg)
    assert [e.name for e in again] == [e.name for e in s] and again[3].train.ids == s[3].train.ids
    other = build_stream(scenario_cfg(stream={"protocol": "20-step", "order": "random"}, seed=2))
    assert [e.name for e in other] != [e.name for e in s]
    fixed = build_stream(scenario_cfg(stream={"protocol": "20-step"}))
    assert [e.scenario for e in fixed][:8] == list(STREAM_SCENARIOS) * 2


def test_resume_mid_stream_equals_uninterrupted(tmp_path, monkeypatch):
    cfg = scenario_cfg("finetune", train={"epochs": 2, "batch_size": 8, "lr": 3e-3})
    # step 2 (4 batches per step): in the middle of its first epoch
    state = interrupt_and_resume(tmp_path, monkeypatch, Finetune, cfg, 6)
    assert state["position"] == {"exp": 1, "epoch": 0, "step": 2}


def test_config_errors_name_the_key(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown config key 'vlm.lora_rank'; closest valid key: 'vlm.lora_r'"):
        scenario_cfg(vlm={**TINY_VLM, "lora_rank": 4})
    with pytest.raises(ConfigError, match="'stream.protocol' must be one of 4-step, 20-step"):
        scenario_cfg(stream={"protocol": "10-step"})
    with pytest.raises(ConfigError, match="benchmark.ground_kinds: expected one of own, all, got 'most'"):
        scenario_cfg(benchmark={**scenario_cfg()["benchmark"], "ground_kinds": "most"})
    with pytest.raises(ConfigError, match="unknown config key 'model.hidden_dim'"):
        scenario_cfg(model={"hidden_dim": 3})
    with pytest.raises(ConfigError, match="method 'derpp' does not support the scenario setting"):
        scenario_cfg("derpp")
    with pytest.raises(ConfigError, match="belongs to the scenario setting; set setting=scenario"):
        load_config("msvqa-mini-finetune", ["setting=modality"])
    with pytest.raises(ConfigError, match="unknown config key 'stream.protocol'"):
        load_config("mm5-finetune", ["stream.protocol=4-step"])  # the modality setting has no protocols
    assert cli.main(["run", "msvqa-mini-finetune", "stream.protocol=3-step", "--out", str(tmp_path / "x")]) == 2
    assert "must be one of 4-step, 20-step" in capsys.readouterr().err


def _llava_fixture(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    entries = {"train": [], "test": []}
    for split, n in (("train", 6), ("test", 3)):
        for i in range(n):
            for sc in ("harbour", "forest"):
                name = f"img/{sc}-{split}-{i}.png"
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / name)
                entries[split].append({"id": f"{sc}-{split}-{i}", "image": name, "scenario": sc, "conversations": [
                    {"from": "human", "value": "<image>\nHow many boats are there?"}, {"from": "gpt", "value": str(i % 3)},
                    {"from": "human", "value": "Where is the boat?"}, {"from": "gpt", "value": "[10,10,50,60]"}]})
    paths = []
    for split, es in entries.items():
        paths.append(root / f"{split}.json")
        paths[-1].write_text(json.dumps(es))
    return paths[0], paths[1]


def test_llava_json_benchmark_runs_a_user_stream(tmp_path):
    train, test = _llava_fixture(tmp_path / "data")
    bench = {"name": "llava-json", "train": str(train), "test": str(test)}
    cfg = scenario_cfg("joint", benchmark=bench)
    assert cfg["method"]["budget"] == "step"  # the scenario default: the same compute as every method
    s = build_stream(cfg)
    assert [e.scenario for e in s] == ["harbour", "forest"] and s.pretrain is None
    assert len(s[0].train) == 12 and int(s[0].train.grounding.sum()) == 6 and len(s[1].test) == 6
    assert tuple(s[0].train.images.shape[1:]) == (3, 32, 32)  # decoded once, resized to the model's input
    m = run(cfg, str(tmp_path / "run"))
    assert len(m["matrices"]["vqa"]) == 2 and all(0 <= v <= 1 for r in m["matrices"]["grounding_f1"] for v in r)
    # a base scenario is held out of the stream and trains the base model
    s2 = build_stream(scenario_cfg(benchmark={**bench, "base_scenario": "forest"}))
    assert [e.scenario for e in s2] == ["harbour"] and len(s2.pretrain) == 12
    with pytest.raises(ConfigError, match="no training questions"):
        build_stream(scenario_cfg(benchmark={**bench, "scenarios": ["desert"]}))
    with pytest.raises(ConfigError, match="benchmark.train"):
        scenario_cfg(benchmark={"name": "llava-json"})


def test_validation_split_holds_out_training_images_never_the_test_split():
    """eval.split=validation: every step scores on a seeded 20% of its training images (all their
    questions), removed from training; no test-split question is read."""
    from mmcl.settings import build_stream

    cfg = scenario_cfg(eval={"split": "validation", "val_fraction": 0.4})
    full, val = build_stream(scenario_cfg()), build_stream(cfg)
    assert val.info["split"] == "validation"
    for e, f in zip(val, full):
        held, kept = set(e.test.image_index.tolist()), set(e.train.image_index.tolist())
        assert held and kept and not held & kept
        assert all("-train-" in i for i in e.test.ids) and len(e.test) + len(e.train) == len(f.train)
        assert e.info["test"] == len(e.test)
    again = build_stream(cfg)
    assert [e.test.ids for e in again] == [e.test.ids for e in val]


def test_base_model_key_follows_the_pretraining_data_not_the_stream():
    from mmcl.scenario.base_model import base_key

    cfg = scenario_cfg("finetune", benchmark={**scenario_cfg()["benchmark"], "base_images": 5})
    key = base_key(cfg, build_stream(cfg))
    more_stream = scenario_cfg("finetune", benchmark={**cfg["benchmark"], "train_images": 6, "test_images": 4})
    assert base_key(more_stream, build_stream(more_stream)) == key  # same ground scenario: base reused
    more_base = scenario_cfg("finetune", benchmark={**cfg["benchmark"], "base_images": 6})
    other = base_key(more_base, build_stream(more_base))
    assert other["pretrain_sha256"] != key["pretrain_sha256"] and other["questions"] == 18
    # the default vocabulary keeps the key of before vlm.vocab existed; a cut one is another base model
    assert "vocab" not in key["vlm"]
    cut = scenario_cfg("finetune", benchmark=cfg["benchmark"], vlm={**cfg["vlm"], "vocab": "msvqa-mini"})
    assert base_key(cut, build_stream(cut))["vlm"]["vocab"] == "msvqa-mini"


def test_region_naming_base_training_uses_the_boxes_and_keeps_old_keys(tmp_path, monkeypatch):
    """base.region_weight > 0: base training adds the region-naming loss over the pre-training data's
    boxes (which then key the cache); 0 keeps the key of before the option existed."""
    from mmcl.scenario import base_model

    monkeypatch.setenv("MMCL_CACHE", str(tmp_path / "cache"))
    cfg = scenario_cfg("finetune", benchmark={**scenario_cfg()["benchmark"], "base_images": 5},
                       vlm={**TINY_VLM, "image_size": 64}, base={"epochs": 8, "lr": 1e-2, "batch_size": 8})
    stream = build_stream(cfg)
    assert any(stream.pretrain.boxes) and len(stream.pretrain.boxes) == len(stream.pretrain)
    off = base_model.base_key(cfg, stream)
    assert "region_weight" not in off["base"] and "pretrain_boxes_sha256" not in off
    on_cfg = {**cfg, "base": {**cfg["base"], "region_weight": 1.0}}
    on = base_model.base_key(on_cfg, stream)
    assert on["base"]["region_weight"] == 1.0 and on["pretrain_boxes_sha256"]
    from mmcl.settings import make_setting

    on_setting = make_setting(on_cfg)
    info = on_setting.prepare(stream)["base_model"]  # the stage, as the engine runs and records it
    named = on_setting.build_model(stream)
    assert 0 < info["labelled_cells"] < 1 and len(info["region_losses"]) == 8
    assert info["region_losses"][-1] < info["region_losses"][0]  # the model learns to name the regions
    plain = make_setting(cfg).build_model(stream)  # same data and start, answers only
    data = stream.pretrain.take(torch.arange(len(stream.pretrain)))
    cells = named.region_targets(stream.pretrain.boxes)
    with torch.no_grad():  # the loss was trained: the weighted model names the regions far better
        assert named.losses(data, cells)[1].item() < 0.5 * plain.losses(data, cells)[1].item()
    with pytest.raises(ConfigError, match="base.region_weight' must be >= 0"):
        scenario_cfg(base={"region_weight": -1.0})


def test_train_region_weight_adds_the_region_term_to_every_methods_loss_and_is_hidden_from_predict(tmp_path, monkeypatch):
    """train.region_weight > 0: the model's training loss (what finetune, LwF, EWC, ER, O-LoRA, UNIFIER and
    QUAD's first step compute) is the answer loss plus the weight times the region-naming loss over the
    batch's boxes; 0 leaves it exactly as before. The boxes (every grounding answer) never reach `predict`."""
    from mmcl.settings import make_setting

    cfg = scenario_cfg("finetune", train={"region_weight": 0.5}, vlm={**TINY_VLM, "image_size": 64})
    stream = build_stream(cfg)
    setting = make_setting(cfg)
    model = setting.build_model(stream)
    assert model.region_weight == 0.5
    batch = stream[0].train.take(torch.arange(len(stream[0].train)))
    assert len(batch["boxes"]) == len(batch["questions"]) and any(batch["boxes"])
    answer, region = model.losses(batch, model.region_targets(batch["boxes"]))
    assert region.item() > 0
    assert setting.loss(model, batch, 0).item() == pytest.approx(answer.item() + 0.5 * region.item(), rel=1e-5)
    assert model.loss_and_logits(batch)[0].item() == pytest.approx(answer.item() + 0.5 * region.item(), rel=1e-5)
    model.region_weight = 0.0
    assert setting.loss(model, batch, 0).item() == pytest.approx(answer.item(), rel=1e-6)
    model.region_weight = 0.5
    no_boxes = {k: v for k, v in batch.items() if k != "boxes"}
    assert setting.loss(model, no_boxes, 0).item() == pytest.approx(answer.item(), rel=1e-6)
    # evaluation: neither the answers nor the boxes are in what predict sees
    seen = []
    real = type(setting).predict

    def spy(self, model, b, num_classes):
        seen.append(set(b))
        return real(self, model, b, num_classes)

    monkeypatch.setattr(type(setting), "predict", spy)
    run(scenario_cfg("finetune", train={"region_weight": 0.5, "epochs": 1}), str(tmp_path / "run"))
    assert seen and all(not ({"answers", "boxes"} & keys) for keys in seen)
    with pytest.raises(ConfigError, match="train.region_weight' must be >= 0"):
        scenario_cfg(train={"region_weight": -1.0})
    # an hf:<dir> checkpoint has no fixed grid of image tokens: refused, with the fix named
    with pytest.raises(ConfigError, match=r"not an hf:<dir> checkpoint; set train.region_weight=0"):
        scenario_cfg(train={"region_weight": 1.0}, vlm={**TINY_VLM, "preset": "hf:/nowhere"})


def test_quad_and_er_train_the_region_term_on_their_own_rows():
    """QUAD computes its task loss from its own forward pass from the second step on, and ER replays stored
    samples: both keep the run's region term (the same objective as every other method)."""
    from mmcl.engine import build_method
    from tests.harness import train_step

    for name in ("quad", "er"):
        terms = {}
        for w in (0.0, 1.0):
            cfg = scenario_cfg(name, train={"region_weight": w}, vlm={**TINY_VLM, "image_size": 64})
            stream = build_stream(cfg)
            torch.manual_seed(0)
            m = build_method(stream, cfg)
            assert m.model.region_weight == w
            train_step(m, stream[0])
            m.begin_experience(stream[1])
            if name == "quad":
                assert m.teacher is not None  # its own forward pass (replay and attention distillation)
            batch = stream[1].train.take(torch.arange(8))
            torch.manual_seed(0)
            terms[w] = m.training_loss(batch).item()
        assert terms[1.0] > terms[0.0], name


def test_a_step_raises_its_own_scenarios_score_above_the_base_models(tmp_path):
    """Learnability at small size: one step of the grounded regime (region term, LoRA plus embeddings)
    lifts the step's VQA above the base model's (plasticity = diagonal minus base row > 0); the same run
    with a learning rate of ~0 stays at the base model's score, so the gain is the step's training."""
    bench = {"name": "msvqa-mini", "train_images": 24, "test_images": 24, "questions_per_image": 4,
             "scenarios": ["indoor"], "base_images": 24}
    gains = {}
    for lr in (1e-2, 1e-12):
        cfg = scenario_cfg("finetune", benchmark=bench, vlm={**TINY_VLM, "image_size": 64, "train_embeddings": True},
                           base={"epochs": 4, "lr": 3e-3, "batch_size": 16},
                           train={"epochs": 12, "batch_size": 16, "lr": lr, "region_weight": 1.0})
        m = run(cfg, str(tmp_path / f"lr{lr}"))
        gains[lr] = m["summary"]["vqa"]["plasticity"]
        assert gains[lr] == pytest.approx(m["matrices"]["vqa"][0][0] - m["baseline"]["vqa"][0])
    assert gains[1e-2] >= 0.1, gains
    assert abs(gains[1e-12]) < 0.02, gains
