"""The `user` benchmark: your own files in every layout and format, validated before training.

Fixtures are tiny files written here (PNG, JPEG, WAV, FLAC, MP4, AVI, 16-bit PNG, NPY, CSV, JSONL) in
the three layouts (class folders, manifests, ESC-50's own); the frozen encoders are the real ones.
"""
from __future__ import annotations

import copy
import json
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from PIL import Image

from mmcl.config import BASE, ConfigError, deep_merge, load_config, validate
from mmcl.data import DataError
from mmcl.settings import build_stream
from mmcl.data import mm5 as mm5_data
from mmcl.data.user import layouts, readers
from mmcl.data.user.layouts import plain_name
from tests.harness import run_cli

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------------- file makers
def _mk(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def png(p: Path, hue: int = 0, size=(30, 24), fmt="PNG") -> Path:
    a = RNG.integers(0, 60, (size[1], size[0], 3), dtype=np.uint8)
    a[..., hue % 3] += 180
    Image.fromarray(a).save(_mk(p), format=fmt)
    return p


def tone(p: Path, freq: float, sr: int = 22050, seconds: float = 0.5) -> Path:
    t = np.arange(int(sr * seconds)) / sr
    sf.write(_mk(p), 0.3 * np.sin(2 * np.pi * freq * t), sr)
    return p


def clip(p: Path, n_frames: int = 5, direction: int = 1, fmt: str = "mp4") -> Path:
    import av

    with av.open(str(_mk(p)), "w", format=fmt) as c:
        s = c.add_stream("mpeg4", rate=8)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        for i in range(n_frames):
            a = np.full((32, 32, 3), 40, np.uint8)
            x = 4 + direction * 3 * i if direction > 0 else 24 - 3 * i
            a[12:20, x:x + 6] = 230
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 8)
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return p


def depth_png(p: Path, near_mm: int) -> Path:
    a = np.zeros((20, 20), np.uint16)
    a[5:15, 4:16] = near_mm + RNG.integers(0, 50, (10, 12))
    Image.fromarray(a).save(_mk(p))  # uint16 -> mode I;16
    return p


def depth_npy(p: Path, near_m: float) -> Path:
    a = np.zeros((20, 20), np.float32)
    a[3:17, 6:14] = near_m + RNG.random((14, 8)).astype(np.float32)
    np.save(_mk(p), a)
    return p


def cfg_for(experiences, sources=(), **sections) -> dict:
    cfg = deep_merge(copy.deepcopy(BASE), {
        "benchmark": {"name": "user", "experiences": experiences, "sources": list(sources)},
        "method": {"name": "finetune"}, "train": {"epochs": 1, "batch_size": 8},
        "logging": {"progress": False}, "report": False})
    return validate(deep_merge(cfg, sections))


# ------------------------------------------------------------------------------------- the data
@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("userdata")
    # images: split folders, PNG and JPEG, class names to clean
    for split, n in (("train", 2), ("test", 1)):
        for i in range(n):
            png(r / "img" / split / "golden_retriever" / f"{i}.png", 0)
            png(r / "img" / split / "TabbyCat" / f"{i}.jpg", 2, fmt="JPEG")
    (r / "img" / "train" / "golden_retriever" / "notes.md").write_text("not an image")  # ignored, counted
    # audio: class folders without split folders (seeded split), WAV and FLAC at other sample rates
    for i in range(3):
        tone(r / "snd" / "dog_bark" / f"{i}.wav", 300 + 30 * i, sr=22050)
        tone(r / "snd" / "Rooster" / f"{i}.flac", 1500 + 50 * i, sr=8000)
    # ESC-50 as distributed: meta/esc50.csv + audio/, fold 5 = test
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for target, (cat, f0) in enumerate([("dog", 400), ("crackling_fire", 2500)]):
        for fold in (1, 2, 5):
            name = f"{fold}-{target}00-A-{target}.wav"
            tone(r / "esc" / "audio" / name, f0 + 10 * fold, sr=44100, seconds=1.2)
            rows.append(f"{name},{fold},{target},{cat},{'True' if target == 0 else 'False'},{target}00,A")
    (r / "esc" / "meta").mkdir(parents=True)
    (r / "esc" / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    # video: a CSV manifest with a split column, MP4 and AVI
    lines = ["path,label,split"]
    for label, d in (("moving_right", 1), ("moving_left", -1)):
        for i, (fmt, split) in enumerate((("mp4", "train"), ("avi", "train"), ("mp4", "test"))):
            clip(r / "vid" / "clips" / f"{label}{i}.{fmt}", n_frames=4 + i, direction=d, fmt=fmt)
            lines.append(f"clips/{label}{i}.{fmt},{label},{split}")
    (r / "vid" / "manifest.csv").write_text("\n".join(lines) + "\n")
    # depth: class folders, 16-bit PNG and NPY
    for i in range(3):
        depth_png(r / "depth" / "kitchen" / f"{i}.png", 900 + 100 * i)
        depth_npy(r / "depth" / "living_room" / f"{i}.npy", 2.0 + i)
    # text: AG News as distributed (header-less CSV, numeric labels, classes.txt) and a JSONL manifest
    (r / "ag").mkdir()
    (r / "ag" / "classes.txt").write_text("World\nSports\n")
    (r / "ag" / "train.csv").write_text(
        '"1","Talks resume","Diplomats met in Geneva to discuss the ceasefire."\n'
        '"2","Late goal","The striker scored in the final minute of the match."\n'
        '"1","Election held","Voters chose a new parliament on Sunday."\n'
        '"2","Title defended","The champion won the final set of the tennis final."\n')
    (r / "ag" / "test.csv").write_text(
        '"1","Summit ends","Leaders signed a trade treaty."\n"2","Record run","She broke the marathon record."\n')
    with open(r / "notes.jsonl", "w") as fh:
        for i, (text, label) in enumerate([("Bake the bread for forty minutes.", "cooking"),
                                           ("Whisk the eggs with sugar.", "cooking"),
                                           ("Fry the onions until golden.", "cooking"),
                                           ("The rocket reached orbit.", "space_flight"),
                                           ("Astronauts docked with the station.", "space_flight"),
                                           ("The probe landed on Mars.", "space_flight")]):
            fh.write(json.dumps({"text": text, "label": label, "split": "test" if i % 3 == 2 else "train"}) + "\n")
    return r


def all_experiences(r: Path) -> list:
    return [
        {"source": "pics", "classes": ["golden retriever", "TabbyCat"]},
        {"modality": "audio", "source": {"layout": "folders", "root": str(r / "snd")}},
        {"modality": "audio", "source": {"layout": "esc50", "root": str(r / "esc")}, "name": "esc"},
        {"modality": "video", "source": {"layout": "manifest", "manifest": str(r / "vid" / "manifest.csv")}},
        {"modality": "depth", "source": {"layout": "folders", "root": str(r / "depth")}},
        {"modality": "text", "name": "news",
         "source": {"layout": "manifest", "manifest": {"train": str(r / "ag" / "train.csv"),
                                                       "test": str(r / "ag" / "test.csv")},
                    "columns": ["label", "title", "description"], "text_columns": ["title", "description"],
                    "label_names": str(r / "ag" / "classes.txt"), "label_base": 1}},
        {"modality": "text", "source": {"layout": "manifest", "manifest": str(r / "notes.jsonl")},
         "template": "a note about {}"},
    ]


def pics(r: Path) -> list:
    """benchmark.sources: one named image source."""
    return [{"name": "pics", "modality": "image", "layout": "folders", "root": str(r / "img")}]


# ------------------------------------------------------------------------------------------ tests
def test_class_names_are_plain_english(tmp_path):
    assert plain_name("golden_retriever") == "golden retriever"
    assert plain_name("ApplyEyeMakeup") == "apply eye makeup"
    assert plain_name("001.Black_footed_Albatross") == "black footed albatross"
    assert plain_name("TVShow") == "TV show" and plain_name("crackling_fire") == "crackling fire"
    from mmcl.data.user import anchor_text

    assert anchor_text("an image of a {}", "elephant") == "an image of an elephant"
    assert anchor_text("a depth map of a {}", "kitchen") == "a depth map of a kitchen"
    assert layouts.id_kind("n01440764") == "WordNet ids" and layouts.id_kind("3") and not layouts.id_kind("cat")
    keyed = tmp_path / "LOC_synset_mapping.txt"
    keyed.write_text("n01440764 tench, Tinca tinca\nn02099601 golden_retriever\n")
    names, order = layouts.read_label_names(keyed, ["n01440764", "n02099601"], 0)
    assert names == {"n01440764": "tench", "n02099601": "golden retriever"} and order == ["n01440764", "n02099601"]
    positional = tmp_path / "classes.txt"
    positional.write_text("World\nSports\nBusiness\nSci/Tech\n")
    assert layouts.read_label_names(positional, ["1", "4"], 1)[0]["4"] == "sci/tech"
    as_json = tmp_path / "names.json"
    as_json.write_text('{"0": "tabby cat", "1": "dog"}')
    assert layouts.read_label_names(as_json, ["0"], 0)[0] == {"0": "tabby cat", "1": "dog"}


def test_readers_decode_every_format_to_fixed_shapes(tree, tmp_path):
    assert readers.decode("image", tree / "img/train/golden_retriever/0.png").shape == (96, 96, 3)
    assert readers.decode("image", tree / "img/train/TabbyCat/0.jpg").dtype == np.uint8
    v = readers.decode("video", tree / "vid/clips/moving_right1.avi")  # 5 frames, sampled up to 8
    assert v.shape == (8, 64, 64, 3) and v.dtype == np.uint8
    a = readers.decode("audio", tree / "snd/Rooster/0.flac")  # 8 kHz, resampled to 16 kHz
    assert a.shape == (64, 48) and a.dtype == np.float32
    assert readers.fit_audio(a, 0.96).shape == (64, 96) and readers.fit_audio(np.zeros((64, 500), np.float32), 5).shape == (64, 96)
    assert readers.decode("depth", tree / "depth/kitchen/0.png").shape == (96, 96)
    d = readers.decode("depth", tree / "depth/living_room/0.npy")
    assert d.dtype == np.float32 and d.max() > 2 and d.min() == 0
    (tmp_path / "t.txt").write_text("  two\n lines  ")
    assert readers.decode("text", tmp_path / "t.txt") == "two lines"


def _corrupt_files(d: Path) -> dict[str, Path]:
    """One file per bad case, each beside good ones; returns case -> path."""
    bad = {}
    for i in range(3):
        png(d / "img" / "cat" / f"{i}.png", 0)
        png(d / "img" / "dog" / f"{i}.png", 1)
        tone(d / "snd" / "cat" / f"{i}.wav", 400 + i * 10)
        tone(d / "snd" / "dog" / f"{i}.wav", 900 + i * 10)
        clip(d / "vid" / "left" / f"{i}.mp4", direction=-1)
        clip(d / "vid" / "right" / f"{i}.mp4", direction=1)
        depth_npy(d / "dep" / "near" / f"{i}.npy", 1.0)
        depth_npy(d / "dep" / "far" / f"{i}.npy", 4.0)
    bad["png"] = d / "img" / "cat" / "bad.png"
    bad["png"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 8)
    raw = (d / "snd" / "dog" / "0.wav").read_bytes()
    bad["wav"] = d / "snd" / "dog" / "cut.wav"
    bad["wav"].write_bytes(raw[: len(raw) // 2])
    bad["mp4"] = d / "vid" / "left" / "empty.mp4"
    bad["mp4"].write_bytes(b"")
    bad["npy"] = d / "dep" / "near" / "flat.npy"
    np.save(bad["npy"], np.ones(50, np.float32))
    man = d / "img_manifest.csv"
    man.write_text("path,label\nimg/cat/0.png,cat\nimg/cat/1.png,cat\nimg/dog/0.png,dog\nimg/dog/1.png,dog\n"
                   "img/dog/2.png,wolf\n")
    (d / "img_names.txt").write_text("cat\ndog\n")
    bad["label"] = d / "img" / "dog" / "2.png"
    return bad


def _corrupt_stream(d: Path) -> list:
    return [
        {"modality": "image", "source": {"layout": "folders", "root": str(d / "img")}},
        {"modality": "audio", "source": {"layout": "folders", "root": str(d / "snd")}},
        {"modality": "video", "source": {"layout": "folders", "root": str(d / "vid")}},
        {"modality": "depth", "source": {"layout": "folders", "root": str(d / "dep")}},
        {"modality": "image", "name": "listed", "source": {"layout": "manifest", "manifest": str(d / "img_manifest.csv"),
                                                         "label_names": str(d / "img_names.txt")}},
    ]


def test_bad_files_are_reported_one_line_each_before_anything_is_encoded(tmp_path, monkeypatch):
    bad = _corrupt_files(tmp_path)
    for case, p in bad.items():  # each reason, from the decoders themselves
        if case != "label":
            with pytest.raises(readers.BadFile):
                readers.decode({"png": "image", "wav": "audio", "mp4": "video", "npy": "depth"}[case], p)
    monkeypatch.setattr(mm5_data, "encode_modality", lambda *a, **k: pytest.fail("encoded despite bad files"))
    with pytest.raises(DataError) as e:
        build_stream(cfg_for(_corrupt_stream(tmp_path)))
    lines = e.value.lines
    assert len(lines) == 5, lines
    expect = {
        "png": "cannot decode image (",
        "wav": "truncated WAV: header declares",
        "mp4": "empty file (0 bytes)",
        "npy": "expected a 2-D depth map (H, W), got shape (50,)",
        "label": "unknown label 'wolf' (not in label_names",
    }
    for case, text in expect.items():
        [line] = [ln for ln in lines if ln.startswith(f"{bad[case]}: ")]
        assert text in line, line
    assert str(e.value).count("\n") == 5  # a head line, then one line per file
    # a truncated MP4 is bad too
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip(tmp_path / "whole.mp4").read_bytes()[:200])
    with pytest.raises(readers.BadFile, match=r"^cannot decode video \(InvalidDataError: Invalid data found"):
        readers.decode("video", cut)


def test_skip_leaves_bad_files_out_and_counts_them(tmp_path):
    bad = _corrupt_files(tmp_path)
    exps = [x for x in _corrupt_stream(tmp_path) if x["modality"] in ("image",)]
    s = build_stream(cfg_for(exps, data={"on_error": "skip"}))
    info = s.info["data_errors"]
    assert info["skipped"] == 2 and info["policy"] == "skip"
    assert {ln.split(": ")[0] for ln in s.data_errors} == {str(bad["png"]), str(bad["label"])}
    assert [src["skipped"] for src in s.info["sources"]] == [1, 1]
    assert len(s[0].train) + len(s[0].test) == 6 and len(s[1].train) + len(s[1].test) == 4


def test_every_layout_and_modality_in_one_stream_then_from_the_cache(tree, monkeypatch):
    cfg = cfg_for(all_experiences(tree), pics(tree))
    s = build_stream(cfg)
    assert [e.name for e in s] == ["image", "audio", "esc", "video", "depth", "news", "text"]
    assert [e.modality for e in s] == ["image", "audio", "audio", "video", "depth", "text", "text"]
    assert s.class_names[:2] == ["an image of a golden retriever", "an image of a tabby cat"]
    assert s.class_names[2:6] == ["the sound of dog bark", "the sound of rooster", "the sound of dog",
                                  "the sound of crackling fire"]
    assert s.class_names[-4:] == ["a text about world", "a text about sports", "a note about cooking",
                                  "a note about space flight"]
    sizes = [(len(e.train), len(e.test)) for e in s]
    # split folders; seeded split (3 files -> 2 + 1); ESC-50 fold 5; split column; seeded; two files; column
    assert sizes == [(4, 2), (4, 2), (4, 2), (4, 2), (4, 2), (4, 2), (4, 2)]
    for e in s:
        assert e.train["tokens"].shape[1:] == (mm5_data.TOKENS, mm5_data.WIDTH)
        assert (e.train["m"] == ["image", "video", "audio", "depth", "text"].index(e.modality)).all()
        assert set(e.train["y"].tolist()) == set(e.classes) == set(e.test["y"].tolist())
    assert s[3].train["mask"].all()  # video: 8 tokens (appearance + 7 flow)
    assert torch.allclose(s[5].test["zs"].norm(dim=1), torch.ones(2), atol=1e-4)  # text zero-shot embedding
    img = s.info["sources"][0]
    assert img["ignored_files"] == {".md": 1} and img["cached"] is False
    assert s.info["sources"][1]["audio_seconds"] == 0.96 and s.info["sources"][2]["audio_seconds"] == pytest.approx(1.18)
    # again: every source comes from the feature cache, nothing is decoded or encoded
    with monkeypatch.context() as mp:
        mp.setattr(mm5_data, "encode_modality", lambda *a, **k: pytest.fail("encoder re-run"))
        mp.setattr(readers, "decode", lambda *a, **k: pytest.fail("decoded again"))
        s2 = build_stream(cfg)
    assert all(src["cached"] for src in s2.info["sources"])
    assert torch.equal(s2[4].test["tokens"], s[4].test["tokens"])
    # a file that changes (size or mtime) changes the key of its source only
    f = tree / "depth" / "kitchen" / "0.png"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    s3 = build_stream(cfg)
    assert [src["cached"] for src in s3.info["sources"]] == [True, True, True, True, False, True, True]


def test_esc50_subset_test_list_and_label_names_for_ids(tree, tmp_path):
    from mmcl.data.user.spec import parse_source

    esc = layouts.scan(parse_source("s", {"layout": "esc50", "root": str(tree / "esc"), "esc10": True,
                                          "test_folds": [1, 2]}, False), "audio")
    assert esc.classes == ["dog"] and [e.split for e in esc.entries] == ["test", "test", "train"]
    # ImageNet-R / ImageNet style WordNet-id folders need a label_names file
    for wnid in ("n01443537", "n02099601"):
        png(tmp_path / "inr" / wnid / "art_0.jpg", 1, fmt="JPEG")
        png(tmp_path / "inr" / wnid / "cartoon_1.jpg", 1, fmt="JPEG")
    with pytest.raises(ConfigError, match="'n01443537' are WordNet ids.*label_names"):
        layouts.scan(parse_source("s", {"root": str(tmp_path / "inr")}, False), "image")
    (tmp_path / "map.txt").write_text("n01443537 goldfish, Carassius auratus\nn02099601 golden_retriever\n")
    sc = layouts.scan(parse_source("s", {"root": str(tmp_path / "inr"), "label_names": str(tmp_path / "map.txt")},
                                   False), "image")
    assert [sc.names[c] for c in sc.classes] == ["goldfish", "golden retriever"]
    # UCF101 style: an official test list names the test files, the rest is train
    (tmp_path / "testlist01.txt").write_text("N01443537/art_0.jpg\nn02099601/art_0.jpg\n")  # case-insensitive
    sc = layouts.scan(parse_source("s", {"root": str(tmp_path / "inr"), "label_names": str(tmp_path / "map.txt"),
                                         "test_list": str(tmp_path / "testlist01.txt")}, False), "image")
    assert [(Path(e.where).name, e.split) for e in sc.entries] == [
        ("art_0.jpg", "test"), ("cartoon_1.jpg", "train"), ("art_0.jpg", "test"), ("cartoon_1.jpg", "train")]


@pytest.mark.parametrize("change, message", [
    ({"experiences": [{"modality": "image", "sorce": {}}]},
     "unknown config key 'benchmark.experiences[0].sorce'; closest valid key: 'source'"),
    ({"experiences": [{"modality": "image", "source": {"layout": "folders", "rot": "/x"}}]},
     "unknown config key 'benchmark.experiences[0].source.rot'; closest valid key: 'root'"),
    ({"experiences": [{"modality": "image", "source": {"layout": "folders", "root": "/no/such/dir"}}]},
     "benchmark.experiences[0].source.root: directory /no/such/dir does not exist"),
    ({"experiences": [{"modality": "text", "source": {"manifest": "/no/such.csv"}}]},
     "benchmark.experiences[0].source.manifest: file /no/such.csv does not exist"),
    ({"experiences": [{"modality": "image", "source": {"layout": "folders", "root": "{img}", "test_folds": [5]}}]},
     "config key 'benchmark.experiences[0].source.test_folds' does not apply to layout 'folders'"),
    ({"experiences": [{"source": "pics", "classes": ["golden retreiver"]}]},
     "unknown class 'golden retreiver' (did you mean 'golden retriever'?)"),
    ({"experiences": [{"source": "picz"}]}, "unknown source 'picz' (did you mean 'pics'?)"),
    ({"experiences": [{"source": {"layout": "folders", "root": "{img}"}}]},
     "config key 'benchmark.experiences[0].modality' is required"),
    ({"experiences": [{"source": "pics"}, {"source": "pics", "classes": ["TabbyCat"]}]},
     "class 'tabby cat' is already taken by benchmark.experiences[0]"),
    ({"experiences": [{"source": "pics", "template": "a picture"}]}, "must contain '{}' once"),
    ({"experiences": []}, "config key 'benchmark.experiences' must list the experiences"),
])
def test_config_problems_are_one_line_errors_naming_the_key(tree, change, message):
    b = json.loads(json.dumps(change).replace("{img}", str(tree / "img")))
    with pytest.raises(ConfigError) as e:  # keys and paths when the config is read, classes when the data is
        build_stream(cfg_for(b["experiences"], pics(tree)))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("example", sorted((Path(__file__).parents[2] / "examples").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_example_configs_are_valid_up_to_their_placeholder_paths(example):
    assert yaml.safe_load(example.read_text())["benchmark"]["name"] == "user"
    with pytest.raises(ConfigError, match=r"^benchmark\.(experiences|sources)\[0\].*: (directory|file) /data/\S+ "
                                          r"does not exist$"):
        load_config(str(example))  # every key is known: the first problem is the placeholder path


def test_on_error_is_a_validated_config_key(tmp_path):
    with pytest.raises(ConfigError, match="'data.on_error' must be one of fail, skip"):
        cfg_for([], data={"on_error": "ignore"})
    (tmp_path / "s.yaml").write_text("benchmark: {name: user, experiences: [{modality: image, source: /nope}]}\n")
    from mmcl.cli import main

    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()  # a config problem: no run directory at all


def test_mmcl_run_on_a_user_stream_and_a_failing_one(tree, tmp_path, capsys):
    from mmcl.cli import main

    spec = {"benchmark": {"name": "user", "sources": pics(tree),
                          "experiences": [{"source": "pics"},
                                          {"modality": "audio", "source": {"layout": "folders",
                                                                           "root": str(tree / "snd")}}]},
            "train": {"epochs": 1, "batch_size": 8}, "logging": {"progress": False}, "report": False}
    (tmp_path / "my_stream.yaml").write_text(yaml.safe_dump(spec))
    # `mmcl data` checks the stream without training (and fills the cache: the run below is faster)
    assert main(["data", str(tmp_path / "my_stream.yaml")]) == 0
    out = capsys.readouterr().out
    assert "an image of a golden retriever" in out and "audio source folders" in out
    run = run_cli("run", str(tmp_path / "my_stream.yaml"), "method=er", "--out", str(tmp_path / "run"))
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["benchmark"] == "user" and m["method"] == "er"
    assert [e["name"] for e in m["experiences"]] == ["image", "audio"]
    assert len(m["matrices"]["modality_aware"]) == 2 and "user/er" in run.stdout
    assert m["stream_info"]["data_errors"]["skipped"] == 0
    assert not (tmp_path / "run" / "data_errors.txt").exists()
    # a truncated WAV: exit 2 before training, one line naming it, only the report in the run directory
    bad = tree / "snd" / "Rooster" / "z_cut.wav"
    raw = tone(tmp_path / "ok.wav", 700).read_bytes()
    bad.write_bytes(raw[: len(raw) - 4000])
    try:
        assert main(["run", str(tmp_path / "my_stream.yaml"), "--out", str(tmp_path / "failed")]) == 2
        err = capsys.readouterr().err
        assert f"\n  {bad}: truncated WAV: header declares" in err and "data_errors.txt" in err
        assert sorted(f for f in os.listdir(tmp_path / "failed") if not f.startswith(".")) == ["data_errors.txt"]
        assert (tmp_path / "failed" / "data_errors.txt").read_text().startswith(f"{bad}: truncated WAV")
    finally:
        bad.unlink()
