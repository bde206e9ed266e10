"""mm5 audio: espeak-ng spoken words as WAV files, decoded to log-mel spectrograms."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mmcl.data.mm5 import audio

TRAIN, TEST = 4, 2
N = len(audio.CLASSES) * (TRAIN + TEST)

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs the espeak-ng command")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio") / "s0"
    man = audio.generate(root, seed=0, train_per_class=TRAIN, test_per_class=TEST)
    samples, labels, split = audio.load(root)
    return root, man, samples, labels, split


@pytest.fixture
def copy(data, tmp_path):
    """A private copy of the generated data set, safe to damage."""
    dst = tmp_path / "copy"
    shutil.copytree(data[0], dst)
    return dst


def test_interface():
    assert audio.MODALITY == "audio" and isinstance(audio.VERSION, str)
    assert audio.CLASSES == ["cat", "dog", "cow", "horse", "sheep", "bird"]
    assert audio.__doc__ and "real" in audio.__doc__ and "synthetic" in audio.__doc__


def test_determinism(data, tmp_path):
    root, man, samples, _, _ = data
    again = audio.generate(tmp_path / "again", seed=0, train_per_class=TRAIN, test_per_class=TEST)
    assert again["sha256"] == man["sha256"] and again["files"] == man["files"]
    for f in man["files"]:
        assert (tmp_path / "again" / f["path"]).read_bytes() == (root / f["path"]).read_bytes()
    s2, _, _ = audio.load(tmp_path / "again")
    assert all(np.array_equal(a, b) for a, b in zip(samples, s2))
    other = audio.generate(tmp_path / "other", seed=1, train_per_class=TRAIN, test_per_class=TEST)
    assert other["sha256"] != man["sha256"]


def test_decoded_shapes_dtypes_ranges(data):
    _, _, samples, labels, split = data
    assert isinstance(samples, list) and len(samples) == N
    for s in samples:
        assert s.shape == (audio.N_MELS, audio.N_FRAMES) == (64, 96) and s.dtype == np.float32
        assert np.isfinite(s).all()
        assert s.min() >= audio.SILENCE_LOG - 1e-4  # log(mel + 1e-6) with mel >= 0
        assert s.max() < 15  # a full-scale sine gives ~log(256^2 / 4 * 0.5) ~ 9
    assert labels.dtype == np.int64 and split.dtype == np.int8
    assert set(np.unique(split)) == {0, 1} and set(np.unique(labels)) == set(range(len(audio.CLASSES)))


def test_class_balance_and_split_counts(data):
    _, man, _, labels, split = data
    for c in range(len(audio.CLASSES)):
        assert ((labels == c) & (split == 0)).sum() == TRAIN
        assert ((labels == c) & (split == 1)).sum() == TEST
    assert man["counts"] == {"train": TRAIN * len(audio.CLASSES), "test": TEST * len(audio.CLASSES)}
    # manifest order: by split, then class, then index
    assert np.all(np.diff(split) >= 0)
    assert [f["path"] for f in man["files"][:TRAIN + 1]] == [f"train/cat/{i}.wav" for i in range(TRAIN)] + ["train/dog/0.wav"]


def test_manifest_fields(data):
    root, man, _, labels, split = data
    on_disk = json.loads((root / "manifest.json").read_text())
    assert on_disk == man
    for key in ("modality", "version", "seed", "classes", "train_per_class", "test_per_class", "files", "counts",
                "bytes", "sha256", "seconds", "notes"):
        assert key in man, key
    assert (man["modality"], man["version"], man["seed"]) == ("audio", audio.VERSION, 0)
    assert man["classes"] == audio.CLASSES and (man["train_per_class"], man["test_per_class"]) == (TRAIN, TEST)
    assert man["seconds"] > 0 and "speaker" in man["notes"] and len(man["notes"]) > 200
    h, total = hashlib.sha256(), 0
    for f, y, s in zip(man["files"], labels, split):
        assert f["split"] == ("train", "test")[s] and f["label"] == y
        assert f["path"] == f"{f['split']}/{audio.CLASSES[f['label']]}/{f['path'].rsplit('/', 1)[1]}"
        assert f["speaker"] in audio.SPEAKERS
        data_ = (root / f["path"]).read_bytes()
        h.update(f["path"].encode())
        h.update(data_)
        total += len(data_)
    assert man["sha256"] == h.hexdigest() and man["bytes"] == total


def test_files_are_16k_mono_pcm16_wav(data):
    root, man, _, _, _ = data
    for f in man["files"]:
        info = sf.info(str(root / f["path"]))
        assert (info.format, info.subtype, info.samplerate, info.channels, info.frames) == \
            ("WAV", "PCM_16", 16000, 1, audio.CLIP_SAMPLES)


def test_word_has_more_energy_than_silence(data):
    _, _, samples, _, _ = data
    for s in samples:
        frame_energy = s.mean(axis=0)  # mean log-mel per frame
        # the word stands well above the padding value and above the clip's own quiet (noise-only) frames
        assert frame_energy.max() > audio.SILENCE_LOG + 5
        assert frame_energy.max() - np.median(np.sort(frame_energy)[:10]) > 1.5
    # a short wave is padded with exactly the log of silence
    sr = audio.SAMPLE_RATE
    t = np.arange(sr // 4) / sr
    spec = audio.log_mel(0.5 * np.sin(2 * np.pi * 440 * t), sr)
    n = 1 + (len(t) - audio.WIN) // audio.HOP
    assert spec.shape == (64, 96) and np.all(spec[:, n:] == np.float32(audio.SILENCE_LOG))
    assert spec[:, :n].mean(axis=0).min() > audio.SILENCE_LOG + 3
    # the 440 Hz tone peaks in the mel band whose centre is nearest 440 Hz
    centres = audio._mel_to_hz(np.linspace(0, audio._hz_to_mel(sr / 2), 66))[1:-1]
    assert abs(int(spec[:, :n].mean(axis=1).argmax()) - int(np.abs(centres - 440).argmin())) <= 1


def test_train_and_test_speakers_disjoint(data, tmp_path):
    _, man, _, _, _ = data
    spk = {s: {f["speaker"] for f in man["files"] if f["split"] == s} for s in ("train", "test")}
    assert spk["train"] and spk["test"] and not spk["train"] & spk["test"]
    # the whole speaker split, beyond the few speakers a tiny data set uses
    train, test = audio.speaker_split(0)
    assert not set(train) & set(test) and set(train) | set(test) == set(audio.SPEAKERS)
    assert spk["train"] <= set(train) and spk["test"] <= set(test) and len(test) == len(audio.SPEAKERS) // 4
    # within a class and split, samples cycle through distinct speakers
    assert len({f["speaker"] for f in man["files"] if f["split"] == "train" and f["label"] == 0}) == TRAIN


def test_corrupt_file_names_it(copy):
    man = json.loads((copy / "manifest.json").read_text())
    bad = copy / man["files"][3]["path"]
    bad.write_bytes(b"this is not a wav file" * 10)
    with pytest.raises(ValueError, match=str(bad).replace("\\", "\\\\") + ".*cannot decode WAV"):
        audio.load(copy)


def test_truncated_file_names_it(copy):
    man = json.loads((copy / "manifest.json").read_text())
    bad = copy / man["files"][-1]["path"]
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=f"{bad}: truncated WAV"):
        audio.load(copy)
    bad.write_bytes(raw[:30])  # inside the header
    with pytest.raises(ValueError, match=str(bad)):
        audio.load(copy)


def test_wrong_sample_rate_channels_or_length(copy):
    man = json.loads((copy / "manifest.json").read_text())
    bad = copy / man["files"][0]["path"]
    x, sr = sf.read(str(bad), dtype="int16")
    sf.write(str(bad), x[::2], 8000, subtype="PCM_16")
    with pytest.raises(ValueError, match=f"{bad}: expected sample rate 16000 Hz, got 8000 Hz"):
        audio.load(copy)
    sf.write(str(bad), np.stack([x, x], axis=1), sr, subtype="PCM_16")
    with pytest.raises(ValueError, match=f"{bad}: expected mono"):
        audio.load(copy)
    sf.write(str(bad), x[:8000], sr, subtype="PCM_16")
    with pytest.raises(ValueError, match=f"{bad}: expected 16000 samples"):
        audio.load(copy)
    sf.write(str(bad), x.astype(np.float32) / 32768, sr, subtype="FLOAT")
    with pytest.raises(ValueError, match=f"{bad}: expected 16-bit PCM"):
        audio.load(copy)


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        audio.load(tmp_path)


def test_regenerate_smaller_replaces_everything(copy):
    man = audio.generate(copy, seed=0, train_per_class=2, test_per_class=1)
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*.wav")) == sorted(f["path"] for f in man["files"])
    assert len(audio.load(copy)[0]) == 3 * len(audio.CLASSES)


def test_log_mel_inputs():
    rng = np.random.default_rng(0)
    sr = audio.SAMPLE_RATE
    t = np.arange(sr) / sr
    x = 0.3 * np.sin(2 * np.pi * 700 * t) + 0.01 * rng.standard_normal(sr)
    ref = audio.log_mel(x, sr)
    pcm = np.round(x * 32768).astype(np.int16)
    assert np.abs(audio.log_mel(pcm, sr) - ref).max() < 0.05  # int16 is scaled by 2^15 (minus quantisation noise)
    assert np.abs(audio.log_mel(np.stack([x, x], 1), sr) - ref).max() < 1e-5  # channels averaged
    x48 = 0.3 * np.sin(2 * np.pi * 700 * np.arange(3 * sr) / (3 * sr))
    up = audio.log_mel(x48, 3 * sr)  # resampled to 16 kHz
    tone = audio.log_mel(0.3 * np.sin(2 * np.pi * 700 * t), sr)
    assert up.shape == (64, 96) and up.mean(1).argmax() == tone.mean(1).argmax()
    assert np.abs(up[:, 5:-5].mean(1) - tone[:, 5:-5].mean(1))[:40].max() < 0.5
    assert np.all(audio.log_mel(np.zeros(100), sr) == np.float32(audio.SILENCE_LOG))
    fb = audio.mel_filterbank()
    assert fb.shape == (64, 257) and np.all(fb.max(axis=1) > 0.5) and fb.max() <= 1.0
