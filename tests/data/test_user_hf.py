"""User sources from Hugging Face datasets (`layout: hf`): save_to_disk folders and parquet files, built here."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

datasets = pytest.importorskip("datasets")

import mmcl  # noqa: E402
from mmcl.config import ConfigError  # noqa: E402
from mmcl.data.user import readers  # noqa: E402
from mmcl.settings import build_stream  # noqa: E402
from tests.data.test_user_data import cfg_for  # noqa: E402

RNG = np.random.default_rng(0)


def _png(hue: int) -> Image.Image:
    a = RNG.integers(0, 60, (24, 30, 3), dtype=np.uint8)
    a[..., hue] += 180
    return Image.fromarray(a)


def _wav(freq: float) -> bytes:
    t = np.arange(8000) / 16000
    b = io.BytesIO()
    sf.write(b, 0.3 * np.sin(2 * np.pi * freq * t), 16000, format="WAV")
    return b.getvalue()


@pytest.fixture(scope="module")
def hf_data(tmp_path_factory):
    from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as HFImage

    datasets.disable_progress_bars()
    r = tmp_path_factory.mktemp("hfdata")
    # images: a DatasetDict saved with save_to_disk, ClassLabel names; one undecodable image in train
    f = Features({"picture": HFImage(), "label": ClassLabel(names=["golden_retriever", "tabby_cat"])})
    splits = {}
    for split, n in (("train", 3), ("test", 1)):
        rows = {"picture": [_png(c) for c in (0, 1) for _ in range(n)], "label": [c for c in (0, 1) for _ in range(n)]}
        splits[split] = Dataset.from_dict(rows, features=f)
    bad = Dataset.from_dict({"picture": [{"bytes": b"not a png", "path": None}], "label": [1]}, features=f)
    splits["train"] = datasets.concatenate_datasets([splits["train"], bad])
    DatasetDict(splits).save_to_disk(str(r / "pics"))
    # audio: parquet files named by split (train-00000.parquet, test-00000.parquet), WAV bytes in the cells
    fa = Features({"audio": Audio(decode=False), "label": ClassLabel(names=["dog", "rooster"])})
    (r / "snd").mkdir()
    for split, n in (("train", 3), ("test", 1)):
        d = Dataset.from_dict({"audio": [{"bytes": _wav(300 + 500 * c), "path": None} for c in (0, 1) for _ in range(n)],
                               "label": [c for c in (0, 1) for _ in range(n)]}).cast(fa)
        d.to_parquet(str(r / "snd" / f"{split}-00000.parquet"))
    # text: one unsplit parquet file, string labels (a seeded split is drawn)
    (r / "txt").mkdir()
    texts = {"sports": ["the match ended in a draw", "a late goal won the cup", "the runner broke the record",
                        "the team signed a new coach", "fans filled the stadium"],
             "cooking": ["simmer the sauce for an hour", "knead the dough until smooth", "season with salt",
                         "roast the vegetables until golden", "whisk the eggs with sugar"]}
    Dataset.from_dict({"body": [t for k in texts for t in texts[k]],
                       "topic": [k for k in texts for _ in texts[k]]}).to_parquet(str(r / "txt" / "news.parquet"))
    return r


def _experiences(r):
    return [{"modality": "image", "source": {"layout": "hf", "root": str(r / "pics")}},
            {"modality": "audio", "source": {"layout": "hf", "root": str(r / "snd")}},
            {"modality": "text", "source": {"layout": "hf", "root": str(r / "txt"), "column": "body",
                                            "label_column": "topic"}}]


def test_hf_datasets_are_decoded_checked_and_cached(hf_data, monkeypatch):
    cfg = cfg_for(_experiences(hf_data), data={"on_error": "skip"})
    s = build_stream(cfg)
    assert [e.modality for e in s] == ["image", "audio", "text"]
    assert s.class_names[:4] == ["an image of a golden retriever", "an image of a tabby cat", "the sound of dog",
                                 "the sound of rooster"]
    assert s.class_names[4:] == ["a text about cooking", "a text about sports"]
    assert [(len(e.train), len(e.test)) for e in s] == [(6, 2), (6, 2), (8, 2)]  # the bad image left out
    assert len(s.data_errors) == 1 and "[train row 6]" in s.data_errors[0] and "cannot decode image" in s.data_errors[0]
    assert s.info["sources"][0]["skipped"] == 1 and not any(src["cached"] for src in s.info["sources"])
    with monkeypatch.context() as mp:  # again: from the feature cache, nothing decoded
        mp.setattr(readers, "decode_value", lambda *a, **k: pytest.fail("decoded again"))
        s2 = build_stream(cfg)
    assert all(src["cached"] for src in s2.info["sources"])
    with pytest.raises(Exception) as e:  # on_error=fail (the default): stops, naming the row
        build_stream(cfg_for(_experiences(hf_data)[:1]))
    assert "[train row 6]" in str(e.value)


def test_an_hf_stream_runs_end_to_end(hf_data, tmp_path):
    r = mmcl.run(cfg_for(_experiences(hf_data)[1:], method={"name": "er"}), out=tmp_path / "run")
    assert [e["name"] for e in r.metrics["experiences"]] == ["audio", "text"]
    assert len(r.matrices["modality_aware"]) == 2 and r.summary["modality_aware"]["last_acc"] is not None


@pytest.mark.parametrize("source, message", [
    ({"root": "pics", "column": "nope"}, "no column 'nope'"),
    ({"root": "pics", "label_column": "y"}, "no column 'y'"),
    ({"root": "empty"}, "neither a dataset saved with save_to_disk"),
])
def test_hf_source_problems_are_one_line_errors(hf_data, source, message):
    (hf_data / "empty").mkdir(exist_ok=True)
    src = {"layout": "hf", **source, "root": str(hf_data / source["root"])}
    with pytest.raises(ConfigError, match=message):
        build_stream(cfg_for([{"modality": "image", "source": src}]))
    with pytest.raises(ConfigError, match="layout 'hf' reads image, audio, text"):
        cfg_for([{"modality": "depth", "source": {"layout": "hf", "root": str(hf_data / "pics")}}])
