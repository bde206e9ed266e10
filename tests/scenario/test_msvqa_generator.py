"""msvqa-mini generator: determinism, caching, boxes from the segmentation mask, answers consistent with
the annotations, and scenario appearance that differs the way the real scenarios do."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmcl.data.msvqa import mini as G
from mmcl.data.msvqa import (ALL_SCENARIOS, QUESTION_TYPES, ensure_msvqa_mini, load_msvqa_mini, manifest_matches,
                             read_llava_json)
from mmcl.scenario import parse_boxes  # the grounding metric's parser reads every answer
from mmcl.data.msvqa.scenes import COLOURS, MIN_PIXELS, SCENARIOS, SIZE, SceneRenderer

TINY = {"train_images": 2, "test_images": 1, "questions_per_image": 4}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("msvqa") / "a"
    return root, G.generate(root, seed=3, **TINY)


@pytest.fixture(scope="module")
def scenes():
    """8 rendered scenes per scenario (seeded)."""
    out = {}
    for name in ALL_SCENARIOS:
        with SceneRenderer(name) as r:
            out[name] = [r.render(np.random.default_rng([11, i])) for i in range(8)]
    return out


def test_same_seed_same_hash_other_seed_differs(tiny, tmp_path):
    root, man = tiny
    again = G.generate(tmp_path / "b", seed=3, **TINY)
    assert again["sha256"] == man["sha256"] and again["files"] == man["files"]
    assert (tmp_path / "b" / "train.json").read_bytes() == (root / "train.json").read_bytes()
    other = G.generate(tmp_path / "c", seed=4, scenarios=["indoor"], **TINY)
    assert other["sha256"] != man["sha256"]
    # an image depends only on (seed, scenario, split, index): same bytes when generated alone
    assert (tmp_path / "c" / "images/indoor/train/0001.png").read_bytes() != (root / "images/indoor/train/0001.png").read_bytes()
    alone = G.generate(tmp_path / "d", seed=3, scenarios=["indoor"], **TINY)
    assert (tmp_path / "d" / "images/indoor/train/0001.png").read_bytes() == (root / "images/indoor/train/0001.png").read_bytes()
    assert alone["sha256"] != man["sha256"]


def test_manifest_and_samples(tiny):
    root, man = tiny
    assert man["name"] == "msvqa-mini" and man["seed"] == 3 and len(man["sha256"]) == 64
    assert set(man["categories"]) == set(ALL_SCENARIOS)
    samples = read_llava_json(root / "train.json", image_root=root) + read_llava_json(root / "test.json", image_root=root)
    assert len(samples) == len(ALL_SCENARIOS) * 3 * 4
    for s in samples:
        assert s.scenario in ALL_SCENARIOS and s.split in ("train", "test") and s.qtype in QUESTION_TYPES
        with Image.open(s.image) as im:
            assert im.size == (SIZE, SIZE) and im.mode == "RGB"
        labels = [b.label for b in s.boxes]
        cats = SCENARIOS[s.scenario].categories
        assert set(labels) <= set(cats)
        for b in s.boxes:  # inside the image, non-empty
            x1, y1, x2, y2 = b.box
            assert 0 <= x1 < x2 <= 100 and 0 <= y1 < y2 <= 100
        if s.qtype == "count":
            cat = next(c for c in cats if f"How many {G.KINDS[c].plural} " in s.question)
            assert s.answer == str(labels.count(cat))
        elif s.qtype == "exist":
            cat = s.question.removeprefix("Is there ").removesuffix(" in the image?").split(" ", 1)[1]
            assert s.answer == ("yes" if cat in labels else "no")
        elif s.qtype == "category":
            assert s.answer in labels
        elif s.qtype == "color":
            assert s.answer in COLOURS
        else:
            got = parse_boxes(s.answer)
            cat = next(c for c in cats if s.question in (f"Where is the {c}?", f"Where are the {G.KINDS[c].plural}?"))
            want = sorted(b.box for b in s.boxes if b.label == cat)
            assert len(got) == len(want) >= 1
            assert np.abs(np.array(sorted(got)) - np.array(want)).max() <= 1.0  # integer rounding only


def test_cache_skips_matching_manifest(tmp_path, monkeypatch):
    root, man = ensure_msvqa_mini(seed=1, scenarios=["ground"], root=tmp_path / "c", **TINY)
    calls, real = [], G.generate
    monkeypatch.setattr(G, "generate", lambda *a, **k: calls.append(1) or man)
    assert ensure_msvqa_mini(seed=1, scenarios=["ground"], root=root, verify=True, **TINY)[1] == man and not calls
    ensure_msvqa_mini(seed=2, scenarios=["ground"], root=root, **TINY)  # other seed: regenerate
    assert calls == [1]
    (root / "images/ground/test/0000.png").unlink()  # a missing file: regenerate
    assert manifest_matches(root, 1, {**TINY, "scenarios": ["ground"], "base_images": 0}) is None
    monkeypatch.setattr(G, "generate", real)
    ensure_msvqa_mini(seed=1, scenarios=["ground"], root=root, **TINY)
    assert manifest_matches(root, 1, {**TINY, "scenarios": ["ground"], "base_images": 0}, verify=True)["sha256"] == man["sha256"]
    # default location under $MMCL_CACHE; the loader filters by split and scenario
    one = {**TINY, "train_images": 1}
    xs = load_msvqa_mini("test", seed=1, scenarios=["ground", "indoor"], **one)
    where = G.default_root(1, {**one, "scenarios": list(ALL_SCENARIOS), "base_images": 0}).resolve()
    assert str(where).startswith(str(Path(os.environ["MMCL_CACHE"]).resolve()))
    assert len(xs) == 8 and {x.scenario for x in xs} == {"ground", "indoor"}
    assert all(x.split == "test" and Path(x.image).is_relative_to(where) for x in xs)


def test_boxes_are_the_segmentation_mask_extent(scenes):
    for name, rendered in scenes.items():
        n = 0
        for sc in rendered:
            bodies = {o.body for o in sc.objects}
            assert len(bodies) == len(sc.objects)
            for o in sc.objects:
                ys, xs = np.nonzero(sc.seg == o.body)
                assert len(xs) == o.pixels >= MIN_PIXELS
                assert o.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                x1, y1, x2, y2 = o.box
                assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
                # the object is really drawn there: its pixels differ from the scene's other pixels
                n += 1
        assert n >= 8, name


def test_pixels_of_an_object_show_its_colour(scenes):
    """On scenarios without a colour cast, a red object's pixels are redder than the picture."""
    hits = 0
    for name in ("ground", "indoor", "low-altitude"):
        for sc in scenes[name]:
            img = sc.rgb.astype(float)
            for o in sc.objects:
                if o.colour == "red" and o.pixels >= 20:
                    m = sc.seg == o.body
                    red = img[m][:, 0] - img[m][:, 1:].mean(1)
                    assert red.mean() > (img[..., 0] - img[..., 1:].mean(-1)).mean() + 20
                    hits += 1
    assert hits >= 3


def _stats(rendered):
    imgs = np.stack([s.rgb for s in rendered]).astype(float) / 255
    lum = imgs @ np.array([0.299, 0.587, 0.114])
    areas = [(o.box[2] - o.box[0]) * (o.box[3] - o.box[1]) / SIZE ** 2 for s in rendered for o in s.objects]
    return {"rgb": imgs.mean((0, 1, 2)), "contrast": float(lum.std((1, 2)).mean()),
            "area": float(np.median(areas)), "objects": float(np.mean([len(s.objects) for s in rendered]))}


def test_scenario_appearance_differs(scenes):
    st = {k: _stats(v) for k, v in scenes.items()}
    uw = st["underwater"]
    for name, s in st.items():
        if name != "underwater":
            # water removes red and adds a blue-green veil, lowering contrast
            assert uw["rgb"][0] / uw["rgb"][1:].mean() < 0.6 * s["rgb"][0] / s["rgb"][1:].mean(), name
            assert uw["contrast"] < 0.75 * s["contrast"], name
    # high-altitude: many small objects; indoor: few large ones
    assert st["high-altitude"]["objects"] > 1.5 * st["indoor"]["objects"]
    assert st["high-altitude"]["area"] < st["indoor"]["area"] / 2
    assert st["low-altitude"]["area"] < st["indoor"]["area"]
    # every pair of scenarios is told apart by these statistics
    names = list(st)
    feats = {k: np.r_[st[k]["rgb"] * 4, st[k]["contrast"] * 4, np.log(st[k]["area"]), st[k]["objects"] / 4] for k in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.linalg.norm(feats[a] - feats[b]) > 0.3, (a, b, json.dumps({k: list(map(float, v)) for k, v in feats.items()}))


def test_base_images_sizes_only_the_pretraining_scenario(tmp_path):
    root, man = ensure_msvqa_mini(seed=1, scenarios=["indoor", "ground"], root=tmp_path / "b",
                                  **{**TINY, "train_images": 1}, base_images=3)
    assert man["stats"]["ground"]["train"]["images"] == 3 and man["stats"]["indoor"]["train"]["images"] == 1
    assert man["params"]["base_images"] == 3
    assert man["stats"]["ground"]["test"]["images"] == man["stats"]["indoor"]["test"]["images"] == 1


def test_ground_with_all_kinds_names_the_streams_objects(tmp_path):
    """ground_kinds="all": the ground scenario shows (and asks about) the stream's labelled kinds, the
    other scenarios are the same bytes, and the default keeps its parameters and cache folder."""
    from mmcl.data.msvqa.scenes import GROUND_KINDS, scenario_spec

    assert GROUND_KINDS == ("own", "all")
    own, wide = scenario_spec("ground"), scenario_spec("ground", "all")
    stream_kinds = {c for s in ("high-altitude", "underwater", "low-altitude", "indoor") for c in SCENARIOS[s].categories}
    assert set(own.categories) == {"car", "person", "ball", "box", "duck", "cone"}
    assert stream_kinds <= set(wide.categories) and set(own.categories) <= set(wide.categories)
    assert scenario_spec("indoor", "all") is SCENARIOS["indoor"]
    with pytest.raises(ValueError, match="ground_kinds"):
        scenario_spec("ground", "most")
    sizes = {"train_images": 6, "test_images": 1, "questions_per_image": 4}
    a = G.generate(tmp_path / "a", seed=0, scenarios=["indoor", "ground"], ground_kinds="all", **sizes)
    b = G.generate(tmp_path / "b", seed=0, scenarios=["indoor", "ground"], **sizes)
    assert a["params"]["ground_kinds"] == "all" and "ground_kinds" not in b["params"]
    assert a["categories"]["ground"] == list(wide.categories)
    labels = {x.label for s in read_llava_json(tmp_path / "a" / "train.json", image_root=tmp_path / "a")
              if s.scenario == "ground" for x in s.boxes}
    assert labels - set(own.categories)  # six images already show kinds the own ground never has
    for i in range(6):
        rel = f"images/indoor/train/{i:04d}.png"
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert (tmp_path / "a/images/ground/train/0000.png").read_bytes() != (tmp_path / "b/images/ground/train/0000.png").read_bytes()
    pa = G._params(6, 1, 4, ALL_SCENARIOS, 0, "all")
    assert G.default_root(0, pa).name.endswith("-gall") and not G.default_root(0, G._params(6, 1, 4, ALL_SCENARIOS, 0, "own")).name.endswith("-gall")


def test_the_cut_vocabulary_covers_every_question_and_answer_written(tiny):
    # vocab: msvqa-mini is cut to G.vocabulary_texts(); a template added without it would fall back to characters
    from mmcl.models.llava import tiny_tokenizer

    root, _ = tiny
    full, cut = tiny_tokenizer("bert"), tiny_tokenizer("msvqa-mini")
    samples = read_llava_json(root / "train.json", image_root=root) + read_llava_json(root / "test.json", image_root=root)
    texts = {t for s in samples for t in (s.question, s.answer)}
    assert len(texts) > 20
    for t in sorted(texts):
        assert cut.tokenize(t) == full.tokenize(t), t
