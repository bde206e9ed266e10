"""`encoder.<modality>=hf:<local dir>`: frozen encoders from your own Hugging Face checkpoints.

Every checkpoint here is a tiny random model built by transformers from a config alone and saved to a
temporary directory: nothing is downloaded.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mmcl.config import ConfigError, load_config
from mmcl.settings import build_stream
from mmcl.data import mm5 as mm5_data
from mmcl.models import hf
from tests.data.test_user_data import cfg_for, clip, depth_npy, png, tone

SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
WORDS = ["bread", "eggs", "onions", "oven", "rocket", "orbit", "station", "mars", "the", "with", "."]


def _quiet():
    import transformers

    transformers.logging.set_verbosity_error()


def save_clip(d: Path, seed: int = 0, processor: bool = True) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    _quiet()
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(vision_config=dict(**SMALL, image_size=32, patch_size=8),
                         text_config=dict(**SMALL, vocab_size=64, bos_token_id=0, eos_token_id=1, pad_token_id=1),
                         projection_dim=16)).save_pretrained(d)
    if processor:
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d


def save_vit(d: Path) -> Path:  # no preprocessor_config.json: resized to image_size, scaled to [-1, 1]
    from transformers import ViTConfig, ViTModel

    _quiet()
    torch.manual_seed(1)
    ViTModel(ViTConfig(**SMALL, image_size=32, patch_size=8)).save_pretrained(d)
    return d


def save_ast(d: Path) -> Path:  # no preprocessor_config.json: ASTFeatureExtractor sized by the config
    from transformers import ASTConfig, ASTModel

    _quiet()
    torch.manual_seed(2)
    ASTModel(ASTConfig(**SMALL, num_mel_bins=16, max_length=64, patch_size=8, frequency_stride=8,
                       time_stride=8)).save_pretrained(d)
    return d


def save_whisper(d: Path) -> Path:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    _quiet()
    torch.manual_seed(3)
    WhisperModel(WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                               decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16,
                               max_source_positions=50, max_target_positions=16, vocab_size=64, pad_token_id=1,
                               bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, begin_suppress_tokens=None,
                               suppress_tokens=None)).save_pretrained(d)
    WhisperFeatureExtractor(feature_size=16, chunk_length=1).save_pretrained(d)  # 1 s = 100 frames = 50 positions
    return d


def save_bert(d: Path) -> Path:  # a sentence-transformers directory: model, tokenizer, 1_Pooling (mean)
    from transformers import BertConfig, BertModel, BertTokenizerFast

    _quiet()
    torch.manual_seed(4)
    BertModel(BertConfig(**SMALL, vocab_size=16 + len(WORDS), max_position_embeddings=64)).save_pretrained(d)
    vocab = d / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(d)
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                             "pooling_mode_mean_tokens": True}))
    return d


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> dict[str, Path]:
    r = tmp_path_factory.mktemp("ckpt")
    return {"clip": save_clip(r / "clip"), "vit": save_vit(r / "vit"), "ast": save_ast(r / "ast"),
            "whisper": save_whisper(r / "whisper"), "bert": save_bert(r / "bert")}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("hfdata")
    for i in range(3):
        png(r / "img" / "red_fox" / f"{i}.png", 0)
        png(r / "img" / "blue_jay" / f"{i}.png", 2)
        tone(r / "snd" / "low_hum" / f"{i}.wav", 200 + 20 * i, sr=16000, seconds=0.4)
        tone(r / "snd" / "whistle" / f"{i}.wav", 2500 + 50 * i, sr=22050, seconds=0.6)
        depth_npy(r / "depth" / "near" / f"{i}.npy", 0.5 + 0.1 * i)
        depth_npy(r / "depth" / "far" / f"{i}.npy", 4.0 + 0.1 * i)
        clip(r / "vid" / "right" / f"{i}.mp4", n_frames=5, direction=1)
        clip(r / "vid" / "left" / f"{i}.mp4", n_frames=5, direction=-1)
    with open(r / "notes.jsonl", "w") as fh:
        for text, label in [("bread with eggs", "cooking"), ("the oven", "cooking"), ("onions with bread", "cooking"),
                            ("the rocket orbit", "space"), ("mars station", "space"), ("the station orbit", "space")]:
            fh.write(json.dumps({"text": text, "label": label}) + "\n")
    return r


def experiences(r: Path, *modalities: str) -> list:
    src = {"image": {"layout": "folders", "root": str(r / "img")},
           "audio": {"layout": "folders", "root": str(r / "snd")},
           "depth": {"layout": "folders", "root": str(r / "depth")},
           "video": {"layout": "folders", "root": str(r / "vid")},
           "text": {"layout": "manifest", "manifest": str(r / "notes.jsonl")}}
    return [{"modality": m, "source": src[m]} for m in modalities]


# ------------------------------------------------------------------------------------------------- tests
def test_clip_ast_and_sentence_transformer_checkpoints_feed_the_stream_then_the_cache(ckpt, data, monkeypatch):
    cfg = cfg_for(experiences(data, "image", "audio", "text"),
                  encoder={"image": f"hf:{ckpt['clip']}", "audio": f"hf:{ckpt['ast']}", "text": f"hf:{ckpt['bert']}"})
    s = build_stream(cfg)
    assert [e.modality for e in s] == ["image", "audio", "text"]
    for e in s:
        x = e.train["tokens"].float()
        assert x.shape[1:] == (mm5_data.TOKENS, mm5_data.WIDTH)
        assert x[..., :32].abs().sum() > 0 and (x[..., 32:] == 0).all()  # the checkpoint's 32-d features, padded
        assert e.train["mask"][:, :2].all() and (e.train["zs"] == 0).all()  # pooled + segments (short texts: fewer)
    assert s.info["encoders"]["image"] == f"hf:{ckpt['clip'].resolve()} (clip)"
    assert s.info["encoders"]["text"].endswith("(bert)") and s.info["anchors"] == "all-MiniLM-L6-v2"
    # token 0 is the checkpoint's pooled feature: CLIP's post-layernorm CLS for the images
    enc = hf.load(hf.parse("encoder.image", "image", f"hf:{ckpt['clip']}"))
    from mmcl.data.user import readers

    img = readers.decode_image(data / "img" / "blue_jay" / "0.png", size=enc.image_size)
    with torch.no_grad():
        want = enc.tower(**enc._pixels(img[None])).pooler_output[0]
    got = torch.cat([s[0].train["tokens"], s[0].test["tokens"]]).float()[:, 0, :32]
    assert torch.isclose(got, want.half().float(), atol=1e-2).all(dim=1).any()
    # again: from the feature cache; the model is neither loaded nor run
    with monkeypatch.context() as mp:
        mp.setattr(hf, "encode", lambda *a, **k: pytest.fail("encoder re-run"))
        mp.setattr(hf, "HFEncoder", lambda *a, **k: pytest.fail("model loaded"))
        hf._load.cache_clear()
        s2 = build_stream(cfg)
    assert all(src["cached"] for src in s2.info["sources"])
    assert torch.equal(s2[1].test["tokens"], s[1].test["tokens"])


def test_a_changed_checkpoint_is_not_served_from_the_cache(tmp_path, data):
    d = save_clip(tmp_path / "clip", seed=0)
    cfg = cfg_for(experiences(data, "image"), encoder={"image": f"hf:{d}"})
    a = build_stream(cfg)
    b = build_stream(cfg)
    assert b.info["sources"][0]["cached"] and torch.equal(a[0].train["tokens"], b[0].train["tokens"])
    save_clip(d, seed=1)  # retrained in place: same path, other weights
    c = build_stream(cfg_for(experiences(data, "image"), encoder={"image": f"hf:{d}"}))
    assert not c.info["sources"][0]["cached"]
    assert c.info["sources"][0]["feature_key"] != a.info["sources"][0]["feature_key"]
    assert not torch.equal(a[0].train["tokens"], c[0].train["tokens"])


def test_vit_without_processor_whisper_encoder_depth_and_video(ckpt, data):
    cfg = cfg_for(experiences(data, "audio", "depth", "video"),
                  encoder={"audio": f"hf:{ckpt['whisper']}", "depth": f"hf:{ckpt['vit']}",
                           "video": f"hf:{ckpt['vit']}"})
    s = build_stream(cfg)
    audio, depth, video = s[0], s[1], s[2]
    assert s.info["sources"][0]["audio_seconds"] == pytest.approx(0.96)  # the longest clip, at least 0.96 s
    for e in s:
        assert e.train["tokens"][..., :32].float().abs().sum() > 0
    # Whisper pools only the encoder positions that hold audio (0.96 s of its 1 s window)
    assert not torch.allclose(audio.train["tokens"][0, 0].float(), audio.train["tokens"][-1, 0].float())
    # video: token 0 the frames' pooled ViT features, tokens 1-7 the optical flow (left vs right differ in sign)
    flow = video.train["tokens"][:, 1:, :32].float().reshape(len(video.train), 7, 16, 2)[..., 0].mean((1, 2))
    y = video.train["y"]
    assert (flow[y == y.min()] * flow[y == y.max()].mean()).lt(0).all()
    assert depth.train["tokens"].shape[1:] == (mm5_data.TOKENS, mm5_data.WIDTH)


def test_a_checkpoint_encodes_on_the_runs_device_and_returns_cpu_features(ckpt, monkeypatch):
    """The model follows `encoding_on(device)` (the run's device, a GPU there) like the bundled encoders, once per
    device; its features come back on the CPU, where the stream caches them. Here the model starts 'elsewhere'
    and the run's device is the CPU: the same `.to(device)` a GPU run makes."""
    from mmcl.device import encoding_on

    spec = hf.parse("encoder.image", "image", f"hf:{ckpt['vit']}")
    enc = hf.load(spec)
    moves = []
    real_to = enc.model.to
    monkeypatch.setattr(enc.model, "to", lambda dev: (moves.append(torch.device(dev)), real_to(dev))[1])
    monkeypatch.setattr(enc, "device", torch.device("meta"))  # as if left on another device by an earlier run
    images = np.zeros((3, 32, 32, 3), np.uint8)
    with encoding_on(torch.device("cpu")):
        a = enc.encode_images(images)
        b = enc.encode_images(images)  # already there: not moved again
    assert moves == [torch.device("cpu")] and enc.device == torch.device("cpu")
    assert a.device.type == "cpu" and a.shape == (3, 1 + hf.SEGMENTS, 32) and torch.equal(a, b)


def test_run_with_checkpoints_and_skipped_files_counted_in_metrics(ckpt, data, tmp_path):
    from mmcl.cli import main

    bad = data / "img" / "red_fox" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    try:
        spec = {"benchmark": {"name": "user", "experiences": experiences(data, "image", "text")},
                "encoder": {"image": f"hf:{ckpt['clip']}", "text": f"hf:{ckpt['bert']}"},
                "data": {"on_error": "skip"}, "model": {"prompt_length": 2},
                "train": {"epochs": 1, "batch_size": 4}, "logging": {"progress": False}, "report": False}
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
        assert main(["run", str(tmp_path / "s.yaml"), "method=er", "--out", str(tmp_path / "run")]) == 0
    finally:
        bad.unlink()
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["method"] == "er" and [e["name"] for e in m["experiences"]] == ["image", "text"]
    assert np.array(m["matrices"]["modality_aware"]).shape == (2, 2)
    assert m["stream_info"]["data_errors"]["policy"] == "skip"
    assert m["stream_info"]["data_errors"]["skipped"] == 1
    assert m["stream_info"]["data_errors"]["files"][0].startswith(f"{bad}: cannot decode image")
    assert (tmp_path / "run" / "data_errors.txt").read_text().startswith(str(bad))
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["encoder"]["image"] == f"hf:{ckpt['clip']}" and cfg["encoder"]["audio"] == "default"


def _bad_dirs(tmp_path: Path, ckpt: dict) -> dict[str, Path]:
    empty = tmp_path / "empty"
    empty.mkdir()
    notmodel = tmp_path / "notmodel"
    notmodel.mkdir()
    (notmodel / "config.json").write_text('{"hello": 1}')
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text((ckpt["vit"] / "config.json").read_text())
    afile = tmp_path / "model.safetensors"
    afile.write_bytes(b"x")
    return {"empty": empty, "notmodel": notmodel, "noweights": noweights, "file": afile}


@pytest.mark.parametrize("key, value, message", [
    ("image", "hf:/no/such/model", "encoder.image: directory /no/such/model does not exist"),
    ("image", "hf:{empty}", "encoder.image: {empty} is not a Hugging Face model directory (no config.json)"),
    ("audio", "hf:{notmodel}", "encoder.audio: {notmodel}/config.json has no 'model_type'"),
    ("image", "hf:{noweights}", "encoder.image: {noweights} has a config.json but no weights"),
    ("image", "hf:{file}", "encoder.image: {file} is not a directory"),
    ("image", "hf:{bert}", "encoder.image: {bert} holds a 'bert' model, not a vision encoder"),
    ("audio", "hf:{clip}", "encoder.audio: {clip} holds a 'clip' model, not an audio encoder"),
    ("text", "{bert}", "config key 'encoder.text' expects 'default' or 'hf:<local model directory>'"),
    ("vision", "hf:{clip}", "unknown config key 'encoder.vision'"),
])
def test_bad_checkpoints_are_one_line_config_errors_naming_key_and_path(tmp_path, ckpt, data, key, value, message):
    paths = {**_bad_dirs(tmp_path, ckpt), **ckpt}
    value, message = value.format(**paths), message.format(**paths)
    with pytest.raises(ConfigError) as e:
        load_config(str(_stream_yaml(tmp_path, data)), [f"encoder.{key}={value}"])
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_checkpoints_apply_to_user_streams_and_text_needs_a_tokenizer(tmp_path, ckpt, data):
    with pytest.raises(ConfigError, match=r"^config key 'encoder.image': benchmark 'mm5' uses its bundled encoders"):
        load_config("mm5-er", [f"encoder.image=hf:{ckpt['clip']}"])
    # a CLIP directory is also a text encoder (its text tower), but this one was saved without a tokenizer
    cfg = load_config(str(_stream_yaml(tmp_path, data)), [f"encoder.text=hf:{ckpt['clip']}"])
    with pytest.raises(ConfigError, match=r"^encoder.text: .*clip has no tokenizer files"):
        build_stream(cfg)


def _stream_yaml(tmp_path: Path, data: Path) -> Path:
    p = tmp_path / "stream.yaml"
    p.write_text(yaml.safe_dump({"benchmark": {"name": "user", "experiences": experiences(data, "image", "text")}}))
    return p


@pytest.mark.filterwarnings("ignore:At least one mel filter")  # 16 mel bins of the tiny model
def test_clap_audio_tower_from_a_full_clap_checkpoint(tmp_path):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    _quiet()
    torch.manual_seed(5)
    audio = dict(hidden_size=32, num_mel_bins=16, spec_size=64, patch_size=4, patch_embeds_hidden_size=16, depths=[1, 1],
                 num_attention_heads=[2, 2], window_size=4, projection_hidden_size=16, projection_dim=16)
    text = dict(**SMALL, vocab_size=64, projection_dim=16, pad_token_id=1)
    ClapModel(ClapConfig(audio_config=audio, text_config=text, projection_dim=16)).save_pretrained(tmp_path)
    ClapFeatureExtractor(feature_size=16, sampling_rate=16000, max_length_s=1, fft_window_size=400,
                         hop_length=160).save_pretrained(tmp_path)
    spec = hf.parse("encoder.audio", "audio", f"hf:{tmp_path}")
    assert hf.decode_options(spec, "audio") == {"wave_rate": 16000}
    t = np.arange(16000) / 16000
    waves = [np.sin(2 * np.pi * f * t).astype(np.float32) * 0.3 for f in (300, 3000)]
    out = hf.encode(spec, "audio", waves, 1.0)
    assert out["tokens"].shape == (2, 8, 32) and (out["zs"] == 0).all()
    assert not torch.allclose(out["tokens"][0, 0], out["tokens"][1, 0])
